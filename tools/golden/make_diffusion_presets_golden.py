#!/usr/bin/env python3
"""Reference ("golden") values for the small Stable Diffusion presets of `adp fixtures --diffusion`.

For each of `sd-1.5-small`, `sd-2.1-base-small` and `sd-2.1-small`, loads the folder written by
`adp fixtures --diffusion NAME --out ROOT/NAME` UNMODIFIED into diffusers and transformers
(`UNet2DConditionModel`, `AutoencoderKL`, `CLIPTextModel`, `CLIPTokenizer`, `DDIMScheduler` and the
whole `StableDiffusionImg2ImgPipeline`), asserts that what they read is the release layout the
preset stands for (1x1-convolution or linear projections, head counts, pad token, prediction type,
image size = unet.sample_size * vae_scale_factor), and writes one file per preset,
`conformance-tests/goldens/preset_<name>.safetensors`, with: VAE latents and decoded images, text
conditioning with a concept, the UNet prediction, the denoising loss and its gradient with respect to
the concept, and DDIM img2img - each with the inputs that produced it.

Conventions are make_goldens.py's (README.md next to this file), except the padding: prompts are
padded with the folder's own pad token (49407 `<|endoftext|>` for SD 1.5, 0 `!` for SD 2.x), and the
script asserts that its ids equal the folder's CLIPTokenizer on prompts without the placeholder.
"""

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (helpers, SD wrapper, loss and img2img loops)
from make_goldens import (  # noqa: E402
    CONTEXT, END_ID, PLACEHOLDER_ID, START_ID, check, f32, gen, i64, info, write,
)

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import StableDiffusionImg2ImgPipeline  # noqa: E402

# name -> what the folder must say (the release it stands for)
PRESETS = {
    "sd-1.5-small": dict(linear=False, heads=2, pad=END_ID, prediction="epsilon", upcast=False,
                         image=32, act="quick_gelu", text_layers=3),
    "sd-2.1-base-small": dict(linear=True, heads=[2, 4, 8], pad=0, prediction="epsilon", upcast=False,
                              image=32, act="gelu", text_layers=2),
    "sd-2.1-small": dict(linear=True, heads=[2, 4, 8], pad=0, prediction="v_prediction", upcast=True,
                         image=48, act="gelu", text_layers=2),
}


def tokenize(prompt, pad):
    ids = mg.tokenize(prompt)
    end = ids.index(END_ID)
    return ids[:end + 1] + [pad] * (CONTEXT - end - 1)


def tokenize_batch(prompts, pad):
    return torch.tensor([tokenize(p, pad) for p in prompts], dtype=torch.int64)


def check_layout(name, sd, pipe, want):
    """The preset loads unmodified and is the layout it names."""
    u, t = sd.unet.config, sd.text_encoder.config
    assert u.use_linear_projection == want["linear"], name
    proj = sd.unet.mid_block.attentions[0].proj_in
    assert isinstance(proj, torch.nn.Linear if want["linear"] else torch.nn.Conv2d), (name, proj)
    hd = u.attention_head_dim
    assert (list(hd) if isinstance(hd, (list, tuple)) else hd) == want["heads"], (name, hd)
    heads = want["heads"] if isinstance(want["heads"], list) else [want["heads"]] * len(u.block_out_channels)
    attn = sd.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn.heads == heads[0], (name, attn.heads)
    assert sd.unet.mid_block.attentions[0].transformer_blocks[0].attn1.heads == heads[-1], name
    assert u.upcast_attention == want["upcast"], name
    assert attn.upcast_attention == want["upcast"], name
    assert u.cross_attention_dim == t.hidden_size, name
    assert t.hidden_act == want["act"] and t.num_hidden_layers == want["text_layers"], (name, t)
    assert sd.tokenizer.pad_token_id == want["pad"], (name, sd.tokenizer.pad_token_id)
    assert sd.scheduler.config.prediction_type == want["prediction"], name
    size = u.sample_size * pipe.vae_scale_factor
    assert size == want["image"], (name, size)
    return size


def preset_golden(root, name, out):
    want = PRESETS[name]
    print(f"== preset_{name}")
    folder = os.path.join(root, name)
    sd = mg.SD(folder)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
        folder, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        low_cpu_mem_usage=False)
    pipe.set_progress_bar_config(disable=True)
    size = check_layout(name, sd, pipe, want)
    pad = want["pad"]
    lat_ch, lat = sd.unet.config.in_channels, sd.unet.config.sample_size

    # concept: the token embedding of "object" plus a deterministic perturbation
    emb = sd.text_encoder.embeddings.token_embedding.weight
    (object_id,) = mg._TOKENIZER.encode("object")
    concept = f32(emb[object_id] + 0.5 * emb.std() * torch.randn(emb.shape[1], generator=gen(101)))

    # VAE
    vae_images = torch.rand(1, 3, size, size, generator=gen(110))
    with torch.no_grad():
        vae_latents = sd.encode(vae_images)
        vae_decoded = sd.decode(vae_latents)

    # text conditioning, padded with the folder's pad token
    cond_prompts = ["a photo of a flawless <c>", "a photo of a <c> with damage"]
    cond_ids = tokenize_batch(cond_prompts, pad)
    with torch.no_grad():
        conditioning = sd.conditioning(cond_ids, concept)
        plain = "a photo with damage"
        hf_ids = sd.tokenizer(plain, padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
        assert torch.equal(hf_ids[0], tokenize_batch([plain], pad)[0]), (name, hf_ids)
        check(f"{name}: conditioning, hook path vs plain CLIPTextModel call",
              sd.conditioning(hf_ids, concept), sd.text_encoder(hf_ids).last_hidden_state)
        zero_pad = tokenize_batch([plain], 0)
        if pad != 0:
            d = (sd.text_encoder(zero_pad).last_hidden_state - sd.text_encoder(hf_ids).last_hidden_state)
            info(f"{name}: max|conditioning padded with 0 - with the pad token| (must matter)", d.abs().max().item())
            assert d.abs().max().item() > 1e-3, "the pad token does not change the conditioning"

    # UNet
    unet_latents = torch.randn(2, lat_ch, lat, lat, generator=gen(111))
    unet_timesteps = torch.tensor([10, 700], dtype=torch.int64)
    with torch.no_grad():
        unet_prediction = sd.unet(unet_latents, unet_timesteps, encoder_hidden_states=conditioning).sample
        one = torch.cat([sd.unet(unet_latents[i:i + 1], unet_timesteps[i:i + 1],
                                 encoder_hidden_states=conditioning[i:i + 1]).sample for i in range(2)])
        check(f"{name}: UNet batched vs one-by-one", unet_prediction, one)

    # denoising loss and its gradient wrt the concept
    images = torch.rand(2, 3, size, size, generator=gen(120))
    prompts = ["a photo of a flawless <c>", "a rendering of a flawless <c>"]
    ids = tokenize_batch(prompts, pad)
    timesteps = torch.tensor([100, 800], dtype=torch.int64)
    noise = torch.randn(2, lat_ch, lat, lat, generator=gen(121))
    cv = concept.clone().requires_grad_(True)
    loss, _ = mg.ti_loss(sd, images, ids, cv, timesteps, noise)
    loss.backward()
    grad = f32(cv.grad)
    sd64 = copy.copy(sd)
    sd64.vae = copy.deepcopy(sd.vae).double()
    sd64.unet = copy.deepcopy(sd.unet).double()
    sd64.text_encoder = copy.deepcopy(sd.text_encoder).double()
    im64, n64 = images.double(), noise.double()
    c64 = concept.double().clone().requires_grad_(True)
    l64, _ = mg.ti_loss(sd64, im64, ids, c64, timesteps, n64)
    l64.backward()
    g64 = c64.grad.clone()
    fd = mg.central_differences(lambda c: mg.ti_loss(sd64, im64, ids, c, timesteps, n64)[0], c64)
    scale = g64.abs().max().item()
    info(f"{name} loss grad: max|autograd f64 - central FD f64| / max|g|", (g64 - fd).abs().max().item() / scale)
    info(f"{name} loss grad: max|autograd f32 - autograd f64| / max|g|",
         (grad.double() - g64).abs().max().item() / scale)

    # img2img, checked against the real pipeline (which tokenizes with the folder's tokenizer)
    prompt, negative = "a photo with damage", ""
    strength, guidance, steps = 0.6, 7.5, 10
    image = torch.rand(1, 3, size, size, generator=gen(130))
    i2i_noise = torch.randn(1, lat_ch, lat, lat, generator=gen(131))
    with torch.no_grad():
        z0 = sd.encode(image)
        i2i_timesteps, _, latents = mg.img2img_manual(
            sd, z0, i2i_noise, tokenize_batch([prompt], pad), tokenize_batch([negative], pad),
            strength, guidance, steps)
        output = sd.decode(latents)
        kw = dict(prompt=prompt, negative_prompt=negative, image=z0, strength=strength,
                  guidance_scale=guidance, num_inference_steps=steps, eta=0.0)
        p_img = pipe(**kw, generator=gen(131), output_type="pt").images
        check(f"{name}: img2img manual loop vs StableDiffusionImg2ImgPipeline", output, p_img)

    tensors = {
        "concept": concept,
        "vae_images": f32(vae_images),
        "vae_latents": f32(vae_latents),
        "vae_decoded": f32(vae_decoded),
        "cond_ids": i64(cond_ids),
        "conditioning": f32(conditioning),
        "unet_latents": f32(unet_latents),
        "unet_timesteps": i64(unet_timesteps),
        "unet_prediction": f32(unet_prediction),
        "images": f32(images),
        "ids": i64(ids),
        "timesteps": i64(timesteps),
        "noise": f32(noise),
        "loss": f32(loss.reshape(1)),
        "loss_grad": grad,
        "image": f32(image),
        "img2img_noise": f32(i2i_noise),
        "img2img_timesteps": i64(i2i_timesteps),
        "output": f32(output),
    }
    meta = mg.common_meta(root, mg.folder_files(root, name) + mg.folder_files(root, "clip"))
    meta.update({
        "generator": "tools/golden/make_diffusion_presets_golden.py",
        "preset": name,
        "checkpoint": name,
        "pad_id": pad,
        "image_size": size,
        "prediction_type": want["prediction"],
        "use_linear_projection": want["linear"],
        "upcast_attention": want["upcast"],
        "cond_prompts": cond_prompts,
        "prompts": prompts,
        "prompt": prompt,
        "negative_prompt": negative,
        "strength": strength,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "eta": 0.0,
        "vae_latents": "scaling_factor * vae.encode(2 * vae_images - 1).latent_dist.mean",
        "vae_decoded": "(vae.decode(vae_latents / scaling_factor).sample / 2 + 0.5).clamp(0, 1)",
        "unet": "unet(unet_latents, unet_timesteps, encoder_hidden_states=conditioning).sample",
        "loss": "make_goldens.ti_loss on images/ids/timesteps/noise; loss_grad = d loss / d concept",
        "output": "make_goldens.img2img_manual (checked against StableDiffusionImg2ImgPipeline), decoded",
    })
    write(os.path.join(out, f"preset_{name.replace('-', '_').replace('.', '')}.safetensors"), tensors, meta)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", required=True,
                    help="directory with one `adp fixtures --diffusion NAME --out DIR/NAME` per preset")
    ap.add_argument("--out", required=True, help="directory for the golden .safetensors files")
    args = ap.parse_args()
    torch.manual_seed(0)
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for name in PRESETS:
        preset_golden(os.path.join(args.fixtures, name), name, args.out)
    print("== summary of self-checks")
    for n, d in mg._CHECKS:
        print(f"  {n:70s} {d:.3e}")


if __name__ == "__main__":
    sys.exit(main())
