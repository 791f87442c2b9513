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

/// Mean and `1/√(var + eps)` of a block, summed in f64 (two passes: no cancellation).
fn stats(x: &[f32], eps: f64) -> (f32, f32) {
    let n = x.len().max(1) as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
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
            let runs = y.chunks_mut(blocks.run).zip(x.chunks(blocks.run));
            for ((y, x), (&w, &b)) in runs.zip(weight[affine.clone()].iter().zip(&bias[affine])) {
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
            let runs = || x.chunks(blocks.run).zip(dy.chunks(blocks.run)).zip(w);
            let (mut sum_g, mut sum_gx) = (0f64, 0f64);
            for ((x, dy), &w) in runs() {
                let (g, gx) = x.iter().zip(dy).fold((0f32, 0f32), |(g, gx), (&x, &dy)| {
                    (g + dy * w, gx + dy * w * (x - mean) * rstd)
                });
                sum_g += g as f64;
                sum_gx += gx as f64;
            }
            let n = len as f64;
            let (mean_g, mean_gx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
            for (dx, ((x, dy), &w)) in dx.chunks_mut(blocks.run).zip(runs()) {
                dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(dx, (&x, &dy))| {
                    *dx = rstd * (dy * w - mean_g - (x - mean) * rstd * mean_gx);
                });
            }
        });
    dx
}
