//! Milliseconds of the UNet feed-forward's gate (`a · GELU(gate)`, `adp_backend_candle::geglu`)
//! against the same gate composed of candle ops (two narrows, `gelu_erf`, a product), forward and
//! backward, at the transformer blocks' shapes of SD 2.1 (64×64 and 32×32 tokens at 512 px, 96×96
//! at 768 px). The backward column includes the product and sum that make a scalar to
//! differentiate. Medians of 7 after one warm-up.
//!
//!     RAYON_NUM_THREADS=2 cargo run --release -p adp-backend-candle --example geglu_rate
use adp_backend_candle::geglu::geglu;
use candle_core::{Device, Result, Tensor, Var, D};
use std::time::Instant;

/// A gate: the fused op or the composed one.
type Gate = fn(&Tensor) -> Result<Tensor>;

fn composed(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    x.narrow(D::Minus1, 0, half)? * x.narrow(D::Minus1, half, half)?.gelu_erf()?
}

fn median(mut t: Vec<f64>) -> f64 {
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    // (tokens, channels): the projection is `[tokens, 8·channels]`.
    for (tokens, c) in [(4096usize, 320usize), (1024, 640), (9216, 320)] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (1, tokens, 8 * c), &dev)?)?;
        let w = Tensor::randn(0f32, 1., (1, tokens, 4 * c), &dev)?;
        let gates: [(&str, Gate); 2] = [("composed", composed), ("fused", geglu)];
        for (name, gate) in gates {
            let (mut fwd, mut bwd) = (vec![], vec![]);
            for rep in 0..8 {
                let start = Instant::now();
                let y = gate(x.as_tensor())?;
                let forward = start.elapsed().as_secs_f64() * 1e3;
                let start = Instant::now();
                drop((&y * &w)?.sum_all()?.backward()?);
                if rep > 0 {
                    fwd.push(forward);
                    bwd.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
            println!(
                "[{tokens}, {}] {name:>8}: forward {:6.1} ms, backward {:6.1} ms",
                8 * c,
                median(fwd),
                median(bwd)
            );
        }
    }
    Ok(())
}
