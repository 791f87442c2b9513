//! Group and layer norms as single autograd nodes. Concept learning backpropagates through the
//! frozen UNet, and candle keeps every intermediate tensor of the graph until `backward`: the
//! composed norms (candle-nn's `GroupNorm`, `crate::nn::LayerNorm`) leave 6–8 full-size
//! activations per norm, several GB over the UNet at 768 px. Here each norm is one `CustomOp1`
//! whose node keeps only its input; `bwd` recomputes the statistics from it.
//!
//! Forward and backward run the same tensor code on any device: the op wraps the input storage
//! into a tensor without autograd, so the temporaries of the computation are freed when it
//! returns. Statistics and the affine map compute in f32 (f64 stays f64), as `crate::nn` says,
//! and the result returns in the input's dtype. Weight and bias are frozen: they get no gradient.
use crate::norm_cpu;
use crate::storage::{copy_out, wrap};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, DType, Error, Layout, MetalStorage, Module, Result, Shape, Storage,
    Tensor,
};
use candle_nn::{Init, VarBuilder};

/// What a `NormOp` normalises over.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// `[B, C, ...]`: over each group of `C / groups` channels and all spatial positions.
    Group { groups: usize },
    /// `[..., D]`: over the last dim.
    Layer,
}

/// The fused op; cheap to clone (tensors are shared handles).
#[derive(Clone, Debug)]
struct NormOp {
    kind: Kind,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

/// Dims of the 4-D view that the statistics reduce over.
const STAT_DIMS: (usize, usize) = (2, 3);

impl NormOp {
    /// `x` (and `dy`) viewed 4-D as `[rows, g, a, s]` with statistics over `(a, s)` per
    /// `(row, g)`, and weight/bias viewed to broadcast against it. One view serves both norms,
    /// so forward and backward share a single formula.
    fn views(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let dims = x.dims();
        let (x4, affine) = match self.kind {
            Kind::Group { groups } => {
                let (b, c) = (dims[0], dims[1]);
                let s = dims[2..].iter().product::<usize>();
                (x.reshape((b, groups, c / groups, s))?, (1, groups, c / groups, 1))
            }
            Kind::Layer => {
                let d = dims[dims.len() - 1];
                // `checked_div`: a zero-width last dim has no rows (and no panic).
                let rows = x.elem_count().checked_div(d).unwrap_or(0);
                (x.reshape((rows, 1, 1, d))?, (1, 1, 1, d))
            }
        };
        let dtype = x.dtype();
        let w = self.weight.to_dtype(dtype)?.reshape(affine)?;
        let b = self.bias.to_dtype(dtype)?.reshape(affine)?;
        Ok((x4, w, b))
    }

    /// The blocks [`norm_cpu`] normalises, for an input of `dims`.
    fn blocks(&self, dims: &[usize]) -> norm_cpu::Blocks {
        match self.kind {
            Kind::Group { groups } => {
                let (c, s) = (dims[1], dims[2..].iter().product::<usize>());
                norm_cpu::Blocks {
                    groups,
                    channels: c / groups,
                    run: s,
                }
            }
            Kind::Layer => norm_cpu::Blocks {
                groups: 1,
                channels: dims[dims.len() - 1],
                run: 1,
            },
        }
    }

    /// `(x - mean) / sqrt(var + eps)` of a 4-D view, and `1 / sqrt(var + eps)`.
    fn normalise(&self, x4: &Tensor) -> Result<(Tensor, Tensor)> {
        let centred = x4.broadcast_sub(&x4.mean_keepdim(STAT_DIMS)?)?;
        let std = (centred.sqr()?.mean_keepdim(STAT_DIMS)? + self.eps)?.sqrt()?;
        // Divide (as candle-nn and crate::nn do) rather than multiply by the reciprocal, so
        // the forward rounds like the composed norms.
        Ok((centred.broadcast_div(&std)?, std.recip()?))
    }

    /// The forward on a tensor without autograd (or on any tensor, for the composed fallback).
    fn compute(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let (x4, w, b) = self.views(&x.to_dtype(internal(dtype)?)?)?;
        let (xhat, _) = self.normalise(&x4)?;
        xhat.broadcast_mul(&w)?
            .broadcast_add(&b)?
            .reshape(x.shape())?
            .to_dtype(dtype)
    }

    /// The forward on raw storage: wrap, compute, unwrap. The temporaries die here.
    fn forward_storage(&self, storage: Storage, layout: &Layout) -> Result<(Storage, Shape)> {
        let y = self.compute(&wrap(storage, layout)?)?;
        Ok((copy_out(&y)?, layout.shape().clone()))
    }
}

/// A weight or bias as f32 values.
fn f32_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// The dtype the statistics compute in: f32 for half precision, as the composed norms do.
fn internal(dtype: DType) -> Result<DType> {
    match dtype {
        DType::F16 | DType::BF16 | DType::F32 => Ok(DType::F32),
        DType::F64 => Ok(DType::F64),
        other => bail!("norm: unsupported dtype {other:?} (expected a float tensor)"),
    }
}

impl CustomOp1 for NormOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Group { .. } => "adp-group-norm",
            Kind::Layer => "adp-layer-norm",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) {
            let (weight, bias) = (f32_vec(&self.weight)?, f32_vec(&self.bias)?);
            let y = norm_cpu::forward(&data[start..end], &weight, &bias, self.blocks(layout.dims()), self.eps);
            return Ok((CpuStorage::F32(y), layout.shape().clone()));
        }
        match self.forward_storage(Storage::Cpu(storage.try_clone(layout)?), layout)? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => bail!("norm: internal error, CPU op produced non-CPU storage"),
        }
    }

    // The same tensor code runs on CUDA's kernels. Without the `cuda` feature `CudaStorage` is
    // candle's stub, this is never called, and it still compiles.
    fn cuda_fwd(&self, storage: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        match self.forward_storage(Storage::Cuda(storage.try_clone(layout)?), layout)? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => bail!("norm: internal error, CUDA op produced non-CUDA storage"),
        }
    }

    fn metal_fwd(&self, storage: &MetalStorage, layout: &Layout) -> Result<(MetalStorage, Shape)> {
        match self.forward_storage(Storage::Metal(storage.try_clone(layout)?), layout)? {
            (Storage::Metal(s), shape) => Ok((s, shape)),
            _ => bail!("norm: internal error, Metal op produced non-Metal storage"),
        }
    }

    /// With x̂ = (x − μ)·rstd and g = dy ⊙ γ, dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)),
    /// the means over each normalised group (row). Statistics are recomputed from `x` rather
    /// than kept, which is the point of the op. `x` is detached so that `dx` carries no graph
    /// of its own; `dy` already comes detached from candle's backward.
    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let _t = crate::op_times::backward("norm", dy.dims());
        if x.device().is_cpu() && x.dtype() == DType::F32 && dy.dtype() == DType::F32 {
            // Read in place by `InputGrad`: no copies of `x` and `dy` on the way.
            let dx = x
                .detach()
                .apply_op2_no_bwd(&dy.contiguous()?, &InputGrad(self.clone()))?;
            return Ok(Some(dx));
        }
        let dtype = x.dtype();
        let f = internal(dtype)?;
        let (x4, w, _) = self.views(&x.detach().to_dtype(f)?)?;
        let dy4 = dy.to_dtype(f)?.reshape(x4.shape())?;
        let (xhat, rstd) = self.normalise(&x4)?;
        let g = dy4.broadcast_mul(&w)?;
        let mean_g = g.mean_keepdim(STAT_DIMS)?;
        let mean_gx = (&g * &xhat)?.mean_keepdim(STAT_DIMS)?;
        let dx = g
            .broadcast_sub(&mean_g)?
            .sub(&xhat.broadcast_mul(&mean_gx)?)?
            .broadcast_mul(&rstd)?;
        Ok(Some(dx.reshape(x.shape())?.to_dtype(dtype)?))
    }
}

/// `dx` of a norm over `(x, dy)`, both contiguous f32 on the CPU ([`norm_cpu::backward`]).
struct InputGrad(NormOp);

impl candle_core::CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "adp-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        match (s1, l1.contiguous_offsets(), s2, l2.contiguous_offsets()) {
            (CpuStorage::F32(x), Some((a, b)), CpuStorage::F32(dy), Some((c, d))) if l1.shape() == l2.shape() => {
                let dx = norm_cpu::backward(&x[a..b], &f32_vec(&op.weight)?, &dy[c..d], op.blocks(l1.dims()), op.eps);
                Ok((CpuStorage::F32(dx), l1.shape().clone()))
            }
            _ => bail!(
                "norm backward: expected contiguous f32 x and dy of one shape, got {:?} and {:?}",
                l1.shape(),
                l2.shape()
            ),
        }
    }
}

/// Applies the fused op to a contiguous copy of `x` (a no-op when `x` is contiguous already):
/// the op reads its input storage as contiguous.
fn apply(op: &NormOp, x: &Tensor) -> Result<Tensor> {
    let _t = crate::op_times::forward("norm", x.dims());
    internal(x.dtype())?;
    x.contiguous()?.apply_op1(op.clone())
}

/// Group norm over `[B, C, ...]`, equal to `candle_nn::GroupNorm`, with one backward node.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    op: NormOp,
    num_channels: usize,
}

/// As `candle_nn::group_norm`: `weight` and `bias` of shape `[num_channels]`.
pub fn group_norm(num_groups: usize, num_channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if num_groups == 0 || !num_channels.is_multiple_of(num_groups) {
        bail!("GroupNorm: num_groups ({num_groups}) must divide num_channels ({num_channels})")
    }
    Ok(GroupNorm {
        op: NormOp {
            kind: Kind::Group { groups: num_groups },
            weight: vb.get_with_hints(num_channels, "weight", Init::Const(1.))?,
            bias: vb.get_with_hints(num_channels, "bias", Init::Const(0.))?,
            eps,
        },
        num_channels,
    })
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 {
            bail!("GroupNorm: input rank should be at least 3, got {:?}", dims)
        }
        if dims[1] != self.num_channels {
            bail!("GroupNorm: expected {} channels, got {:?}", self.num_channels, dims)
        }
        apply(&self.op, x)
    }
}

/// Layer norm over the last dim, equal to `crate::nn::LayerNorm`, with one backward node.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    op: NormOp,
    size: usize,
}

/// As `crate::nn::layer_norm`: `weight` and `bias` of shape `[size]`.
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        op: NormOp {
            kind: Kind::Layer,
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        },
        size,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dims().last() != Some(&self.size) {
            return Err(Error::Msg(format!(
                "LayerNorm: expected last dim {}, got {:?}",
                self.size,
                x.dims()
            )));
        }
        apply(&self.op, x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use candle_core::{Device, Var};
    use std::collections::HashMap;

    /// f32 forward: same formula, different association of a few ops, so a few ulps of O(1).
    const FWD_TOL: f32 = 1e-5;
    /// f32 input gradient: the composed graph sums several backward paths, the fused op uses
    /// the closed form; both are O(1).
    const GRAD_TOL: f32 = 1e-5;
    /// f16 output against the f32 result: f16 keeps 11 bits, so ~1e-3 relative on O(1) values.
    const F16_TOL: f32 = 1e-2;
    const EPS: f64 = 1e-5;

    /// Makes the norm's input from a var (e.g. a transpose, for a non-contiguous input).
    type View<'a> = &'a dyn Fn(&Tensor) -> Tensor;

    /// Random weight and bias of length `n` (weight around 1, as trained norms are), rounded
    /// through f16 so that f16 and f32 models hold the same values.
    fn params(n: usize, seed: f32) -> HashMap<String, Tensor> {
        let dev = Device::Cpu;
        let r = |shift: f32| {
            let t = (Tensor::randn(0f32, 0.3, n, &dev).unwrap() + (shift + seed) as f64).unwrap();
            t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap()
        };
        HashMap::from([("weight".to_string(), r(1.0)), ("bias".to_string(), r(0.0))])
    }

    fn vb(p: &HashMap<String, Tensor>, dtype: DType) -> VarBuilder<'static> {
        VarBuilder::from_tensors(p.clone(), dtype, &Device::Cpu)
    }

    /// Random input with a non-zero mean, so centring matters.
    fn input(shape: &[usize]) -> Tensor {
        (Tensor::randn(0f32, 2.0, shape, &Device::Cpu).unwrap() + 0.5).unwrap()
    }

    /// The gradient of `(norm(x) ⊙ r).sum()` with respect to the var behind `x`, where `view`
    /// makes `x` from the var (e.g. a transpose, for a non-contiguous input).
    fn grad(m: &dyn Module, var: &Var, view: &dyn Fn(&Tensor) -> Tensor, r: &Tensor) -> Tensor {
        let y = m.forward(&view(var.as_tensor())).unwrap();
        let loss = (y * r).unwrap().sum_all().unwrap();
        loss.backward().unwrap().get(var.as_tensor()).unwrap().clone()
    }

    #[test]
    fn group_norm_forward_equals_candle_nn() {
        for groups in [1, 2, 32] {
            let p = params(64, groups as f32 * 0.01);
            let ours = group_norm(groups, 64, EPS, vb(&p, DType::F32)).unwrap();
            let theirs = candle_nn::group_norm(groups, 64, EPS, vb(&p, DType::F32)).unwrap();
            for shape in [&[2, 64, 9][..], &[2, 64, 5, 7]] {
                let x = input(shape);
                let d = max_diff(&ours.forward(&x).unwrap(), &theirs.forward(&x).unwrap());
                assert!(d < FWD_TOL, "groups {groups}, shape {shape:?}: {d}");
            }
            // A contiguous view at an offset into its buffer, and a non-contiguous one.
            let big = input(&[4, 64, 6]);
            for x in [
                big.narrow(0, 1, 2).unwrap(),
                input(&[2, 6, 64]).transpose(1, 2).unwrap(),
            ] {
                let d = max_diff(&ours.forward(&x).unwrap(), &theirs.forward(&x).unwrap());
                assert!(d < FWD_TOL, "groups {groups}, view {:?}: {d}", x.layout());
            }
        }
    }

    #[test]
    fn layer_norm_forward_equals_nn() {
        // 45: a width that is no multiple of the CPU kernel's 8 lanes.
        for d in [48, 45] {
            let p = params(d, 0.0);
            let ours = layer_norm(d, EPS, vb(&p, DType::F32)).unwrap();
            let theirs = crate::nn::layer_norm(d, EPS, vb(&p, DType::F32)).unwrap();
            let big = input(&[5, 3, d]);
            for x in [
                input(&[6, d]),
                input(&[2, 5, d]),
                big.narrow(0, 2, 2).unwrap(),
                input(&[d, 6]).t().unwrap(),
            ] {
                let diff = max_diff(&ours.forward(&x).unwrap(), &theirs.forward(&x).unwrap());
                assert!(diff < FWD_TOL, "shape {:?}: {diff}", x.dims());
            }
        }
    }

    #[test]
    fn half_precision_computes_in_f32() {
        let p = params(64, 0.0);
        let x = input(&[2, 64, 4, 4]).to_dtype(DType::F16).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let g16 = group_norm(32, 64, EPS, vb(&p, DType::F16)).unwrap();
        let g32 = group_norm(32, 64, EPS, vb(&p, DType::F32)).unwrap();
        let y = g16.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let d = max_diff(&y, &g32.forward(&x32).unwrap());
        assert!(d < F16_TOL, "group norm f16: {d}");

        let x = x.reshape((8, 4, 64)).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let l16 = layer_norm(64, EPS, vb(&p, DType::F16)).unwrap();
        let l32 = layer_norm(64, EPS, vb(&p, DType::F32)).unwrap();
        let y = l16.forward(&x).unwrap();
        assert_eq!(y.dtype(), DType::F16);
        let d = max_diff(&y, &l32.forward(&x32).unwrap());
        assert!(d < F16_TOL, "layer norm f16: {d}");
    }

    #[test]
    fn group_norm_gradient_equals_composed() {
        let plain = |t: &Tensor| t.clone();
        let transposed = |t: &Tensor| t.transpose(1, 2).unwrap();
        for groups in [1, 2, 32] {
            let p = params(64, 0.0);
            let ours = group_norm(groups, 64, EPS, vb(&p, DType::F32)).unwrap();
            let theirs = candle_nn::group_norm(groups, 64, EPS, vb(&p, DType::F32)).unwrap();
            let cases: [(&[usize], View); 3] = [
                (&[2, 64, 3, 5], &plain),
                (&[2, 64, 7], &plain),
                (&[2, 7, 64], &transposed),
            ];
            for (shape, view) in cases {
                let var = Var::from_tensor(&input(shape)).unwrap();
                let r = input(view(var.as_tensor()).dims());
                let d = max_diff(&grad(&ours, &var, view, &r), &grad(&theirs, &var, view, &r));
                assert!(d < GRAD_TOL, "groups {groups}, shape {shape:?}: {d}");
            }
        }
    }

    #[test]
    fn layer_norm_gradient_equals_composed() {
        let plain = |t: &Tensor| t.clone();
        let transposed = |t: &Tensor| t.transpose(1, 2).unwrap();
        for d in [48, 45] {
            let p = params(d, 0.0);
            let ours = layer_norm(d, EPS, vb(&p, DType::F32)).unwrap();
            let theirs = crate::nn::layer_norm(d, EPS, vb(&p, DType::F32)).unwrap();
            let cases: [(&[usize], View); 3] = [(&[6, d], &plain), (&[2, 5, d], &plain), (&[2, d, 5], &transposed)];
            for (shape, view) in cases {
                let var = Var::from_tensor(&input(shape)).unwrap();
                let r = input(view(var.as_tensor()).dims());
                let diff = max_diff(&grad(&ours, &var, view, &r), &grad(&theirs, &var, view, &r));
                assert!(diff < GRAD_TOL, "shape {shape:?}: {diff}");
            }
        }
    }

    #[test]
    fn half_precision_gradient_is_half() {
        let p = params(64, 0.0);
        let ours = group_norm(32, 64, EPS, vb(&p, DType::F16)).unwrap();
        let var = Var::from_tensor(&input(&[2, 64, 4]).to_dtype(DType::F16).unwrap()).unwrap();
        let r = input(&[2, 64, 4]).to_dtype(DType::F16).unwrap();
        let g = grad(&ours, &var, &|t: &Tensor| t.clone(), &r);
        assert_eq!(g.dtype(), DType::F16);
        let ours32 = group_norm(32, 64, EPS, vb(&p, DType::F32)).unwrap();
        let var32 = Var::from_tensor(&var.as_tensor().to_dtype(DType::F32).unwrap()).unwrap();
        let r32 = r.to_dtype(DType::F32).unwrap();
        let g32 = grad(&ours32, &var32, &|t: &Tensor| t.clone(), &r32);
        let d = max_diff(&g, &g32);
        assert!(d < F16_TOL, "f16 gradient: {d}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let p = params(64, 0.0);
        let g = group_norm(32, 64, EPS, vb(&p, DType::F32)).unwrap();
        assert!(g.forward(&input(&[2, 32, 4])).is_err());
        assert!(g.forward(&input(&[2, 64])).is_err());
        assert!(group_norm(3, 64, EPS, vb(&p, DType::F32)).is_err());
        assert!(group_norm(0, 64, EPS, vb(&p, DType::F32)).is_err());
        let l = layer_norm(64, EPS, vb(&p, DType::F32)).unwrap();
        assert!(l.forward(&input(&[2, 48])).is_err());
        let ints = Tensor::zeros((2, 64), DType::U32, &Device::Cpu).unwrap();
        assert!(l.forward(&ints).is_err());
    }
}
