#!/usr/bin/env python3
"""The PyTorch peer of `adp bench`: the same work in PyTorch, on the same weight files and photos,
at the same thread count, written as a PyTorch user would (eager modules, batched, inference_mode).
Prints one JSON line per row, with the same field names as `adp bench`.

    /root/.cache/adp/golden-venv/bin/python tools/bench/peer.py visual \
        --backbone ~/.cache/adp/weights/efficientnet-lite0.safetensors --shots 4 --repeats 5 \
        --threads 2 IMAGE...

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
        fn()
        ms = statistics.median(timed(fn)[1] for _ in range(a.repeats))
    return [{
        "row": a.row, "plugin": "pytorch", "runtime": f"torch {torch.__version__}, open_clip {open_clip.__version__}",
        "per": per, "items": items, "repeats": a.repeats, "ms": ms / items,
        "threads": torch.get_num_threads(), "peak_rss_mb": peak_rss_mb(),
    }]


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
    for s in subs:
        s.add_argument("--repeats", type=int, default=5)
        s.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows = {"visual": visual}.get(a.row, clip)(a)
    for r in rows:
        print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
