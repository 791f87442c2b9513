//! GELU (the erf form) and SiLU as one graph node each, with CPU kernels for f32. candle's own
//! run on one thread (element-wise maps never reach the caller's pool, see `crate::threads`)
//! and call libm's scalar `erff`/`expf` per value; their backward passes are chains of
//! whole-tensor ops (GELU's: seven, each a fresh tensor of the activation's size). Here the
//! forward and the backward pass are one vectorised pass each, spread over the caller's pool.
//! Other devices and dtypes keep candle's ops.
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::math::{exp, normal_cdf, sigmoid};

/// `x·Φ(x)`, as `Tensor::gelu_erf` (PyTorch's `nn.GELU()`).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::GeluErf)
}

/// `x·σ(x)`, as `Tensor::silu`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    apply(x, Act::Silu)
}

fn apply(x: &Tensor, act: Act) -> Result<Tensor> {
    let _t = crate::op_times::forward("activation", x.dims());
    if !x.device().is_cpu() || x.dtype() != DType::F32 {
        return match act {
            Act::GeluErf => x.gelu_erf(),
            Act::Silu => x.silu(),
        };
    }
    x.contiguous()?.apply_op1(act)
}

#[derive(Clone, Copy, Debug)]
enum Act {
    GeluErf,
    Silu,
}

/// Values per task: large enough that a task outweighs its scheduling, small enough to share.
const CHUNK: usize = 1 << 14;

impl Act {
    /// `out = act(x)`, or with `grad`, `out = grad ⊙ act'(x)`.
    fn map(self, x: &[f32], grad: Option<&[f32]>) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        match grad {
            None => out
                .par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK))
                .for_each(|(o, x)| self.chunk(x, None, o)),
            Some(g) => out
                .par_chunks_mut(CHUNK)
                .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
                .for_each(|(o, (x, g))| self.chunk(x, Some(g), o)),
        }
        out
    }

    /// One chunk with the widest vectors this CPU has.
    fn chunk(self, x: &[f32], grad: Option<&[f32]>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA, checked just above.
            return unsafe { self.chunk_avx2(x, grad, out) };
        }
        self.chunk_any(x, grad, out)
    }

    /// The same code compiled for AVX2 + FMA; the crate's baseline is SSE2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn chunk_avx2(self, x: &[f32], grad: Option<&[f32]>, out: &mut [f32]) {
        self.chunk_any(x, grad, out)
    }

    /// One loop per case, so that each vectorises without a branch inside.
    #[inline(always)]
    fn chunk_any(self, x: &[f32], grad: Option<&[f32]>, out: &mut [f32]) {
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        match (self, grad) {
            (Act::GeluErf, None) => each(out, x, |x| x * normal_cdf(x)),
            (Act::Silu, None) => each(out, x, |x| x * sigmoid(x)),
            // d/dx x·Φ(x) = Φ(x) + x·φ(x).
            (Act::GeluErf, Some(g)) => each2(out, x, g, |x, g| {
                g * (normal_cdf(x) + x * INV_SQRT_2PI * exp(-0.5 * x * x))
            }),
            // d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x))).
            (Act::Silu, Some(g)) => each2(out, x, g, |x, g| {
                let s = sigmoid(x);
                g * s * (1.0 + x * (1.0 - s))
            }),
        }
    }
}

#[inline(always)]
fn each(out: &mut [f32], x: &[f32], f: impl Fn(f32) -> f32) {
    out.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x));
}

#[inline(always)]
fn each2(out: &mut [f32], x: &[f32], g: &[f32], f: impl Fn(f32, f32) -> f32) {
    out.iter_mut()
        .zip(x.iter().zip(g))
        .for_each(|(o, (&x, &g))| *o = f(x, g));
}

/// The f32 data of a contiguous CPU storage (what [`apply`] and the backward pass hand over).
pub(crate) fn data<'a>(op: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(d), Some((start, end))) => Ok(&d[start..end]),
        _ => bail!("{op}: expected a contiguous f32 tensor, got {:?}", storage.dtype()),
    }
}

impl CustomOp1 for Act {
    fn name(&self) -> &'static str {
        match self {
            Act::GeluErf => "adp-gelu-erf",
            Act::Silu => "adp-silu",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(self.name(), storage, layout)?;
        Ok((CpuStorage::F32(self.map(x, None)), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _t = crate::op_times::backward("activation", dy.dims());
        // `x` is the contiguous input `apply` gave the op; `dy` comes detached from candle.
        Ok(Some(x.detach().apply_op2_no_bwd(&dy.contiguous()?, &Grad(*self))?))
    }
}

/// `dy ⊙ act'(x)` over `(x, dy)`.
struct Grad(Act);

impl CustomOp2 for Grad {
    fn name(&self) -> &'static str {
        "adp-activation-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (data(self.name(), s1, l1)?, data(self.name(), s2, l2)?);
        if x.len() != dy.len() {
            bail!(
                "{}: input {:?} and gradient {:?} differ in shape",
                self.name(),
                l1.shape(),
                l2.shape()
            )
        }
        Ok((CpuStorage::F32(self.0.map(x, Some(dy))), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{assert_close as assert_within, value_and_gradient};
    use candle_core::Device;

    /// Largest allowed |ours − candle's| relative to max(1, |candle's|): candle's GELU goes
    /// through libm's `erff` and ours through [`crate::math`]; both are within a few ulp.
    const TOLERANCE: f32 = 2e-6;

    fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
        assert_within(what, got, want, TOLERANCE)
    }

    /// Values over where the functions bend and far into both tails, more than one chunk.
    fn inputs() -> Tensor {
        let n = 3 * CHUNK + 5;
        let v: Vec<f32> = (0..n)
            .map(|i| -30.0 + 60.0 * (i as f32 / n as f32).powi(3) + (i % 7) as f32 * 0.01)
            .collect();
        Tensor::from_vec(v, n, &Device::Cpu).unwrap()
    }

    #[test]
    fn values_and_gradients_match_candles_ops() {
        type Pair = (
            &'static str,
            fn(&Tensor) -> Result<Tensor>,
            fn(&Tensor) -> Result<Tensor>,
        );
        let pairs: [Pair; 2] = [("gelu", gelu_erf, |x| x.gelu_erf()), ("silu", silu, |x| x.silu())];
        let (x, w) = (inputs(), (inputs().cos().unwrap() + 0.5).unwrap());
        for (name, ours, theirs) in pairs {
            let (y, dx) = value_and_gradient(ours, &x, &w);
            let (want_y, want_dx) = value_and_gradient(theirs, &x, &w);
            assert_close(&format!("{name} value"), &y, &want_y);
            assert_close(&format!("{name} gradient"), &dx, &want_dx);
        }
    }

    #[test]
    fn strided_inputs_and_other_dtypes() {
        let x = Tensor::arange(0f32, 24.0, &Device::Cpu)
            .unwrap()
            .affine(0.5, -6.0)
            .unwrap()
            .reshape((4, 6))
            .unwrap()
            .t()
            .unwrap();
        assert!(!x.is_contiguous());
        assert_close("strided", &gelu_erf(&x).unwrap(), &x.gelu_erf().unwrap());
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert_eq!(silu(&x64).unwrap().dtype(), DType::F64);
        assert_close(
            "f64",
            &silu(&x64).unwrap().to_dtype(DType::F32).unwrap(),
            &x.silu().unwrap(),
        );
    }
}
