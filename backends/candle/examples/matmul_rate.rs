//! GFLOP/s of candle's CPU matrix product (the `gemm` crate) at the shapes that dominate the
//! CLIP and UNet rows of `adp bench`; `tools/bench/matmul_rate.py` times `torch.matmul` at the
//! same shapes and threads. Where candle's rows trail PyTorch's and the time is in the product,
//! this is the limit, measured.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p adp-backend-candle --example matmul_rate
use candle_core::{Device, Tensor};
use common::time;

mod common;

/// `(what, batch, m, k, n)`.
const SHAPES: [(&str, usize, usize, usize, usize); 8] = [
    ("ViT-B-16 qkv (197 tokens)", 1, 197, 768, 2304),
    ("ViT-B-16 MLP up", 1, 197, 768, 3072),
    ("ViT-B-16 MLP down", 1, 197, 3072, 768),
    ("SD 2.1 768 px attention QK^T, 1 head", 5, 2304, 64, 2304),
    ("SD 2.1 768 px feed-forward up", 1, 2304, 640, 5120),
    ("SD 2.1 768 px feed-forward down", 1, 2304, 2560, 640),
    ("ViT-B-16 MLP down, 8 photos", 1, 1576, 3072, 768),
    ("ViT-B-16 MLP up, 4 photos", 1, 788, 768, 3072),
];

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for (what, b, m, k, n) in SHAPES {
        let a = Tensor::randn(0f32, 1.0, (b, m, k), &dev)?;
        // The right factor as it is stored (`[k, n]`) and as a linear layer's weight (`[n, k]`,
        // transposed: what `candle_nn::Linear` multiplies by).
        let w = Tensor::randn(0f32, 1.0, (b, k, n), &dev)?;
        let wt = Tensor::randn(0f32, 1.0, (b, n, k), &dev)?.transpose(1, 2)?;
        for (layout, w) in [("[k, n]", &w), ("[n, k]ᵀ", &wt)] {
            let s = time(20, || a.matmul(w).map(drop))?;
            let gflops = 2.0 * (b * m * k * n) as f64 / s / 1e9;
            println!(
                "{what:40} {b}×{m}×{k}×{n} {layout:8}: {:8.3} ms {gflops:6.1} GFLOP/s",
                s * 1e3
            );
        }
    }
    // A frozen linear layer's input gradient `dy · W` (`frozen::LinearOp::bwd`), with the weight
    // stored `[in, out]` as the layer keeps it: plain, and as `(Wᵀ · dyᵀ)ᵀ`, the form taken below
    // `FEW_ROWS` rows. `(rows, in, out)`.
    for (rows, i, o) in [
        (77, 1024, 4096),
        (77, 4096, 1024),
        (77, 1024, 1024),
        (256, 1280, 10240),
        (4096, 320, 2560),
        (4096, 1280, 320),
    ] {
        let wt = Tensor::randn(0f32, 1.0, (i, o), &dev)?;
        let dy = Tensor::randn(0f32, 1.0, (rows, o), &dev)?;
        let forms: [(&str, &dyn Fn() -> candle_core::Result<Tensor>); 2] = [
            ("dy·W", &|| dy.matmul(&wt.t()?)),
            ("(Wᵀ·dyᵀ)ᵀ", &|| wt.matmul(&dy.t()?)?.t()?.contiguous()),
        ];
        for (form, product) in forms {
            let s = time(20, || product().map(drop))?;
            let gflops = 2.0 * (rows * i * o) as f64 / s / 1e9;
            println!(
                "input gradient {rows}×{i}×{o} {form:10}: {:8.3} ms {gflops:6.1} GFLOP/s",
                s * 1e3
            );
        }
    }
    Ok(())
}
