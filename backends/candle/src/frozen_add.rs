//! `x + c` with `c` frozen (a bias, a timestep's embedding) and broadcast to `x`'s shape, as one
//! graph node whose backward pass gives `x` its gradient and `c` none.
//!
//! candle's backward pass gives both operands of an add a gradient, tracked or not: for
//! `x.broadcast_add(c)` the broadcast view of `c` gets a gradient the size of `x` (a zero tensor
//! and an add), and since that view leads to no variable nothing consumes it: it stays in the
//! `GradStore` until the whole backward pass is over. In the UNet every linear layer's bias and
//! every resnet's timestep embedding was such an add, two extra passes over each of those
//! activations: SD 2.1-base's learning step at 512 px peaked at 8.9 GB with them, 7.65 GB
//! without (`adp bench --rows learn-step-1`).
use candle_core::backend::BackendStorage;
use candle_core::op::Add;
use candle_core::{bail, CpuStorage, CudaStorage, CustomOp1, Layout, MetalStorage, Result, Shape, Storage, Tensor};

use crate::storage::{cpu, cuda, metal, on_storage};

/// `x.broadcast_add(c)`, the gradient for `x` only where `x` carries one and `c` does not (the
/// plain add otherwise: then `c`'s gradient is wanted, or no gradient at all).
pub fn add_frozen(x: &Tensor, c: &Tensor) -> Result<Tensor> {
    let _t = crate::op_times::forward("add-frozen", x.dims());
    if !x.track_op() || c.track_op() {
        return x.broadcast_add(c);
    }
    check(x, c)?;
    x.apply_op1(AddFrozen { c: c.clone() })
}

/// The errors `broadcast_add` would give, before any storage is touched.
fn check(x: &Tensor, c: &Tensor) -> Result<()> {
    if x.dtype() != c.dtype() {
        bail!(
            "add: {:?} tensor {:?} plus {:?} tensor {:?}",
            x.dtype(),
            x.dims(),
            c.dtype(),
            c.dims()
        )
    }
    if !x.device().same_device(c.device()) {
        bail!("add: tensor on {:?} plus tensor on {:?}", x.device(), c.device())
    }
    c.layout().broadcast_as(x.shape().clone()).map(|_| ())
}

/// `x + c` on the storages, `c` broadcast to `x`'s shape: a fresh contiguous result.
pub(crate) fn add_broadcast<B: BackendStorage>(
    x: &B,
    x_layout: &Layout,
    c: &B,
    c_layout: &Layout,
) -> Result<(B, Shape)> {
    let shape = x_layout.shape().clone();
    let y = x.binary_impl::<Add>(c, x_layout, &c_layout.broadcast_as(shape.clone())?)?;
    Ok((y, shape))
}

struct AddFrozen {
    c: Tensor,
}

impl AddFrozen {
    fn fwd<B: BackendStorage>(&self, x: &B, layout: &Layout, pick: fn(&Storage) -> Option<&B>) -> Result<(B, Shape)> {
        on_storage(&self.c, "add: the frozen operand", pick, |c, cl| {
            add_broadcast(x, layout, c, cl)
        })
    }
}

impl CustomOp1 for AddFrozen {
    fn name(&self) -> &'static str {
        "add-frozen"
    }

    fn cpu_fwd(&self, x: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        self.fwd(x, layout, cpu)
    }

    fn cuda_fwd(&self, x: &CudaStorage, layout: &Layout) -> Result<(CudaStorage, Shape)> {
        self.fwd(x, layout, cuda)
    }

    fn metal_fwd(&self, x: &MetalStorage, layout: &Layout) -> Result<(MetalStorage, Shape)> {
        self.fwd(x, layout, metal)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{max_diff, weighted_sum_grads};
    use candle_core::{DType, Device, Var};

    fn randn(dims: &[usize]) -> Tensor {
        Tensor::randn(0f32, 1., dims, &Device::Cpu).unwrap()
    }

    /// Same values and input gradient as `broadcast_add` (exactly: the same additions), and the
    /// store holds the input's gradient alone where candle's add keeps one for the constant too.
    #[test]
    fn gradient_for_the_input_only() {
        for (xd, cd) in [
            (&[2, 3, 4, 5][..], &[1, 3, 1, 1][..]),
            (&[2, 6, 5], &[5]),
            (&[4, 5], &[4, 5]),
        ] {
            let x = Var::from_tensor(&randn(xd)).unwrap();
            let (c, r) = (randn(cd), randn(xd));
            let a = add_frozen(&x, &c).unwrap();
            let b = x.broadcast_add(&c).unwrap();
            assert_eq!(max_diff(&a, &b), 0.0, "{xd:?} + {cd:?}");
            let ga = weighted_sum_grads(&a, &r);
            let gb = weighted_sum_grads(&b, &r);
            assert_eq!(max_diff(ga.get(&x).unwrap(), gb.get(&x).unwrap()), 0.0);
            let x_sized = |g: &candle_core::backprop::GradStore| {
                g.get_ids().filter(|id| g.get_id(**id).unwrap().dims() == xd).count()
            };
            // The product, the sum, the add and the input: one x-sized gradient fewer.
            assert_eq!(x_sized(&gb), x_sized(&ga) + 1, "{xd:?} + {cd:?}");
            assert!(ga.get(&c).is_none());
        }
    }

    #[test]
    fn the_plain_add_where_no_gradient_is_wanted_for_x_alone() {
        let (x, c) = (randn(&[2, 3]), Var::from_tensor(&randn(&[3])).unwrap());
        let r = randn(&[2, 3]);
        let g = weighted_sum_grads(&add_frozen(&x, &c).unwrap(), &r);
        // c tracks: its gradient is the product summed over the broadcast rows.
        assert!(max_diff(g.get(&c).unwrap(), &r.sum(0).unwrap()) < 1e-6);
        assert!(!add_frozen(&x, &randn(&[3])).unwrap().track_op());
    }

    #[test]
    fn mismatches_are_errors_naming_the_shapes() {
        let x = Var::from_tensor(&randn(&[2, 3])).unwrap();
        let e = add_frozen(&x, &randn(&[4])).unwrap_err().to_string();
        assert!(e.contains('3') && e.contains('4'), "{e}");
        let half = randn(&[3]).to_dtype(DType::F16).unwrap();
        let e = add_frozen(&x, &half).unwrap_err().to_string();
        assert!(e.contains("F16") && e.contains("[2, 3]"), "{e}");
    }
}
