//! Group and layer norm on the CPU for contiguous f32 data, forward and input gradient, each one
//! pass per normalised block spread over the caller's pool. The tensor code of `crate::norm`
//! makes 6–8 whole-tensor passes per norm, each on one thread (candle's element-wise maps never
//! reach the caller's pool, see `crate::threads`), plus a copy of the input.
use rayon::prelude::*;

/// A norm over contiguous data: consecutive blocks normalised on their own, each `channels`
/// runs of `run` values; run `j` of block `i` uses weight and bias `(i % groups)·channels + j`.
/// Group norm over `[B, C, S]`: `groups` groups, `C / groups` channels, runs of `S`. Layer norm
/// over `[.., D]`: one group, `D` channels, runs of 1.
#[derive(Clone, Copy, Debug)]
pub struct Blocks {
    pub groups: usize,
    pub channels: usize,
    pub run: usize,
}

impl Blocks {
    fn len(&self) -> usize {
        self.channels * self.run
    }

    /// Blocks per task, so that a task holds at least a few thousand values.
    fn per_task(&self) -> usize {
        (1 << 14) / self.len().max(1) + 1
    }

    /// The weight and bias index of each run of block `i`.
    fn affine(&self, i: usize) -> std::ops::Range<usize> {
        let first = (i % self.groups) * self.channels;
        first..first + self.channels
    }
}

/// Independent f64 partial sums: one running f64 sum is bound by the adder's latency (a few
/// cycles per value); eight lanes vectorise and keep f64's accuracy.
const LANES: usize = 8;

/// `(Σ f(a, b, c).0, Σ f(a, b, c).1)` over three slices of one length, in f64 lanes.
fn sums(a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> (f64, f64)) -> (f64, f64) {
    let (mut s, mut t) = ([0f64; LANES], [0f64; LANES]);
    let chunks = a
        .chunks_exact(LANES)
        .zip(b.chunks_exact(LANES))
        .zip(c.chunks_exact(LANES));
    for ((a, b), c) in chunks {
        for l in 0..LANES {
            let (u, v) = f(a[l], b[l], c[l]);
            s[l] += u;
            t[l] += v;
        }
    }
    let tail = a.len() - a.len() % LANES;
    let (mut s, mut t) = (s.iter().sum::<f64>(), t.iter().sum::<f64>());
    for ((&a, &b), &c) in a[tail..].iter().zip(&b[tail..]).zip(&c[tail..]) {
        let (u, v) = f(a, b, c);
        s += u;
        t += v;
    }
    (s, t)
}

/// Mean and `1/√(var + eps)` of a block, summed in f64 (two passes: no cancellation).
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = sums(x, x, x, |v, _, _| (v as f64, 0.0)).0 / n;
    let var = sums(x, x, x, |v, _, _| ((v as f64 - mean).powi(2), 0.0)).0 / n;
    (mean as f32, (1.0 / (var + eps).sqrt()) as f32)
}

/// `y = (x − mean)·rstd·weight + bias` per block.
pub fn forward(x: &[f32], weight: &[f32], bias: &[f32], blocks: Blocks, eps: f64) -> Vec<f32> {
    let len = blocks.len();
    let mut y = vec![0f32; x.len()];
    if len == 0 {
        return y;
    }
    y.par_chunks_mut(len)
        .zip(x.par_chunks(len))
        .enumerate()
        .with_min_len(blocks.per_task())
        .for_each(|(i, (y, x))| {
            let (mean, rstd) = stats(x, eps);
            let affine = blocks.affine(i);
            let (weight, bias) = (&weight[affine.clone()], &bias[affine]);
            if blocks.run == 1 {
                // A layer norm: one weight per value, so one pass over the row.
                let values = y.iter_mut().zip(x).zip(weight.iter().zip(bias));
                values.for_each(|((y, &x), (&w, &b))| *y = (x - mean) * rstd * w + b);
                return;
            }
            let runs = y.chunks_mut(blocks.run).zip(x.chunks(blocks.run));
            for ((y, x), (&w, &b)) in runs.zip(weight.iter().zip(bias)) {
                let (scale, shift) = (rstd * w, b - mean * rstd * w);
                y.iter_mut().zip(x).for_each(|(y, &x)| *y = x * scale + shift);
            }
        });
    y
}

/// The input gradient from the output gradient `dy`, the weight and bias frozen: with
/// `x̂ = (x − mean)·rstd` and `g = dy·weight`, `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))` per block;
/// the statistics are recomputed from `x`.
pub fn backward(x: &[f32], weight: &[f32], dy: &[f32], blocks: Blocks, eps: f64) -> Vec<f32> {
    let len = blocks.len();
    let mut dx = vec![0f32; x.len()];
    if len == 0 {
        return dx;
    }
    dx.par_chunks_mut(len)
        .zip(x.par_chunks(len).zip(dy.par_chunks(len)))
        .enumerate()
        .with_min_len(blocks.per_task())
        .for_each(|(i, (dx, (x, dy)))| {
            let (mean, rstd) = stats(x, eps);
            let w = &weight[blocks.affine(i)];
            let (sum_g, sum_gx) = if blocks.run == 1 {
                sums(x, dy, w, |x, dy, w| ((dy * w) as f64, (dy * w * (x - mean)) as f64))
            } else {
                let runs = x.chunks(blocks.run).zip(dy.chunks(blocks.run)).zip(w);
                runs.fold((0.0, 0.0), |(g, gx), ((x, dy), &w)| {
                    let (s, t) = sums(x, dy, dy, |x, dy, _| (dy as f64, (dy * (x - mean)) as f64));
                    (g + s * w as f64, gx + t * w as f64)
                })
            };
            let n = len as f64;
            let (mean_g, mean_gx) = ((sum_g / n) as f32, (sum_gx * rstd as f64 / n) as f32);
            let grad = |dx: &mut f32, x: f32, g: f32| *dx = rstd * (g - mean_g - (x - mean) * rstd * mean_gx);
            if blocks.run == 1 {
                let values = dx.iter_mut().zip(x).zip(dy.iter().zip(w));
                values.for_each(|((dx, &x), (&dy, &w))| grad(dx, x, dy * w));
                return;
            }
            let runs = dx
                .chunks_mut(blocks.run)
                .zip(x.chunks(blocks.run).zip(dy.chunks(blocks.run)));
            for ((dx, (x, dy)), &w) in runs.zip(w) {
                dx.iter_mut()
                    .zip(x.iter().zip(dy))
                    .for_each(|(dx, (&x, &dy))| grad(dx, x, dy * w));
            }
        });
    dx
}
