//! `ADP_CANDLE_OP_TIMES=1`: adp's custom ops print the wall time of each backward call to stderr,
//! one line `adp-op-time <op> <µs> <dims>` (the output gradient's dims); a UNet forward pass
//! (tracked or not, after a line `unet-start`), a learning step's whole backward pass and the
//! release of its graph print the same line as ops `unet-forward`, `backward-pass` and
//! `graph-release`; and each forward call of those ops, tracked or not, prints
//! `adp-op-forward <op> <µs> <dims>` (the input's dims). `perf` cannot say which op a pool
//! worker's samples belong to (rayon's workers carry no caller); these ops run one at a time on
//! the caller's thread, so their wall times add up, and what the whole pass spends beyond them is
//! candle's own ops and its gradient bookkeeping. `tools/bench/backward_profile.py` sums the
//! lines per op and shape next to PyTorch's autograd profile of the same step.
use std::sync::OnceLock;
use std::time::Instant;

/// Prints its line when dropped; `None` (nothing measured) unless the variable is set.
pub struct OpTimer {
    /// `adp-op-time` (a backward call or a part) or `adp-op-forward` (a forward call).
    tag: &'static str,
    op: &'static str,
    dims: Vec<usize>,
    start: Instant,
}

/// A timer for one backward call of `op` on an output gradient of `dims`.
pub fn backward(op: &'static str, dims: &[usize]) -> Option<OpTimer> {
    timer("adp-op-time", op, dims)
}

/// A timer for one forward call of `op` on an input of `dims`, tracked or not: its line is
/// `adp-op-forward <op> <µs> <dims>`, so that a tracked forward pass can be set against an
/// untracked one kind of op by kind of op.
pub fn forward(op: &'static str, dims: &[usize]) -> Option<OpTimer> {
    timer("adp-op-forward", op, dims)
}

/// A timer for a whole part of a learning step (`unet-forward`: a UNet forward pass, tracked or
/// not; `graph-release`: dropping the graph and its gradients), its line printed like an op's.
pub fn part(name: &'static str, dims: &[usize]) -> Option<OpTimer> {
    timer("adp-op-time", name, dims)
}

/// Prints `adp-op-time <name> 0 <dims>` at once: where a part begins (`unet-start`), so that the
/// forward calls printed after it can be told from those before (the VAE's, the text encoder's).
pub fn mark(name: &'static str, dims: &[usize]) {
    drop(timer("adp-op-time", name, dims));
}

fn timer(tag: &'static str, op: &'static str, dims: &[usize]) -> Option<OpTimer> {
    static ON: OnceLock<bool> = OnceLock::new();
    ON.get_or_init(|| std::env::var_os("ADP_CANDLE_OP_TIMES").is_some_and(|v| v != "0"))
        .then(|| OpTimer {
            tag,
            op,
            dims: dims.to_vec(),
            start: Instant::now(),
        })
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let us = self.start.elapsed().as_micros();
        eprintln!("{} {} {us} {:?}", self.tag, self.op, self.dims);
    }
}
