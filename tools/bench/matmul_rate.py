"""GFLOP/s of torch.matmul at the shapes of backends/candle/examples/matmul_rate.rs (same shapes,
same thread count), to put candle's matrix product next to PyTorch's.

    /root/.cache/adp/golden-venv/bin/python tools/bench/matmul_rate.py --threads 2
"""
import argparse
import time

import torch

SHAPES = [
    ("ViT-B-16 qkv (197 tokens)", 1, 197, 768, 2304),
    ("ViT-B-16 MLP up", 1, 197, 768, 3072),
    ("ViT-B-16 MLP down", 1, 197, 3072, 768),
    ("SD 2.1 768 px attention QK^T, 1 head", 5, 2304, 64, 2304),
    ("SD 2.1 768 px feed-forward up", 1, 2304, 640, 5120),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with torch.inference_mode():
        for what, b, m, k, n in SHAPES:
            a, w = torch.randn(b, m, k), torch.randn(b, k, n)
            torch.matmul(a, w)
            reps = 20
            start = time.perf_counter()
            for _ in range(reps):
                torch.matmul(a, w)
            s = (time.perf_counter() - start) / reps
            print(f"{what:40} {b}×{m}×{k}×{n}: {s * 1e3:8.3f} ms {2 * b * m * k * n / s / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
