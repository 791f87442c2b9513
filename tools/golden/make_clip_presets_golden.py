#!/usr/bin/env python3
"""Golden values for the CLIP presets with OpenAI's QuickGELU (`quick_gelu: true`).

open_clip's `ViT-B-16` and `ViT-L-14` with `pretrained='openai'` are the `-quickgelu` configs:
x * sigmoid(1.702 x) in every MLP of both towers instead of GELU. This script loads the fixture
written by `adp fixtures --preset tiny-quickgelu` UNMODIFIED into open_clip (`open_clip.CLIP(
**model_cfg)`, strict state dict) and writes `clip_quickgelu.safetensors` with the very tensors and
metadata `clip.safetensors` has (make_goldens.py's CLIP part, reused as is): image embeddings,
penultimate patch tokens, WinCLIP windows, text embeddings, P_CLIP and its gradient.

It also checks that
  * the fixture's config says `quick_gelu: true` and open_clip built QuickGELU activations;
  * the same weights with GELU give other embeddings (so the golden tells the two apart);
  * open_clip's own `ViT-B-16-quickgelu` / `ViT-L-14-quickgelu` configs are its `ViT-B-16` /
    `ViT-L-14` ones plus `quick_gelu: true`, which is how adp's presets of those names are made.

    target/debug/adp fixtures --out /tmp/gfx-qg --seed 0 --preset tiny-quickgelu
    /root/.cache/adp/golden-venv/bin/python tools/golden/make_clip_presets_golden.py \\
        --fixtures /tmp/gfx-qg --out conformance-tests/goldens
"""
import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

import open_clip
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402

NAME = "clip_quickgelu.safetensors"


def check_configs():
    for base in ("ViT-B-16", "ViT-L-14"):
        plain = copy.deepcopy(open_clip.get_model_config(base))
        quick = open_clip.get_model_config(f"{base}-quickgelu")
        assert plain.get("quick_gelu", False) is False, base
        plain["quick_gelu"] = True
        assert quick == plain, (base, quick, plain)
        print(f"  check open_clip {base}-quickgelu == {base} + quick_gelu: true")


def check_activations(fixtures):
    model, cfg = mg.load_clip(fixtures)
    assert cfg["model_cfg"].get("quick_gelu") is True, "the fixture is not a quick_gelu preset"
    acts = {type(b.mlp.gelu).__name__ for t in (model.visual.transformer, model.transformer) for b in t.resblocks}
    assert acts == {"QuickGELU"}, acts
    print(f"  check every MLP activation of both towers is {acts}")
    gelu = open_clip.CLIP(**{**cfg["model_cfg"], "quick_gelu": False})
    gelu.load_state_dict(model.state_dict(), strict=True)
    gelu.eval()
    x = torch.rand(2, 3, cfg["model_cfg"]["vision_cfg"]["image_size"], cfg["model_cfg"]["vision_cfg"]["image_size"],
                   generator=mg.gen(0))
    with torch.no_grad():
        a, b = model.encode_image(x), gelu.encode_image(x)
    rel = ((a - b).abs().max() / a.abs().max()).item()
    print(f"  info  QuickGELU vs GELU image embeddings, max|diff| / max|x| = {rel:.3e}")
    assert rel > 1e-3, "the golden would not tell QuickGELU from GELU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", required=True, help="written by `adp fixtures --preset tiny-quickgelu`")
    ap.add_argument("--out", required=True, help="directory for the golden .safetensors file")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    check_configs()
    check_activations(args.fixtures)
    with tempfile.TemporaryDirectory() as tmp:
        mg.clip_goldens(args.fixtures, tmp)
        src = os.path.join(tmp, "clip.safetensors")
        with safe_open(src, "pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta["generator"] = json.dumps("tools/golden/make_clip_presets_golden.py (make_goldens.clip_goldens)")
        meta["preset"] = json.dumps("tiny-quickgelu")
        os.makedirs(args.out, exist_ok=True)
        dst = os.path.join(args.out, NAME)
        save_file(tensors, dst + ".tmp", metadata=meta)
        shutil.move(dst + ".tmp", dst)
        print(f"wrote {dst} ({os.path.getsize(dst)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
