"""GFLOP/s of PyTorch's CPU convolution (oneDNN), forward and input gradient, at the shapes of
backends/candle/examples/conv_rate.rs (both read tools/bench/conv_shapes.json; the same thread
count, medians of 5 after one warm-up), to put adp's candle convolution next to it.

    /root/.cache/adp/golden-venv/bin/python tools/bench/conv_rate.py --threads 2 [WORD]
"""
import torch
import torch.nn.functional as F

from rates import median_time, setup, shapes

# Rows of conv_shapes.json, shared with the Rust example: [what, in channels, out channels,
# side, stride].


def main():
    word = setup(__doc__).word
    for what, c, o, side, stride in shapes("conv_shapes.json", word):
        x = torch.randn(1, c, side, side)
        w, b = torch.randn(o, c, 3, 3) * 0.05, torch.randn(o) * 0.05
        with torch.inference_mode():
            fwd = median_time(lambda: F.conv2d(x, w, b, stride, 1))
        # The input gradient alone, as the frozen UNet's backward pass needs it.
        xg = x.clone().requires_grad_(True)
        y = F.conv2d(xg, w, b, stride, 1)
        gy = torch.randn_like(y)
        dx = median_time(lambda: torch.autograd.grad(y, xg, gy, retain_graph=True))
        gflop = 2 * c * o * 9 * y.shape[2] * y.shape[3] / 1e9
        print(f"{what:36} forward {fwd * 1e3:8.1f} ms {gflop / fwd:6.1f} GFLOP/s   "
              f"input gradient {dx * 1e3:8.1f} ms {gflop / dx:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
