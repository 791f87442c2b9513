//! diffusers' `GEGLU` feed-forward gate, `a · GELU(gate)` over the two halves of the projection's
//! last dim, as one graph node. Composed of candle ops it is two narrows, a GELU and a product on
//! a strided operand; its backward pass then builds each half's gradient, pads it back to the
//! full width with a zero tensor and a concatenation, and adds the two: per transformer block
//! about ten passes over `[tokens, 8·C]` (42 MB at 512 px, 94 MB at 768 px) and one more such
//! tensor (the GELU's output) kept for the backward pass. Here the forward pass and the backward
//! pass are one vectorised pass each over the caller's pool, and the graph keeps only the input.
//! Other devices and dtypes keep candle's ops.
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use crate::activation::{data, gelu_erf};
use crate::math::{exp, normal_cdf};

/// `a · GELU(gate)` where `[a, gate]` are the first and second halves of `x`'s last dim.
pub fn geglu(x: &Tensor) -> Result<Tensor> {
    let _t = crate::op_times::forward("geglu", x.dims());
    let width = x.dim(D::Minus1)?;
    if width % 2 != 0 {
        bail!(
            "geglu: the last dim of {:?} is odd, it cannot be split in halves",
            x.dims()
        )
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        let half = width / 2;
        return x.narrow(D::Minus1, 0, half)? * gelu_erf(&x.narrow(D::Minus1, half, half)?)?;
    }
    x.contiguous()?.apply_op1(Geglu)
}

/// Rows per task: a few hundred KB of input each.
fn rows_per_task(width: usize) -> usize {
    ((1 << 16) / width.max(1)).max(1)
}

struct Geglu;

impl CustomOp1 for Geglu {
    fn name(&self) -> &'static str {
        "adp-geglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(self.name(), storage, layout)?;
        let mut dims = layout.dims().to_vec();
        let Some(last) = dims.last_mut() else {
            bail!("geglu: a scalar has no halves")
        };
        let half = *last / 2;
        *last = half;
        let mut out = vec![0f32; x.len() / 2];
        if half > 0 {
            let rows = rows_per_task(2 * half);
            out.par_chunks_mut(rows * half)
                .zip(x.par_chunks(rows * 2 * half))
                .for_each(|(o, x)| forward_rows(x, o, half));
        }
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _t = crate::op_times::backward("geglu", dy.dims());
        // `x` is the contiguous input `geglu` gave the op; `dy` comes detached from candle.
        Ok(Some(x.detach().apply_op2_no_bwd(&dy.contiguous()?, &GegluGrad)?))
    }
}

/// `[da, dgate] = [dy · GELU(gate), dy · a · GELU'(gate)]` over `(x, dy)`.
struct GegluGrad;

impl CustomOp2 for GegluGrad {
    fn name(&self) -> &'static str {
        "adp-geglu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?);
        let half = l1.dims().last().copied().unwrap_or(0) / 2;
        if dy.len() * 2 != x.len() || l2.dims().last() != Some(&half) {
            bail!(
                "{}: input {:?} and gradient {:?} do not fit",
                self.name(),
                l1.shape(),
                l2.shape()
            )
        }
        let mut dx = vec![0f32; x.len()];
        if half > 0 {
            let rows = rows_per_task(2 * half);
            dx.par_chunks_mut(rows * 2 * half)
                .zip(x.par_chunks(rows * 2 * half).zip(dy.par_chunks(rows * half)))
                .for_each(|(dx, (x, dy))| backward_rows(x, dy, dx, half));
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// Dispatches to the widest vectors this CPU has, as `crate::activation` does.
macro_rules! widest {
    ($any:ident, $avx2:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $any($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                return unsafe { $avx2($($arg),*) };
            }
            rows_any::$any($($arg),*)
        }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2($($arg: $ty),*) {
            rows_any::$any($($arg),*)
        }
    };
}

widest!(forward_rows, forward_rows_avx2, (x: &[f32], out: &mut [f32], half: usize));
widest!(backward_rows, backward_rows_avx2, (x: &[f32], dy: &[f32], dx: &mut [f32], half: usize));

mod rows_any {
    use super::*;

    #[inline(always)]
    pub fn forward_rows(x: &[f32], out: &mut [f32], half: usize) {
        for (x, o) in x.chunks_exact(2 * half).zip(out.chunks_exact_mut(half)) {
            let (a, gate) = x.split_at(half);
            for ((o, &a), &g) in o.iter_mut().zip(a).zip(gate) {
                *o = a * g * normal_cdf(g);
            }
        }
    }

    #[inline(always)]
    pub fn backward_rows(x: &[f32], dy: &[f32], dx: &mut [f32], half: usize) {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        let rows = x.chunks_exact(2 * half).zip(dy.chunks_exact(half));
        for ((x, dy), dx) in rows.zip(dx.chunks_exact_mut(2 * half)) {
            let (a, gate) = x.split_at(half);
            let (da, dgate) = dx.split_at_mut(half);
            for ((((da, dg), &a), &g), &dy) in da.iter_mut().zip(dgate).zip(a).zip(gate).zip(dy) {
                let cdf = normal_cdf(g);
                *da = dy * g * cdf;
                // d/dg g·Φ(g) = Φ(g) + g·φ(g).
                *dg = dy * a * (cdf + g * INV_SQRT_2PI * exp(-0.5 * g * g));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close as assert_within, value_and_gradient};
    use candle_core::Device;

    /// As `crate::activation`'s: both GELUs are within a few ulp of each other.
    const TOLERANCE: f32 = 2e-6;

    fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
        assert_within(what, got, want, TOLERANCE)
    }

    /// `[2, rows, 2·half]` over the GELU's bend and tails, more rows than one task holds.
    fn inputs(rows: usize, half: usize) -> Tensor {
        let n = 2 * rows * 2 * half;
        let v: Vec<f32> = (0..n)
            .map(|i| -8.0 + 16.0 * ((i * 7919) % n) as f32 / n as f32 + (i % 5) as f32 * 0.01)
            .collect();
        Tensor::from_vec(v, (2, rows, 2 * half), &Device::Cpu).unwrap()
    }

    fn composed(x: &Tensor) -> Result<Tensor> {
        let half = x.dim(D::Minus1)? / 2;
        x.narrow(D::Minus1, 0, half)? * x.narrow(D::Minus1, half, half)?.gelu_erf()?
    }

    #[test]
    fn values_and_gradients_match_candles_ops() {
        for (rows, half) in [(300, 160), (3, 1), (1, 4096)] {
            let x = inputs(rows, half);
            let w = (x.narrow(D::Minus1, 0, half).unwrap().sin().unwrap() + 0.25).unwrap();
            let (y, dx) = value_and_gradient(geglu, &x, &w);
            let (want_y, want_dx) = value_and_gradient(composed, &x, &w);
            assert_close(&format!("value {rows}x{half}"), &y, &want_y);
            assert_close(&format!("gradient {rows}x{half}"), &dx, &want_dx);
        }
    }

    #[test]
    fn strided_odd_and_other_dtypes() {
        let x = inputs(4, 3).transpose(0, 1).unwrap();
        assert!(!x.is_contiguous());
        assert_close("strided", &geglu(&x).unwrap(), &composed(&x).unwrap());
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert_eq!(geglu(&x64).unwrap().dtype(), DType::F64);
        let odd = Tensor::zeros((2, 5), DType::F32, &Device::Cpu).unwrap();
        let err = geglu(&odd).unwrap_err().to_string();
        assert!(err.contains("odd") && err.contains("[2, 5]"), "{err}");
    }
}
