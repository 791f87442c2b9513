"""Milliseconds of PyTorch's CPU attention (`F.scaled_dot_product_attention`, as diffusers calls
it), forward and backward to q, k and v, at the shapes of backends/candle/examples/attention_rate.rs
(both read tools/bench/attention_shapes.json; the same thread count, medians of 5 after one
warm-up), to put adp's candle attention next to it.

    /root/.cache/adp/golden-venv/bin/python tools/bench/attention_rate.py --threads 2 [WORD]
"""
import torch
import torch.nn.functional as F

from rates import median_time, setup, shapes

# Rows of attention_shapes.json, shared with the Rust example: [what, batch x heads, query rows,
# key rows, head width].


def main():
    word = setup(__doc__).word
    for what, bh, tq, tk, d in shapes("attention_shapes.json", word):
        q, k, v = (torch.randn(1, bh, t, d) for t in (tq, tk, tk))
        with torch.inference_mode():
            fwd = median_time(lambda: F.scaled_dot_product_attention(q, k, v))
        qg, kg, vg = (x.clone().requires_grad_(True) for x in (q, k, v))
        o = F.scaled_dot_product_attention(qg, kg, vg)
        go = torch.randn_like(o)
        bwd = median_time(lambda: torch.autograd.grad(o, (qg, kg, vg), go, retain_graph=True))
        # Products only: q·kᵀ and P·v forward; backward the same two again, dP, dQ and dK.
        gflop = 2 * bh * tq * tk * d / 1e9
        print(f"{what:42} forward {fwd * 1e3:8.1f} ms {2 * gflop / fwd:6.1f} GFLOP/s   "
              f"backward {bwd * 1e3:8.1f} ms {5 * gflop / bwd:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
