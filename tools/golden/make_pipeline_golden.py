#!/usr/bin/env python3
"""Whole-pipeline golden: what `adp score` must print and draw for a fitted detector.

From the fixture CLIP (open_clip, loaded unmodified by make_goldens.load_clip) and a detector's
stored concepts and weights (its JSON header only), this computes for real photos, square and
non-square, every step of detection as docs/SPEC.md defines it:

  * preprocessing (SPEC §2): the whole photo, `Image.open(p).convert("RGB").resize((S, S),
    Image.BICUBIC)` on uint8 (real Pillow, no crop), /255, then CLIP's mean/std;
  * prototypes (SPEC §6, eq. 6): each prompt's text embedding (concept substituted at its
    placeholder, pooled at the first end token: make_goldens.clip_encode_text) unit-normalised,
    averaged over the 27 templates, mixed with the detector's weights, and only the mix
    unit-normalised (nothing else);
  * memories (eq. 8): recomputed from the support photos, NOT copied from the detector: the
    penultimate layer's patch tokens and the WinCLIP 2x2 and 3x3 window embeddings
    (make_goldens.penultimate_patch_tokens / window_embeddings), unit-normalised;
  * language score (eq. 7 as corrected): softmax(cos(f, p_a)/tau, cos(f, p_n)/tau)[a];
  * association (eq. 8-9): M = min over the memory of (1 - cos)/2 per feature; window maps spread
    onto the patch grid by averaging the windows covering each patch; M^W = the mean of the three;
  * final score (eq. 10): (language + max M^W) / 2;
  * the anomaly map, mirroring the host's `anomaly_map` (host/src/score/association.rs) exactly:
    bilinear upsampling of the grid map to the square input S x S with half-pixel centres
    (p = (v + 0.5) * g / n - 0.5, clamped to [0, g-1], neighbours i and min(i+1, g-1)), then a
    separable Gaussian blur, sigma = 4 px, kernel exp(-i^2 / (2 sigma^2)) for |i| <= ceil(4 sigma),
    normalised, horizontal pass then vertical, edges replicated; then the S x S map resized back
    to the photo's H x W with the same bilinear rule and no blur (SPEC §2: "the anomaly map
    computed on the square is resized back over the whole photo"). Done in float64.

Maps are stored full size as 8-bit values round(clip(m, 0, 1) * 255), the values `adp score
--maps` writes into its PNGs (float32 at full size would be over 2 MB for the 12 maps).

The stored prototypes and memories of each detector are compared with the recomputed ones as a
diagnostic only (printed, and kept in the `diagnostics` metadata); nothing is taken from them.

See README.md next to this file ("Whole-pipeline golden").
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_goldens as mg  # noqa: E402  (model loading, tokenisation, text and window code)

# The paper's Appendix D prompt templates (SPEC §3), in order; "{}" takes the state prompt S(c).
TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a photo of a dark {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
]
STATES = {"normal": "flawless", "anomalous": "damaged"}
SIGMA = 4.0
DETECTORS = ["adp", "adp-label", "winclip", "cn"]

# Photos, relative to the shared data root (`../shared/data` from the repository). Each detector
# was fitted on its two support photos (README.md gives the `adp fit` commands): a mixed, a square
# and a non-square support set, so that the memories differ between detectors and off-domain test
# photos get larger association values.
SUPPORT = {
    "adp": ["mvtec_ad/bottle/train/good/000.png", "magnetic_tile/tile/train/good/000.png"],
    "adp-label": ["mvtec_ad/bottle/train/good/000.png", "magnetic_tile/tile/train/good/000.png"],
    "winclip": ["mvtec_ad/bottle/train/good/000.png", "mvtec_ad/bottle/train/good/001.png"],
    "cn": ["magnetic_tile/tile/train/good/000.png", "magnetic_tile/tile/train/good/001.png"],
}
TESTS = [
    "mvtec_ad/bottle/test/good/000.png",          # 256 x 256
    "mvtec_ad/bottle/test/broken_large/000.png",  # 256 x 256
    "magnetic_tile/tile/test/good/000.png",       # 201 wide x 269 high
    "magnetic_tile/tile/test/blowhole/000.png",   # 248 wide x 373 high
]

TOLERANCE = {
    "score": "abs 1e-5", "language": "abs 1e-5", "association": "abs 1e-5",
    "map": "every pixel within one 8-bit level (|adp's PNG value - map| <= 1)",
}

_DIAG = {}


sha256 = mg.sha256


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- images

def model_input(path, size, mean, std):
    """SPEC §2 detection preprocessing: whole photo, Pillow bicubic straight to size x size."""
    im = Image.open(path).convert("RGB")
    sq = np.asarray(im.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    x = torch.from_numpy(sq).permute(2, 0, 1).unsqueeze(0).contiguous()
    return mg.normalise(x, mean, std), (im.height, im.width)


# ----------------------------------------------------------------------------- maps (host mirror)

def bilinear(src, height, width):
    """host `anomaly_map`'s upsampling of a square g x g map: half-pixel centres, clamped edges."""
    g = src.shape[0]

    def sample(n):
        p = np.clip((np.arange(n) + 0.5) * g / n - 0.5, 0.0, g - 1)
        i = np.minimum(np.floor(p).astype(np.int64), g - 1)
        return i, np.minimum(i + 1, g - 1), p - i

    y0, y1, fy = sample(height)
    x0, x1, fx = sample(width)
    top = src[y0][:, x0] * (1 - fx) + src[y0][:, x1] * fx
    bottom = src[y1][:, x0] * (1 - fx) + src[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bottom * fy[:, None]


def gaussian_blur(img, sigma):
    """host `gaussian_blur`: separable, truncated at ceil(4 sigma), edges replicated."""
    r = int(np.ceil(4 * sigma))
    d = np.arange(-r, r + 1)
    k = np.exp(-(d * d) / (2 * sigma * sigma))
    k = k / k.sum()
    h, w = img.shape
    cols = np.clip(np.arange(w)[:, None] + d[None, :], 0, w - 1)  # [w, 2r+1]
    img = (img[:, cols] * k).sum(-1)
    rows = np.clip(np.arange(h)[:, None] + d[None, :], 0, h - 1)
    return (img[rows, :] * k[None, :, None]).sum(1)


def spread_windows(scores, grid, k):
    """Window scores (row-major windows, stride 1) onto the grid: mean of the windows covering a patch."""
    per = grid - k + 1
    total = np.zeros((grid, grid))
    count = np.zeros((grid, grid))
    for wy in range(per):
        for wx in range(per):
            total[wy:wy + k, wx:wx + k] += scores[wy * per + wx]
            count[wy:wy + k, wx:wx + k] += 1
    return total / count


# ----------------------------------------------------------------------------- detector pieces

def state_embeddings(model, token, vector, state):
    """[27, E] unit text embeddings of every template filled with `state token` (float64)."""
    prompts = [t.format(f"{STATES[state]} {token}") for t in TEMPLATES]
    if vector is not None:  # a learned concept: its placeholder becomes make_goldens' "<c>"
        prompts = [p.replace(token, mg.PLACEHOLDER) for p in prompts]
        concept = torch.tensor(vector, dtype=torch.float32)
    else:
        concept = torch.zeros(model.token_embedding.weight.shape[1])
    with torch.no_grad():
        g = mg.clip_encode_text(model, mg.tokenize_batch(prompts), concept)
    return unit(g.double().numpy())


def prototypes(model, header):
    tokens = [(c["placeholder"], c["vector"]) for c in header["concepts"]]
    if header["method"] in ("adp-label", "winclip"):
        tokens.append((header["options"].get("label") or "object", None))
    w = np.array(header["weights"], dtype=np.float64)
    assert len(w) == len(tokens), (header["method"], len(w), len(tokens))
    out, host_variant = {}, {}
    for state in STATES:
        means = np.stack([state_embeddings(model, t, v, state).mean(0) for t, v in tokens])  # [C, E]
        out[state] = unit((w[:, None] * means).sum(0) / w.sum())
        host_variant[state] = unit((w[:, None] * unit(means)).sum(0) / w.sum())
        _DIAG.setdefault(header["method"], {})[f"concept_mean_norms.{state}"] = \
            [float(n) for n in np.linalg.norm(means, axis=-1)]
    return out, host_variant


def dense(model, x, windows):
    """Unit patch tokens [G*G, width] and window embeddings {k: [n_k, E]} of one image (float64)."""
    with torch.no_grad():
        feats = {"patch_tokens": mg.penultimate_patch_tokens(model, x)[0]}
        for k in windows:
            feats[f"window_{k}"] = mg.window_embeddings(model, x, k)[0]
    return {n: unit(v.double().numpy()) for n, v in feats.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", required=True, help="folder written by `adp fixtures --out DIR`")
    ap.add_argument("--detectors", required=True, help="folder holding <method>.detector.safetensors")
    ap.add_argument("--data", required=True, help="the shared data root (../shared/data)")
    ap.add_argument("--out", required=True, help="the golden .safetensors to write")
    a = ap.parse_args()

    model, cfg = mg.load_clip(a.fixtures)
    mean, std = cfg["preprocess_cfg"]["mean"], cfg["preprocess_cfg"]["std"]
    size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    grid = model.visual.grid_size[0]
    clip_sha = sha256(os.path.join(a.fixtures, "clip", "open_clip_model.safetensors"))

    tests = [model_input(os.path.join(a.data, p), size, mean, std) for p in TESTS]
    tensors = {}
    for i, (x, _) in enumerate(tests):
        tensors[f"test{i}.input"] = x[0].numpy().astype(np.float32)

    detector_meta = {}
    for name in DETECTORS:
        path = os.path.join(a.detectors, f"{name}.detector.safetensors")
        with safe_open(path, "np") as f:
            header = json.loads(f.metadata()["adp.detector"])
            stored = {k: f.get_tensor(k) for k in f.keys()}
        print(f"== {name}: method {header['method']}, weights {header['weights']}")
        assert header["method"] == name
        assert header["checkpoints"]["clip"] == clip_sha, "detector fitted on another CLIP"
        assert (header["grid"], header["image_size"]) == (grid, size)
        diag = _DIAG.setdefault(name, {})
        detector_meta[name] = {"file": f"pipeline/{name}.detector.safetensors", "sha256": sha256(path),
                               "support": SUPPORT[name], "weights": header["weights"], "label": header["options"].get("label"),
                               "concepts": [c["placeholder"] for c in header["concepts"]]}

        protos, host_variant = prototypes(model, header)
        for s in STATES:
            tensors[f"{name}.prototype.{s}"] = protos[s].astype(np.float32)
            diag[f"stored_vs_spec.prototype.{s}"] = float(np.abs(stored[f"prototype.{s}"] - protos[s]).max())
            diag[f"stored_vs_renormalised_concepts.prototype.{s}"] = \
                float(np.abs(stored[f"prototype.{s}"] - host_variant[s]).max())

        kinds = ["patch_tokens" if k == "PatchTokens" else f"window_{k['Window']}" for k in header["memory_kinds"]]
        windows = [int(k.split("_")[1]) for k in kinds if k.startswith("window_")]
        support = [model_input(os.path.join(a.data, p), size, mean, std)[0] for p in SUPPORT[name]]
        per_image = [dense(model, x, windows) for x in support]
        memories = {k: np.concatenate([d[k] for d in per_image]) for k in kinds}
        for k, m in memories.items():
            tensors[f"{name}.memory.{k}"] = m.astype(np.float32)
            s = stored[f"memory.{k}"]
            diag[f"stored_vs_spec.memory.{k}"] = float(np.abs(unit(s.astype(np.float64)) - m).max()) \
                if s.shape == m.shape else f"shape {list(s.shape)} vs {list(m.shape)}"

        for i, (x, (h, w)) in enumerate(tests):
            with torch.no_grad():
                f = unit(model.encode_image(x)[0].double().numpy())
            cos_a, cos_n = f @ protos["anomalous"], f @ protos["normal"]
            language = 1.0 / (1.0 + np.exp((cos_n - cos_a) / mg.TAU))
            feats = dense(model, x, windows)
            grids = {}
            for k in kinds:
                m = (0.5 * (1.0 - feats[k] @ memories[k].T)).min(-1)
                grids[k] = m.reshape(grid, grid) if k == "patch_tokens" else spread_windows(m, grid, int(k.split("_")[1]))
            mw = sum(grids.values()) / len(grids)
            association = mw.max()
            score = 0.5 * (language + association)
            square = gaussian_blur(bilinear(mw, size, size), SIGMA)
            full = bilinear(square, h, w)
            p = f"{name}.test{i}"
            tensors[f"{p}.image_embedding"] = f.astype(np.float32)
            for k, g in grids.items():
                tensors[f"{p}.grid.{k}"] = g.astype(np.float32)
            tensors[f"{p}.grid.mean"] = mw.astype(np.float32)
            tensors[f"{p}.language"] = np.array([language], dtype=np.float32)
            tensors[f"{p}.association"] = np.array([association], dtype=np.float32)
            tensors[f"{p}.score"] = np.array([score], dtype=np.float32)
            tensors[f"{p}.square_map"] = square.astype(np.float32)
            tensors[f"{p}.map"] = np.round(np.clip(full, 0, 1) * 255).astype(np.uint8)
            print(f"  {TESTS[i]:45s} {w}x{h}  language {language:.6f}  association {association:.6f}  "
                  f"score {score:.6f}  map [{full.min():.4f}, {full.max():.4f}]")
        for k, v in diag.items():
            print(f"  diag {k:55s} {v if isinstance(v, (str, list)) else f'{v:.3e}'}")

    meta = {
        "generator": "tools/golden/make_pipeline_golden.py",
        "versions": {"torch": torch.__version__, "open_clip_torch": mg.open_clip.__version__,
                     "numpy": np.__version__, "pillow": Image.__version__},
        "fixture_sha256": {"clip/open_clip_model.safetensors": clip_sha},
        "detectors": detector_meta,
        "support": SUPPORT,
        "tests": TESTS,
        "test_sizes": [list(s) for _, s in tests],  # [height, width]
        "image_size": size,
        "grid": grid,
        "templates": TEMPLATES,
        "states": STATES,
        "tau": mg.TAU,
        "map_sigma": SIGMA,
        "map_encoding": "uint8 round(clip(m, 0, 1) * 255), full photo size [H, W]",
        "tolerance": TOLERANCE,
        "diagnostics": _DIAG,
    }
    # safetensors writes an array's buffer as it lies in memory: a Fortran-ordered array (which
    # numpy's broadcasting in `bilinear` can produce) would be read back transposed.
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, a.out, metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"wrote {a.out} ({os.path.getsize(a.out)} bytes, {len(tensors)} tensors)")


if __name__ == "__main__":
    main()
