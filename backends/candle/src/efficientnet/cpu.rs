//! The CPU kernels of EfficientNet-Lite inference (the backbone is frozen: no gradient flows).
//! Composed from candle's ops, each step of a block makes a full tensor of its own (the SAME
//! padding, the bias, ReLU6, the skip) and candle's 1×1 convolution copies its input element by
//! element before the matrix product: at 112×112 those passes cost more than the products
//! themselves. Here the depthwise convolution reads its input unpadded, and bias, ReLU6 and the
//! skip are one pass over the output, in place.
use adp_api::layout::same_padding;
use candle_core::{bail, CpuStorage, CustomOp1, InplaceOp1, InplaceOp2, Layout, Result, Shape};
use rayon::prelude::*;

/// The f32 elements of a contiguous CPU tensor.
fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: input not contiguous")
    };
    Ok(&storage.as_slice::<f32>()?[start..end])
}

fn contiguous_mut<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op}: output not contiguous")
    };
    match storage {
        CpuStorage::F32(v) => Ok(&mut v[start..end]),
        _ => bail!("{op}: f32 only"),
    }
}

/// Elements per channel plane of `[N, C, …]`, checking that `bias` has C entries.
fn plane(layout: &Layout, bias: &[f32], op: &str) -> Result<usize> {
    let dims = layout.dims();
    if dims.len() < 2 || dims[1] != bias.len() {
        bail!("{op}: shape {dims:?} for {} channels", bias.len())
    }
    Ok(dims[2..].iter().product())
}

/// `x + bias[c]`, then ReLU6 when `relu6`, on one channel plane.
fn finish(o: &mut [f32], bias: f32, relu6: bool) {
    if relu6 {
        o.iter_mut().for_each(|v| *v = (*v + bias).clamp(0.0, 6.0));
    } else {
        o.iter_mut().for_each(|v| *v += bias);
    }
}

/// In place on a contiguous `[N, C, H, W]`: plus the per-channel bias, then ReLU6 when `relu6`.
pub struct BiasAct<'a> {
    pub bias: &'a [f32],
    pub relu6: bool,
}

impl InplaceOp1 for BiasAct<'_> {
    fn name(&self) -> &'static str {
        "efficientnet-bias-act"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let hw = plane(layout, self.bias, self.name())?;
        let c = self.bias.len();
        let x = contiguous_mut(storage, layout, self.name())?;
        x.par_chunks_mut(hw.max(1))
            .enumerate()
            .for_each(|(p, o)| finish(o, self.bias[p % c], self.relu6));
        Ok(())
    }
}

/// In place on a contiguous `[N, C, H, W]`: plus the per-channel bias and the block's input
/// (the skip), same shape and contiguous.
pub struct BiasSkip<'a> {
    pub bias: &'a [f32],
}

impl InplaceOp2 for BiasSkip<'_> {
    fn name(&self) -> &'static str {
        "efficientnet-bias-skip"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        if l1.dims() != l2.dims() {
            bail!("{}: {:?} plus {:?}", self.name(), l1.dims(), l2.dims())
        }
        let hw = plane(l1, self.bias, self.name())?;
        let c = self.bias.len();
        let skip = contiguous(s2, l2, self.name())?;
        let x = contiguous_mut(s1, l1, self.name())?;
        x.par_chunks_mut(hw.max(1))
            .zip(skip.par_chunks(hw.max(1)))
            .enumerate()
            .for_each(|(p, (o, s))| {
                let b = self.bias[p % c];
                o.iter_mut().zip(s).for_each(|(v, s)| *v += b + s);
            });
        Ok(())
    }
}

/// The depthwise k×k convolution at stride s of an unpadded `[N, C, H, W]` with TensorFlow's
/// SAME padding (output `ceil(H / s)`, the odd padding pixel at the bottom / right), plus the
/// bias, then ReLU6 when `relu6`: one pass per output plane, planes in parallel.
pub struct Depthwise<'a> {
    /// `[C, k, k]`, row-major.
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub k: usize,
    pub s: usize,
    pub relu6: bool,
}

impl Depthwise<'_> {
    /// Output plane `o` `[ho, wo]` of input plane `x` `[h, w]` with `weight` `[k, k]`, padding
    /// `top` and `left`, with the fastest instructions this CPU has.
    fn plane(&self, x: &[f32], (h, w): (usize, usize), (top, left): (usize, usize), weight: &[f32], o: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2, checked just above.
            return unsafe { self.plane_avx2(x, (h, w), (top, left), weight, o) };
        }
        self.plane_any(x, (h, w), (top, left), weight, o)
    }

    /// The same code compiled for AVX2: the crate's baseline is SSE2, which halves the width of
    /// every vector of this loop.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn plane_avx2(&self, x: &[f32], hw: (usize, usize), pad: (usize, usize), weight: &[f32], o: &mut [f32]) {
        self.plane_any(x, hw, pad, weight, o)
    }

    #[inline(always)]
    fn plane_any(&self, x: &[f32], hw: (usize, usize), pad: (usize, usize), weight: &[f32], o: &mut [f32]) {
        if self.s == 1 {
            self.plane_stride1(x, hw, pad, weight, o)
        } else {
            self.plane_strided(x, hw, pad, weight, o)
        }
    }

    /// Stride 1: the plane is copied once into a zero-bordered one, `wp = w + k − 1` wide; then
    /// each tap is one long multiply-add over the flattened plane (output rows `wp` apart, their
    /// last `k − 1` columns unused), vectorised from end to end rather than row by row, where
    /// rows of 14 or 28 left most of the work to the loop's scalar tail.
    #[inline(always)]
    fn plane_stride1(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        (top, left): (usize, usize),
        weight: &[f32],
        o: &mut [f32],
    ) {
        let k = self.k;
        let (hp, wp) = (h + k - 1, w + k - 1);
        let mut xp = vec![0f32; hp * wp];
        for (iy, row) in x.chunks_exact(w).enumerate() {
            xp[(iy + top) * wp + left..][..w].copy_from_slice(row);
        }
        let len = (h - 1) * wp + w;
        let mut acc = vec![0f32; len];
        for dy in 0..k {
            for dx in 0..k {
                let wt = weight[dy * k + dx];
                for (a, v) in acc.iter_mut().zip(&xp[dy * wp + dx..][..len]) {
                    *a += wt * v;
                }
            }
        }
        for (oy, row) in o.chunks_exact_mut(w).enumerate() {
            row.copy_from_slice(&acc[oy * wp..][..w]);
        }
    }

    /// Stride s > 1, row by row.
    #[inline(always)]
    fn plane_strided(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        (top, left): (usize, usize),
        weight: &[f32],
        o: &mut [f32],
    ) {
        let (k, s) = (self.k, self.s);
        let wo = o.len() / h.div_ceil(s);
        // The columns are split by phase (x mod s), so that every tap reads consecutive inputs:
        // `xs[phase][row][x / s]`.
        let wq = w.div_ceil(s);
        let mut xs = vec![0f32; s * h * wq];
        for (iy, row) in x.chunks_exact(w).enumerate() {
            for phase in 0..s.min(w) {
                let dst = &mut xs[phase * h * wq + iy * wq..][..wq];
                for (d, v) in dst.iter_mut().zip(row[phase..].iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
        // Per tap column dx: the output columns `lo..hi` whose input column `ox·s + dx − left`
        // lies in `0..w`, and where the first of those inputs sits in a row of `xs` (taps that
        // only ever read padding are left out).
        let cols: Vec<(usize, usize, usize, usize)> = (0..k)
            .filter_map(|dx| {
                let lo = left.saturating_sub(dx).div_ceil(s);
                let hi = (w + left).saturating_sub(dx).div_ceil(s).min(wo);
                let first = (lo * s + dx).checked_sub(left)?;
                (lo < hi).then_some((dx, lo, hi, (first % s) * h * wq + first / s))
            })
            .collect();
        for (oy, row) in o.chunks_exact_mut(wo).enumerate() {
            for dy in 0..k {
                // Input row oy·s + dy − top; rows in the padding add nothing.
                let Some(iy) = (oy * s + dy).checked_sub(top).filter(|&iy| iy < h) else {
                    continue;
                };
                for &(dx, lo, hi, start) in &cols {
                    let wt = weight[dy * k + dx];
                    for (r, v) in row[lo..hi].iter_mut().zip(&xs[start + iy * wq..][..hi - lo]) {
                        *r += wt * v;
                    }
                }
            }
        }
    }
}

impl CustomOp1 for Depthwise<'_> {
    fn name(&self) -> &'static str {
        "efficientnet-depthwise"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (k, s) = (self.k, self.s);
        if self.weight.len() != c * k * k || self.bias.len() != c || s == 0 {
            bail!(
                "{}: {c} channels for weights {} and bias {}",
                self.name(),
                self.weight.len(),
                self.bias.len()
            )
        }
        let ((top, _), (left, _)) = (same_padding(h, k, s), same_padding(w, k, s));
        let (ho, wo) = (h.div_ceil(s), w.div_ceil(s));
        let mut out = vec![0f32; n * c * ho * wo];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), (n, c, ho, wo).into()));
        }
        out.par_chunks_mut((ho * wo).max(1)).enumerate().for_each(|(p, o)| {
            let ch = p % c;
            let xp = &x[p * h * w..(p + 1) * h * w];
            self.plane(xp, (h, w), (top, left), &self.weight[ch * k * k..(ch + 1) * k * k], o);
            finish(o, self.bias[ch], self.relu6);
        });
        Ok((CpuStorage::F32(out), (n, c, ho, wo).into()))
    }
}
