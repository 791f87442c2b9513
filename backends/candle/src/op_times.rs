//! `ADP_CANDLE_OP_TIMES=1`: adp's custom ops print the wall time of each backward call to stderr,
//! one line `adp-op-time <op> <µs> <dims>` (the output gradient's dims), and a learning step its
//! whole backward pass as op `backward-pass`. `perf` cannot say which op a pool worker's samples
//! belong to (rayon's workers carry no caller); these ops run one at a time on the caller's
//! thread, so their wall times add up, and what the whole pass spends beyond them is candle's
//! own ops and its gradient bookkeeping. `tools/bench/backward_profile.py` sums the lines per op
//! and shape next to PyTorch's autograd profile of the same step.
use std::sync::OnceLock;
use std::time::Instant;

/// Prints its line when dropped; `None` (nothing measured) unless the variable is set.
pub struct OpTimer {
    op: &'static str,
    dims: Vec<usize>,
    start: Instant,
}

/// A timer for one backward call of `op` on an output gradient of `dims`.
pub fn backward(op: &'static str, dims: &[usize]) -> Option<OpTimer> {
    static ON: OnceLock<bool> = OnceLock::new();
    ON.get_or_init(|| std::env::var_os("ADP_CANDLE_OP_TIMES").is_some_and(|v| v != "0"))
        .then(|| OpTimer {
            op,
            dims: dims.to_vec(),
            start: Instant::now(),
        })
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let us = self.start.elapsed().as_micros();
        eprintln!("adp-op-time {} {us} {:?}", self.op, self.dims);
    }
}
