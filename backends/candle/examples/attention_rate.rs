//! Milliseconds of adp's CPU attention (`adp_backend_candle::attention_cpu`: one pass per block of
//! query rows, forward and backward to q, k and v), at the UNet's and the VAE's attention shapes
//! of SD 2.1 (`tools/bench/attention_shapes.json`); `tools/bench/attention_rate.py` times PyTorch's
//! `scaled_dot_product_attention` at the same shapes and threads. GFLOP/s count the products only
//! (two forward, five backward). Medians of 5 after one warm-up.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p adp-backend-candle --example attention_rate
use adp_backend_candle::attention_cpu::{backward, forward, Dims};
use std::time::Instant;

fn median_ms(mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn main() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tools/bench/attention_shapes.json");
    let text = std::fs::read_to_string(path).expect("tools/bench/attention_shapes.json");
    let shapes: Vec<(String, usize, usize, usize, usize)> =
        serde_json::from_str(&text).expect("attention_shapes.json: [what, bh, tq, tk, d] rows");
    for (what, bh, tq, tk, d) in shapes {
        let randn = |seed, n| adp_api::rng::normals(seed, n);
        let (q, k, v) = (randn(1, bh * tq * d), randn(2, bh * tk * d), randn(3, bh * tk * d));
        let go = randn(4, bh * tq * d);
        let dims = Dims { bh, tq, tk, d, dv: d };
        let scale = 1.0 / (d as f32).sqrt();
        let mut o = vec![0f32; bh * tq * d];
        let fwd = median_ms(|| forward(&q, &k, &v, dims, scale, &mut o));
        let bwd = median_ms(|| drop(backward(&q, &k, &v, &o, &go, dims, scale)));
        let gflop = 2.0 * (bh * tq * tk * d) as f64 / 1e9;
        println!(
            "{what:42} forward {fwd:8.1} ms {:6.1} GFLOP/s   backward {bwd:8.1} ms {:6.1} GFLOP/s",
            2.0 * gflop / fwd * 1e3,
            5.0 * gflop / bwd * 1e3
        );
    }
}
