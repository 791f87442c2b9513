//! The 2-D convolution of the frozen UNet and VAE on the CPU, in f32: the input unfolded
//! (im2col) a few output rows at a time, and one matrix product per tile writing straight into
//! the NCHW output, which starts as the bias. The weight `[O, C, k, k]` is read where it lies,
//! as the `[O, C·k²]` left factor. Large 3×3 stride-1 convolutions (the VAE's, the UNet's first
//! two levels, and their input gradients) go to [`winograd_cpu`] instead.
//!
//! candle's own CPU convolution (`conv2d_tiled`) copies the whole input to NHWC and the whole
//! weight to another order on one thread at every call (a 1280-channel 3×3 weight is 59 MB),
//! gathers each unfolded value and scatters each output value one by one: at 768 px most of a
//! UNet forward went there rather than into the products.
use candle_core::{bail, DType, Device, Result, Storage, Tensor};
use rayon::prelude::*;

use crate::gemm_view::{self, Mat, SharedOut, Threads};
use crate::winograd_cpu;

/// Floats per unfolded tile (8 MiB): whole output rows, at least one.
const TILE: usize = 1 << 21;

/// Output positions per band where each thread unfolds and multiplies its own bands (whole
/// rows, at least this many): with fewer, `gemm` packs the weight for too little work. Timed
/// with `examples/conv_rate.rs`: 256 and 512 alike on the VAE's shapes, 1024 slower.
const BAND: usize = 512;

/// `x` `[N, C, H, W]` convolved with `weight` `[O, C, k_h, k_w]` plus `bias` `[O]`, zero
/// `padding` on every side, at `stride`; `None` where this path does not apply (not the CPU, not
/// f32, dilation other than 1), for candle's own.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Option<Tensor>> {
    if !applies(x, weight, stride, dilation) {
        return Ok(None);
    }
    let (n, c, h, w) = x.dims4()?;
    let (o, c_w, kh, kw) = weight.dims4()?;
    if c != c_w || h + 2 * padding < kh || w + 2 * padding < kw {
        bail!(
            "conv2d: input {:?}, weight {:?}, padding {padding}",
            x.dims(),
            weight.dims()
        )
    }
    let g = Geometry::new(c, (h, w), (kh, kw), padding, stride);
    let mut out = vec![0f32; n * o * g.oh * g.ow];
    if let Some(b) = bias {
        let b = b.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        if b.len() != o {
            bail!("conv2d: bias of {} for {o} output channels", b.len())
        }
        out.par_chunks_mut((g.oh * g.ow).max(1))
            .enumerate()
            .for_each(|(p, plane)| plane.fill(b[p % o]));
    }
    if !out.is_empty() && c > 0 && with_slices(x, weight, |xv, wv| g.run(xv, wv, o, n, &mut out))?.is_none() {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(out, (n, o, g.oh, g.ow), &Device::Cpu)?))
}

/// Whether the CPU path takes a convolution of `a` (its input or output gradient) by `weight`.
fn applies(a: &Tensor, weight: &Tensor, stride: usize, dilation: usize) -> bool {
    let cpu = matches!(a.device(), Device::Cpu) && matches!(weight.device(), Device::Cpu);
    cpu && a.dtype() == DType::F32 && weight.dtype() == DType::F32 && dilation == 1 && stride > 0
}

/// `f` on the f32 values of `a` and `weight`, both made contiguous; `None` off the CPU.
fn with_slices<R>(a: &Tensor, weight: &Tensor, f: impl FnOnce(&[f32], &[f32]) -> R) -> Result<Option<R>> {
    let (a, weight) = (a.contiguous()?, weight.contiguous()?);
    let (as_, al) = a.storage_and_layout();
    let (ws, wl) = weight.storage_and_layout();
    let (Storage::Cpu(as_), Storage::Cpu(ws)) = (&*as_, &*ws) else {
        return Ok(None);
    };
    let av = &as_.as_slice::<f32>()?[al.start_offset()..][..a.elem_count()];
    let wv = &ws.as_slice::<f32>()?[wl.start_offset()..][..weight.elem_count()];
    Ok(Some(f(av, wv)))
}

/// The gradient of [`conv2d`]'s input (`[N, C, h, w]`) from the gradient of its output, `grad`
/// `[N, O, oh, ow]`, the weight frozen: at stride 1 a forward convolution of `grad` (see below),
/// otherwise per tile the unfolded gradient `Wᵀ · grad`, folded back (col2im) onto the input
/// positions each tap read. candle's transposed convolution, which this replaces on the CPU, is
/// a dot product per output element with no matrix product at all.
/// `None` where [`conv2d`] would give `None`.
pub fn conv2d_input_grad(
    grad: &Tensor,
    weight: &Tensor,
    (h, w): (usize, usize),
    padding: usize,
    stride: usize,
    dilation: usize,
) -> Result<Option<Tensor>> {
    if !applies(grad, weight, stride, dilation) {
        return Ok(None);
    }
    let (n, o, oh, ow) = grad.dims4()?;
    let (o_w, c, kh, kw) = weight.dims4()?;
    let fits = |i: usize, k: usize, out: usize| i + 2 * padding >= k && (i + 2 * padding - k) / stride + 1 == out;
    if o != o_w || !fits(h, kh, oh) || !fits(w, kw, ow) {
        bail!(
            "conv2d gradient: output gradient {:?}, weight {:?}, input {h}×{w}",
            grad.dims(),
            weight.dims()
        )
    }
    let mut dx = vec![0f32; n * c * h * w];
    let done = if dx.is_empty() || o == 0 {
        Some(())
    } else if stride == 1 && kh == kw && padding < kh {
        // At stride 1 the input gradient is a convolution of the output gradient with the kernel
        // turned half a turn and its two channel axes swapped, padded k − 1 − p: the forward
        // kernel's path. `Wᵀ · dy` then folding back (below) ran at 74–103 GFLOP/s on the UNet's
        // 768 px shapes where the forward path runs at 130–140 (`examples/conv_rate.rs`).
        let g = Geometry::new(o, (oh, ow), (kh, kw), kh - 1 - padding, 1);
        with_slices(grad, weight, |gv, wv| {
            g.run(gv, &turned(wv, o, c, kh * kw), c, n, &mut dx)
        })?
    } else {
        let g = Geometry::new(c, (h, w), (kh, kw), padding, stride);
        with_slices(grad, weight, |gv, wv| g.run_input_grad(gv, wv, o, n, &mut dx))?
    };
    if done.is_none() {
        return Ok(None);
    }
    Ok(Some(Tensor::from_vec(dx, (n, c, h, w), &Device::Cpu)?))
}

/// `weight` `[O, C, k, k]` (`taps` = k²) as `[C, O, k, k]` with each kernel turned half a turn
/// (tap t read from tap k² − 1 − t).
fn turned(weight: &[f32], o: usize, c: usize, taps: usize) -> Vec<f32> {
    let mut out = vec![0f32; weight.len()];
    out.par_chunks_mut((o * taps).max(1)).enumerate().for_each(|(ci, dst)| {
        for (co, kernel) in dst.chunks_exact_mut(taps).enumerate() {
            let src = &weight[(co * c + ci) * taps..][..taps];
            kernel.iter_mut().zip(src.iter().rev()).for_each(|(d, s)| *d = *s);
        }
    });
    out
}

/// One convolution's sizes.
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    /// Input channels `c` of `h × w`, a `kh × kw` kernel; the caller has checked that the padded
    /// input holds the kernel.
    fn new(c: usize, (h, w): (usize, usize), (kh, kw): (usize, usize), padding: usize, stride: usize) -> Self {
        let (oh, ow) = ((h + 2 * padding - kh) / stride + 1, (w + 2 * padding - kw) / stride + 1);
        Self {
            c,
            h,
            w,
            kh,
            kw,
            padding,
            stride,
            oh,
            ow,
        }
    }

    /// `out` (`[N, O, oh, ow]`, holding the bias) plus the convolution of `x` with `weight`.
    fn run(&self, x: &[f32], weight: &[f32], o: usize, n: usize, out: &mut [f32]) {
        if let Some(s) = self.winograd(o, n) {
            return winograd_cpu::run(s, x, weight, out);
        }
        let (c, hw, ohw) = (self.c, self.h * self.w, self.oh * self.ow);
        let k = c * self.kh * self.kw;
        let pointwise = self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0;
        if !pointwise && self.run_per_thread(x, weight, o, n, out) {
            return;
        }
        let rows = (TILE / (k * self.ow).max(1)).clamp(1, self.oh);
        let mut col = if pointwise {
            Vec::new()
        } else {
            vec![0f32; k * rows * self.ow]
        };
        for b in 0..n {
            let plane = &x[b * c * hw..(b + 1) * c * hw];
            let dst = &mut out[b * o * ohw..(b + 1) * o * ohw];
            if pointwise {
                // A 1×1 convolution's unfolded input is the input itself.
                product(dst, ohw, true, Mat::rows(weight, k), Mat::rows(plane, ohw), o, ohw, k);
                continue;
            }
            for oy0 in (0..self.oh).step_by(rows) {
                let t = rows.min(self.oh - oy0) * self.ow;
                let col = &mut col[..k * t];
                col.par_chunks_mut(t)
                    .enumerate()
                    .for_each(|(r, row)| self.unfold(plane, r, oy0, row));
                let dst = &mut dst[oy0 * self.ow..];
                product(dst, ohw, true, Mat::rows(weight, k), Mat::rows(col, t), o, t, k);
            }
        }
    }

    /// The convolution's sizes for [`winograd_cpu`], where it takes it: a 3×3 kernel at stride 1
    /// on a large enough plane with enough channels.
    fn winograd(&self, o: usize, n: usize) -> Option<winograd_cpu::Shape> {
        let s = winograd_cpu::Shape {
            n,
            c: self.c,
            o,
            h: self.h,
            w: self.w,
            padding: self.padding,
        };
        (self.kh == 3 && self.kw == 3 && self.stride == 1 && s.applies()).then_some(s)
    }

    /// [`Self::run`] with each thread of the pool unfolding its own bands of output rows and
    /// multiplying them on its own: no thread waits for another between a band's unfolding and
    /// its product, and a band's unfolded tile stays in the cache of the core that reads it.
    /// `false` (nothing done) where there are too few bands to share out evenly.
    fn run_per_thread(&self, x: &[f32], weight: &[f32], o: usize, n: usize, out: &mut [f32]) -> bool {
        let threads = rayon::current_num_threads();
        let (c, hw, ohw, ow) = (self.c, self.h * self.w, self.oh * self.ow, self.ow);
        let k = c * self.kh * self.kw;
        let rows = BAND.div_ceil(ow.max(1)).min(self.oh);
        let bands = self.oh.div_ceil(rows.max(1));
        if threads < 2 || n * bands < 4 * threads {
            return false;
        }
        assert!(x.len() >= n * c * hw && out.len() >= n * o * ohw && weight.len() >= o * k);
        let dst = SharedOut::new(out);
        (0..n * bands).into_par_iter().for_each_init(
            || vec![0f32; k * rows * ow],
            |col, i| {
                let (b, oy0) = (i / bands, i % bands * rows);
                let t = rows.min(self.oh - oy0) * ow;
                let plane = &x[b * c * hw..(b + 1) * c * hw];
                let col = &mut col[..k * t];
                col.chunks_exact_mut(t)
                    .enumerate()
                    .for_each(|(r, row)| self.unfold(plane, r, oy0, row));
                let (lhs, rhs) = (Mat::rows(weight, k), Mat::rows(col, t));
                // SAFETY: band (b, oy0) writes output rows oy0.. of batch b's o planes, t
                // values each: inside `out` (asserted above) and no other band's.
                unsafe {
                    let at = dst.at(b * o * ohw + oy0 * ow);
                    gemm_view::product_raw(at, ohw, true, lhs, rhs, (o, t, k), 1.0, Threads::Caller)
                }
            },
        );
        true
    }

    /// `dx` (`[N, C, h, w]`, zero) from the output gradient `dy`.
    fn run_input_grad(&self, dy: &[f32], weight: &[f32], o: usize, n: usize, dx: &mut [f32]) {
        let (c, hw, ohw) = (self.c, self.h * self.w, self.oh * self.ow);
        let (k, taps) = (c * self.kh * self.kw, self.kh * self.kw);
        // Wᵀ: element (i, j) of the `[C·k², O]` matrix is weight[j·k + i].
        let weight_t = Mat::rows(weight, k).t();
        let pointwise = self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0;
        let rows = (TILE / (k * self.ow).max(1)).clamp(1, self.oh);
        let mut col = if pointwise {
            Vec::new()
        } else {
            vec![0f32; k * rows * self.ow]
        };
        for b in 0..n {
            let g = &dy[b * o * ohw..(b + 1) * o * ohw];
            let dxb = &mut dx[b * c * hw..(b + 1) * c * hw];
            if pointwise {
                product(dxb, hw, false, weight_t, Mat::rows(g, ohw), c, ohw, o);
                continue;
            }
            for oy0 in (0..self.oh).step_by(rows) {
                let t = rows.min(self.oh - oy0) * self.ow;
                let col = &mut col[..k * t];
                product(col, t, false, weight_t, Mat::rows(&g[oy0 * self.ow..], ohw), k, t, o);
                let col = &*col;
                dxb.par_chunks_mut(hw).enumerate().for_each(|(ci, plane)| {
                    for r in ci * taps..(ci + 1) * taps {
                        self.fold(plane, r, oy0, &col[r * t..(r + 1) * t]);
                    }
                });
            }
        }
    }

    /// The mirror of [`Self::unfold`]: adds row `r` = (channel, dy, dx) of an unfolded gradient
    /// tile onto the input plane of that channel, at the positions the tap read.
    fn fold(&self, plane: &mut [f32], r: usize, oy0: usize, row: &[f32]) {
        let (s, p, w) = (self.stride, self.padding, self.w);
        let (dy, dx) = (r / self.kw % self.kh, r % self.kw);
        let lo = p.saturating_sub(dx).div_ceil(s).min(self.ow);
        let hi = (w + p).saturating_sub(dx).div_ceil(s).clamp(lo, self.ow);
        if lo >= hi {
            return;
        }
        for (i, g) in row.chunks_exact(self.ow).enumerate() {
            let Some(iy) = ((oy0 + i) * s + dy).checked_sub(p).filter(|&iy| iy < self.h) else {
                continue;
            };
            let dst = &mut plane[iy * w..(iy + 1) * w];
            let first = lo * s + dx - p;
            if s == 1 {
                for (d, v) in dst[first..first + hi - lo].iter_mut().zip(&g[lo..hi]) {
                    *d += v;
                }
            } else {
                for (d, v) in dst[first..].iter_mut().step_by(s).zip(&g[lo..hi]) {
                    *d += v;
                }
            }
        }
    }

    /// Row `r` = (channel, dy, dx) of the unfolded tile starting at output row `oy0`: for each
    /// output position, the input under tap (dy, dx), zero in the padding.
    fn unfold(&self, x: &[f32], r: usize, oy0: usize, row: &mut [f32]) {
        let (s, p, w) = (self.stride, self.padding, self.w);
        let (ci, dy, dx) = (r / (self.kh * self.kw), r / self.kw % self.kh, r % self.kw);
        let plane = &x[ci * self.h * w..(ci + 1) * self.h * w];
        // Output columns whose input column ox·s + dx − p lies in 0..w.
        let lo = p.saturating_sub(dx).div_ceil(s).min(self.ow);
        let hi = (w + p).saturating_sub(dx).div_ceil(s).clamp(lo, self.ow);
        for (i, out) in row.chunks_exact_mut(self.ow).enumerate() {
            let iy = ((oy0 + i) * s + dy).checked_sub(p).filter(|&iy| iy < self.h);
            let (Some(iy), true) = (iy, lo < hi) else {
                out.fill(0.0);
                continue;
            };
            let src = &plane[iy * w..(iy + 1) * w];
            let first = lo * s + dx - p;
            out[..lo].fill(0.0);
            out[hi..].fill(0.0);
            if s == 1 {
                out[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
            } else {
                for (d, v) in out[lo..hi].iter_mut().zip(src[first..].iter().step_by(s)) {
                    *d = *v;
                }
            }
        }
    }
}

/// [`gemm_view::product`] over the whole pool: a convolution runs one product at a time.
#[allow(clippy::too_many_arguments)]
fn product(dst: &mut [f32], ld: usize, accumulate: bool, lhs: Mat, rhs: Mat, m: usize, n: usize, k: usize) {
    gemm_view::product(dst, ld, accumulate, lhs, rhs, (m, n, k), 1.0, Threads::Pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (batch, in, out, h, w, k, padding, stride): 3×3 same, strided on odd and even sides,
    /// 1×1, non-square, inputs no larger than the kernel, unpadded, more output rows than one
    /// tile holds, two that `winograd_cpu` takes (odd sides, so the last tiles are half outside;
    /// padding 1 and 0, whose gradients pad 1 and 2; two bands of tiles), and (the last two)
    /// enough bands of output rows for each of two threads to take several, the last band
    /// short. Shared by the forward and the gradient tests.
    type Case = (usize, usize, usize, usize, usize, usize, usize, usize);
    const CASES: [Case; 12] = [
        (2, 3, 4, 7, 9, 3, 1, 1),
        (1, 5, 3, 8, 6, 3, 1, 2),
        (1, 5, 3, 7, 9, 3, 1, 2),
        (2, 6, 5, 4, 7, 1, 0, 1),
        (1, 2, 3, 3, 2, 3, 1, 2),
        (1, 2, 2, 1, 1, 3, 1, 1),
        (1, 4, 3, 5, 5, 3, 0, 1),
        (1, 300, 8, 40, 30, 3, 1, 1),
        (1, 32, 40, 47, 45, 3, 1, 1),
        (2, 40, 32, 48, 47, 3, 0, 1),
        (2, 3, 4, 64, 128, 3, 1, 1),
        (1, 2, 3, 130, 257, 3, 1, 2),
    ];

    /// `f` on a pool of two threads, whatever the machine's cores: the per-thread bands apply
    /// only with two or more.
    fn on_two_threads(f: impl FnOnce() + Send) {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn the_last_cases_take_per_thread_bands() {
        on_two_threads(|| {
            for (i, (n, c, o, h, w, k, p, s)) in CASES.into_iter().enumerate() {
                let g = Geometry::new(c, (h, w), (k, k), p, s);
                if g.winograd(o, n).is_some() {
                    continue; // `run` never reaches the bands then
                }
                let (x, weight) = (vec![0f32; n * c * h * w], vec![0f32; o * c * k * k]);
                let mut out = vec![0f32; n * o * g.oh * g.ow];
                let banded = g.run_per_thread(&x, &weight, o, n, &mut out);
                assert_eq!(banded, i >= CASES.len() - 2, "case {i}");
            }
        })
    }

    #[test]
    fn winograd_takes_the_large_3x3_cases_and_their_gradients() {
        for (i, (n, c, o, h, w, k, p, s)) in CASES.into_iter().enumerate() {
            let g = Geometry::new(c, (h, w), (k, k), p, s);
            assert_eq!(g.winograd(o, n).is_some(), i == 8 || i == 9, "case {i}");
            // The gradient at stride 1: the output gradient convolved, padded k − 1 − p.
            if s == 1 && p < k {
                let grad = Geometry::new(o, (g.oh, g.ow), (k, k), k - 1 - p, 1);
                assert_eq!(grad.winograd(c, n).is_some(), i == 8 || i == 9, "gradient, case {i}");
            }
        }
    }

    fn wave(shape: &[usize], f: fn(&Tensor) -> Result<Tensor>) -> Tensor {
        let n = shape.iter().product::<usize>();
        f(&(Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap() * 0.37).unwrap())
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    #[test]
    fn equals_candles_convolution() {
        on_two_threads(equals_candles_convolution_here)
    }

    fn equals_candles_convolution_here() {
        for (n, c, o, h, w, k, p, s) in CASES {
            let x = wave(&[n, c, h, w], Tensor::sin);
            let weight = wave(&[o, c, k, k], Tensor::cos);
            let bias = wave(&[o], Tensor::sin);
            let want = x
                .conv2d(&weight, p, s, 1, 1)
                .unwrap()
                .broadcast_add(&bias.reshape((1, o, 1, 1)).unwrap())
                .unwrap();
            let got = conv2d(&x, &weight, Some(&bias), p, s, 1)
                .unwrap()
                .expect("CPU f32 path");
            let diff = crate::testing::max_diff(&got, &want);
            // Sums of up to 2700 products of magnitude ≤ 1 in another order.
            assert!(diff < 1e-3, "{n} {c} {o} {h}×{w} k {k} p {p} s {s}: {diff}");
            let plain = conv2d(&x, &weight, None, p, s, 1).unwrap().unwrap();
            let diff = crate::testing::max_diff(&plain, &x.conv2d(&weight, p, s, 1, 1).unwrap());
            assert!(diff < 1e-3, "no bias: {diff}");
        }
    }

    /// Winograd's transforms add up to 16 inputs and halve the weight, so its sums round
    /// differently from the direct ones; against an f64 reference on a layer of the UNet's
    /// depth (320 channels, inputs of magnitude ≤ 1, weights of a trained layer's size) its
    /// error stays that of candle's direct convolution, within a small factor.
    #[test]
    fn winograd_rounds_like_the_direct_sum() {
        let (c, o, side) = (320, 32, 46);
        let x = wave(&[1, c, side, side], Tensor::sin);
        let weight = (wave(&[o, c, 3, 3], Tensor::cos) * 0.03).unwrap();
        assert!(Geometry::new(c, (side, side), (3, 3), 1, 1).winograd(o, 1).is_some());
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (xv, wv) = (values(&x), values(&weight));
        // Direct, in f64: each tap's weight times the shifted input plane.
        let mut exact = vec![0f64; o * side * side];
        for (co, out) in exact.chunks_exact_mut(side * side).enumerate() {
            for ci in 0..c {
                let plane = &xv[ci * side * side..][..side * side];
                for (tap, &wt) in wv[(co * c + ci) * 9..][..9].iter().enumerate() {
                    let (ty, tx) = (tap / 3, tap % 3);
                    for oy in (1 - ty.min(1))..(side + 1 - ty).min(side) {
                        let iy = oy + ty - 1;
                        for ox in (1 - tx.min(1))..(side + 1 - tx).min(side) {
                            out[oy * side + ox] += wt as f64 * plane[iy * side + ox + tx - 1] as f64;
                        }
                    }
                }
            }
        }
        let error = |t: &Tensor| {
            let v = values(t);
            v.iter()
                .zip(&exact)
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max)
        };
        let e_ours = error(&conv2d(&x, &weight, None, 1, 1, 1).unwrap().unwrap());
        let e_direct = error(&x.conv2d(&weight, 1, 1, 1, 1).unwrap());
        let scale = exact.iter().fold(0f64, |m, v| m.max(v.abs()));
        // On an AMD EPYC: 6.1e-7 against 2.9e-7, the largest output 0.32. The factor 8 leaves
        // room for another CPU's summation order on either side; the floor, for a direct sum
        // that happens to round very well.
        let bound = 8.0 * e_direct.max(1e-7 * scale);
        assert!(
            e_ours < bound && e_ours < 1e-5 * scale,
            "{e_ours} against {e_direct} (largest {scale})"
        );
    }

    /// Every (batch, out channel, out y, out x, in channel, tap y, tap x).
    #[allow(clippy::type_complexity)]
    fn positions(
        n: usize,
        o: usize,
        oh: usize,
        ow: usize,
        c: usize,
        k: usize,
    ) -> impl Iterator<Item = (usize, usize, usize, usize, usize, usize, usize)> {
        let idx = move |mut i: usize, dims: [usize; 7]| {
            let mut out = [0; 7];
            for d in (0..7).rev() {
                out[d] = i % dims[d];
                i /= dims[d];
            }
            (out[0], out[1], out[2], out[3], out[4], out[5], out[6])
        };
        (0..n * o * oh * ow * c * k * k).map(move |i| idx(i, [n, o, oh, ow, c, k, k]))
    }

    #[test]
    fn input_gradient_follows_the_definition() {
        on_two_threads(input_gradient_follows_the_definition_here)
    }

    fn input_gradient_follows_the_definition_here() {
        for (n, c, o, h, w, k, p, s) in CASES {
            let weight = wave(&[o, c, k, k], Tensor::cos);
            let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let dy = wave(&[n, o, oh, ow], Tensor::cos);
            // By the definition: each output position sends its gradient back through every tap.
            let (wv, gv) = (
                weight.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                dy.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let mut want = vec![0f32; n * c * h * w];
            for (b, co, oy, ox, ci, ty, tx) in positions(n, o, oh, ow, c, k) {
                let (iy, ix) = (oy * s + ty, ox * s + tx);
                if iy < p || ix < p || iy - p >= h || ix - p >= w {
                    continue;
                }
                want[((b * c + ci) * h + iy - p) * w + ix - p] +=
                    wv[((co * c + ci) * k + ty) * k + tx] * gv[((b * o + co) * oh + oy) * ow + ox];
            }
            let want = Tensor::from_vec(want, (n, c, h, w), &Device::Cpu).unwrap();
            let got = conv2d_input_grad(&dy, &weight, (h, w), p, s, 1)
                .unwrap()
                .expect("CPU f32 path");
            let diff = crate::testing::max_diff(&got, &want);
            assert!(diff < 1e-3, "{n} {c} {o} {h}×{w} k {k} p {p} s {s}: {diff}");
        }
        let e = conv2d_input_grad(
            &wave(&[1, 3, 4, 4], Tensor::sin),
            &wave(&[3, 2, 3, 3], Tensor::cos),
            (5, 5),
            1,
            1,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().contains("input 5×5"), "{e}");
    }

    #[test]
    fn other_dtypes_and_dilations_are_left_to_candle() {
        let x = wave(&[1, 2, 5, 5], Tensor::sin);
        let weight = wave(&[3, 2, 3, 3], Tensor::cos);
        assert!(conv2d(&x, &weight, None, 1, 1, 2).unwrap().is_none());
        let (x16, w16) = (x.to_dtype(DType::F16).unwrap(), weight.to_dtype(DType::F16).unwrap());
        assert!(conv2d(&x16, &w16, None, 1, 1, 1).unwrap().is_none());
        let e = conv2d(&x, &wave(&[3, 4, 3, 3], Tensor::cos), None, 1, 1, 1).unwrap_err();
        assert!(e.to_string().contains("weight [3, 4, 3, 3]"), "{e}");
    }
}
