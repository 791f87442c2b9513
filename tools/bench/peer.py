#!/usr/bin/env python3
"""The PyTorch peer of `adp bench`: the same work in PyTorch, on the same weight files and photos,
at the same thread count, written as a PyTorch user would (eager modules, batched, inference_mode).
Prints one JSON line per row, with the same field names as `adp bench`.

    /root/.cache/adp/golden-venv/bin/python tools/bench/peer.py visual \
        --backbone ~/.cache/adp/weights/efficientnet-lite0.safetensors --shots 4 --repeats 5 \
        --threads 2 IMAGE...
    /root/.cache/adp/golden-venv/bin/python tools/bench/peer.py learn-step-4 --sd SD_DIR --size 512 \
        --repeats 5 --threads 2 IMAGE...

Rows:
  visual  EfficientNet-Lite (efficientnet-lite-pytorch) patch features of the test photos (stages
          2 and 4, 3x3 average pooling, bilinear upsampling, concatenated; the backbone run up to
          stage 4 only, as adp does) and their association: 0.5 * (1 - max cosine similarity) to
          the support photos' unit patch features (one matrix product per test batch).
  clip-image, clip-dense, clip-text   open_clip on an open_clip folder (`adp fixtures --preset
          ViT-B-16` writes one with real sizes): encode_image of the scored photos; penultimate
          patch tokens and WinCLIP 2x2 and 3x3 window embeddings (every window of a size in one
          batch through the transformer: class token + that window's patch tokens, ln_post, proj);
          encode_text of the 54 state prompts of one class (27 templates x flawless/damaged).
  unet, learn-step-1, learn-step-4, img2img-step   diffusers + transformers on a diffusers folder
          (`--sd DIR`, `--size N` pixels, default the UNet's sample size times the VAE's
          downsampling): the folder's CLIPTokenizer, CLIPTextModel, UNet2DConditionModel (default
          attention processor: SDPA), AutoencoderKL and a DDIMScheduler of the folder's scheduler
          config, float32, every weight frozen; timestep num_train_timesteps // 2.
          unet: one UNet forward, batch 1, seeded latent, conditioning "a photo of a bottle"; per call.
          learn-step-B: B photos, VAE posterior mean x scaling_factor (no gradient), add_noise with
          seeded noise, the text encoder on B x "a photo of a <c>" with the concept vector put in
          place of <c>'s token embedding (a forward hook), UNet, MSE to the noise (to the velocity
          for v_prediction), backward to the concept vector only; per step / B, as adp.
          img2img-step: img2img at strength 1.0, guidance 7.5 (one UNet batch of "" and "a photo of
          a damaged bottle"), the core loop of StableDiffusionImg2ImgPipeline written out (posterior
          mean as adp, seeded noise, DDIM eta 0, VAE decode): 2 steps minus 1 step, batch 1.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

FEATURE_STAGES = (2, 4)


def peak_rss_mb():
    # ru_maxrss is in KiB on Linux: this process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def photos(paths, size):
    """Pillow's bicubic resize of each photo to the model's square (no crop), as uint8/255."""
    out = []
    for p in paths:
        im = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out).to(torch.float32) / 255.0


def list_images(inputs):
    files = []
    for p in inputs:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, f) for f in os.listdir(p)
                            if f.lower().endswith((".png", ".jpg", ".jpeg")))
        else:
            files.append(p)
    return files


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t) * 1e3


def cpu_ms():
    # This process's CPU time so far, user + system over every thread (as adp's `cpu_ms`).
    r = resource.getrusage(resource.RUSAGE_SELF)
    return (r.ru_utime + r.ru_stime) * 1e3


def median_times(fn, repeats):
    """Median wall and CPU milliseconds of `repeats` runs of fn, after one untimed warm-up (as
    adp's rows)."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        c = cpu_ms()
        walls.append(timed(fn)[1])
        cpus.append(cpu_ms() - c)
    return statistics.median(walls), statistics.median(cpus)


def visual(a):
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import round_repeats

    model = EfficientNet.from_name(a.model)
    state = load_file(a.backbone)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    model.eval()
    gp = model._global_params
    ends, n = [], 0
    for i, ba in enumerate(model._blocks_args):
        fixed = gp.fix_head_stem and (i == 0 or i == len(model._blocks_args) - 1)
        n += ba.num_repeat if fixed else round_repeats(ba.num_repeat, gp)
        ends.append(n - 1)
    last = ends[max(FEATURE_STAGES)]
    blocks = model._blocks[: last + 1]

    def features(x):
        h = model._swish(model._bn0(model._conv_stem((x * 255.0 - 127.0) / 128.0)))
        stages = {}
        for idx, block in enumerate(blocks):
            h = block(h, drop_connect_rate=None)
            if idx in (ends[s] for s in FEATURE_STAGES):
                stages[idx] = h
        pa, pb = (F.avg_pool2d(stages[ends[s]], 3, stride=1, padding=1, count_include_pad=False)
                  for s in FEATURE_STAGES)
        pb = F.interpolate(pb, size=pa.shape[-2:], mode="bilinear", align_corners=False)
        f = torch.cat([pa, pb], dim=1)
        return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1])

    files = list_images(a.images)
    size = gp.image_size
    support, test = photos(files[: a.shots], size), photos(files[a.shots:], size)
    with torch.inference_mode():
        mem = features(support)
        mem_t = F.normalize(mem.reshape(-1, mem.shape[-1]), dim=-1).t().contiguous()

        def associate(f):
            q = F.normalize(f.reshape(-1, f.shape[-1]), dim=-1)
            return 0.5 * (1.0 - (q @ mem_t).amax(-1))

        associate(features(test))  # warm-up
        fs, as_ = [], []
        for _ in range(a.repeats):
            f, tf = timed(lambda: features(test))
            _, ta = timed(lambda: associate(f))
            fs.append(tf)
            as_.append(ta)
    n = len(test)
    f, s = statistics.median(fs) / n, statistics.median(as_) / n
    return [{
        "row": "visual", "plugin": "pytorch", "runtime": f"torch {torch.__version__}",
        "per": "photo", "items": n, "repeats": a.repeats, "ms": f + s,
        "parts": {"features": f, "association": s},
        "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
    }]


OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
TEMPLATES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "host", "src",
                              "score", "prompts.rs")


def templates():
    """The 27 templates, read from adp's own source so both sides encode the same prompts."""
    import re
    src = open(TEMPLATES_FILE).read()
    block = src[src.index("pub const TEMPLATES"):]
    block = block[: block.index("];")]
    found = re.findall(r'"([^"]*\{\}[^"]*)"', block)
    assert len(found) == 27, len(found)
    return found


def vision_tokens(v, images):
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    return v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype))


def window_indices(grid, k):
    return [[(r + i) * grid + (c + j) for i in range(k) for j in range(k)]
            for r in range(grid - k + 1) for c in range(grid - k + 1)]


def clip(a):
    import open_clip
    with open(os.path.join(a.clip, "open_clip_config.json")) as f:
        cfg = json.load(f)
    model = open_clip.CLIP(**cfg["model_cfg"])
    model.load_state_dict(load_file(os.path.join(a.clip, "open_clip_model.safetensors")), strict=True)
    model.eval().float()
    pre = cfg.get("preprocess_cfg", {})
    mean = torch.tensor(pre.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1)
    std = torch.tensor(pre.get("std", OPENAI_STD)).view(1, 3, 1, 1)
    v = model.visual
    size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    grid = v.grid_size[0]
    files = list_images(a.images)[a.shots:]
    x = (photos(files, size) - mean) / std
    sel = {k: torch.tensor([[0] + [p + 1 for p in w] for w in window_indices(grid, k)]) for k in (2, 3)}

    def dense():
        tok = vision_tokens(v, x)
        blocks = v.transformer.resblocks
        h = tok
        for blk in blocks[: len(blocks) - 1]:
            h = blk(h)
        patches = h[:, 1:]
        wins = {}
        for k, s in sel.items():
            n, w = x.shape[0], s.shape[0]
            t = tok[:, s.reshape(-1)].reshape(n * w, s.shape[1], tok.shape[-1])
            wins[k] = (v.ln_post(v.transformer(t)[:, 0]) @ v.proj).reshape(n, w, -1)
        return patches, wins

    context = cfg["model_cfg"].get("text_cfg", {}).get("context_length", 77)
    prompts = [t.replace("{}", f"{s} bottle") for s in ("flawless", "damaged") for t in templates()]
    work = {
        "clip-image": (lambda: model.encode_image(x), "photo", len(files)),
        "clip-dense": (dense, "photo", len(files)),
        "clip-text": (lambda: model.encode_text(open_clip.tokenize(prompts, context_length=context)), "prompt", len(prompts)),
    }
    fn, per, items = work[a.row]
    with torch.inference_mode():
        ms, cpu = median_times(fn, a.repeats)
    return [{
        "row": a.row, "plugin": "pytorch", "runtime": f"torch {torch.__version__}, open_clip {open_clip.__version__}",
        "per": per, "items": items, "repeats": a.repeats, "ms": ms / items, "cpu_ms": cpu / items,
        "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
    }]


class Diffusion:
    """A diffusers folder loaded as its users load it: the folder's tokenizer, CLIPTextModel,
    UNet2DConditionModel, AutoencoderKL (default attention processor, float32) and DDIMScheduler,
    every weight frozen."""

    PLACEHOLDER = "<c>"

    def __init__(self, folder):
        import diffusers
        import transformers
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        part = lambda name: os.path.join(folder, name)
        self.tokenizer = CLIPTokenizer.from_pretrained(part("tokenizer"))
        self.text_encoder = CLIPTextModel.from_pretrained(part("text_encoder")).eval()
        self.unet = UNet2DConditionModel.from_pretrained(part("unet")).eval()
        self.vae = AutoencoderKL.from_pretrained(part("vae")).eval()
        self.scheduler = DDIMScheduler.from_pretrained(part("scheduler"))
        for m in (self.text_encoder, self.unet, self.vae):
            m.requires_grad_(False)
        self.scaling = self.vae.config.scaling_factor
        self.downsampling = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.default_size = (self.unet.config.sample_size or 64) * self.downsampling
        # The concept's token: added to the tokenizer (one token, whatever the text around it);
        # its id is past the frozen embedding table, so it is looked up as 0 and the concept
        # vector is put in its place by a hook on the token embedding.
        self.tokenizer.add_tokens([self.PLACEHOLDER])
        self.placeholder_id = self.tokenizer.convert_tokens_to_ids(self.PLACEHOLDER)
        processors = sorted({type(p).__name__ for p in self.unet.attn_processors.values()})
        self.runtime = (f"torch {torch.__version__}, diffusers {diffusers.__version__}, "
                        f"transformers {transformers.__version__}, {'/'.join(processors)}")

    def conditioning(self, prompts, concept=None):
        """The text encoder's last hidden states; `concept` replaces the placeholder's embedding."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        mask = ids == self.placeholder_id
        if concept is None:
            return self.text_encoder(input_ids=ids).last_hidden_state

        def substitute(_module, _inputs, out):
            return torch.where(mask.unsqueeze(-1), concept.to(out.dtype).expand_as(out), out)

        hook = self.text_encoder.get_input_embeddings().register_forward_hook(substitute)
        try:
            return self.text_encoder(input_ids=ids.masked_fill(mask, 0)).last_hidden_state
        finally:
            hook.remove()

    def encode(self, images01):
        """Scaled posterior means of images in [0, 1] (adp's `latents`: the mean, not a sample)."""
        return self.scaling * self.vae.encode(2 * images01 - 1).latent_dist.mean

    def decode(self, latents):
        return (self.vae.decode(latents / self.scaling).sample / 2 + 0.5).clamp(0, 1)

    def learn_step(self, images, prompts, concept, timesteps, noise):
        """One concept-learning step: the loss and its gradient to the concept vector only."""
        with torch.no_grad():
            z0 = self.encode(images)
            zt = self.scheduler.add_noise(z0, noise, timesteps)
            v = self.scheduler.config.prediction_type == "v_prediction"
            target = self.scheduler.get_velocity(z0, noise, timesteps) if v else noise
        cond = self.conditioning(prompts, concept)
        pred = self.unet(zt, timesteps, encoder_hidden_states=cond).sample
        loss = F.mse_loss(pred, target)
        concept.grad = None
        loss.backward()
        return loss.item(), concept.grad

    def img2img(self, images, prompt, negative, strength, guidance, steps, seed):
        """DDIM img2img with classifier-free guidance, the core of diffusers'
        StableDiffusionImg2ImgPipeline (no image processor, no safety checker), on the posterior
        mean as adp does (the pipeline samples the posterior)."""
        s = self.scheduler
        s.set_timesteps(steps)
        timesteps = s.timesteps[steps - min(int(steps * strength), steps):]
        n = images.shape[0]
        z0 = self.encode(images)
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
        if len(timesteps) == 0:
            return self.decode(z0)
        cond = self.conditioning([negative] * n + [prompt] * n)
        latents = s.add_noise(z0, noise, timesteps[:1].repeat(n))
        for t in timesteps:
            out = self.unet(torch.cat([latents, latents]), t, encoder_hidden_states=cond).sample
            uncond, text = out.chunk(2)
            latents = s.step(uncond + guidance * (text - uncond), t, latents, eta=0.0).prev_sample
        return self.decode(latents)


def diffusion(a):
    d = Diffusion(a.sd)
    size = a.size or d.default_size
    if size <= 0 or size % d.downsampling:
        sys.exit(f"--size {size} is not a multiple of the VAE's downsampling {d.downsampling}")
    side = size // d.downsampling
    channels = d.unet.config.in_channels
    t = d.scheduler.config.num_train_timesteps // 2
    gen = lambda seed: torch.Generator().manual_seed(seed)
    row = {"row": a.row, "plugin": "pytorch", "runtime": d.runtime, "per": "step", "items": 1,
           "repeats": a.repeats, "size": size}

    def median_ms(fn):
        return median_times(fn, a.repeats)[0]

    def main_row(fn, items=1):
        # The row's own time, with its CPU time (the parts below are wall time only, as adp's).
        ms, cpu = median_times(fn, a.repeats)
        row["cpu_ms"] = cpu / items
        return ms / items

    if a.row == "unet":
        row["per"] = "call"
        with torch.inference_mode():
            z = torch.randn(1, channels, side, side, generator=gen(1))
            cond = d.conditioning(["a photo of a bottle"])
            ts = torch.tensor([t])
            row["ms"] = main_row(lambda: d.unet(z, ts, encoder_hidden_states=cond).sample)
    elif a.row.startswith("learn-step-"):
        b = int(a.row.rsplit("-", 1)[1])
        files = list_images(a.images)
        images = photos([files[k % len(files)] for k in range(b)], size)
        width = d.text_encoder.config.hidden_size
        concept = (0.01 * torch.randn(width, generator=gen(7))).requires_grad_(True)
        noise = torch.randn(b, channels, side, side, generator=gen(2))
        prompts = [f"a photo of a {Diffusion.PLACEHOLDER}"] * b
        ts = torch.full((b,), t, dtype=torch.int64)
        row["items"] = b
        row["ms"] = main_row(lambda: d.learn_step(images, prompts, concept, ts, noise), b)
        # The same parts as adp's row: VAE encoding, a UNet forward without gradients on the same
        # batch, and the rest (text encoder, the forward's bookkeeping, the backward pass).
        with torch.inference_mode():
            vae = median_ms(lambda: d.encode(images)) / b
            cond = d.conditioning(["a photo of a bottle"] * b)
            unet = median_ms(lambda: d.unet(noise, ts, encoder_hidden_states=cond).sample) / b
        row["parts"] = {"vae_encode": vae, "unet_forward": unet, "text_and_backward": row["ms"] - vae - unet}
    else:
        image = photos(list_images(a.images)[:1], size)
        ms, cpu = {}, {}
        with torch.inference_mode():
            for steps in (1, 2):
                ms[steps], cpu[steps] = median_times(
                    lambda: d.img2img(image, "a photo of a damaged bottle", "", 1.0, 7.5, steps, 0), a.repeats)
        row["parts"] = {"img2img_1_step": ms[1], "img2img_2_steps": ms[2]}
        row["ms"], row["cpu_ms"] = ms[2] - ms[1], cpu[2] - cpu[1]
    row.update(threads=torch.get_num_threads(), peak_rss_mb=peak_rss_mb())
    return [row]


DIFFUSION_ROWS = ("unet", "learn-step-1", "learn-step-4", "img2img-step")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="row", required=True)
    v = sub.add_parser("visual")
    v.add_argument("--backbone", required=True)
    v.add_argument("--model", default="efficientnet-lite0")
    v.add_argument("--shots", type=int, default=4)
    v.add_argument("images", nargs="+")
    subs = [v]
    for row in ("clip-image", "clip-dense", "clip-text"):
        c = sub.add_parser(row)
        c.add_argument("--clip", required=True)
        c.add_argument("--shots", type=int, default=4, help="the first N photos are skipped (the support set)")
        c.add_argument("images", nargs="+")
        subs.append(c)
    for row in DIFFUSION_ROWS:
        d = sub.add_parser(row)
        d.add_argument("--sd", required=True, help="a diffusers folder")
        d.add_argument("--size", type=int, help="side in pixels (default: the UNet's sample size "
                       "times the VAE's downsampling)")
        d.add_argument("--shots", type=int, default=4, help="unused (side_by_side.py passes it to every row)")
        d.add_argument("images", nargs="+")
        subs.append(d)
    for s in subs:
        s.add_argument("--repeats", type=int, default=5)
        s.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = (diffusion if a.row in DIFFUSION_ROWS else {"visual": visual}.get(a.row, clip))(a)
    for r in rows:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
