//! Milliseconds of adp's CPU attention (`adp_backend_candle::attention_cpu`: one pass per block of
//! query rows, forward and backward to q, k and v), at the UNet's and the VAE's attention shapes
//! of SD 2.1 (`tools/bench/attention_shapes.json`); `tools/bench/attention_rate.py` times PyTorch's
//! `scaled_dot_product_attention` at the same shapes and threads. GFLOP/s count the products only
//! (two forward, five backward). Medians of 5 after one warm-up.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p adp-backend-candle --example attention_rate [WORD]
//!
//! With WORD, only the shapes whose description contains it (e.g. `VAE`), as `conv_rate`.
use adp_backend_candle::attention_cpu::{backward, forward, Dims};
use common::time;

mod common;

/// `[what, heads × batch, query rows, key rows, head width]`: the shapes
/// `tools/bench/attention_rate.py` times too.
const SHAPES: &str = include_str!("../../../tools/bench/attention_shapes.json");

fn main() -> candle_core::Result<()> {
    let shapes: Vec<(String, usize, usize, usize, usize)> =
        serde_json::from_str(SHAPES).expect("tools/bench/attention_shapes.json");
    for (what, bh, tq, tk, d) in shapes.into_iter().filter(|s| common::wanted(&s.0)) {
        let randn = |seed, n| adp_api::rng::normals(seed, n);
        let (q, k, v) = (randn(1, bh * tq * d), randn(2, bh * tk * d), randn(3, bh * tk * d));
        let go = randn(4, bh * tq * d);
        let dims = Dims { bh, tq, tk, d, dv: d };
        let scale = 1.0 / (d as f32).sqrt();
        let mut o = vec![0f32; bh * tq * d];
        let fwd = time(5, || {
            forward(&q, &k, &v, dims, scale, &mut o);
            Ok(())
        })? * 1e3;
        let bwd = time(5, || {
            backward(&q, &k, &v, &o, &go, dims, scale);
            Ok(())
        })? * 1e3;
        let gflop = 2.0 * (bh * tq * tk * d) as f64 / 1e9;
        println!(
            "{what:42} forward {fwd:8.1} ms {:6.1} GFLOP/s   backward {bwd:8.1} ms {:6.1} GFLOP/s",
            2.0 * gflop / fwd * 1e3,
            5.0 * gflop / bwd * 1e3
        );
    }
    Ok(())
}
