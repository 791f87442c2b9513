//! What the rate examples (`conv_rate`, `attention_rate`, `matmul_rate`) share: the timing of one kernel call.
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
