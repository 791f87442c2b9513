//! Gradient checkpointing for a block of two inputs, as one candle custom op.
//!
//! candle's backward pass keeps the whole forward graph alive until the loss is dropped, so a
//! concept-learning step holds every intermediate of the UNet at once, where PyTorch frees each
//! node's saved tensors as its backward runs. At 768 px the UNet's transformer blocks alone keep
//! several GB of them. Wrapped in this op, a block keeps only its inputs and its output: the
//! forward runs on untracked copies, and the backward runs the block again on its inputs, as
//! variables, then backpropagates the output's gradient through that one block's graph (what
//! diffusers' `enable_gradient_checkpointing` does). The price is one more forward of the block,
//! less what the block keeps in its [`Memo`]: the attention's outputs, most of a transformer
//! block's arithmetic at 9216 tokens and a few MB each, are not computed again.
use crate::storage::{copy_out_view, wrap};
use candle_core::backend::BackendStorage;
use candle_core::{
    bail, CpuStorage, CudaStorage, CustomOp2, Layout, MetalStorage, Result, Shape, Storage, Tensor, Var,
};
use std::sync::{Arc, Mutex, MutexGuard};

/// A block `y = f(x, c)` of ordinary tensor code, differentiable in both inputs.
pub trait Checkpointable: Send + Sync + 'static {
    /// `memo`: where the block may keep costly results of its first run for its recomputation
    /// ([`Memo::memoised`]); `None` when it runs once only.
    fn forward(&self, x: &Tensor, c: &Tensor, memo: Option<&Memo>) -> Result<Tensor>;
}

/// `block.forward(x, c)`, checkpointed when a gradient may flow through either input; the plain
/// forward otherwise (nothing is kept then anyway).
pub fn checkpoint<B: Checkpointable>(block: &Arc<B>, x: &Tensor, c: &Tensor) -> Result<Tensor> {
    if !(x.track_op() || c.track_op()) {
        return block.forward(x, c, None);
    }
    let op = Checkpoint {
        block: block.clone(),
        memo: Memo::default(),
    };
    x.contiguous()?.apply_op2(&c.contiguous()?, op)
}

/// Results a checkpointed block computes in its first run and reads back, in the same order, when
/// it runs again for the backward pass. One per checkpoint op, so per call: concurrent steps
/// never share one.
#[derive(Default)]
pub struct Memo(Mutex<MemoState>);

#[derive(Default)]
struct MemoState {
    recorded: Vec<Tensor>,
    /// `None` while the first run records; the next result to read back during the recomputation.
    replay_at: Option<usize>,
}

impl Memo {
    /// `compute()` in the first run, recording its (untracked) result; in the recomputation
    /// `replay(result)`, which must give the same value as a node of the new graph (e.g.
    /// [`crate::attention::attention_with_output`]). Past the recorded results (a block that
    /// does not run the same way twice) it computes again: slower, never wrong.
    pub fn memoised(
        &self,
        compute: impl FnOnce() -> Result<Tensor>,
        replay: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut state = self.state()?;
        match state.replay_at {
            None => {
                drop(state);
                let y = compute()?;
                self.state()?.recorded.push(y.detach());
                Ok(y)
            }
            Some(i) => match state.recorded.get(i).cloned() {
                Some(y) => {
                    state.replay_at = Some(i + 1);
                    drop(state);
                    replay(&y)
                }
                None => {
                    drop(state);
                    compute()
                }
            },
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, MemoState>> {
        self.0
            .lock()
            .map_err(|_| candle_core::Error::Msg("checkpoint: a recomputation panicked".into()))
    }

    fn start_replay(&self) -> Result<()> {
        self.state()?.replay_at = Some(0);
        Ok(())
    }

    /// After the recomputation: its results live on in the new graph's nodes where needed.
    fn forget(&self) -> Result<()> {
        let mut state = self.state()?;
        state.recorded.clear();
        state.replay_at = None;
        Ok(())
    }
}

struct Checkpoint<B> {
    block: Arc<B>,
    memo: Memo,
}

impl<B: Checkpointable> Checkpoint<B> {
    /// The forward on raw storages: wrap, run the block untracked, copy the output out. The
    /// block's intermediates die here.
    fn forward_storage(&self, s1: Storage, l1: &Layout, s2: Storage, l2: &Layout) -> Result<(Storage, Shape)> {
        let y = self.block.forward(&wrap(s1, l1)?, &wrap(s2, l2)?, Some(&self.memo))?;
        Ok((copy_out_view(&y)?, y.shape().clone()))
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
        let _t = crate::op_times::backward("checkpoint", dy.dims());
        let input = |t: &Tensor| -> Result<(Tensor, bool)> {
            Ok(if t.track_op() {
                (Var::from_tensor(&t.detach())?.as_tensor().clone(), true)
            } else {
                (t.detach(), false)
            })
        };
        let ((xv, wants_x), (cv, wants_c)) = (input(x)?, input(c)?);
        self.memo.start_replay()?;
        let y = self.block.forward(&xv, &cv, Some(&self.memo))?;
        self.memo.forget()?;
        let grads = (y * dy.detach())?.sum_all()?.backward()?;
        let grad = |t: &Tensor, wanted: bool| wanted.then(|| grads.get(t).cloned()).flatten();
        Ok((grad(&xv, wants_x), grad(&cv, wants_c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{attention, attention_with_output};
    use crate::testing::max_diff;
    use candle_core::{Device, D};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A block with a residual path, a product of its two inputs and a non-linearity.
    struct Mix(Tensor);

    impl Checkpointable for Mix {
        fn forward(&self, x: &Tensor, c: &Tensor, _: Option<&Memo>) -> Result<Tensor> {
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
        let plain = loss(block.forward(&x.exp()?, c.as_tensor(), None)?)?;
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

    /// Attention of `x` (queries) over `c` (keys, and values through a tanh), memoised, times `x`:
    /// counts its attention forward passes and replays.
    #[derive(Default)]
    struct Attend {
        computed: AtomicUsize,
        replayed: AtomicUsize,
    }

    impl Checkpointable for Attend {
        fn forward(&self, x: &Tensor, c: &Tensor, memo: Option<&Memo>) -> Result<Tensor> {
            let v = c.tanh()?;
            let compute = || {
                self.computed.fetch_add(1, Ordering::SeqCst);
                attention(x, c, &v)
            };
            let y = match memo {
                Some(m) => m.memoised(compute, |o| {
                    self.replayed.fetch_add(1, Ordering::SeqCst);
                    attention_with_output(x, c, &v, o)
                })?,
                None => compute()?,
            };
            y * x
        }
    }

    #[test]
    fn a_memoised_attention_runs_once_and_its_gradients_match_the_plain_graph() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 2, 5, 4), &dev)?)?;
        let c = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 2, 3, 4), &dev)?)?;
        let target = Tensor::randn(0f32, 1.0, (1, 2, 5, 4), &dev)?;
        let loss = |y: Tensor| (y - &target)?.sqr()?.sum_all();
        let (plain_block, ck_block) = (Attend::default(), Arc::new(Attend::default()));
        let plain = loss(plain_block.forward(x.as_tensor(), c.as_tensor(), None)?)?;
        let ck = loss(checkpoint(&ck_block, x.as_tensor(), c.as_tensor())?)?;
        assert!(max_diff(&plain, &ck) < 1e-6);
        let (gp, gc) = (plain.backward()?, ck.backward()?);
        for v in [&x, &c] {
            let (a, b) = (gp.get(v.as_tensor()).unwrap(), gc.get(v.as_tensor()).unwrap());
            assert!(max_diff(a, b) < 1e-5, "{a} vs {b}");
        }
        // The recomputation read the attention back instead of running it again.
        assert_eq!(ck_block.computed.load(Ordering::SeqCst), 1);
        assert_eq!(ck_block.replayed.load(Ordering::SeqCst), 1);
        Ok(())
    }
}
