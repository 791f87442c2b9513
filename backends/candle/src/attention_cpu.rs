//! Attention's forward pass on the CPU in one pass per block of query rows, as PyTorch's fused
//! `scaled_dot_product_attention` does on the CPU: a block's scores (at most [`BLOCK_SCORES`]) stay
//! in a per-thread buffer in the core's cache, are turned into probabilities in place with a
//! vectorised `exp`, and are multiplied by `v` straight into the output. Composed of candle ops,
//! every chunk of scores was a fresh tensor of up to 128 MiB (faulted in page by page, since glibc
//! maps blocks that large afresh), softmax ran a scalar `expf`, and only 2 chunks' work was in
//! flight at a time (`perf`: a fifth of an SD 2.1 UNet call at 512 px).
use std::cell::RefCell;

use rayon::prelude::*;

use crate::gemm_view::{self, Mat, Threads};
use crate::math::exp;

/// Scores one block of query rows holds for heads 64 wide, beyond its least rows: 2^17 f32,
/// 512 KiB, half of a Zen 4 core's L2. Wider heads do more work per score, so their blocks may
/// hold proportionally more.
const BLOCK_SCORES: usize = 1 << 17;

/// Sizes of one attention: `bh` heads × batch, `tq` query and `tk` key rows, `d` the query/key
/// width, `dv` the value width.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub bh: usize,
    pub tq: usize,
    pub tk: usize,
    pub d: usize,
    pub dv: usize,
}

thread_local! {
    /// One block of scores per thread, reused from call to call.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out = softmax(scale · q·kᵀ)·v` for contiguous row-major `q: [bh, tq, d]`, `k: [bh, tk, d]`,
/// `v: [bh, tk, dv]`, `out: [bh, tq, dv]`, on the calling thread's rayon pool.
pub fn forward(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32, out: &mut [f32]) {
    let Dims { bh, tq, tk, d, dv } = dims;
    assert!(q.len() == bh * tq * d && k.len() == bh * tk * d && v.len() == bh * tk * dv);
    assert!(out.len() == bh * tq * dv);
    if out.is_empty() {
        return;
    }
    if tk == 0 {
        // No keys: softmax over nothing; the output is defined as zeros (as the composition's
        // empty sum gives).
        out.fill(0.0);
        return;
    }
    let rows = block_rows(tk, d);
    out.par_chunks_mut(tq * dv).enumerate().for_each(|(h, out_h)| {
        let (q_h, k_h, v_h) = (
            &q[h * tq * d..][..tq * d],
            &k[h * tk * d..][..tk * d],
            &v[h * tk * dv..][..tk * dv],
        );
        out_h.par_chunks_mut(rows * dv).enumerate().for_each(|(blk, o)| {
            let n = o.len() / dv;
            let q_b = &q_h[blk * rows * d..][..n * d];
            SCORES.with(|s| {
                let mut s = s.borrow_mut();
                s.resize(n * tk, 0.0);
                block(q_b, k_h, v_h, (n, tk, d, dv), scale, &mut s, o);
            });
        });
    });
}

/// Most query rows in a block (the size of a block's array of row sums).
const MAX_ROWS: usize = 256;
/// Fewest query rows in a block: each block's products pack all of `k` and `v` (`tk · d` values
/// each) for `rows · tk · d` multiply-adds, so few rows spend the block on packing. With 16 rows
/// at 9216 keys (SD 2.1's 96×96 tokens), a 1-head VAE attention at 4096 keys and 32 rows, adp's
/// attention took 1.6× and 2.7× PyTorch's time (`examples/attention_rate.rs`).
const MIN_ROWS: usize = 128;

/// Query rows per block for `tk` keys `d` wide: a block's scores fill about
/// [`BLOCK_SCORES`]` · d / 64`, within [`MIN_ROWS`] and [`MAX_ROWS`].
fn block_rows(tk: usize, d: usize) -> usize {
    (BLOCK_SCORES * d.max(64) / 64 / tk.max(1)).clamp(MIN_ROWS, MAX_ROWS)
}

/// One block of `n` query rows: scores into `s`, probabilities in place, then `o = P·v` with each
/// row divided by its sum.
fn block(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    (n, tk, d, dv): (usize, usize, usize, usize),
    scale: f32,
    s: &mut [f32],
    o: &mut [f32],
) {
    let m = Mat::rows;
    product(s, tk, false, m(q, d), m(k, d).t(), (n, tk, d), 1.0);
    let mut sums = [0f32; MAX_ROWS];
    for (row, sum) in s.chunks_exact_mut(tk).zip(sums.iter_mut()) {
        *sum = exp_shifted(row, scale);
    }
    product(o, dv, false, m(s, tk), m(v, dv), (n, dv, tk), 1.0);
    for (row, sum) in o.chunks_exact_mut(dv).zip(sums) {
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// Gradients of [`forward`] given its inputs, its output `o: [bh, tq, dv]` and the output's
/// gradient `go` (same shape): `(dq, dk, dv)` shaped as `q`, `k`, `v`. Each block of query rows
/// recomputes its probabilities `P` (FlashAttention's backward pass) and adds the standard terms:
/// `dV += Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`, `dQ = scale·dS·K`, `dK += scale·dSᵀ·Q`.
/// Each head's query rows are split over the pool's threads, each thread with its own `dK`, `dV`
/// sums, added up at the end. Every size must be nonzero.
pub fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    o: &[f32],
    go: &[f32],
    dims: Dims,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let Dims { bh, tq, tk, d, dv } = dims;
    assert!(bh * tq * tk * d * dv != 0, "attention backward: empty dims {dims:?}");
    assert!(q.len() == bh * tq * d && k.len() == bh * tk * d && v.len() == bh * tk * dv);
    assert!(o.len() == bh * tq * dv && go.len() == o.len());
    let rows = block_rows(tk, d);
    let span = tq.div_ceil(rows).div_ceil(rayon::current_num_threads().max(1)) * rows;
    let mut dq = vec![0f32; bh * tq * d];
    let partial: Vec<(usize, Vec<f32>, Vec<f32>)> = dq
        .par_chunks_mut(tq * d)
        .enumerate()
        .flat_map(|(h, dq_h)| {
            dq_h.par_chunks_mut(span * d).enumerate().map(move |(g, dq_g)| {
                let (mut dk_h, mut dv_h) = (vec![0f32; tk * d], vec![0f32; tk * dv]);
                for (b, dq_b) in dq_g.chunks_mut(rows * d).enumerate() {
                    let (start, n) = (h * tq + g * span + b * rows, dq_b.len() / d);
                    let block = BlockGrad {
                        q: &q[start * d..][..n * d],
                        o: &o[start * dv..][..n * dv],
                        go: &go[start * dv..][..n * dv],
                        k: &k[h * tk * d..][..tk * d],
                        v: &v[h * tk * dv..][..tk * dv],
                    };
                    SCORES.with(|s| {
                        let mut s = s.borrow_mut();
                        s.resize(2 * n * tk, 0.0);
                        let (p, dp) = s.split_at_mut(n * tk);
                        block.run((n, tk, d, dv), scale, [p, dp], dq_b, (&mut dk_h, &mut dv_h));
                    });
                }
                (h, dk_h, dv_h)
            })
        })
        .collect();
    let (mut dk, mut dvs) = (vec![0f32; bh * tk * d], vec![0f32; bh * tk * dv]);
    for (h, dk_h, dv_h) in partial {
        add(&mut dk[h * tk * d..][..tk * d], &dk_h);
        add(&mut dvs[h * tk * dv..][..tk * dv], &dv_h);
    }
    (dq, dk, dvs)
}

fn add(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(a, b)| *a += b);
}

/// One block of query rows of the backward pass, and its head's keys and values.
struct BlockGrad<'a> {
    q: &'a [f32],
    o: &'a [f32],
    go: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl BlockGrad<'_> {
    /// Writes this block's rows of `dq` and adds its terms to the head's `(dk, dv)` sums, with
    /// `[p, dp]` as `n × tk` scratch.
    fn run(
        &self,
        (n, tk, d, dv): (usize, usize, usize, usize),
        scale: f32,
        [p, dp]: [&mut [f32]; 2],
        dq: &mut [f32],
        (dk, dvs): (&mut [f32], &mut [f32]),
    ) {
        let m = Mat::rows;
        product(p, tk, false, m(self.q, d), m(self.k, d).t(), (n, tk, d), 1.0);
        for row in p.chunks_exact_mut(tk) {
            let inv = 1.0 / exp_shifted(row, scale);
            row.iter_mut().for_each(|x| *x *= inv);
        }
        product(dvs, dv, true, m(p, tk).t(), m(self.go, dv), (tk, dv, n), 1.0);
        product(dp, tk, false, m(self.go, dv), m(self.v, dv).t(), (n, tk, dv), 1.0);
        let rows = dp.chunks_exact_mut(tk).zip(p.chunks_exact(tk));
        for ((dp_row, p_row), (go_row, o_row)) in rows.zip(self.go.chunks_exact(dv).zip(self.o.chunks_exact(dv))) {
            let delta: f32 = go_row.iter().zip(o_row).map(|(a, b)| a * b).sum();
            dp_row.iter_mut().zip(p_row).for_each(|(x, p)| *x = p * (*x - delta));
        }
        product(dq, d, false, m(dp, tk), m(self.k, d), (n, d, tk), scale);
        product(dk, d, true, m(dp, tk).t(), m(self.q, d), (tk, d, n), scale);
    }
}

/// [`gemm_view::product`] on this thread: the callers are already spread over the pool, a block
/// each.
fn product(dst: &mut [f32], ld: usize, accumulate: bool, lhs: Mat, rhs: Mat, mnk: (usize, usize, usize), beta: f32) {
    gemm_view::product(dst, ld, accumulate, lhs, rhs, mnk, beta, Threads::Caller)
}

/// Replaces `row` by `exp(scale · (row − max row))` and returns its sum, with the widest vectors
/// this CPU has (`scale` > 0).
fn exp_shifted(row: &mut [f32], scale: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe { exp_shifted_avx2(row, scale) };
    }
    exp_shifted_any(row, scale)
}

/// The same code compiled for AVX2 + FMA; the crate's baseline is SSE2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_shifted_avx2(row: &mut [f32], scale: f32) -> f32 {
    exp_shifted_any(row, scale)
}

#[inline(always)]
fn exp_shifted_any(row: &mut [f32], scale: f32) -> f32 {
    // Three passes over a row in L1, each a plain map or a reduction over 8 lanes, so that each
    // vectorises (one fused loop did not: LLVM kept it 4 wide with shuffles).
    let max = lanes(row, f32::NEG_INFINITY, f32::max);
    row.iter_mut().for_each(|x| *x = exp((*x - max) * scale));
    lanes(row, 0.0, |a, b| a + b)
}

/// `row` reduced by `f`, as 8 independent lanes (a single running value is a serial chain).
#[inline(always)]
fn lanes(row: &[f32], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [init; 8];
    let chunks = row.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(init, |a, &x| f(a, x));
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = f(*a, x);
        }
    }
    acc.iter().fold(tail, |a, &x| f(a, x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Largest allowed |fused − f64 reference| relative to max(1, max |reference|): f32
    /// products over up to a few hundred keys reorder sums, and `exp` is within a few ulp.
    const TOLERANCE: f64 = 1e-5;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// The forward pass and the gradients for an output gradient `go`, in f64, by the
    /// definition: `(out, dq, dk, dv)`.
    fn reference(q: &[f32], k: &[f32], v: &[f32], go: &[f32], dims: Dims, scale: f32) -> [Vec<f64>; 4] {
        let Dims { bh, tq, tk, d, dv } = dims;
        let at = |x: &[f32], i: usize| x[i] as f64;
        let (mut out, mut dq, mut dk, mut dvs) = (
            vec![0f64; bh * tq * dv],
            vec![0f64; bh * tq * d],
            vec![0f64; bh * tk * d],
            vec![0f64; bh * tk * dv],
        );
        for h in 0..bh {
            for i in 0..tq {
                let (qi, oi) = ((h * tq + i) * d, (h * tq + i) * dv);
                let s: Vec<f64> = (0..tk)
                    .map(|j| (0..d).map(|c| at(q, qi + c) * at(k, (h * tk + j) * d + c)).sum::<f64>() * scale as f64)
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                for c in 0..dv {
                    out[oi + c] = (0..tk).map(|j| p[j] * at(v, (h * tk + j) * dv + c)).sum::<f64>();
                }
                let delta: f64 = (0..dv).map(|c| at(go, oi + c) * out[oi + c]).sum();
                for (j, &pj) in p.iter().enumerate() {
                    let (kj, vj) = ((h * tk + j) * d, (h * tk + j) * dv);
                    let dp: f64 = (0..dv).map(|c| at(go, oi + c) * at(v, vj + c)).sum();
                    let ds = pj * (dp - delta) * scale as f64;
                    for c in 0..dv {
                        dvs[vj + c] += pj * at(go, oi + c);
                    }
                    for c in 0..d {
                        dq[qi + c] += ds * at(k, kj + c);
                        dk[kj + c] += ds * at(q, qi + c);
                    }
                }
            }
        }
        [out, dq, dk, dvs]
    }

    fn assert_close(what: &str, got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{what}");
        let bound = want.iter().fold(1f64, |m, x| m.max(x.abs()));
        let err = got
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(err <= TOLERANCE * bound, "{what}: error {err}");
    }

    #[test]
    fn matches_the_definition() {
        // One block; several blocks with a partial last one, split over threads; keys fewer
        // than a vector; d ≠ dv.
        for (i, dims) in [
            Dims {
                bh: 2,
                tq: 5,
                tk: 7,
                d: 4,
                dv: 4,
            },
            Dims {
                bh: 3,
                tq: 300,
                tk: 1000,
                d: 8,
                dv: 5,
            },
            Dims {
                bh: 1,
                tq: 33,
                tk: 3,
                d: 16,
                dv: 2,
            },
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 10 * i as u64;
            let (q, k, v, go) = (
                random(dims.bh * dims.tq * dims.d, seed + 1),
                random(dims.bh * dims.tk * dims.d, seed + 2),
                random(dims.bh * dims.tk * dims.dv, seed + 3),
                random(dims.bh * dims.tq * dims.dv, seed + 4),
            );
            let scale = 1.0 / (dims.d as f32).sqrt();
            let mut out = vec![f32::NAN; dims.bh * dims.tq * dims.dv];
            forward(&q, &k, &v, dims, scale, &mut out);
            let (dq, dk, dv) = backward(&q, &k, &v, &out, &go, dims, scale);
            let [want, want_dq, want_dk, want_dv] = reference(&q, &k, &v, &go, dims, scale);
            for (what, got, want) in [
                ("out", &out, &want),
                ("dq", &dq, &want_dq),
                ("dk", &dk, &want_dk),
                ("dv", &dv, &want_dv),
            ] {
                assert_close(&format!("{dims:?} {what}"), got, want);
            }
        }
    }

    #[test]
    fn blocks_hold_enough_rows_to_pay_for_packing_k_and_v() {
        // SD 2.1's 96×96 and 64×64 tokens, the VAE's 1-head attention 512 wide, cross-attention.
        assert_eq!(block_rows(9216, 64), MIN_ROWS);
        assert_eq!(block_rows(4096, 64), MIN_ROWS);
        assert_eq!(block_rows(4096, 512), MAX_ROWS);
        assert_eq!(block_rows(9216, 512), MIN_ROWS); // 2^20 / 9216 = 113 rows of budget
        assert_eq!(block_rows(77, 64), MAX_ROWS);
        // Between the bounds the score budget decides (the definition test's 1000 keys: 3 blocks).
        assert_eq!(block_rows(1000, 64), BLOCK_SCORES / 1000);
        assert_eq!(block_rows(0, 0), MAX_ROWS);
    }

    /// The reference's gradients are those of `L = Σ go ⊙ out` by central differences (f64).
    #[test]
    fn the_reference_gradients_are_the_derivatives() {
        let dims = Dims {
            bh: 1,
            tq: 3,
            tk: 4,
            d: 2,
            dv: 3,
        };
        let (q, k, v, go) = (random(6, 1), random(8, 2), random(12, 3), random(9, 4));
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            let out = &reference(q, k, v, &go, dims, 0.7)[0];
            out.iter().zip(&go).map(|(o, g)| o * *g as f64).sum()
        };
        let [_, dq, dk, dv] = reference(&q, &k, &v, &go, dims, 0.7);
        let eps = 1e-2f32;
        for (which, grad) in [dq, dk, dv].iter().enumerate() {
            for i in 0..grad.len() {
                // The loss and the bumped input as f32 holds it (x ± eps rounds).
                let bump = |delta: f32| {
                    let mut xs = [q.clone(), k.clone(), v.clone()];
                    xs[which][i] += delta;
                    (loss(&xs[0], &xs[1], &xs[2]), xs[which][i] as f64)
                };
                let ((hi, x_hi), (lo, x_lo)) = (bump(eps), bump(-eps));
                let numeric = (hi - lo) / (x_hi - x_lo);
                assert!(
                    (numeric - grad[i]).abs() < 1e-4,
                    "input {which}[{i}]: {numeric} against {}",
                    grad[i]
                );
            }
        }
    }
}
