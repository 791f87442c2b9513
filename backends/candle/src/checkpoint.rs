//! Gradient checkpointing for a block of two inputs, as one candle custom op.
//!
//! candle's backward pass keeps the whole forward graph alive until the loss is dropped, so a
//! concept-learning step holds every intermediate of the UNet at once, where PyTorch frees each
//! node's saved tensors as its backward runs. At 768 px the UNet's transformer blocks alone keep
//! several GB of them. Wrapped in this op, a block keeps only its inputs and its output: the
//! forward runs on untracked copies, and the backward runs the block again on its inputs, as
//! variables, then backpropagates the output's gradient through that one block's graph (what
//! diffusers' `enable_gradient_checkpointing` does). The price is one more forward of the block.
use crate::storage::{copy_out, wrap};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Result, Shape, Storage, Tensor, Var,
};
use std::sync::Arc;

/// A block `y = f(x, c)` of ordinary tensor code, differentiable in both inputs.
pub trait Checkpointable: Send + Sync + 'static {
    fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor>;
}

/// `block.forward(x, c)`, checkpointed when a gradient may flow through either input; the plain
/// forward otherwise (nothing is kept then anyway).
pub fn checkpoint<B: Checkpointable>(block: &Arc<B>, x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if !(x.track_op() || c.track_op()) {
        return block.forward(x, c);
    }
    x.contiguous()?.apply_op2(&c.contiguous()?, Checkpoint(block.clone()))
}

struct Checkpoint<B>(Arc<B>);

impl<B: Checkpointable> Checkpoint<B> {
    /// The forward on raw storages: wrap, run the block untracked, copy the output out. The
    /// block's intermediates die here.
    fn forward_storage(&self, s1: Storage, l1: &Layout, s2: Storage, l2: &Layout) -> Result<(Storage, Shape)> {
        let y = self.0.forward(&wrap(s1, l1)?, &wrap(s2, l2)?)?;
        // `copy_out` reads the output's buffer from offset 0 as contiguous; any other view is
        // copied into a fresh tensor first (a contiguous view at offset 0 reads right as it is).
        let y = if y.is_contiguous() && y.layout().start_offset() == 0 {
            y
        } else {
            y.affine(1.0, 0.0)?
        };
        Ok((copy_out(&y)?, y.shape().clone()))
    }
}

impl<B: Checkpointable> CustomOp2 for Checkpoint<B> {
    fn name(&self) -> &'static str {
        "adp-checkpoint"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (s1, s2) = (Storage::Cpu(s1.try_clone(l1)?), Storage::Cpu(s2.try_clone(l2)?));
        match self.forward_storage(s1, l1, s2, l2)? {
            (Storage::Cpu(s), shape) => Ok((s, shape)),
            _ => bail!("checkpoint: internal error, CPU op produced non-CPU storage"),
        }
    }

    // Without the `cuda` feature `CudaStorage` is candle's stub: never called, still compiles.
    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let (s1, s2) = (Storage::Cuda(s1.try_clone(l1)?), Storage::Cuda(s2.try_clone(l2)?));
        match self.forward_storage(s1, l1, s2, l2)? {
            (Storage::Cuda(s), shape) => Ok((s, shape)),
            _ => bail!("checkpoint: internal error, CUDA op produced non-CUDA storage"),
        }
    }

    fn metal_fwd(
        &self,
        s1: &MetalStorage,
        l1: &Layout,
        s2: &MetalStorage,
        l2: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        let (s1, s2) = (Storage::Metal(s1.try_clone(l1)?), Storage::Metal(s2.try_clone(l2)?));
        match self.forward_storage(s1, l1, s2, l2)? {
            (Storage::Metal(s), shape) => Ok((s, shape)),
            _ => bail!("checkpoint: internal error, Metal op produced non-Metal storage"),
        }
    }

    /// The block once more, on its inputs as fresh variables (only those the outer graph
    /// tracks), and `Σ y ⊙ dy` backpropagated through it: its gradient with respect to each
    /// input is that input's share of `dy`.
    fn bwd(&self, x: &Tensor, c: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let input = |t: &Tensor| -> Result<(Tensor, bool)> {
            Ok(if t.track_op() {
                (Var::from_tensor(&t.detach())?.as_tensor().clone(), true)
            } else {
                (t.detach(), false)
            })
        };
        let ((xv, wants_x), (cv, wants_c)) = (input(x)?, input(c)?);
        let y = self.0.forward(&xv, &cv)?;
        let grads = (y * dy.detach())?.sum_all()?.backward()?;
        let grad = |t: &Tensor, wanted: bool| wanted.then(|| grads.get(t).cloned()).flatten();
        Ok((grad(&xv, wants_x), grad(&cv, wants_c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use candle_core::{Device, D};

    /// A block with a residual path, a product of its two inputs and a non-linearity.
    struct Mix(Tensor);

    impl Checkpointable for Mix {
        fn forward(&self, x: &Tensor, c: &Tensor) -> Result<Tensor> {
            let h = x.matmul(&self.0)?.broadcast_mul(&c.mean_keepdim(D::Minus1)?)?.tanh()?;
            (x + h)?.narrow(1, 1, 3)
        }
    }

    #[test]
    fn gradients_match_the_plain_graph() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.5, (4, 4), &dev)?;
        let block = Arc::new(Mix(w));
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4), &dev)?)?;
        let c = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 5), &dev)?)?;
        let target = Tensor::randn(0f32, 1.0, (3, 3), &dev)?;
        let loss = |y: Tensor| (y - &target)?.sqr()?.sum_all();
        let plain = loss(block.forward(&x.exp()?, c.as_tensor())?)?;
        let ck = loss(checkpoint(&block, &x.exp()?, c.as_tensor())?)?;
        assert!(max_diff(&plain, &ck) < 1e-6);
        let (gp, gc) = (plain.backward()?, ck.backward()?);
        for v in [&x, &c] {
            let (a, b) = (gp.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn untracked_inputs_run_the_plain_forward_and_get_no_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let block = Arc::new(Mix(Tensor::eye(4, candle_core::DType::F32, &dev)?));
        let x = Tensor::randn(0f32, 1.0, (2, 4), &dev)?;
        let c = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 5), &dev)?)?;
        assert!(!checkpoint(&block, &x, &x)?.track_op());
        let y = checkpoint(&block, &x, c.as_tensor())?;
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert_eq!(grads.get(c.as_tensor()).unwrap().dims(), [2, 5]);
        Ok(())
    }
}
