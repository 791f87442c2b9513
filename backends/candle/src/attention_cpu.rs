//! Attention's forward pass on the CPU in one pass per block of query rows, as PyTorch's fused
//! `scaled_dot_product_attention` does on the CPU: a block's scores (at most [`BLOCK_SCORES`]) stay
//! in a per-thread buffer in the core's cache, are turned into probabilities in place with a
//! vectorised `exp`, and are multiplied by `v` straight into the output. Composed of candle ops,
//! every chunk of scores was a fresh tensor of up to 128 MiB (faulted in page by page, since glibc
//! maps blocks that large afresh), softmax ran a scalar `expf`, and only 2 chunks' work was in
//! flight at a time (`perf`: a fifth of an SD 2.1 UNet call at 512 px).
use std::cell::RefCell;

use rayon::prelude::*;

/// Most scores one block of query rows holds: 2^17 f32, 512 KiB, half of a Zen 4 core's L2.
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
    let rows = (BLOCK_SCORES / tk).clamp(16, 256);
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
    // SAFETY (both products): the slices were sized above to exactly these row-major shapes; kᵀ
    // is k read with its strides swapped.
    unsafe {
        gemm::gemm(
            n,
            tk,
            d,
            s.as_mut_ptr(),
            1,
            tk as isize,
            false,
            q.as_ptr(),
            1,
            d as isize,
            k.as_ptr(),
            d as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    let mut sums = [0f32; 256];
    for (row, sum) in s.chunks_exact_mut(tk).zip(sums.iter_mut()) {
        *sum = exp_shifted(row, scale);
    }
    unsafe {
        gemm::gemm(
            n,
            dv,
            tk,
            o.as_mut_ptr(),
            1,
            dv as isize,
            false,
            s.as_ptr(),
            1,
            tk as isize,
            v.as_ptr(),
            1,
            dv as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    for (row, sum) in o.chunks_exact_mut(dv).zip(sums) {
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
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
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    // 8 partial sums, so that the loop vectorises (a single f32 sum is a serial chain).
    let mut sums = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for c in &mut chunks {
        for (x, s) in c.iter_mut().zip(sums.iter_mut()) {
            *x = exp((*x - max) * scale);
            *s += *x;
        }
    }
    for x in chunks.into_remainder() {
        *x = exp((*x - max) * scale);
        sums[0] += *x;
    }
    sums.iter().sum()
}

/// `e^x` for `x ≤ 0` to about 2 ulp, branch-free so that loops over it vectorise (Cephes' `expf`:
/// `x = n·ln 2 + r`, a degree-6 polynomial for `e^r` on |r| ≤ ln 2 / 2, times `2^n`). Below −87.3
/// (where `e^x` leaves f32's normal range) it gives `e^−87.3` ≈ 1.2e-38, not 0: nothing next to a
/// row's maximum (whose term is 1) can tell. NaN stays NaN (`f32::max` would drop it).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = if x < -87.3 { -87.3 } else { x };
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p.mul_add(r, 1.398_2e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let y = p.mul_add(r * r, r) + 1.0;
    y * f32::from_bits((((n as i32) + 127) as u32) << 23)
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

    fn reference(q: &[f32], k: &[f32], v: &[f32], dims: Dims, scale: f32) -> Vec<f64> {
        let Dims { bh, tq, tk, d, dv } = dims;
        let mut out = vec![0f64; bh * tq * dv];
        for h in 0..bh {
            for i in 0..tq {
                let s: Vec<f64> = (0..tk)
                    .map(|j| {
                        (0..d)
                            .map(|c| q[(h * tq + i) * d + c] as f64 * k[(h * tk + j) * d + c] as f64)
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..dv {
                    out[(h * tq + i) * dv + c] =
                        (0..tk).map(|j| e[j] * v[(h * tk + j) * dv + c] as f64).sum::<f64>() / z;
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition() {
        // One block; several blocks with a partial last one; keys fewer than a vector; d ≠ dv.
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
            let (q, k, v) = (
                random(dims.bh * dims.tq * dims.d, seed + 1),
                random(dims.bh * dims.tk * dims.d, seed + 2),
                random(dims.bh * dims.tk * dims.dv, seed + 3),
            );
            let scale = 1.0 / (dims.d as f32).sqrt();
            let mut out = vec![f32::NAN; dims.bh * dims.tq * dims.dv];
            forward(&q, &k, &v, dims, scale, &mut out);
            let want = reference(&q, &k, &v, dims, scale);
            let bound = want.iter().fold(1f64, |m, x| m.max(x.abs()));
            let err = out
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(err <= TOLERANCE * bound, "{dims:?}: error {err}");
        }
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        for i in 0..=100_000 {
            let x = -87.0 * i as f32 / 100_000.0;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 4e-7 * want, "exp({x}) = {got}, want {want}");
        }
        assert!(exp(-1e30) < 2e-38 && exp(f32::NEG_INFINITY) < 2e-38);
        assert!(exp(f32::NAN).is_nan());
    }
}
