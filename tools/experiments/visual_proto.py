#!/usr/bin/env python3
"""Python prototype of adp's `visual` method (EfficientNet-Lite patch features + nearest-neighbour
reference association) and of candidate improvements (issue 15). Not part of the product.

    /root/.cache/adp/golden-venv/bin/python tools/experiments/visual_proto.py \
        --cats tile --ks 4 --seeds 0 1 2 --config base --config 'inp=ar,side=320'

A config is comma-separated key=value over the defaults in DEFAULTS (see there). Features are
cached per (model, input geometry, augmentation, photo) under /tmp/proto-cache.

Today's method (config `base`): RGB photo resized straight (Pillow bicubic) to 224x224, input
(u8 - 127) / 128, EfficientNet-Lite0 with TF-"same" padding; stage outputs of block groups 2
(stride 8, 40 ch) and 4 (stride 16, 112 ch), each 3x3 avg-pooled (stride 1, count_include_pad=False),
stage 4 upsampled bilinearly (align_corners=False) to the stride-8 grid (28x28), concatenated
(152 dims); memory = support patches (L2-normalised); patch score = 0.5 * (1 - max cos); map
upsampled bilinearly to the input, Gaussian-smoothed (sigma = 4 input px, truncated at 4 sigma,
edges replicated), image score = max of that map; map resized bilinearly to the photo.
Pixel AUROC: over every 2nd pixel in each direction of the masks' resolution (the photo's).
"""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite_pytorch.utils import round_repeats

torch.set_num_threads(1)
DATA = "/work/shared/data"
CATS = {"bottle": "mvtec_ad/bottle", "tile": "magnetic_tile/tile", "metal_plate": "mpdd/metal_plate"}
CACHE = "/tmp/proto-cache"
WEIGHTS = os.path.expanduser("~/.cache/adp/weights/{}.safetensors")
PIX_STRIDE = 2

DEFAULTS = dict(
    model="lite0",
    inp="sq",       # sq: photo resized straight to side x side; ar: shorter side -> side, aspect kept
                    # (the CNN run on the whole rectangle; equivalent to perfectly stitched tiles);
                    # tiles: ar resize, then overlapping side x side tiles (stride tstride), stitched
    side=224,
    tstride=0,      # tile stride in px for inp=tiles (0 -> side/2)
    stages="2-4",   # block groups concatenated, e.g. 1-2-4, 2-3-4, 2-4
    grid=8,         # stride of the feature grid everything is resampled to (4 or 8)
    pool=3,         # local neighbourhood avg pool (PatchCore aggregation), 1 = none
    aug="none",     # support augmentation: none | flip (h, v, hv) | d4 (8 dihedral) | rot (4 rotations)
    phot="none",    # photometric support augmentation: none | bc (brightness ±25, contrast ×0.8/×1.25)
                    # | gamma (γ 0.7, 1.4)
    knn=1,          # mean of k nearest distances
    sigma=4.0,      # smoothing in input pixels (scaled? no: absolute input px)
    agg="max",      # image score: max | topP (mean of top P percent of the smoothed map, e.g. top1)
    center=0,       # 1: subtract the map's own median (per photo) from the map and the image score
    pnorm=0,        # 1: each photo's grey level standardised (mean 127, std 40 over the photo) before the CNN
    fnorm=0,        # 1: each photo's mean patch feature subtracted from its patches (support and test)
    self="none",    # intra-photo reference: none | min (min of support and self distance) | mean | only
    srad=2,         # self reference excludes patches within this many grid cells (Chebyshev)
    lnorm="none",   # per-position normalisation from leave-one-out support maps (each shot scored
                    # against the others, smoothed like a test map): none | sub (minus their mean
                    # per position) | z (minus mean, over std per position + the maps' global std)
    tta="none",     # test-time augmentation: none | flip (mean of the maps of the photo and its
                    # h-flip, v-flip, 180° turn, each turned back)
    mnorm="none",   # per-memory-patch normalisation by its own nearest distance to the other shots'
                    # patches (d_m): none | sub (d(t, m*) - mbeta * d_m*, m* the nearest) | min
                    # (min over m of d(t, m) - mbeta * d_m) | div (d(t, m*) / (d_m* + mean d_m))
    mbeta=1.0,
    ens="none",     # a second backbone (lite0 | lite2) whose smoothed map is averaged with the first's
    ensw=0.5,       # the second backbone's weight in that average
    w5=1.0,         # weight of block group 5's (and 6's) features in the concatenation
    disc=0.0,       # > 0: SimpleNet-style discriminator on the L2-normalised support patches against
                    # copies with Gaussian noise of this std per dimension; score = its output
                    # (mixed with the NN distance by dmix)
    dsteps=300,     # its full-batch Adam steps
    dmix=1.0,       # weight of the discriminator's score (z-scored over the support) against the
                    # NN distance's (1 = discriminator only)
    white=0.0,      # > 0: patch features whitened by the support patches' covariance, shrunk
                    # toward its mean eigenvalue by this fraction (1 = no whitening, only centring)
)


def parse_config(s):
    c = dict(DEFAULTS)
    if s != "base":
        for kv in s.split(","):
            k, v = kv.split("=")
            assert k in c, k
            c[k] = type(DEFAULTS[k])(v)
    return c


def splitmix_draw(n, k, seed):
    """adp's draw_shots: partial Fisher-Yates over SplitMix64(seed)."""
    M = (1 << 64) - 1
    state = seed & M

    def nxt():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & M
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return z ^ (z >> 31)

    idx = list(range(n))
    for i in range(k):
        j = i + ((nxt() * (n - i)) >> 64)
        idx[i], idx[j] = idx[j], idx[i]
    return idx[:k]


def images_in(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d)
                  if f.lower().endswith((".png", ".jpg", ".jpeg")))


def load_category(cat):
    root = os.path.join(DATA, CATS[cat])
    train = images_in(os.path.join(root, "train", "good"))
    test = []
    for defect in sorted(os.listdir(os.path.join(root, "test"))):
        for p in images_in(os.path.join(root, "test", defect)):
            mask = None
            if defect != "good":
                stem = os.path.splitext(os.path.basename(p))[0]
                for cand in (f"{stem}_mask.png", f"{stem}.png"):
                    mp = os.path.join(root, "ground_truth", defect, cand)
                    if os.path.exists(mp):
                        mask = mp
                        break
            test.append((p, defect != "good", mask))
    return train, test


# ---------------------------------------------------------------- backbone
_MODELS = {}


def get_model(name):
    if name not in _MODELS:
        full = {"lite0": "efficientnet-lite0", "lite2": "efficientnet-lite2"}[name]
        m = EfficientNet.from_name(full, image_size=None)  # dynamic TF "same" padding
        m.load_state_dict(load_file(WEIGHTS.format(full)))
        m.eval()
        gp = m._global_params
        ends, n = [], 0
        for i, ba in enumerate(m._blocks_args):
            fixed = gp.fix_head_stem and (i == 0 or i == len(m._blocks_args) - 1)
            n += ba.num_repeat if fixed else round_repeats(ba.num_repeat, gp)
            ends.append(n - 1)
        _MODELS[name] = (m, ends)
    return _MODELS[name]


@torch.no_grad()
def stages_of(model_name, x, upto=4):
    m, ends = get_model(model_name)
    h = m._swish(m._bn0(m._conv_stem(x)))
    out = []
    for idx, block in enumerate(m._blocks):
        h = block(h, drop_connect_rate=None)
        if idx in ends:
            out.append(h)
            if len(out) > upto:
                break
    return out


def photo_input(path, inp, side):
    im = Image.open(path).convert("RGB")
    W, H = im.size
    if inp == "sq":
        w, h = side, side
    else:
        s = side / min(W, H)
        w, h = max(side, round(W * s)), max(side, round(H * s))
    return im, (w, h)


def to_tensor(im, pnorm=0):
    u8 = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    if pnorm:
        g = u8.mean(0)
        u8 = ((u8 - g.mean()) * (40.0 / g.std().clamp_min(1.0)) + 127.0).clamp(0, 255)
    return ((u8 - 127.0) / 128.0)[None]


AUGS = {
    "none": [None],
    "flip": [None, Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM, Image.ROTATE_180],
    "rot": [None, Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270],
    "d4": [None, Image.FLIP_LEFT_RIGHT, Image.FLIP_TOP_BOTTOM, Image.ROTATE_90, Image.ROTATE_180,
           Image.ROTATE_270, Image.TRANSPOSE, Image.TRANSVERSE],
}


PHOTS = {
    "none": [None],
    "bc": [None, ("b", 25.0), ("b", -25.0), ("c", 0.8), ("c", 1.25)],
    "gamma": [None, ("g", 0.7), ("g", 1.4)],
}


def photometric(im, ph):
    """The photo with a brightness shift, a contrast scale about its mean, or a gamma."""
    if ph is None:
        return im
    a = np.asarray(im, dtype=np.float32)
    kind, v = ph
    if kind == "b":
        a = a + v
    elif kind == "c":
        a = (a - a.mean()) * v + a.mean()
    else:
        a = 255.0 * (np.clip(a, 0, 255) / 255.0) ** v
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def raw_features(model_name, path, inp, side, t=None, pnorm=0, ph=None, upto=4):
    """Stage outputs (list, float16, [C, h, w]) of the photo (transformed by t after resizing),
    cached; plus the forward time in seconds."""
    pn = (f"|pn{pnorm}" if pnorm else "") + (f"|ph{ph}" if ph else "") + ("" if upto <= 4 else "|g5" if upto == 5 else f"|g{upto}")
    key = hashlib.sha1(f"{model_name}|{path}|{'sq' if inp == 'sq' else 'ar'}|{side}|{t}{pn}".encode()).hexdigest()
    f = os.path.join(CACHE, key[:2], key + ".pt")
    if os.path.exists(f):
        return torch.load(f)
    im, (w, h) = photo_input(path, inp, side)
    im = im.resize((w, h), Image.BICUBIC)
    if t is not None:
        im = im.transpose(t)
    im = photometric(im, ph)
    x = to_tensor(im, pnorm)
    t0 = time.perf_counter()
    st = stages_of(model_name, x, upto=max(upto, 4))
    dt = time.perf_counter() - t0
    r = {"stages": [s[0].half() for s in st[1:max(upto, 4) + 1]], "size": (x.shape[2], x.shape[3]), "time": dt}
    os.makedirs(os.path.dirname(f), exist_ok=True)
    torch.save(r, f)
    return r


_TILE_TIME = {}


def tile_stage_features(c, path, t=None):
    """inp=tiles: the ar-resized photo cut into overlapping side x side tiles (stride tstride),
    each run alone; each stage map stitched by averaging overlapping tiles at that stage's grid."""
    model_name, side = c["model"], c["side"]
    stride = c["tstride"] or side // 2
    key = hashlib.sha1(f"{model_name}|{path}|tiles|{side}|{stride}|{t}".encode()).hexdigest()
    f = os.path.join(CACHE, key[:2], key + ".pt")
    if os.path.exists(f):
        return torch.load(f)
    im, (w, h) = photo_input(path, "ar", side)
    w, h = max(side, 16 * round(w / 16)), max(side, 16 * round(h / 16))  # tiles on the stride-16 grid
    im = im.resize((w, h), Image.BICUBIC)
    if t is not None:
        im = im.transpose(t)
    x = to_tensor(im)
    H, W = x.shape[2], x.shape[3]

    def starts(n):
        if n <= side:
            return [0]
        s = list(range(0, n - side + 1, stride))
        if s[-1] != n - side:
            s.append(n - side)
        return s
    acc, cnt, dt = None, None, 0.0
    for y0 in starts(H):
        for x0 in starts(W):
            t0 = time.perf_counter()
            st = stages_of(model_name, x[:, :, y0:y0 + side, x0:x0 + side])[1:5]
            dt += time.perf_counter() - t0
            if acc is None:
                strides = [side // s.shape[2] for s in st]
                acc = [torch.zeros(s.shape[1], -(-H // k), -(-W // k)) for s, k in zip(st, strides)]
                cnt = [torch.zeros(1, a.shape[1], a.shape[2]) for a in acc]
            for a, n_, s, k in zip(acc, cnt, st, strides):
                gy, gx = y0 // k, x0 // k
                a[:, gy:gy + s.shape[2], gx:gx + s.shape[3]] += s[0]
                n_[:, gy:gy + s.shape[2], gx:gx + s.shape[3]] += 1
    r = {"stages": [(a / n_.clamp_min(1)).half() for a, n_ in zip(acc, cnt)], "size": (H, W), "time": dt}
    os.makedirs(os.path.dirname(f), exist_ok=True)
    torch.save(r, f)
    return r


def patch_features(c, path, t=None, ph=None):
    """[h*w, D] float32 patch features on the stride-`grid` grid of the input, and (h, w), input size."""
    upto = max(int(v) for v in c["stages"].split("-"))
    r = tile_stage_features(c, path, t) if c["inp"] == "tiles" else raw_features(c["model"], path, c["inp"], c["side"], t, c["pnorm"], ph, upto)
    H, W = r["size"]
    gh, gw = -(-H // c["grid"]), -(-W // c["grid"])
    maps = []
    for s in (int(v) for v in c["stages"].split("-")):
        m = r["stages"][s - 1].float()[None]
        if c["pool"] > 1:
            m = F.avg_pool2d(m, c["pool"], stride=1, padding=c["pool"] // 2, count_include_pad=False)
        if m.shape[-2:] != (gh, gw):
            m = F.interpolate(m, size=(gh, gw), mode="bilinear", align_corners=False)
        maps.append(m * c["w5"] if s >= 5 else m)
    f = torch.cat(maps, 1)[0]
    if c["fnorm"]:
        f = f - f.mean((1, 2), keepdim=True)
    return f.permute(1, 2, 0).reshape(gh * gw, -1), (gh, gw), (H, W), r["time"]


# ---------------------------------------------------------------- scoring
def nn_scores(mem, q, knn, dm=None, how="none", beta=1.0):
    q = F.normalize(q, dim=1)
    out = []
    for i in range(0, q.shape[0], 4096):
        s = q[i:i + 4096] @ mem.T
        if how == "min":
            out.append(1 - 2 * (0.5 - (0.5 * s + beta * dm[None]).max(1).values))
            continue
        if how in ("sub", "div"):
            j = s.argmax(1)
            d = 0.5 * (1 - s.gather(1, j[:, None])[:, 0])
            d = d - beta * dm[j] if how == "sub" else d / (dm[j] + dm.mean())
            out.append(1 - 2 * d)
            continue
        if knn == 1:
            out.append(s.max(1).values)
        else:
            out.append(s.topk(knn, dim=1).values.mean(1))
    return 0.5 * (1 - torch.cat(out))


def self_scores(f, gh, gw, rad):
    """Distance of each patch to its nearest patch of the same photo farther than rad cells."""
    q = F.normalize(f, dim=1)
    s = q @ q.T
    yy, xx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    yy, xx = yy.flatten(), xx.flatten()
    near = ((yy[:, None] - yy[None]).abs() <= rad) & ((xx[:, None] - xx[None]).abs() <= rad)
    s = s.masked_fill(near, -1.0)
    return 0.5 * (1 - s.max(1).values)


def combine_self(sup, own, how):
    if how == "min":
        return torch.minimum(sup, own)
    if how == "mean":
        return 0.5 * (sup + own)
    if how == "only":
        return own
    raise ValueError(how)


def gauss_blur(x, sigma):
    if sigma <= 0:
        return x
    r = int(np.ceil(4 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * sigma * sigma))
    k = k / k.sum()
    x = F.pad(x, (r, r, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, r, r), mode="replicate")
    return F.conv2d(x, k.view(1, 1, -1, 1))


def image_score(smooth, agg):
    v = smooth.flatten()
    if agg == "max":
        return float(v.max())
    if agg.startswith("top"):
        n = max(1, int(round(v.numel() * float(agg[3:]) / 100)))
        return float(v.topk(n).values.mean())
    raise ValueError(agg)


UNDO = {None: None, Image.FLIP_LEFT_RIGHT: [3], Image.FLIP_TOP_BOTTOM: [2], Image.ROTATE_180: [2, 3]}


def memory_own_distance(per_shot):
    """Each memory patch's nearest distance to the patches of the other shots."""
    mems = [F.normalize(f, dim=1) for f in per_shot]
    out = []
    for i, m in enumerate(mems):
        rest = torch.cat([o for j, o in enumerate(mems) if j != i])
        out.append(torch.cat([0.5 * (1 - (m[a:a + 4096] @ rest.T).max(1).values)
                              for a in range(0, m.shape[0], 4096)]))
    return torch.cat(out)


def smoothed_map(c, mem, p, t=None, dm=None):
    """The photo's (transformed by t) smoothed map at input resolution, turned back."""
    f, (gh, gw), (H, W), dt = patch_features(c, p, t)
    if c.get("_wt") is not None:
        f = (f - c["_wt"][0]) @ c["_wt"][1]
    d = nn_scores(mem, f, c["knn"], dm, c["mnorm"] if dm is not None else "none", c["mbeta"]).view(1, 1, gh, gw)
    if c.get("_disc") is not None:
        net, (mu_n, sd_n), (mu_d, sd_d) = c["_disc"]
        with torch.no_grad():
            a = -net(F.normalize(f, dim=1))[:, 0].view(1, 1, gh, gw)
        w = c["dmix"]
        d = w * (a - mu_d) / sd_d + (1 - w) * (d - mu_n) / sd_n
    if c["self"] != "none":
        d = combine_self(d.flatten(), self_scores(f, gh, gw, c["srad"]), c["self"]).view(1, 1, gh, gw)
    sm = gauss_blur(F.interpolate(d, size=(H, W), mode="bilinear", align_corners=False), c["sigma"])
    return (sm.flip(UNDO[t]) if UNDO[t] else sm), dt


def train_disc(mem, c, seed):
    """A 2-layer discriminator (normal > 0.5, noisy < -0.5, truncated L1 as SimpleNet), and the
    mean/std over the support patches of its anomaly score and of the NN distance (each support
    patch's distance to its nearest other support patch, its own photo's included), for mixing."""
    torch.manual_seed(seed)
    D = mem.shape[1]
    net = torch.nn.Sequential(torch.nn.Linear(D, 512), torch.nn.LeakyReLU(0.2), torch.nn.Linear(512, 1))
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, weight_decay=1e-5)
    with torch.enable_grad():
        for _ in range(c["dsteps"]):
            noisy = mem + c["disc"] * torch.randn_like(mem)
            loss = F.relu(0.5 - net(mem)).mean() + F.relu(0.5 + net(noisy)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        a = -net(mem)[:, 0]
    n = 0.5 * (1 - (mem @ mem.T).fill_diagonal_(-1).max(1).values)
    return net, (n.mean(), n.std() + 1e-6), (a.mean(), a.std() + 1e-6)


def evaluate(test, cat, pix, agg, map_of):
    """Image and pixel AUROC (%) of the smoothed maps `map_of(photo)` ([1, 1, H, W] at input
    resolution) over the test set; pixel AUROC over every PIX_STRIDE-th pixel of the masks'
    resolution (nan for the bottle, or without `pix`)."""
    scores, labels, pix_s, pix_l = [], [], [], []
    for p, anomalous, mask in test:
        sm = map_of(p)
        scores.append(image_score(sm, agg))
        labels.append(anomalous)
        if pix and cat != "bottle":
            PW, PH = Image.open(p).size
            m = F.interpolate(sm, size=(PH, PW), mode="bilinear", align_corners=False)[0, 0]
            if mask is not None:
                gt = np.asarray(Image.open(mask).convert("L")) > 0
                assert gt.shape == (PH, PW), (mask, gt.shape, PH, PW)
            else:
                gt = np.zeros((PH, PW), bool)
            pix_s.append(m.numpy()[::PIX_STRIDE, ::PIX_STRIDE].ravel())
            pix_l.append(gt[::PIX_STRIDE, ::PIX_STRIDE].ravel())
    img = 100 * roc_auc_score(labels, scores)
    px = 100 * roc_auc_score(np.concatenate(pix_l), np.concatenate(pix_s)) if pix_s else float("nan")
    return img, px


def run(c, cat, k, seed, pix=True):
    if c["ens"] != "none":
        return run_ensemble(c, cat, k, seed, pix)
    train, test = load_category(cat)
    shots = [train[i] for i in splitmix_draw(len(train), k, seed)]
    per_shot = []
    for p in shots:
        feats = []
        for t in AUGS[c["aug"]]:
            for ph in PHOTS[c["phot"]]:
                feats.append(patch_features(c, p, t, ph)[0])
        per_shot.append(torch.cat(feats))
    wt = None
    if c["white"] > 0:
        allf = torch.cat(per_shot)
        mu_f = allf.mean(0, keepdim=True)
        cov = torch.cov((allf - mu_f).T)
        ev, evec = torch.linalg.eigh(cov)
        ev = (1 - c["white"]) * ev.clamp_min(0) + c["white"] * ev.mean()
        wt = (mu_f, evec / ev.sqrt())
        per_shot = [(f - mu_f) @ wt[1] for f in per_shot]
    c["_wt"] = wt
    mem = F.normalize(torch.cat(per_shot), dim=1)
    c["_disc"] = train_disc(mem, c, seed) if c["disc"] > 0 else None
    dm = memory_own_distance(per_shot) if c["mnorm"] != "none" and k > 1 else None
    mu = sd = None
    if c["lnorm"] != "none" and k > 1:
        loo = []
        for i, p in enumerate(shots):
            rest = F.normalize(torch.cat([f for j, f in enumerate(per_shot) if j != i]), dim=1)
            loo.append(smoothed_map(c, rest, p)[0])
        loo = torch.cat(loo)
        mu = loo.mean(0, keepdim=True)
        sd = loo.std(0, keepdim=True) + loo.std() if c["lnorm"] == "z" else None
    t_fwd = t_nn = 0.0

    def final_map(p):
        nonlocal t_fwd, t_nn
        t0 = time.perf_counter()
        ts = AUGS["flip"] if c["tta"] == "flip" else [None]
        maps = [smoothed_map(c, mem, p, t, dm) for t in ts]
        sm = torch.stack([m for m, _ in maps]).mean(0)
        dt = sum(d for _, d in maps)
        t_fwd += dt
        t_nn += time.perf_counter() - t0 - dt
        if mu is not None:
            sm = sm - mu
            if sd is not None:
                sm = sm / sd
        if c["center"]:
            sm = sm - sm.median()
        return sm

    img, px = evaluate(test, cat, pix, c["agg"], final_map)
    n = len(test)
    return dict(img=img, pix=px, fwd_ms=1000 * t_fwd / n, nn_ms=1000 * t_nn / n, mem=mem.shape[0])


def memory_of(c, shots):
    return F.normalize(torch.cat([patch_features(c, p, t)[0] for p in shots for t in AUGS[c["aug"]]]), dim=1)


def run_ensemble(c, cat, k, seed, pix):
    """The weighted mean of two backbones' smoothed maps (each its own memory); no other option."""
    train, test = load_category(cat)
    shots = [train[i] for i in splitmix_draw(len(train), k, seed)]
    cs = [dict(c, ens="none"), dict(c, ens="none", model=c["ens"])]
    mems = [memory_of(ci, shots) for ci in cs]
    ws = [1 - c["ensw"], c["ensw"]]
    img, px = evaluate(test, cat, pix, c["agg"],
                       lambda p: sum(w * smoothed_map(ci, m, p)[0] for w, ci, m in zip(ws, cs, mems)))
    return dict(img=img, pix=px, fwd_ms=0.0, nn_ms=0.0, mem=mems[0].shape[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cats", nargs="+", default=list(CATS))
    ap.add_argument("--ks", nargs="+", type=int, default=[4])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("--nopix", action="store_true")
    ap.add_argument("--log", default="/tmp/proto-results.jsonl")
    a = ap.parse_args()
    for cs in a.config or ["base"]:
        c = parse_config(cs)
        for cat in a.cats:
            for k in a.ks:
                rs = [run(c, cat, k, s, not a.nopix) for s in a.seeds]
                agg = {m: float(np.mean([r[m] for r in rs])) for m in rs[0]}
                sd = {m + "_sd": float(np.std([r[m] for r in rs])) for m in ("img", "pix")}
                line = dict(config=cs, cat=cat, k=k, seeds=a.seeds, **agg, **sd)
                print(f"{cs:40s} {cat:12s} K={k:2d} img {agg['img']:5.1f}±{sd['img_sd']:.1f} "
                      f"pix {agg['pix']:5.1f}±{sd['pix_sd']:.1f} fwd {agg['fwd_ms']:6.1f}ms "
                      f"nn {agg['nn_ms']:6.1f}ms mem {int(agg['mem'])}", flush=True)
                with open(a.log, "a") as fh:
                    fh.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
