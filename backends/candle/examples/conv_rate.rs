//! GFLOP/s of adp's CPU convolution (`conv_cpu`: im2col tiles and `gemm` products, or Winograd's
//! F(2×2, 3×3) in `winograd_cpu` where it applies), forward and input gradient, counted as the
//! direct convolution's multiply-adds (`2·C·O·9·oh·ow`) whatever the algorithm, at the 3×3
//! shapes that dominate the VAE encoder (768 px) and the SD 2.1 UNet (768 px: a 96×96 latent);
//! `tools/bench/conv_rate.py` times PyTorch's (oneDNN) at the same shapes and threads. Where
//! candle's diffusion rows trail PyTorch's, this is the part measured.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p adp-backend-candle --example conv_rate [WORD]
//!
//! With WORD, only the shapes whose description contains it (e.g. `24×24`, `VAE`).
use adp_backend_candle::conv_cpu::{conv2d, conv2d_input_grad};
use candle_core::{Device, Tensor};
use common::time;

mod common;

/// `[what, in channels, out channels, side, stride]`, kernel 3×3, padding 1, batch 1: the shapes
/// `tools/bench/conv_rate.py` times too.
const SHAPES: &str = include_str!("../../../tools/bench/conv_shapes.json");

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let shapes: Vec<(String, usize, usize, usize, usize)> =
        serde_json::from_str(SHAPES).expect("tools/bench/conv_shapes.json");
    for (what, c, o, side, stride) in shapes.into_iter().filter(|s| common::wanted(&s.0)) {
        let x = Tensor::randn(0f32, 1.0, (1, c, side, side), &dev)?;
        let w = Tensor::randn(0f32, 0.05, (o, c, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 0.05, o, &dev)?;
        let y = conv2d(&x, &w, Some(&b), 1, stride, 1)?.expect("the CPU f32 path");
        let fwd = time(5, || conv2d(&x, &w, Some(&b), 1, stride, 1).map(drop))?;
        let dx = time(5, || conv2d_input_grad(&y, &w, (side, side), 1, stride, 1).map(drop))?;
        let (oh, ow) = (y.dims()[2], y.dims()[3]);
        let gflop = 2.0 * (c * o * 9 * oh * ow) as f64 / 1e9;
        println!(
            "{what:36} forward {:8.1} ms {:6.1} GFLOP/s   input gradient {:8.1} ms {:6.1} GFLOP/s",
            fwd * 1e3,
            gflop / fwd,
            dx * 1e3,
            gflop / dx
        );
    }
    Ok(())
}
