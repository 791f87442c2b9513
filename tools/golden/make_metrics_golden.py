#!/usr/bin/env python3
"""Golden reference values for the evaluation metrics image F1-max and AUPRO.

Writes conformance-tests/goldens/metrics.safetensors: deterministic random inputs (numpy seed 0)
together with the values computed by the reference definitions:

  F1-max  sklearn.metrics.precision_recall_curve, F1 = 2PR/(P+R) (0 where P+R = 0), the maximum
          over all thresholds and the threshold at numpy's argmax (thresholds come in increasing
          order, so that is the lowest threshold reaching the maximum).
  AUPRO   a port of the MVTec AD evaluation script's compute_pro + trapezoid(x_max=limit) / limit,
          step for step: connected components by scipy.ndimage.label with a 3x3 all-ones structure
          (8-connectivity), per-pixel FPR and PRO increments, one descending sort of all pixels,
          cumulative sums, FPR in float32 as in the reference, the last point of each run of equal
          scores kept, clip at 1, (0,0) and (1,1) added, trapezoid rule with linear interpolation
          at x_max.

    python3 -m pip install numpy scipy scikit-learn safetensors
    python3 tools/golden/make_metrics_golden.py [--out conformance-tests/goldens]

Self-checks (asserted on every run):
  - F1: the maximum and its threshold agree with an exact recomputation in fractions;
  - AUPRO: the port agrees with a brute-force loop over every distinct threshold (float64) to
    1e-6; the same port with FPR in float64 is stored too (aupro.N.aupro_f64) and its distance
    to the float32 value is reported;
  - the AUPRO masks contain diagonal-only neighbours: 4-connectivity gives more regions and a
    different AUPRO than 8-connectivity, so the golden tells the two apart.
See README.md next to this file.
"""

import argparse
import json
import os
from bisect import bisect_right
from fractions import Fraction

import numpy as np
import safetensors
import scipy
import sklearn
from scipy import ndimage
from safetensors.numpy import save_file
from sklearn.metrics import confusion_matrix, precision_recall_curve

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEED = 0
EIGHT = np.ones((3, 3), dtype=int)  # 8-connectivity
FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connectivity, only for the self-check


# ---------------------------------------------------------------------------------------------
# F1-max
# ---------------------------------------------------------------------------------------------

def f1_max_sklearn(scores, labels):
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    # The last (precision 1, recall 0) point has no threshold; its F1 is 0.
    i = int(np.argmax(f1[:-1]))
    return float(f1[i]), np.float32(thresholds[i])


def f1_max_exact(scores, labels):
    """Exact maximum in fractions; the lowest threshold on ties."""
    n_pos = int(labels.sum())
    best, best_t = Fraction(-1), None
    for t in sorted(set(scores.tolist())):  # increasing thresholds
        pred = scores >= t
        tp = int((pred & (labels == 1)).sum())
        fp = int((pred & (labels == 0)).sum())
        f1 = Fraction(2 * tp, n_pos + tp + fp)
        if f1 > best:
            best, best_t = f1, t
    return best, np.float32(best_t)


def f1_cases(rng):
    cases = []
    # 0: 40 images, separated scores with overlap.
    labels = (rng.random(40) < 0.4).astype(np.uint8)
    scores = (rng.normal(size=40) + 1.2 * labels).astype(np.float32)
    cases.append((scores, labels, "40 images, N(0,1) + 1.2 on anomalous"))
    # 1: 60 images, coarse scores (one decimal): many ties across the classes.
    labels = (rng.random(60) < 0.5).astype(np.uint8)
    scores = np.round(rng.random(60) * 0.6 + 0.4 * labels, 1).astype(np.float32)
    cases.append((scores, labels, "60 images, scores rounded to 0.1 (ties across classes)"))
    # 2: imbalanced, 3 anomalous of 25, one anomalous image tied with a normal one.
    labels = np.zeros(25, dtype=np.uint8)
    labels[[3, 11, 19]] = 1
    scores = rng.random(25).astype(np.float32)
    scores[11] = scores[4]
    cases.append((scores, labels, "25 images, 3 anomalous, one tied with a normal image"))
    return cases


# ---------------------------------------------------------------------------------------------
# AUPRO: port of the MVTec AD evaluation (compute_pro + trapezoid)
# ---------------------------------------------------------------------------------------------

def pro_curve(anomaly_maps, ground_truth_maps, structure=EIGHT, fpr_dtype=np.float32):
    """(fprs, pros) as the MVTec AD script's compute_pro; fpr_dtype float32 as there."""
    n_ok, n_regions = 0, 0
    fp_changes = np.zeros(anomaly_maps.shape, dtype=np.uint64)
    pro_changes = np.zeros(anomaly_maps.shape, dtype=np.float64)
    for i, gt in enumerate(ground_truth_maps):
        labeled, n = ndimage.label(gt, structure)
        n_regions += n
        ok = labeled == 0
        n_ok += int(ok.sum())
        fp_changes[i][ok] = 1
        for k in range(1, n + 1):
            region = labeled == k
            pro_changes[i][region] = 1.0 / region.sum()
    scores = anomaly_maps.ravel()
    order = np.argsort(scores)[::-1]  # descending
    scores = scores[order]
    # The reference casts the cumulative count to float32 and divides by the (numpy integer)
    # count, which numpy 2 evaluates in float64 and stores back into the float32 array.
    fprs = (np.cumsum(fp_changes.ravel()[order]).astype(fpr_dtype).astype(np.float64) / n_ok).astype(fpr_dtype)
    pros = np.cumsum(pro_changes.ravel()[order]) / n_regions
    # Keep only the last point of each run of equal scores.
    keep = np.append(np.diff(scores) != 0, True)
    fprs = np.clip(fprs[keep], None, 1.0)
    pros = np.clip(pros[keep], None, 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0])), n_regions


def trapezoid(x, y, x_max):
    """The MVTec AD script's trapezoid(x, y, x_max): trapezoid rule up to x_max, interpolating
    y at x_max between its neighbours when x_max is not a sample."""
    x, y = np.asarray(x), np.asarray(y)
    correction = 0.0
    if x_max not in x:
        ins = bisect_right(x, x_max)
        assert 0 < ins < len(x)
        y_at = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_at + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def aupro(maps, masks, limit, structure=EIGHT, fpr_dtype=np.float32):
    fprs, pros, n_regions = pro_curve(maps, masks, structure, fpr_dtype)
    return trapezoid(fprs, pros, limit) / limit, n_regions


def aupro_brute_force(maps, masks, limit):
    """Every distinct threshold counted directly, float64, same curve and integration."""
    regions, ok = [], np.zeros(masks.shape, dtype=bool)
    for i, gt in enumerate(masks):
        labeled, n = ndimage.label(gt, EIGHT)
        ok[i] = labeled == 0
        regions += [(i, labeled == k) for k in range(1, n + 1)]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pos = maps >= t
        xs.append((pos & ok).sum() / ok.sum())
        ys.append(np.mean([(pos[i] & r).sum() / r.sum() for i, r in regions]))
    xs.append(1.0)
    ys.append(1.0)
    return trapezoid(np.array(xs), np.array(ys), limit) / limit


def blob_masks(rng, n_images, n_good, h, w):
    """Masks: n_good all-zero, the rest with rectangles, disks and diagonal-only chains."""
    masks = np.zeros((n_images, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n_good, n_images):
        m = masks[i]
        # A rectangle.
        y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 6)
        m[y0:y0 + rng.integers(2, 5), x0:x0 + rng.integers(2, 6)] = 1
        # A disk.
        cy, cx, r = rng.integers(3, h - 3), rng.integers(3, w - 3), rng.uniform(1.2, 3.0)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        # A diagonal-only chain (one region under 8-connectivity, several under 4).
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        for k in range(rng.integers(2, 5)):
            m[y0 + k, x0 + k] = 1
        # An isolated single pixel, and one touching something only at a corner.
        m[rng.integers(0, h), rng.integers(0, w)] = 1
        ys, xs = np.nonzero(m)
        j = rng.integers(0, len(ys))
        cy, cx = ys[j], xs[j]
        if cy + 1 < h and cx + 1 < w and not m[cy + 1, cx] and not m[cy, cx + 1]:
            m[cy + 1, cx + 1] = 1
    return masks


def aupro_cases(rng):
    cases = []
    # 0: 6 images 20x24 (2 good), smooth noise + a clear bump on the mask.
    masks = blob_masks(rng, 6, 2, 20, 24)
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 1.0, 1.0))
    maps = (noise + 0.8 * ndimage.gaussian_filter(masks.astype(float), sigma=(0, 0.8, 0.8))).astype(np.float32)
    cases.append((maps, masks, 0.3, "6 images 20x24 (2 good), smooth noise + blurred mask bump"))
    # 1: the same kind of input with scores quantized to 24 levels: large runs of ties.
    masks = blob_masks(rng, 5, 1, 16, 16)
    noise = ndimage.gaussian_filter(rng.normal(size=masks.shape), sigma=(0, 1.0, 1.0))
    maps = noise + 0.5 * masks
    maps = np.round((maps - maps.min()) / (maps.max() - maps.min()) * 23).astype(np.float32) / 23
    cases.append((maps, masks, 0.3, "5 images 16x16 (1 good), scores on 24 levels (ties)"))
    # 2: weak signal, white noise: the curve is far from perfect; integration limit 0.3.
    masks = blob_masks(rng, 4, 1, 12, 18)
    maps = (rng.normal(size=masks.shape) + 0.4 * masks).astype(np.float32)
    cases.append((maps, masks, 0.3, "4 images 12x18 (1 good), white noise + 0.4 on the mask"))
    # 3: the case-2 kind of input integrated to other limits.
    masks = blob_masks(rng, 3, 1, 10, 10)
    maps = (rng.normal(size=masks.shape) + 0.7 * masks).astype(np.float32)
    cases.append((maps, masks, 1.0, "3 images 10x10 (1 good), white noise + 0.7, limit 1.0"))
    cases.append((maps, masks, 0.05, "the same input as case 3, limit 0.05"))
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(REPO, "conformance-tests", "goldens"))
    args = ap.parse_args()
    rng = np.random.default_rng(SEED)
    tensors, notes = {}, {}

    for i, (scores, labels, what) in enumerate(f1_cases(rng)):
        f1, t = f1_max_sklearn(scores, labels)
        exact, t_exact = f1_max_exact(scores, labels)
        assert abs(f1 - float(exact)) < 1e-12 and t == t_exact, (i, f1, exact, t, t_exact)
        tensors[f"f1.{i}.scores"] = scores
        tensors[f"f1.{i}.labels"] = labels
        tensors[f"f1.{i}.f1_max"] = np.array([f1], dtype=np.float64)
        tensors[f"f1.{i}.threshold"] = np.array([t], dtype=np.float32)
        notes[f"f1.{i}"] = what
        print(f"f1.{i}: n={len(scores)} anomalous={labels.sum()} f1_max={f1:.9f} ({exact}) threshold={t!r}")

    worst_f64 = 0.0
    for i, (maps, masks, limit, what) in enumerate(aupro_cases(rng)):
        value, n_regions = aupro(maps, masks, limit)
        value64, _ = aupro(maps, masks, limit, fpr_dtype=np.float64)
        brute = aupro_brute_force(maps, masks, limit)
        value4, n_regions4 = aupro(maps, masks, limit, structure=FOUR)
        assert abs(value - brute) < 1e-6, (i, value, brute)
        assert n_regions4 > n_regions and abs(value4 - value) > 1e-4, (i, n_regions, n_regions4, value, value4)
        worst_f64 = max(worst_f64, abs(value - value64))
        tensors[f"aupro.{i}.maps"] = maps
        tensors[f"aupro.{i}.masks"] = masks
        tensors[f"aupro.{i}.limit"] = np.array([limit], dtype=np.float64)
        tensors[f"aupro.{i}.aupro"] = np.array([value], dtype=np.float64)
        tensors[f"aupro.{i}.aupro_f64"] = np.array([value64], dtype=np.float64)
        tensors[f"aupro.{i}.regions"] = np.array([n_regions], dtype=np.int64)
        notes[f"aupro.{i}"] = what
        print(
            f"aupro.{i}: {maps.shape} limit={limit} regions={n_regions} (4-connected: {n_regions4}) "
            f"aupro={value:.9f} |float32 FPR - float64|={abs(value - value64):.2e} "
            f"|port - brute force|={abs(value - brute):.2e} 4-connected aupro={value4:.6f}"
        )

    # Decision rates: the F1 cases' photos at thresholds below, between, exactly on (a photo at
    # the threshold is not flagged: strictly above flags) and above their scores.
    n_f1 = len([k for k in tensors if k.endswith(".scores") and k.startswith("f1.")])
    j = 0
    for i in range(n_f1):
        scores, labels = tensors[f"f1.{i}.scores"], tensors[f"f1.{i}.labels"]
        for t in (scores.min() - 1, np.median(scores), scores[int(np.argmax(labels))], scores.max()):
            t = np.float32(t)
            tn, fp, fn, tp = confusion_matrix(labels, (scores > t).astype(np.uint8), labels=[0, 1]).ravel()
            tensors[f"rates.{j}.scores"] = scores
            tensors[f"rates.{j}.labels"] = labels
            tensors[f"rates.{j}.threshold"] = np.array([t], dtype=np.float32)
            tensors[f"rates.{j}.false_alarm_rate"] = np.array([fp / (fp + tn)], dtype=np.float64)
            tensors[f"rates.{j}.miss_rate"] = np.array([fn / (fn + tp)], dtype=np.float64)
            print(f"rates.{j}: threshold={t!r} false alarms {fp}/{fp + tn} misses {fn}/{fn + tp}")
            j += 1

    metadata = {
        "description": "inputs and reference values for image F1-max, AUPRO and decision rates (see tools/golden/README.md)",
        "generator": "tools/golden/make_metrics_golden.py",
        "seed": str(SEED),
        "cases": json.dumps(notes),
        "f1_definition": "sklearn.metrics.precision_recall_curve; F1=2PR/(P+R), 0 where P+R=0; max over "
        "thresholds; threshold = thresholds[argmax] (the lowest reaching the max); anomalous (label 1) = positive",
        "aupro_definition": "MVTec AD evaluation compute_pro (scipy.ndimage.label, 3x3 all-ones structure; "
        "FPR over pixels outside every mask of all images; PRO = mean over regions of the covered fraction; "
        "one point per distinct score; FPR float32) + trapezoid(fprs, pros, x_max=limit) / limit",
        "rates_definition": "sklearn.metrics.confusion_matrix(labels, scores > threshold): "
        "false-alarm rate = FP/(FP+TN), miss rate = FN/(FN+TP)",
        "aupro_float32_fpr_vs_float64_max_abs": f"{worst_f64:.3e}",
        "suggested_tolerance": "1e-6 absolute",
        "versions": json.dumps(
            {"numpy": np.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
             "safetensors": safetensors.__version__}
        ),
    }
    path = os.path.join(args.out, "metrics.safetensors")
    save_file(tensors, path, metadata=metadata)
    print(f"wrote {path} ({os.path.getsize(path)} bytes); float32-FPR vs float64 max |diff| {worst_f64:.2e}")


if __name__ == "__main__":
    main()
