#!/usr/bin/env python3
"""Pins down Pillow's 8-bit bicubic resize, pass order included, and prints the Rust test vectors.

adp-api/src/preprocess.rs reproduces `Image.resize((W, H), Image.BICUBIC)` on uint8 planes. This
script holds a Python port of that algorithm and checks it against the installed Pillow, bit for
bit, on random images of many sizes and aspect ratios (1xN, Nx1, upscaling, one axis down and the
other up, and every size of the magnetic tile and MPDD metal_plate photos, to 224 and 260 and to
open_clip's shorter-side size), in mode L and RGB. It asserts:

  * every result equals one of the two pass orders (horizontal then vertical, or the reverse);
  * the order Pillow 13 uses is "vertical first iff h > oh and h - oh > 2 * (w - ow)" (strict:
    it also runs the cases h - oh = 2 (w - ow) + {-1, 0, 1} near the boundary);
  * the port with that rule equals Pillow on every case.

    /root/.cache/adp/golden-venv/bin/python tools/golden/check_pillow_resize.py [--data ../shared/data]
        [--emit-rust]

--emit-rust prints the vectors of preprocess.rs's `pillow_bicubic_*` tests: inputs come from the
64-bit LCG below (byte = state >> 56 after each step), outputs are Pillow's bytes (small cases) or
their FNV-1a 64 hash (larger ones).
"""

import argparse
import functools
import glob
import os

import numpy as np
import PIL
from PIL import Image

P = 22  # PRECISION_BITS


def bicubic(x):
    a, x = -0.5, abs(x)
    if x < 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(None)
def coeffs(inp, out):
    """[out, inp] fixed-point weights: Pillow's precompute_coeffs + normalize_coeffs_8bpc."""
    scale = inp / out
    fs = max(scale, 1.0)
    sup = 2 * fs
    m = np.zeros((out, inp), np.int64)
    for xx in range(out):
        c = (xx + 0.5) * scale
        xmin, xmax = max(int(c - sup + 0.5), 0), min(int(c + sup + 0.5), inp)
        w = [bicubic((x - c + 0.5) / fs) for x in range(xmin, xmax)]
        t = sum(w)
        for i, k in enumerate(w):
            v = (k / t if t != 0 else k) * (1 << P)
            m[xx, xmin + i] = int(v - 0.5) if v < 0 else int(v + 0.5)
    return m


def clip8(s):
    return np.clip(s >> P, 0, 255).astype(np.uint8)


def hpass(a, ow):
    return a if a.shape[1] == ow else clip8((1 << (P - 1)) + a.astype(np.int64) @ coeffs(a.shape[1], ow).T)


def vpass(a, oh):
    return a if a.shape[0] == oh else clip8((1 << (P - 1)) + coeffs(a.shape[0], oh) @ a.astype(np.int64))


def vertical_first(h, w, oh, ow):
    return oh < h and (h - oh) > 2 * (w - ow)


def port(a, oh, ow, order=None):
    h, w = a.shape
    v = vertical_first(h, w, oh, ow) if order is None else order == "VH"
    return hpass(vpass(a, oh), ow) if v else vpass(hpass(a, ow), oh)


def pillow(a, oh, ow):
    return np.asarray(Image.fromarray(a).resize((ow, oh), Image.BICUBIC))


def lcg_bytes(seed, n):
    s, out = seed, bytearray(n)
    for i in range(n):
        s = (s * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        out[i] = s >> 56
    return out


def fnv1a(b):
    h = 0xCBF29CE484222325
    for x in b:
        h = ((h ^ x) * 0x100000001B3) % (1 << 64)
    return h


def photo_sizes(data):
    sizes = set()
    for pat in ("magnetic_tile/tile/**/*.*", "mpdd/metal_plate/**/*.*"):
        for p in glob.glob(os.path.join(data, pat), recursive=True):
            if "ground_truth" in p:
                continue
            try:
                with Image.open(p) as im:
                    sizes.add(im.size[::-1])  # (h, w)
            except OSError:
                pass
    return sorted(sizes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))
    ap.add_argument("--emit-rust", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases = set()
    sizes = [1, 2, 3, 5, 7, 8, 13, 16, 31, 50, 64, 99, 100, 128, 150, 200, 224, 240, 256, 289, 300, 350]
    for _ in range(1500):
        cases.add(tuple(int(rng.choice(sizes)) for _ in range(4)))
    for h, w in [(1, 50), (50, 1), (1, 1), (289, 240), (240, 289), (256, 350), (350, 256)]:
        for oh, ow in [(224, 224), (100, 300), (300, 100), (1, 7), (7, 1)]:
            cases.add((h, w, oh, ow))
    for _ in range(300):  # the boundary h - oh = 2 (w - ow) + {-1, 0, 1}
        dw = int(rng.integers(1, 60))
        w = int(rng.integers(dw + 1, dw + 200))
        for d in (-1, 0, 1):
            dh = 2 * dw + d
            h = int(rng.integers(dh + 1, dh + 200))
            cases.add((h, w, h - dh, w - dw))
    photos = photo_sizes(args.data)
    for h, w in photos:
        for s in (224, 260):
            cases.add((h, w, s, s))
        # open_clip: shorter side to 224
        cases.add((h, w) + ((224, int(224 * w / h)) if h <= w else (int(224 * h / w), 224)))
    counts = {"HV": 0, "VH": 0, "same": 0}
    for h, w, oh, ow in sorted(cases):
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        p = pillow(a, oh, ow)
        hv, vh = (port(a, oh, ow, o) for o in ("HV", "VH"))
        ok_hv, ok_vh = np.array_equal(p, hv), np.array_equal(p, vh)
        assert ok_hv or ok_vh, f"{h}x{w} -> {oh}x{ow}: neither pass order gives Pillow's result"
        if ok_hv and ok_vh:
            counts["same"] += 1
        else:
            got = "VH" if ok_vh else "HV"
            counts[got] += 1
            want = "VH" if vertical_first(h, w, oh, ow) else "HV"
            assert got == want, f"{h}x{w} -> {oh}x{ow}: Pillow runs {got}, the rule says {want}"
    # RGB: the same order for every band
    for h, w, oh, ow in [(291, 256, 224, 224), (256, 339, 224, 224), (9, 4, 5, 3)]:
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        p = np.asarray(Image.fromarray(a, "RGB").resize((ow, oh), Image.BICUBIC))
        assert all(np.array_equal(p[..., c], port(a[..., c], oh, ow)) for c in range(3)), (h, w, oh, ow)
    real = [(h, w) for h, w in photos if (h, w) != (224, 224)]
    vf = [(h, w) for h, w in real if vertical_first(h, w, 224, 224)]
    print(f"Pillow {PIL.__version__}: {len(cases)} resizes ({len(photos)} photo sizes), pass order "
          f"told apart on {counts['HV'] + counts['VH']} (HV {counts['HV']}, VH {counts['VH']}), "
          f"both orders equal on {counts['same']}; the rule and the port match Pillow on all")
    print(f"photo sizes resized to 224x224 vertical-first: {len(vf)} of {len(real)}, e.g. {vf[:6]}")
    if args.emit_rust:
        emit_rust()


SMALL = [(9, 4, 5, 3), (4, 9, 3, 5), (7, 3, 3, 5), (1, 6, 1, 4), (6, 1, 4, 1), (3, 8, 6, 3), (11, 2, 4, 3)]
LARGE = [(289, 240, 224, 224), (291, 256, 224, 224), (349, 256, 224, 224), (256, 350, 224, 224),
         (257, 256, 224, 224), (240, 289, 224, 224)]


def emit_rust():
    print("// (h, w, oh, ow, seed, Pillow's bytes)")
    for i, (h, w, oh, ow) in enumerate(SMALL):
        a = np.frombuffer(bytes(lcg_bytes(i + 1, h * w)), np.uint8).reshape(h, w)
        p = pillow(a, oh, ow)
        other = port(a, oh, ow, "HV" if vertical_first(h, w, oh, ow) else "VH")
        tag = "VH" if vertical_first(h, w, oh, ow) else "HV"
        print(f"({h}, {w}, {oh}, {ow}, {i + 1}, &{[int(v) for v in p.reshape(-1)]}), // {tag}, other order differs: "
              f"{not np.array_equal(p, other)}")
    print("// (h, w, oh, ow, seed, FNV-1a 64 of Pillow's bytes)")
    for i, (h, w, oh, ow) in enumerate(LARGE):
        a = np.frombuffer(bytes(lcg_bytes(100 + i, h * w)), np.uint8).reshape(h, w)
        p = pillow(a, oh, ow)
        other = port(a, oh, ow, "HV" if vertical_first(h, w, oh, ow) else "VH")
        tag = "VH" if vertical_first(h, w, oh, ow) else "HV"
        print(f"({h}, {w}, {oh}, {ow}, {100 + i}, 0x{fnv1a(p.tobytes()):016x}), // {tag}, other order differs "
              f"on {int((p != other).sum())} pixels")


if __name__ == "__main__":
    main()
