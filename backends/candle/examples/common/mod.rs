//! What the rate examples (`conv_rate`, `attention_rate`, `matmul_rate`) share: the timing of one
//! kernel call, and the choice of shapes by a word on the command line.
use std::time::Instant;

/// Seconds per call, the median of `reps` after one warm-up.
pub fn time(reps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let mut t = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f().map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[reps / 2])
}

/// Whether the shape described by `what` is to be timed: every shape, or with a word as the
/// first argument only those whose description contains it (e.g. `24×24`, `VAE`), as the Python
/// side (`tools/bench/rates.py`) takes it.
#[allow(dead_code)] // matmul_rate times its own list
pub fn wanted(what: &str) -> bool {
    std::env::args().nth(1).is_none_or(|word| what.contains(&word))
}
