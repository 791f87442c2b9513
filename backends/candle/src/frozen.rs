//! Linear and 2-D convolution layers whose weights stay frozen under autograd.
//!
//! candle-core's `Tensor::backward` computes a gradient for every operand of a matmul or a
//! convolution, frozen plain-tensor weights included, and keeps it in the `GradStore` (the
//! weights are never visited as nodes, so nothing frees it). Concept learning backpropagates
//! through the whole frozen UNet to one concept vector: with candle-nn's layers that costs every
//! weight's gradient in memory (~3.5 GB for SD 2.1) and about a third more backward compute.
//!
//! Here the weight is hidden inside a `CustomOp1` applied to the input alone, whose `bwd` returns
//! the input's gradient only. The bias is frozen too: the linear op adds it itself, and the
//! convolution's fallback adds it with [`add_frozen`], so neither gives it a gradient (candle's
//! add would give its broadcast view one the size of the output and keep it to the end).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Module, Result, Shape, Storage, Tensor,
};
use candle_nn::{Conv2dConfig, Init, VarBuilder};
use std::sync::Mutex;

use crate::frozen_add::{add_broadcast, add_frozen};
use crate::storage::{self, on_storage};

/// `y = x·Wᵀ + b` over the last dimension of `x`, like `candle_nn::Linear`.
#[derive(Clone, Debug)]
pub struct FrozenLinear {
    /// `Wᵀ`, `(in_dim, out_dim)`, contiguous: the CPU product (`gemm`) reads a right factor
    /// stored `(k, n)` up to 2.6× faster than the transposed view of PyTorch's `(out, in)`
    /// (ViT-B-16's MLP down at 197 tokens: 175 against 67 GFLOP/s,
    /// `examples/matmul_rate.rs`). Transposed once at load.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

/// Same weight names, shapes and initialisation as `candle_nn::linear`.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<FrozenLinear> {
    linear_b(in_dim, out_dim, true, vb)
}

/// Same as `candle_nn::linear_no_bias`.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<FrozenLinear> {
    linear_b(in_dim, out_dim, false, vb)
}

/// Same as `candle_nn::linear_b`.
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<FrozenLinear> {
    let weight = vb.get_with_hints((out_dim, in_dim), "weight", candle_nn::init::DEFAULT_KAIMING_NORMAL)?;
    let bias = if bias {
        let bound = 1. / (in_dim as f64).sqrt();
        Some(vb.get_with_hints(out_dim, "bias", Init::Uniform { lo: -bound, up: bound })?)
    } else {
        None
    };
    Ok(FrozenLinear::new(weight, bias))
}

impl FrozenLinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        // A `Var` weight would still be read through the op, never updated: detaching states that
        // (and keeps the op from holding the variable itself).
        let weight_t = weight.detach().t().and_then(|w| w.contiguous());
        Self {
            // `t()` fails only below two dimensions; `forward` reports the shape then.
            weight_t: weight_t.unwrap_or_else(|_| weight.detach()),
            bias: bias.map(|b| b.detach()),
        }
    }

    #[cfg(test)]
    pub fn weight(&self) -> Tensor {
        self.weight_t.t().unwrap()
    }

    #[cfg(test)]
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl From<candle_nn::Linear> for FrozenLinear {
    fn from(l: candle_nn::Linear) -> Self {
        Self::new(l.weight().clone(), l.bias().cloned())
    }
}

impl Module for FrozenLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _t = crate::op_times::forward("linear", x.dims());
        if x.rank() < 2 {
            // candle-nn's Linear refuses these too (its matmul needs two dimensions).
            bail!(
                "frozen linear: input of shape {:?} has fewer than 2 dimensions",
                x.dims()
            );
        }
        if !x.device().same_device(self.weight_t.device()) {
            bail!(
                "frozen linear: input on {:?}, weight on {:?}",
                x.device(),
                self.weight_t.device()
            );
        }
        if x.dtype() != self.weight_t.dtype() {
            bail!(
                "frozen linear: input in {:?}, weight in {:?}",
                x.dtype(),
                self.weight_t.dtype()
            );
        }
        if let Some(bias) = &self.bias {
            let out = self.weight_t.dims2()?.1;
            if bias.dtype() != x.dtype() || bias.dims() != [out] {
                bail!(
                    "frozen linear: bias {:?} {:?} for {out} {:?} outputs",
                    bias.dtype(),
                    bias.dims(),
                    x.dtype()
                );
            }
        }
        // The op multiplies the input as one `(rows, in_dim)` matrix, which needs it contiguous
        // (candle-nn's Linear takes the same single-matmul path for contiguous inputs).
        x.contiguous()?.apply_op1(LinearOp {
            weight_t: self.weight_t.clone(),
            bias: self.bias.clone(),
        })
    }
}

/// Below this many rows [`LinearOp`]'s input gradient is computed transposed (see its `bwd`):
/// 256 rows were faster that way, 1024 slower.
const FEW_ROWS: usize = 512;

/// `x·Wᵀ + b` with the gradient for `x` only. The bias is added inside the op: as a separate
/// add it would get a gradient the size of the output (`crate::frozen_add`).
struct LinearOp {
    /// `(in, out)`.
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl LinearOp {
    /// Calls the backend's matmul on the storages directly (as `Tensor::matmul` does), so the
    /// result is a fresh contiguous buffer handed back without a copy.
    fn fwd<B: BackendStorage<Device = D>, D: BackendDevice<Storage = B>>(
        &self,
        x: &B,
        layout: &Layout,
        w: &B,
        w_layout: &Layout,
    ) -> Result<(B, Shape)> {
        let dims = layout.dims();
        let Some((&k, lead)) = dims.split_last() else {
            bail!("frozen linear: a scalar input")
        };
        let (k_w, n) = w_layout.shape().dims2()?;
        if k != k_w {
            bail!("frozen linear: input has {k} features, weight {:?}", [n, k_w]);
        }
        if !layout.is_contiguous() {
            bail!("frozen linear: the input must be contiguous");
        }
        let m: usize = lead.iter().product();
        let mut out_dims = lead.to_vec();
        out_dims.push(n);
        if m == 0 || k == 0 {
            // No gemm for empty operands, as in `Tensor::matmul`.
            return Ok((
                x.device().zeros_impl(&Shape::from(out_dims.clone()), x.dtype())?,
                out_dims.into(),
            ));
        }
        // The input viewed as `(m, k)` where it lies.
        let x_layout = Layout::contiguous_with_offset((m, k), layout.start_offset());
        let y = x.matmul(w, (1, m, n, k), &x_layout, w_layout)?;
        Ok((y, out_dims.into()))
    }

    /// The product, then the bias, on the storages `pick` finds (the input's device).
    fn fwd_on<B: BackendStorage<Device = D>, D: BackendDevice<Storage = B>>(
        &self,
        x: &B,
        layout: &Layout,
        pick: fn(&Storage) -> Option<&B>,
    ) -> Result<(B, Shape)> {
        let (y, shape) = on_storage(&self.weight_t, "frozen linear: the weight", pick, |w, wl| {
            self.fwd(x, layout, w, wl)
        })?;
        match &self.bias {
            None => Ok((y, shape)),
            Some(b) => on_storage(b, "frozen linear: the bias", pick, |b, bl| {
                add_broadcast(&y, &Layout::contiguous(shape), b, bl)
            }),
        }
    }
}

impl CustomOp1 for LinearOp {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd_on(x, layout, storage::cpu)
    }

    // Without the `cuda`/`metal` features candle's storages here are dummies whose ops return
    // "not compiled with ..." errors, so these are written once for both builds.
    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        self.fwd_on(x, layout, storage::cuda)
    }

    fn metal_fwd(&self, x: &MetalStorage, layout: &Layout) -> Result<(MetalStorage, Shape)> {
        self.fwd_on(x, layout, storage::metal)
    }

    /// `dL/dx = dL/dy · W`, the rows flattened as in the forward pass. With few rows (the text
    /// encoder's 77 tokens) as `(Wᵀ · dyᵀ)ᵀ`: `gemm` packs the operand that `W`'s transposed
    /// view becomes for it row by row, which dominates when the other is small; multiplying the
    /// weight as stored packs only the small gradient, and the transposed result is small to copy
    /// back. On 2 threads (`examples/matmul_rate.rs`, its input-gradient rows): SD 2.1's text
    /// encoder, 77 rows, 48–65 against 86–146 GFLOP/s; at 4096 rows the plain form is faster
    /// (170–195 against 56–139).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _t = crate::op_times::backward("linear", grad.dims());
        let (_, n) = self.weight_t.dims2()?;
        let rows = grad.elem_count() / n.max(1);
        let dy = grad.reshape((rows, n))?;
        let dx = if rows < FEW_ROWS {
            self.weight_t.matmul(&dy.t()?)?.t()?.contiguous()?
        } else {
            dy.matmul(&self.weight_t.t()?)?
        };
        Ok(Some(dx.reshape(arg.shape())?))
    }
}

/// A 2-D convolution (groups = 1) like `candle_nn::Conv2d`.
#[derive(Clone, Debug)]
pub struct FrozenConv2d {
    /// `(out, in, k, k)`.
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

/// Same weight names, shapes and initialisation as `candle_nn::conv2d` (with bias).
pub fn conv2d(
    in_channels: usize,
    out_channels: usize,
    kernel_size: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> Result<FrozenConv2d> {
    let weight = vb.get_with_hints(
        (out_channels, in_channels / cfg.groups.max(1), kernel_size, kernel_size),
        "weight",
        candle_nn::init::DEFAULT_KAIMING_NORMAL,
    )?;
    let bound = 1. / (in_channels as f64).sqrt();
    let bias = vb.get_with_hints(out_channels, "bias", Init::Uniform { lo: -bound, up: bound })?;
    FrozenConv2d::new(weight, Some(bias), cfg)
}

impl FrozenConv2d {
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Result<Self> {
        // candle's own conv backward (whose input half this reuses) covers one group only.
        if config.groups != 1 {
            bail!("frozen conv2d: groups = {} (only 1 is supported)", config.groups);
        }
        weight.dims4()?;
        Ok(Self {
            weight: weight.detach(),
            bias: bias.map(|b| b.detach()),
            config,
        })
    }

    #[cfg(test)]
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    #[cfg(test)]
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    #[cfg(test)]
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

impl TryFrom<candle_nn::Conv2d> for FrozenConv2d {
    type Error = candle_core::Error;

    fn try_from(c: candle_nn::Conv2d) -> Result<Self> {
        Self::new(c.weight().clone(), c.bias().cloned(), *c.config())
    }
}

impl Module for FrozenConv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let _t = crate::op_times::forward("conv", x.dims());
        let c = &self.config;
        // candle-core builds its convolution parameters (`ParamsConv2D`) only inside the crate,
        // so the op cannot call the backend's convolution itself. The convolution runs here on
        // the detached input (no graph: neither operand tracks gradients); the op then hands its
        // result over as its own output, which costs one copy of the output but no weight
        // gradient in backward.
        // On the CPU in f32 our own convolution, which adds the bias too; elsewhere candle's.
        let fast = crate::conv_cpu::conv2d(
            &x.detach(),
            &self.weight,
            self.bias.as_ref(),
            c.padding,
            c.stride,
            c.dilation,
        )?;
        let with_bias = fast.is_some();
        let y = match fast {
            Some(y) => y,
            None => x
                .detach()
                .conv2d_with_algo(&self.weight, c.padding, c.stride, c.dilation, 1, c.cudnn_fwd_algo)?,
        };
        // Without a gradient to carry (sampling), the plain result is the answer: no op, no copy.
        let y = if x.track_op() {
            x.apply_op1(ConvOp {
                weight: self.weight.clone(),
                padding: c.padding,
                stride: c.stride,
                dilation: c.dilation,
                output: Mutex::new(Some(y)),
            })?
        } else {
            y
        };
        match &self.bias {
            Some(bias) if !with_bias => add_frozen(&y, &bias.reshape((1, bias.dims1()?, 1, 1))?),
            _ => Ok(y),
        }
    }
}

/// Passes on a convolution computed outside, with the input-only gradient.
struct ConvOp {
    weight: Tensor,
    padding: usize,
    stride: usize,
    dilation: usize,
    /// Taken by the forward pass, so the graph does not keep a second copy of the output.
    output: Mutex<Option<Tensor>>,
}

impl ConvOp {
    /// The precomputed output, contiguous from offset 0 (the layout `apply_op1` gives its result).
    fn output(&self) -> Result<Tensor> {
        let y = self
            .output
            .lock()
            .map_err(|_| candle_core::Error::Msg("frozen conv2d: poisoned lock".into()))?
            .take();
        let Some(y) = y else {
            bail!("frozen conv2d: the op was applied twice")
        };
        if y.is_contiguous() && y.layout().start_offset() == 0 {
            Ok(y)
        } else {
            y.copy()
        }
    }

    /// A copy of the output's storage (any device) and its shape.
    fn output_storage(&self) -> Result<(Storage, Shape)> {
        let _t = crate::op_times::forward("conv-output-copy", &[]);
        let y = self.output()?;
        Ok((crate::storage::copy_out(&y)?, y.shape().clone()))
    }
}

impl CustomOp1 for ConvOp {
    fn name(&self) -> &'static str {
        "frozen-conv2d"
    }

    // The input storage is not read: the output was computed from the same tensor in `forward`.
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        match self.output_storage()? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => bail!("frozen conv2d: output not on the cpu"),
        }
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout) -> Result<(CudaStorage, Shape)> {
        match self.output_storage()? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => bail!("frozen conv2d: output not on the cuda device"),
        }
    }

    fn metal_fwd(&self, _: &MetalStorage, _: &Layout) -> Result<(MetalStorage, Shape)> {
        match self.output_storage()? {
            (Storage::Metal(s), shape) => Ok((s, shape)),
            _ => bail!("frozen conv2d: output not on the metal device"),
        }
    }

    /// On the CPU in f32 [`crate::conv_cpu::conv2d_input_grad`]; elsewhere the input half of
    /// candle's `Op::Conv2D` backward: a transposed convolution with the
    /// kernel, its output padding chosen to give back the input's size. candle derives that
    /// padding from the height alone, which fails for a non-square input with stride > 1 whose
    /// width needs another: here the larger of the two is used and the surplus row or column
    /// (beyond the input) dropped, as output padding does not change the positions before it.
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let _t = crate::op_times::backward("conv", grad.dims());
        let (_, _, i_h, i_w) = arg.dims4()?;
        let (s, d, p) = (self.stride, self.dilation, self.padding);
        if let Some(dx) = crate::conv_cpu::conv2d_input_grad(grad, &self.weight, (i_h, i_w), p, s, d)? {
            return Ok(Some(dx));
        }
        let (_, _, g_h, g_w) = grad.dims4()?;
        let (_, _, k_h, k_w) = self.weight.dims4()?;
        // What conv_transpose2d adds to its output size without output padding (never beyond
        // the input's size) falls short of the input by the output padding needed.
        let out_padding = |i: usize, g: usize, k: usize| {
            (g.saturating_sub(1) * s + d * k.saturating_sub(1) + 1)
                .checked_sub(2 * p)
                .and_then(|base| i.checked_sub(base))
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!("frozen conv2d: no transposed convolution gives back size {i}"))
                })
        };
        let op = out_padding(i_h, g_h, k_h)?.max(out_padding(i_w, g_w, k_w)?);
        let dx = grad.conv_transpose2d(&self.weight, p, op, s, d)?;
        let (_, _, h, w) = dx.dims4()?;
        let dx = if h != i_h || w != i_w {
            dx.narrow(2, 0, i_h)?.narrow(3, 0, i_w)?
        } else {
            dx
        };
        Ok(Some(dx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, weighted_sum_grads};
    use candle_core::{DType, Device, Var};
    use candle_nn::{Conv2d, Linear, VarMap};

    /// f32 tolerance on every comparison: the frozen and plain paths call the same kernels, so
    /// they agree to rounding (the chained sums of a few dozen products stay well under this).
    const TOL: f32 = 1e-5;
    /// Three layers deep, the rounding of each compounds.
    const CHAIN_TOL: f32 = 1e-4;

    fn randn(dims: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1., dims, &Device::Cpu).unwrap()
    }

    /// Whether any gradient in the store has one of these shapes.
    fn holds_shape(grads: &candle_core::backprop::GradStore, shapes: &[&[usize]]) -> bool {
        grads
            .get_ids()
            .any(|id| shapes.contains(&grads.get_id(*id).unwrap().dims()))
    }

    fn conv_config(padding: usize, stride: usize) -> Conv2dConfig {
        Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        }
    }

    #[test]
    fn frozen_linear_forward_matches_candle_nn() {
        let (w, b) = (randn(&[7, 5]), randn(&[7]));
        let frozen = FrozenLinear::new(w.clone(), Some(b.clone()));
        let plain = Linear::new(w.clone(), Some(b));
        let base = randn(&[4, 2, 3, 5]);
        let inputs = [
            randn(&[3, 5]),
            randn(&[2, 3, 5]),
            base.clone(),
            // Not contiguous, and starting at an offset. On a batched input whose last two
            // dimensions are transposed, candle-nn's Linear is wrong in candle-core 0.11.1: its
            // CPU matmul folds the batches of a broadcast weight into rows without checking the
            // input's row stride. Hence the reference is candle-nn on a contiguous copy.
            randn(&[2, 5, 3]).transpose(1, 2).unwrap(),
            base.narrow(0, 1, 2).unwrap(),
            base.narrow(2, 1, 2).unwrap(),
        ];
        for x in &inputs {
            let a = frozen.forward(x).unwrap();
            let reference = plain.forward(&x.contiguous().unwrap()).unwrap();
            assert!(max_diff(&a, &reference) < TOL, "{:?}", x.dims());
            if x.stride()[x.rank() - 1] == 1 {
                assert!(max_diff(&a, &plain.forward(x).unwrap()) < TOL, "{:?}", x.dims());
            }
        }
        let no_bias = FrozenLinear::new(w.clone(), None).forward(&inputs[1]).unwrap();
        let reference = Linear::new(w, None).forward(&inputs[1]).unwrap();
        assert!(max_diff(&no_bias, &reference) < TOL);
        assert!(
            frozen.forward(&randn(&[5])).is_err(),
            "a 1-D input is refused, as by candle-nn"
        );
        assert!(frozen.forward(&randn(&[3, 4])).is_err(), "wrong feature count");
    }

    #[test]
    fn frozen_linear_half_precision_like_candle_nn() {
        let w = randn(&[7, 5]).to_dtype(DType::F16).unwrap();
        let b = randn(&[7]).to_dtype(DType::F16).unwrap();
        let x = randn(&[2, 3, 5]).to_dtype(DType::F16).unwrap();
        let a = FrozenLinear::new(w.clone(), Some(b.clone())).forward(&x).unwrap();
        let r = Linear::new(w, Some(b)).forward(&x).unwrap();
        assert_eq!(a.dtype(), DType::F16);
        let (a, r) = (a.to_dtype(DType::F32).unwrap(), r.to_dtype(DType::F32).unwrap());
        // Same kernel on the same f16 values: equal up to f16 rounding of the result.
        assert!(max_diff(&a, &r) < 1e-2);
    }

    #[test]
    fn frozen_linear_builders_read_the_var_builder_like_candle_nn() {
        let map = VarMap::new();
        let vb = VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu);
        let frozen = linear(5, 7, vb.pp("l")).unwrap();
        let plain = candle_nn::linear(5, 7, vb.pp("l")).unwrap();
        assert_eq!(frozen.weight().dims(), &[7, 5]);
        let x = randn(&[2, 5]);
        assert!(max_diff(&frozen.forward(&x).unwrap(), &plain.forward(&x).unwrap()) < TOL);
        assert!(linear_no_bias(5, 7, vb.pp("m")).unwrap().bias().is_none());
        let conv = conv2d(3, 4, 3, conv_config(1, 1), vb.pp("c")).unwrap();
        let conv_plain = candle_nn::conv2d(3, 4, 3, conv_config(1, 1), vb.pp("c")).unwrap();
        let x = randn(&[2, 3, 6, 6]);
        assert!(max_diff(&conv.forward(&x).unwrap(), &conv_plain.forward(&x).unwrap()) < TOL);
    }

    #[test]
    fn frozen_linear_input_gradient_without_weight_gradient() {
        let (w, b) = (randn(&[7, 5]), randn(&[7]));
        // Both ways of the input gradient: few rows and at least `FEW_ROWS`.
        for dims in [&[3, 5][..], &[2, 3, 5], &[2, 2, 3, 5], &[2, FEW_ROWS, 5]] {
            let x = Var::from_tensor(&randn(dims)).unwrap();
            let mut out_dims = dims.to_vec();
            *out_dims.last_mut().unwrap() = 7;
            let r = randn(&out_dims);

            let y = FrozenLinear::new(w.clone(), Some(b.clone())).forward(&x).unwrap();
            let frozen = weighted_sum_grads(&y, &r);

            // The plain ops, with the transposed weight kept to find its gradient.
            let wt = w.t().unwrap();
            let flat = x.reshape(((), 5)).unwrap().matmul(&wt).unwrap();
            let y = flat.reshape(out_dims.as_slice()).unwrap().broadcast_add(&b).unwrap();
            let plain = weighted_sum_grads(&y, &r);

            let dx = frozen.get(&x).expect("input gradient");
            assert!(max_diff(dx, plain.get(&x).unwrap()) < TOL);
            assert!(plain.get(&wt).is_some(), "candle keeps the frozen weight's gradient");
            // Both keep the gradient of the constant `r`; candle's add keeps the bias's too.
            let out_sized = |g: &candle_core::backprop::GradStore| {
                g.get_ids()
                    .filter(|id| g.get_id(**id).unwrap().dims() == out_dims.as_slice())
                    .count()
            };
            assert_eq!((out_sized(&frozen), out_sized(&plain)), (1, 2), "{dims:?}");
            assert!(frozen.get(&w).is_none());
            assert!(
                !holds_shape(&frozen, &[&[7, 5], &[5, 7]]),
                "no weight-shaped gradient at all"
            );
        }
    }

    #[test]
    fn frozen_conv2d_forward_matches_candle_nn() {
        // (in, out, kernel, padding, stride), input height and width.
        let cases = [
            (3, 4, 3, 1, 1, 8, 8),
            (3, 4, 3, 1, 2, 8, 8),
            (3, 4, 1, 0, 1, 5, 5),
            (3, 4, 3, 1, 2, 7, 6),
        ];
        for (cin, cout, k, padding, stride, h, w) in cases {
            let (weight, bias) = (randn(&[cout, cin, k, k]), randn(&[cout]));
            let cfg = conv_config(padding, stride);
            let frozen = FrozenConv2d::new(weight.clone(), Some(bias.clone()), cfg).unwrap();
            let plain = Conv2d::new(weight, Some(bias), cfg);
            let x = randn(&[2, cin, h, w]);
            let (a, b) = (frozen.forward(&x).unwrap(), plain.forward(&x).unwrap());
            assert!(max_diff(&a, &b) < TOL);
            // The same through the custom op (an input that carries a gradient).
            let v = Var::from_tensor(&x).unwrap();
            assert!(max_diff(&frozen.forward(&v).unwrap(), &b) < TOL);
        }
        let grouped = Conv2dConfig {
            groups: 2,
            ..Default::default()
        };
        assert!(FrozenConv2d::new(randn(&[4, 2, 3, 3]), None, grouped).is_err());
    }

    #[test]
    fn frozen_conv2d_half_precision_like_candle_nn() {
        let weight = randn(&[4, 3, 3, 3]).to_dtype(DType::F16).unwrap();
        let bias = randn(&[4]).to_dtype(DType::F16).unwrap();
        let x = Var::from_tensor(&randn(&[2, 3, 6, 6]).to_dtype(DType::F16).unwrap()).unwrap();
        let cfg = conv_config(1, 1);
        let a = FrozenConv2d::new(weight.clone(), Some(bias.clone()), cfg)
            .unwrap()
            .forward(&x)
            .unwrap();
        let r = Conv2d::new(weight, Some(bias), cfg).forward(&x).unwrap();
        assert_eq!(a.dtype(), DType::F16);
        let (a, r) = (a.to_dtype(DType::F32).unwrap(), r.to_dtype(DType::F32).unwrap());
        assert!(max_diff(&a, &r) < 1e-2);
    }

    #[test]
    fn frozen_conv2d_input_gradient_without_weight_gradient() {
        for (k, padding, stride) in [(3, 1, 1), (3, 1, 2), (1, 0, 1)] {
            let (weight, bias) = (randn(&[4, 3, k, k]), randn(&[4]));
            let cfg = conv_config(padding, stride);
            let x = Var::from_tensor(&randn(&[2, 3, 8, 8])).unwrap();

            let y = FrozenConv2d::new(weight.clone(), Some(bias.clone()), cfg)
                .unwrap()
                .forward(&x)
                .unwrap();
            let r = randn(y.dims());
            let frozen = weighted_sum_grads(&y, &r);
            let y = Conv2d::new(weight.clone(), Some(bias), cfg).forward(&x).unwrap();
            let plain = weighted_sum_grads(&y, &r);

            let dx = frozen.get(&x).expect("input gradient");
            assert!(
                max_diff(dx, plain.get(&x).unwrap()) < TOL,
                "k {k} padding {padding} stride {stride}"
            );
            assert!(
                plain.get(&weight).is_some(),
                "candle keeps the frozen kernel's gradient"
            );
            assert!(frozen.get(&weight).is_none());
            assert!(
                !holds_shape(&frozen, &[&[4, 3, k, k]]),
                "no kernel-shaped gradient at all"
            );
        }
    }

    /// candle's conv backward fits the output padding to the height only; with stride 2 an
    /// input 4 high and 5 wide (or 5 and 4) needs a different one per axis. The loss is linear in
    /// the input, so its exact gradient is the loss of each one-hot input.
    #[test]
    fn frozen_conv2d_gradient_for_non_square_inputs() {
        let (weight, cfg) = (randn(&[2, 1, 3, 3]), conv_config(1, 2));
        let conv = FrozenConv2d::new(weight, None, cfg).unwrap();
        for (h, w) in [(4, 5), (5, 4)] {
            let x = Var::from_tensor(&randn(&[1, 1, h, w])).unwrap();
            let y = conv.forward(&x).unwrap();
            let r = randn(y.dims());
            let grads = weighted_sum_grads(&y, &r);
            let exact: Vec<f32> = (0..h * w)
                .map(|i| {
                    let mut hot = vec![0f32; h * w];
                    hot[i] = 1.;
                    let e = Tensor::from_vec(hot, (1, 1, h, w), &Device::Cpu).unwrap();
                    conv.forward(&e)
                        .unwrap()
                        .mul(&r)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .to_scalar()
                        .unwrap()
                })
                .collect();
            let exact = Tensor::from_vec(exact, (1, 1, h, w), &Device::Cpu).unwrap();
            assert!(max_diff(grads.get(&x).unwrap(), &exact) < TOL, "{h}x{w}");
        }
    }

    #[test]
    fn a_chain_of_frozen_layers_backpropagates_to_the_input() {
        let l1 = FrozenLinear::new(randn(&[6, 5]), Some(randn(&[6])));
        let conv = FrozenConv2d::new(randn(&[4, 6, 3, 3]), Some(randn(&[4])), conv_config(1, 1)).unwrap();
        let l2 = FrozenLinear::new(randn(&[3, 4]), None);
        let p1 = Linear::new(l1.weight().clone(), l1.bias().cloned());
        let pc = Conv2d::new(conv.weight().clone(), conv.bias().cloned(), *conv.config());
        let p2 = Linear::new(l2.weight().clone(), None);
        // Tokens (b, h·w, c) → image (b, c, h, w) → tokens again, as in a UNet transformer block.
        let run = |x: &Tensor, l1: &dyn Module, conv: &dyn Module, l2: &dyn Module| {
            let t = l1.forward(x).unwrap(); // (2, 16, 6)
            let img = t.transpose(1, 2).unwrap().reshape((2, 6, 4, 4)).unwrap();
            let img = conv.forward(&img).unwrap(); // (2, 4, 4, 4)
            let t = img.flatten_from(2).unwrap().transpose(1, 2).unwrap(); // (2, 16, 4)
            l2.forward(&t).unwrap() // (2, 16, 3)
        };
        let x = Var::from_tensor(&randn(&[2, 16, 5])).unwrap();
        let r = randn(&[2, 16, 3]);
        let frozen = weighted_sum_grads(&run(&x, &l1, &conv, &l2), &r);
        let plain = weighted_sum_grads(&run(&x, &p1, &pc, &p2), &r);
        let dx = frozen.get(&x).expect("the chain reaches the input");
        assert!(max_diff(dx, plain.get(&x).unwrap()) < CHAIN_TOL);
        assert!(!holds_shape(
            &frozen,
            &[&[6, 5], &[5, 6], &[4, 6, 3, 3], &[3, 4], &[4, 3]]
        ));
        assert!(holds_shape(&plain, &[&[4, 6, 3, 3]]));
    }
}
