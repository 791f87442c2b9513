#!/usr/bin/env python3
"""Golden of Pillow's bicubic resize on non-square real photos (conformance-tests/goldens/pillow_resize.safetensors).

Three magnetic tile photos of different aspect ratios, chosen so that Pillow 13's pass order matters
(two go vertical first, one horizontal first; see check_pillow_resize.py). For each, the stored
tensor is Pillow's `Image.open(p).convert("RGB").resize((224, 224), Image.BICUBIC)` as uint8
[N, 3, 224, 224] (channels first). From it both the CLIP detection input
(`(u8/255 - CLIP_MEAN) / CLIP_STD`) and the EfficientNet-Lite input (`(u8/255*255 - 127) / 128`) are
exact functions, so they are not stored. `other_order_differs` records, per photo, how many bytes
the other pass order would change.

    /root/.cache/adp/golden-venv/bin/python tools/golden/make_pillow_resize_golden.py [--data ../shared/data] [--out conformance-tests/goldens]
"""

import argparse
import hashlib
import json
import os

import numpy as np
import PIL
from PIL import Image
from safetensors.numpy import save_file

import check_pillow_resize as port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PHOTOS = [
    "magnetic_tile/tile/test/blowhole/000.png",  # 248x373 (WxH): vertical first
    "magnetic_tile/tile/test/blowhole/042.png",  # 256x305: vertical first
    "magnetic_tile/tile/test/blowhole/048.png",  # 350x256: horizontal first
]
SIZE = 224


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "conformance-tests", "goldens"))
    args = ap.parse_args()
    out, sizes, order, differs, sha = [], [], [], [], {}
    for rel in PHOTOS:
        path = os.path.join(args.data, rel)
        sha[rel] = hashlib.sha256(open(path, "rb").read()).hexdigest()
        im = Image.open(path).convert("RGB")
        a = np.asarray(im)
        r = np.asarray(im.resize((SIZE, SIZE), Image.BICUBIC))
        h, w = a.shape[:2]
        vf = port.vertical_first(h, w, SIZE, SIZE)
        for c in range(3):
            assert np.array_equal(r[..., c], port.port(a[..., c], SIZE, SIZE)), rel
        other = np.stack([port.port(a[..., c], SIZE, SIZE, "HV" if vf else "VH") for c in range(3)], -1)
        n = int((other != r).sum())
        assert n > 0, f"{rel}: the pass order does not matter here"
        out.append(r.transpose(2, 0, 1))
        sizes.append([h, w])
        order.append("vertical first" if vf else "horizontal first")
        differs.append(n)
        print(f"{rel}: {h}x{w} (HxW) -> {SIZE}x{SIZE}, {order[-1]}; the other order changes {n} bytes")
    meta = {
        "generator": "tools/golden/make_pillow_resize_golden.py",
        "images": PHOTOS,
        "images_root": "../shared/data (relative to the repository root)",
        "images_sha256": sha,
        "image_hw": sizes,
        "image_size": SIZE,
        "resize": "PIL Image.open(p).convert('RGB').resize((224, 224), Image.BICUBIC), uint8, [N, 3, H, W]",
        "pass_order": order,
        "other_order_differs": differs,
        "versions": {"Pillow": PIL.__version__, "numpy": np.__version__},
    }
    path = os.path.join(args.out, "pillow_resize.safetensors")
    save_file({"resized_u8": np.ascontiguousarray(np.stack(out))}, path,
              metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
