#!/usr/bin/env python3
"""Reference ("golden") values for the adp conformance tests.

Loads the tiny deterministic checkpoints written by `adp fixtures --out DIR` UNMODIFIED into the
reference implementations (open_clip for CLIP; diffusers / transformers for Stable Diffusion),
computes every quantity the Rust backends must reproduce, and writes them - together with the
inputs that produced them - as safetensors files:

    clip.safetensors            CLIP: preprocessing, image/text embeddings, WinCLIP windows,
                                penultimate patch tokens, P_CLIP and its gradient
    sd.safetensors              SD: VAE encode/decode, text conditioning with a concept, UNet
    ti_epsilon.safetensors      textual-inversion loss + gradient, prediction_type epsilon
    ti_v.safetensors            textual-inversion loss + gradient, prediction_type v_prediction
    img2img_epsilon.safetensors SDEdit / img2img (DDIM, CFG) on the sd-epsilon checkpoint
    img2img_v.safetensors       SDEdit / img2img (DDIM, CFG) on the sd-v checkpoint

See README.md next to this file for the environment, the tensor names and the tolerances.

Conventions (docs/SPEC.md of the project):
  * prompts contain the placeholder string "<c>"; ids = [49406] + ids(text before) + [49408] +
    ids(text after) + [49407], zero-padded to 77, where ids() is open_clip's SimpleTokenizer.encode
    (no start/end tokens). At id 49408 the token embedding is the concept vector.
  * text features are pooled at the FIRST end token (49407), never at argmax(ids).
  * everything is float32 on the CPU.
"""

import argparse
import copy
import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

import open_clip
import diffusers
import transformers
import safetensors
from safetensors.torch import load_file, save_file
from PIL import Image
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionImg2ImgPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

START_ID = 49406
END_ID = 49407
PLACEHOLDER_ID = 49408
PLACEHOLDER = "<c>"
CONTEXT = 77
TAU = 0.01
SEED = 1234  # seed of every torch.Generator used for inputs

CHECK_TOL = 1e-5  # self-checks between two ways of computing the same thing (float32)
SUGGESTED_TOLERANCES = {
    "forward_f32": "max|diff| <= 1e-4 * max|golden| (per tensor)",
    "gradient_f32": "max|diff| <= 1e-3 * max|golden| (per tensor)",
    "loss_f32": "|diff| <= 1e-5 * |golden| + 1e-7",
    "preprocessed": "max|diff| <= 3e-2 in normalised units (about 2 uint8 levels: PIL resamples "
                    "uint8 in two passes with fixed-point weights, rounding to uint8 after each); "
                    "an exact emulation of PIL can use 1e-6",
    "preprocessed_unquantized": "max|diff| <= 1e-4 (PIL bicubic on float32 'F' images, no rounding)",
    "img2img": "max|diff| <= 1e-3 * max|golden| (15 chained UNet+DDIM steps)",
}

_TOKENIZER = open_clip.tokenizer.SimpleTokenizer()
_CHECKS = []  # (name, max abs diff)


# ----------------------------------------------------------------------------- helpers

def check(name, a, b, tol=CHECK_TOL):
    d = (a.detach().double() - b.detach().double()).abs().max().item()
    _CHECKS.append((name, d))
    print(f"  check {name:60s} max|diff| = {d:.3e}")
    assert d < tol, f"self-check {name} failed: {d} >= {tol}"
    return d


def info(name, value):
    _CHECKS.append((name, value))
    print(f"  info  {name:60s} {value:.3e}")


def gen(offset):
    """A fresh CPU generator; each input gets its own stream so adding one does not shift others."""
    return torch.Generator().manual_seed(SEED + offset)


def tokenize(prompt):
    """The project's tokenisation convention (see module docstring). Returns a list of 77 ints."""
    parts = prompt.split(PLACEHOLDER)
    ids = [START_ID]
    for i, part in enumerate(parts):
        if i > 0:
            ids.append(PLACEHOLDER_ID)
        ids.extend(_TOKENIZER.encode(part))
    ids.append(END_ID)
    assert len(ids) <= CONTEXT, prompt
    return ids + [0] * (CONTEXT - len(ids))


def tokenize_batch(prompts):
    return torch.tensor([tokenize(p) for p in prompts], dtype=torch.int64)


def f32(t):
    return t.detach().to(torch.float32).contiguous().clone()


def i64(t):
    return t.detach().to(torch.int64).contiguous().clone()


def write(path, tensors, meta):
    # every metadata value is JSON (strings too), so readers can json-parse all of them
    meta = {k: json.dumps(v) for k, v in meta.items()}
    for k, v in tensors.items():
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    for k, v in tensors.items():
        print(f"    {k:28s} {str(list(v.shape)):18s} {str(v.dtype).replace('torch.', '')}")


# One streaming SHA-256 for every script: the standard-library converter's (tools/weights).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
from convert_pth import sha256_file as sha256  # noqa: E402


def central_differences(f, x, eps=1e-5):
    """The gradient of scalar `f` at `x` by central differences, one coordinate at a time."""
    fd = torch.zeros_like(x)
    with torch.no_grad():
        for i in range(fd.numel()):
            e = torch.zeros_like(x)
            e[i] = eps
            fd[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return fd


def folder_files(fixtures, folder):
    root = os.path.join(fixtures, folder)
    return sorted(os.path.relpath(os.path.join(d, f), fixtures)
                  for d, _, fs in os.walk(root) for f in fs)


def common_meta(fixtures, files):
    return {
        "generator": "tools/golden/make_goldens.py",
        "versions": {
            "torch": torch.__version__, "open_clip_torch": open_clip.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "safetensors": safetensors.__version__, "numpy": np.__version__,
        },
        "input_seed": SEED,
        "fixture_sha256": {f: sha256(os.path.join(fixtures, f)) for f in files},
        "placeholder": PLACEHOLDER,
        "placeholder_id": PLACEHOLDER_ID,
        "start_id": START_ID,
        "end_id": END_ID,
        "pad_id": 0,
        "suggested_tolerances": SUGGESTED_TOLERANCES,
    }


# ----------------------------------------------------------------------------- CLIP (open_clip)

def load_clip(fixtures):
    with open(os.path.join(fixtures, "clip", "open_clip_config.json")) as f:
        cfg = json.load(f)
    model = open_clip.CLIP(**cfg["model_cfg"])
    sd = load_file(os.path.join(fixtures, "clip", "open_clip_model.safetensors"))
    model.load_state_dict(sd, strict=True)
    model.eval().float()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg


def clip_token_embeddings(model, ids, concept):
    """token_embedding lookup with the concept vector at every PLACEHOLDER_ID position (plain torch)."""
    mask = ids == PLACEHOLDER_ID
    safe = ids.masked_fill(mask, 0)
    x = model.token_embedding(safe)
    return torch.where(mask.unsqueeze(-1), concept.to(x.dtype).expand_as(x), x)


def first_end(ids):
    return (ids == END_ID).int().argmax(dim=-1)


def clip_encode_text(model, ids, concept):
    """g = ln_final(transformer(x + pos, causal mask))[first 49407] @ text_projection.

    Plain torch on open_clip's modules: CLIP.encode_text would pool at argmax(ids), which is the
    placeholder position (49408 > 49407). open_clip 3.3's text transformer is batch_first."""
    x = clip_token_embeddings(model, ids, concept)
    x = x + model.positional_embedding.to(x.dtype)
    x = model.transformer(x, attn_mask=model.attn_mask.to(x.dtype))
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), first_end(ids)]
    return x @ model.text_projection


def vision_tokens(model, images):
    """[class + patches] + positional embedding, then ln_pre: [N, 1+G*G, width] (plain torch)."""
    v = model.visual
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
    return v.ln_pre(x)


def window_indices(grid, k):
    """Patch indices (row-major within the window) of every k x k window, windows row-major, stride 1."""
    out = []
    for r in range(grid - k + 1):
        for c in range(grid - k + 1):
            out.append([(r + i) * grid + (c + j) for i in range(k) for j in range(k)])
    return out


def window_embeddings(model, images, k):
    """WinCLIP window embeddings (plain torch on open_clip modules - open_clip has no such call):
    the vision transformer on [class token + only that window's patch tokens], each token with its
    own positional embedding, then ln_post on the class token and @ proj. -> [N, n_windows, embed]."""
    v = model.visual
    tok = vision_tokens(model, images)
    grid = v.grid_size[0]
    outs = []
    for win in window_indices(grid, k):
        sel = torch.tensor([0] + [p + 1 for p in win])
        x = v.transformer(tok[:, sel])
        outs.append(v.ln_post(x[:, 0]) @ v.proj)
    return torch.stack(outs, dim=1)


def penultimate_patch_tokens(model, images):
    """Patch tokens (class token dropped) output by resblock L-2, before ln_post (plain torch)."""
    v = model.visual
    x = vision_tokens(model, images)
    blocks = v.transformer.resblocks
    for blk in blocks[: len(blocks) - 1]:
        x = blk(x)
    return x[:, 1:]


def normalise(images, mean, std):
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s


def p_clip_normal(model, images_norm, ids_normal, ids_anom, concept):
    """P_CLIP(S_n | x) = softmax([cos(f,g_n), cos(f,g_a)] / tau)[0] for every image."""
    f = F.normalize(model.encode_image(images_norm), dim=-1)
    g = clip_encode_text(model, torch.cat([ids_normal, ids_anom]), concept)
    g = F.normalize(g, dim=-1)
    logits = f @ g.T / TAU  # [N, 2]
    return logits.softmax(dim=-1)[:, 0]


def clip_goldens(fixtures, out):
    print("== clip.safetensors")
    model, cfg = load_clip(fixtures)
    mean = cfg["preprocess_cfg"]["mean"]
    std = cfg["preprocess_cfg"]["std"]
    size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    grid = model.visual.grid_size[0]
    n_layers = len(model.visual.transformer.resblocks)

    images = torch.rand(2, 3, size, size, generator=gen(0))
    x = normalise(images, mean, std)

    # image embeddings: straight from open_clip
    with torch.no_grad():
        image_embeddings = model.encode_image(x)
        # full-grid "window" == encode_image (checks the plain-torch window path)
        check("window(full grid) vs open_clip encode_image", window_embeddings(model, x, grid)[:, 0],
              image_embeddings)
        window_2 = window_embeddings(model, x, 2)
        window_3 = window_embeddings(model, x, 3)
        # brute-force cross-check of one window: zero attention to the other tokens is equivalent
        # to dropping them -> recompute window 0 of size 2 by building the token list by hand
        tok = vision_tokens(model, x)
        w0 = window_indices(grid, 2)[4]
        xx = torch.cat([tok[:, :1]] + [tok[:, p + 1:p + 2] for p in w0], dim=1)
        check("window_2[4] vs hand-built token list", model.visual.ln_post(
            model.visual.transformer(xx)[:, 0]) @ model.visual.proj, window_2[:, 4])

        patch_tokens = penultimate_patch_tokens(model, x)
        inter = model.visual.forward_intermediates(
            x, indices=[n_layers - 2], intermediates_only=True, output_fmt="NLC")
        check("penultimate patch tokens vs open_clip forward_intermediates",
              patch_tokens, inter["image_intermediates"][0])

    # concept: the token embedding of "object" plus a deterministic perturbation
    object_id = _TOKENIZER.encode("object")
    assert len(object_id) == 1
    emb_std = model.token_embedding.weight.std().item()
    concept = (model.token_embedding.weight[object_id[0]]
               + 0.5 * emb_std * torch.randn(model.token_embedding.weight.shape[1], generator=gen(1)))
    concept = f32(concept)

    prompts = [
        "a photo of a flawless <c>",
        "a photo of a damaged <c>",
        "a rendering of a <c>",
        "a photo of a damaged object",
    ]
    text_ids = tokenize_batch(prompts)
    with torch.no_grad():
        text_embeddings = clip_encode_text(model, text_ids, concept)
        plain = [i for i, p in enumerate(prompts) if PLACEHOLDER not in p]
        check("plain prompt: first-end pooling vs open_clip encode_text",
              text_embeddings[plain], model.encode_text(text_ids[plain]))
        # open_clip's own tokenizer on the plain prompt gives the same ids
        assert torch.equal(open_clip.get_tokenizer("ViT-B-32")(prompts[plain[0]])[0], text_ids[plain[0]])
        # with the concept substituted by a forward hook on token_embedding, the open_clip
        # transformer path (minus argmax pooling) agrees with the plain-torch one
        mask = text_ids == PLACEHOLDER_ID
        h = model.token_embedding.register_forward_hook(
            lambda mod, inp, outp: torch.where(mask.unsqueeze(-1), concept.expand_as(outp), outp))
        try:
            xh = model.token_embedding(text_ids.masked_fill(mask, 0)) + model.positional_embedding
            xh = model.ln_final(model.transformer(xh, attn_mask=model.attn_mask))
            gh = xh[torch.arange(len(prompts)), first_end(text_ids)] @ model.text_projection
        finally:
            h.remove()
        check("concept prompts: hook-substituted vs plain-torch", gh, text_embeddings)

    ids_n = tokenize_batch(["a photo of a flawless <c>"])
    ids_a = tokenize_batch(["a photo of a damaged <c>"])
    cv = concept.clone().requires_grad_(True)
    prob = p_clip_normal(model, x, ids_n, ids_a, cv)
    prob.mean().backward()
    state_probability = f32(prob)
    state_probability_grad = f32(cv.grad)

    # gradient check in float64: autograd(f64) vs central differences(f64) and vs autograd(f32)
    m64 = copy.deepcopy(model).double()
    x64 = x.double()
    c64 = concept.double().clone().requires_grad_(True)
    p_clip_normal(m64, x64, ids_n, ids_a, c64).mean().backward()
    g64 = c64.grad.clone()
    fd = central_differences(lambda c: p_clip_normal(m64, x64, ids_n, ids_a, c).mean(), c64)
    scale = g64.abs().max().item()
    info("P_CLIP grad: max|autograd f64 - central FD f64| / max|g|", (g64 - fd).abs().max().item() / scale)
    info("P_CLIP grad: max|autograd f32 - autograd f64| / max|g|",
         (state_probability_grad.double() - g64).abs().max().item() / scale)
    info("P_CLIP grad: max|g| (scale)", scale)

    # preprocessing golden: open_clip's own eval transform on a PIL image
    raw = torch.randint(0, 256, (40, 48, 3), generator=gen(2), dtype=torch.int64).to(torch.uint8)
    # make it smooth-ish so that the resampling filter matters more than the noise
    raw_np = raw.numpy().astype(np.float32)
    raw_np = (0.5 * raw_np + 0.5 * np.linspace(0, 255, 48, dtype=np.float32)[None, :, None]).round()
    raw_np = raw_np.clip(0, 255).astype(np.uint8)
    pil = Image.fromarray(raw_np, "RGB")  # width 48, height 40
    tf = open_clip.image_transform(size, is_train=False, mean=tuple(mean), std=tuple(std),
                                   resize_mode=cfg["preprocess_cfg"].get("resize_mode", "shortest"),
                                   interpolation=cfg["preprocess_cfg"].get("interpolation", "bicubic"))
    preprocessed = tf(pil).unsqueeze(0)
    # same geometry done by hand with PIL (torchvision Resize(32): shorter side -> 32, longer side
    # int(32 * 48 / 40) = 38; CenterCrop(32): left = round((38 - 32) / 2) = 3, top = 0)
    w, h = pil.size
    if w >= h:
        nw, nh = int(size * w / h), size
    else:
        nw, nh = size, int(size * h / w)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    r8 = np.asarray(pil.resize((nw, nh), Image.BICUBIC), dtype=np.float32)[top:top + size, left:left + size]
    manual = normalise(torch.from_numpy(r8 / 255.0).permute(2, 0, 1).unsqueeze(0), mean, std)
    check("preprocess: open_clip transform vs PIL uint8 resize + crop by hand", manual, preprocessed)
    # unquantised variant: PIL bicubic on float ('F') channels, no rounding to uint8
    chans = [np.asarray(Image.fromarray(raw_np[:, :, ch].astype(np.float32), "F").resize(
        (nw, nh), Image.BICUBIC), dtype=np.float32) for ch in range(3)]
    rf = np.stack(chans, axis=-1)[top:top + size, left:left + size]
    preprocessed_unq = normalise(torch.from_numpy(rf / 255.0).permute(2, 0, 1).unsqueeze(0), mean, std)
    info("preprocess: max|uint8 path - float path| (normalised units)",
         (preprocessed_unq - preprocessed).abs().max().item())

    tensors = {
        "images": f32(images),
        "images_normalised": f32(x),
        "image_embeddings": f32(image_embeddings),
        "patch_tokens": f32(patch_tokens),
        "window_2": f32(window_2),
        "window_3": f32(window_3),
        "concept": concept,
        "text_ids": i64(text_ids),
        "text_embeddings": f32(text_embeddings),
        "state_ids_normal": i64(ids_n[0]),
        "state_ids_anomalous": i64(ids_a[0]),
        "state_probability": state_probability,
        "state_probability_grad": state_probability_grad,
        "raw_image": f32(torch.from_numpy(raw_np.astype(np.float32))),
        "preprocessed": f32(preprocessed),
        "preprocessed_unquantized": f32(preprocessed_unq),
    }
    meta = common_meta(fixtures, folder_files(fixtures, "clip"))
    meta.update({
        "prompts": prompts,
        "state_prompt_normal": "a photo of a flawless <c>",
        "state_prompt_anomalous": "a photo of a damaged <c>",
        "tau": TAU,
        "mean": mean,
        "std": std,
        "image_size": size,
        "grid": grid,
        "vision_layers": n_layers,
        "patch_tokens_block": n_layers - 2,
        "windows": {"2": window_indices(grid, 2), "3": window_indices(grid, 3)},
        "concept_init": "token_embedding[id('object')] + 0.5 * std(token_embedding) * randn(seed+1)",
        "preprocess": "open_clip.image_transform(32, is_train=False): PIL bicubic resize of the shorter "
                      "side to 32 (48x40 -> 38x32, uint8 result), CenterCrop 32 (left 3, top 0), "
                      "ToTensor (/255), Normalize(mean, std)",
        "preprocess_resized_size_wh": [nw, nh],
        "preprocess_crop_left_top": [left, top],
    })
    write(os.path.join(out, "clip.safetensors"), tensors, meta)
    return concept


# ----------------------------------------------------------------------------- SD (diffusers)

class SD:
    def __init__(self, folder):
        self.folder = folder
        self.vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), low_cpu_mem_usage=False).eval().float()
        self.unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), low_cpu_mem_usage=False).eval().float()
        self.text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder")).eval().float()
        self.scheduler = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
        self.tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"))
        for mod in (self.vae, self.unet, self.text_encoder):
            for p in mod.parameters():
                p.requires_grad_(False)
        self.scaling = self.vae.config.scaling_factor

    def encode(self, images01):
        """z0 = scaling_factor * posterior MEAN of vae.encode(2x - 1) (straight from diffusers)."""
        return self.scaling * self.vae.encode(2 * images01 - 1).latent_dist.mean

    def decode_raw(self, latents):
        return self.vae.decode(latents / self.scaling).sample

    def decode(self, latents):
        return (self.decode_raw(latents) / 2 + 0.5).clamp(0, 1)

    def conditioning(self, ids, concept):
        """CLIPTextModel.last_hidden_state with the concept substituted in the token-embedding output
        (a forward hook on transformers' token_embedding; ids 49408 are looked up as 0 and replaced),
        i.e. before the position embeddings are added."""
        mask = ids == PLACEHOLDER_ID
        emb = self.text_encoder.embeddings.token_embedding
        h = emb.register_forward_hook(
            lambda mod, inp, outp: torch.where(mask.unsqueeze(-1), concept.to(outp.dtype).expand_as(outp), outp))
        try:
            return self.text_encoder(input_ids=ids.masked_fill(mask, 0)).last_hidden_state
        finally:
            h.remove()


def conditioning_from_open_clip(clip_model, ids, concept, n_layers):
    """Cross-check: SD2's text encoder is the open_clip text tower's first n_layers blocks followed by
    ln_final (plain torch on open_clip modules)."""
    x = clip_token_embeddings(clip_model, ids, concept) + clip_model.positional_embedding
    for blk in clip_model.transformer.resblocks[:n_layers]:
        x = blk(x, attn_mask=clip_model.attn_mask)
    return clip_model.ln_final(x)


def sd_goldens(fixtures, out, concept):
    print("== sd.safetensors")
    sd = SD(os.path.join(fixtures, "sd-epsilon"))
    clip_model, _ = load_clip(fixtures)
    size = sd.vae.config.sample_size

    vae_images = torch.rand(2, 3, size, size, generator=gen(10))
    with torch.no_grad():
        vae_latents = sd.encode(vae_images)
        vae_decoded_raw = sd.decode_raw(vae_latents)
        vae_decoded = sd.decode(vae_latents)
        check("VAE: decode == (decode_raw / 2 + 0.5).clamp(0, 1)", vae_decoded,
              (vae_decoded_raw / 2 + 0.5).clamp(0, 1))

    prompts = ["a photo of a flawless <c>", "a photo of a <c> with damage"]
    cond_ids = tokenize_batch(prompts)
    with torch.no_grad():
        conditioning = sd.conditioning(cond_ids, concept)
        check("SD conditioning: transformers (hook) vs open_clip tower minus last block",
              conditioning, conditioning_from_open_clip(
                  clip_model, cond_ids, concept, sd.text_encoder.config.num_hidden_layers))
        plain = "a photo with damage"
        hf_ids = sd.tokenizer(plain, padding="max_length", max_length=CONTEXT, return_tensors="pt").input_ids
        assert torch.equal(hf_ids[0], tokenize_batch([plain])[0]), "HF tokenizer disagrees"
        check("SD conditioning: plain prompt, hook path vs plain CLIPTextModel call",
              sd.conditioning(hf_ids, concept), sd.text_encoder(hf_ids).last_hidden_state)

    lat_ch = sd.unet.config.in_channels
    lat_size = sd.unet.config.sample_size
    unet_latents = torch.randn(2, lat_ch, lat_size, lat_size, generator=gen(11))
    unet_timesteps = torch.tensor([10, 700], dtype=torch.int64)
    with torch.no_grad():
        unet_prediction = sd.unet(unet_latents, unet_timesteps, encoder_hidden_states=conditioning).sample
        # batch-of-one calls agree with the batched one
        one = torch.cat([sd.unet(unet_latents[i:i + 1], unet_timesteps[i:i + 1],
                                 encoder_hidden_states=conditioning[i:i + 1]).sample for i in range(2)])
        check("UNet batched vs one-by-one", unet_prediction, one)

    tensors = {
        "vae_images": f32(vae_images),
        "vae_latents": f32(vae_latents),
        "vae_decoded_raw": f32(vae_decoded_raw),
        "vae_decoded": f32(vae_decoded),
        "cond_ids": i64(cond_ids),
        "concept": f32(concept),
        "conditioning": f32(conditioning),
        "unet_latents": f32(unet_latents),
        "unet_timesteps": i64(unet_timesteps),
        "unet_prediction": f32(unet_prediction),
        "alphas_cumprod": f32(sd.scheduler.alphas_cumprod),
    }
    meta = common_meta(fixtures, folder_files(fixtures, "sd-epsilon") + folder_files(fixtures, "clip"))
    meta.update({
        "checkpoint": "sd-epsilon",
        "cond_prompts": prompts,
        "scaling_factor": sd.scaling,
        "vae_latents": "scaling_factor * vae.encode(2 * images - 1).latent_dist.mean",
        "vae_decoded_raw": "vae.decode(vae_latents / scaling_factor).sample (no clamp, about [-1, 1])",
        "vae_decoded": "(vae.decode(vae_latents / scaling_factor).sample / 2 + 0.5).clamp(0, 1)",
        "unet": "unet(unet_latents, unet_timesteps, encoder_hidden_states=conditioning).sample",
        "alphas_cumprod": "DDIMScheduler.alphas_cumprod (float32, as diffusers computes it)",
    })
    write(os.path.join(out, "sd.safetensors"), tensors, meta)
    return sd


def ti_loss(sd, images, ids, concept, timesteps, noise):
    z0 = sd.encode(images)
    zt = sd.scheduler.add_noise(z0, noise, timesteps)
    if sd.scheduler.config.prediction_type == "epsilon":
        target = noise
    elif sd.scheduler.config.prediction_type == "v_prediction":
        target = sd.scheduler.get_velocity(z0, noise, timesteps)
    else:
        raise ValueError(sd.scheduler.config.prediction_type)
    cond = sd.conditioning(ids, concept)
    pred = sd.unet(zt, timesteps, encoder_hidden_states=cond).sample
    loss = F.mse_loss(pred, target, reduction="mean")
    return loss, dict(z0=z0, zt=zt, target=target, pred=pred)


def ti_goldens(fixtures, out, concept, variant):
    name = f"ti_{variant}.safetensors"
    print(f"== {name}")
    folder = "sd-epsilon" if variant == "epsilon" else "sd-v"
    sd = SD(os.path.join(fixtures, folder))
    size = sd.vae.config.sample_size
    lat = sd.unet.config.sample_size
    images = torch.rand(2, 3, size, size, generator=gen(20))
    prompts = ["a photo of a flawless <c>", "a rendering of a flawless <c>"]
    ids = tokenize_batch(prompts)
    timesteps = torch.tensor([100, 800], dtype=torch.int64)
    noise = torch.randn(2, sd.unet.config.in_channels, lat, lat, generator=gen(21))

    cv = concept.clone().requires_grad_(True)
    loss, parts = ti_loss(sd, images, ids, cv, timesteps, noise)
    loss.backward()
    grad = f32(cv.grad)

    # manual forward-diffusion / target formulas vs diffusers' add_noise / get_velocity
    abar = sd.scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    check(f"{variant}: add_noise vs sqrt(abar) z0 + sqrt(1-abar) eps", parts["zt"],
          abar.sqrt() * parts["z0"] + (1 - abar).sqrt() * noise)
    if variant == "v":
        check("v: get_velocity vs sqrt(abar) eps - sqrt(1-abar) z0", parts["target"],
              abar.sqrt() * noise - (1 - abar).sqrt() * parts["z0"])

    # gradient check in float64
    sd64 = copy.copy(sd)
    sd64.vae = copy.deepcopy(sd.vae).double()
    sd64.unet = copy.deepcopy(sd.unet).double()
    sd64.text_encoder = copy.deepcopy(sd.text_encoder).double()
    im64, n64 = images.double(), noise.double()
    c64 = concept.double().clone().requires_grad_(True)
    l64, _ = ti_loss(sd64, im64, ids, c64, timesteps, n64)
    l64.backward()
    g64 = c64.grad.clone()
    fd = central_differences(lambda c: ti_loss(sd64, im64, ids, c, timesteps, n64)[0], c64)
    scale = g64.abs().max().item()
    info(f"TI {variant}: |loss f32 - loss f64| / |loss|", abs(loss.item() - l64.item()) / abs(l64.item()))
    info(f"TI {variant} grad: max|autograd f64 - central FD f64| / max|g|", (g64 - fd).abs().max().item() / scale)
    info(f"TI {variant} grad: max|autograd f32 - autograd f64| / max|g|",
         (grad.double() - g64).abs().max().item() / scale)
    info(f"TI {variant} grad: max|g| (scale)", scale)

    tensors = {
        "images": f32(images),
        "ids": i64(ids),
        "concept": f32(concept),
        "timesteps": i64(timesteps),
        "noise": f32(noise),
        "latents": f32(parts["z0"]),
        "noisy_latents": f32(parts["zt"]),
        "target": f32(parts["target"]),
        "prediction": f32(parts["pred"]),
        "loss": f32(loss.reshape(1)),
        "loss_grad": grad,
    }
    meta = common_meta(fixtures, folder_files(fixtures, folder))
    meta.update({
        "checkpoint": folder,
        "prediction_type": sd.scheduler.config.prediction_type,
        "prompts": prompts,
        "scaling_factor": sd.scaling,
        "loss": "mean((unet(add_noise(z0, noise, t), t, cond).sample - target)^2) over all elements; "
                "z0 = scaling_factor * vae.encode(2x-1).latent_dist.mean; target = noise (epsilon) or "
                "scheduler.get_velocity(z0, noise, t) (v_prediction); loss_grad = d loss / d concept",
    })
    write(os.path.join(out, name), tensors, meta)


def img2img_manual(sd, z0, noise, cond_ids, uncond_ids, strength, guidance, steps):
    """SDEdit / img2img as a manual loop over diffusers' modules (plain torch around DDIMScheduler):
    the same arithmetic as StableDiffusionImg2ImgPipeline, but starting from the posterior MEAN z0 and
    an explicit noise tensor."""
    sched = copy.deepcopy(sd.scheduler)
    sched.set_timesteps(steps)
    init_timestep = min(int(steps * strength), steps)  # get_timesteps of the img2img pipeline
    t_start = max(steps - init_timestep, 0)
    timesteps = sched.timesteps[t_start * sched.order:]
    latents = sched.add_noise(z0, noise, timesteps[:1].repeat(z0.shape[0]))
    noisy = latents.clone()
    cond = torch.cat([sd.text_encoder(uncond_ids).last_hidden_state,
                      sd.text_encoder(cond_ids).last_hidden_state])
    for t in timesteps:
        inp = sched.scale_model_input(torch.cat([latents] * 2), t)
        pred = sd.unet(inp, t, encoder_hidden_states=cond).sample
        p_uncond, p_text = pred.chunk(2)
        pred = p_uncond + guidance * (p_text - p_uncond)
        latents = sched.step(pred, t, latents, eta=0.0).prev_sample
    return timesteps, noisy, latents


def img2img_goldens(fixtures, out, variant):
    name = f"img2img_{variant}.safetensors"
    print(f"== {name}")
    folder = "sd-epsilon" if variant == "epsilon" else "sd-v"
    sd = SD(os.path.join(fixtures, folder))
    size = sd.vae.config.sample_size
    lat = sd.unet.config.sample_size
    prompt, negative = "a photo with damage", ""
    strength, guidance, steps = 0.5, 7.5, 30
    image = torch.rand(1, 3, size, size, generator=gen(30))
    noise = torch.randn(1, sd.unet.config.in_channels, lat, lat, generator=gen(31))
    cond_ids = tokenize_batch([prompt])
    uncond_ids = tokenize_batch([negative])
    assert uncond_ids[0, :3].tolist() == [START_ID, END_ID, 0]

    with torch.no_grad():
        z0 = sd.encode(image)
        timesteps, noisy, latents = img2img_manual(sd, z0, noise, cond_ids, uncond_ids,
                                                   strength, guidance, steps)
        decoded = sd.decode(latents)

        # the real pipeline, fed the same z0 (a 4-channel image is taken as latents, not re-encoded)
        # and a generator that produces exactly `noise` (randn_tensor == torch.randn on the CPU)
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            os.path.join(fixtures, folder), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False, low_cpu_mem_usage=False)
        pipe.set_progress_bar_config(disable=True)
        kw = dict(prompt=prompt, negative_prompt=negative, image=z0, strength=strength,
                  guidance_scale=guidance, num_inference_steps=steps, eta=0.0)
        p_lat = pipe(**kw, generator=gen(31), output_type="latent").images
        p_img = pipe(**kw, generator=gen(31), output_type="pt").images
        check(f"img2img {variant}: manual loop vs StableDiffusionImg2ImgPipeline (latents)", latents, p_lat)
        check(f"img2img {variant}: manual loop vs StableDiffusionImg2ImgPipeline (image)", decoded, p_img)

    tensors = {
        "image": f32(image),
        "noise": f32(noise),
        "prompt_ids": i64(cond_ids),
        "negative_ids": i64(uncond_ids),
        "init_latents": f32(z0),
        "timesteps": i64(timesteps),
        "noisy_latents": f32(noisy),
        "latents": f32(latents),
        "output": f32(decoded),
    }
    meta = common_meta(fixtures, folder_files(fixtures, folder))
    meta.update({
        "checkpoint": folder,
        "prediction_type": sd.scheduler.config.prediction_type,
        "prompt": prompt,
        "negative_prompt": negative,
        "strength": strength,
        "guidance_scale": guidance,
        "num_inference_steps": steps,
        "eta": 0.0,
        "scheduler": "DDIMScheduler.set_timesteps(30) (leading, steps_offset 1); t_start = 30 - "
                     "int(30 * strength); timesteps = scheduler.timesteps[t_start:]; "
                     "noisy_latents = add_noise(init_latents, noise, timesteps[0]); each step: "
                     "e = unet([x, x], t, [uncond, cond]); e = e_u + g (e_c - e_u); x = step(e, t, x).prev_sample",
        "init_latents": "scaling_factor * vae.encode(2 * image - 1).latent_dist.mean (posterior mean, "
                        "not a sample)",
        "output": "(vae.decode(latents / scaling_factor).sample / 2 + 0.5).clamp(0, 1)",
    })
    write(os.path.join(out, name), tensors, meta)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", required=True, help="directory written by `adp fixtures --out DIR`")
    ap.add_argument("--out", required=True, help="directory for the golden .safetensors files")
    args = ap.parse_args()

    torch.manual_seed(0)
    transformers.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)

    concept = clip_goldens(args.fixtures, args.out)
    sd_goldens(args.fixtures, args.out, concept)
    for variant in ("epsilon", "v"):
        ti_goldens(args.fixtures, args.out, concept, variant)
    for variant in ("epsilon", "v"):
        img2img_goldens(args.fixtures, args.out, variant)

    print("== summary of self-checks")
    for name, d in _CHECKS:
        print(f"  {name:70s} {d:.3e}")
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out))
    print(f"total size of {args.out}: {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
