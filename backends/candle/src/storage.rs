//! Between a custom op's raw storages and tensors: the ops in `norm` and `frozen` compute their
//! forward passes with ordinary (untracked) tensor operations on a copy of their input.
use candle_core::backend::BackendStorage;
use candle_core::op::BackpropOp;
use candle_core::{bail, CpuStorage, CudaStorage, Layout, MetalStorage, Result, Storage, Tensor};

/// `storage`, a clone of the op's input buffer (`try_clone` copies the whole buffer and
/// ignores the layout, on CPU and CUDA alike), as a tensor with the input's shape and no
/// autograd. The input is contiguous (`Module::forward` ensures it) but may start at an offset
/// into its buffer, hence the narrow of a flat view.
pub(crate) fn wrap(storage: Storage, layout: &Layout) -> Result<Tensor> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("custom op: input must be contiguous")
    };
    Tensor::from_storage(storage, end, BackpropOp::none(), false)
        .narrow(0, start, end - start)?
        .reshape(layout.shape())
}

/// A copy of `y`'s storage, which must be contiguous from offset 0: the op's output storage is
/// read with the plain contiguous layout of its shape. `y` comes fresh from an elementwise op
/// (or a cast), so its buffer holds exactly its elements.
pub(crate) fn copy_out(y: &Tensor) -> Result<Storage> {
    let (storage, layout) = y.storage_and_layout();
    if !layout.is_contiguous() || layout.start_offset() != 0 {
        bail!("custom op: internal error, result is not a fresh contiguous tensor")
    }
    Ok(match &*storage {
        Storage::Cpu(s) => Storage::Cpu(s.try_clone(layout)?),
        Storage::Cuda(s) => Storage::Cuda(s.try_clone(layout)?),
        Storage::Metal(s) => Storage::Metal(s.try_clone(layout)?),
    })
}

/// [`copy_out`] for any view: one that is not contiguous from offset 0 is first copied into a
/// fresh tensor (a contiguous view at offset 0 reads right as it is).
pub(crate) fn copy_out_view(y: &Tensor) -> Result<Storage> {
    if y.is_contiguous() && y.layout().start_offset() == 0 {
        copy_out(y)
    } else {
        copy_out(&y.affine(1.0, 0.0)?)
    }
}

/// The storage of type `S` under `t`, given to `f`; an error naming `what` on another device.
pub(crate) fn on_storage<S, R>(
    t: &Tensor,
    what: &str,
    pick: fn(&Storage) -> Option<&S>,
    f: impl FnOnce(&S, &Layout) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match pick(&storage) {
        Some(s) => f(s, layout),
        None => bail!("{what} is not on the input's device"),
    }
}

/// The device's storage inside a [`Storage`], for [`on_storage`] and ops generic over devices.
pub(crate) fn cpu(s: &Storage) -> Option<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Some(s),
        _ => None,
    }
}

pub(crate) fn cuda(s: &Storage) -> Option<&CudaStorage> {
    match s {
        Storage::Cuda(s) => Some(s),
        _ => None,
    }
}

pub(crate) fn metal(s: &Storage) -> Option<&MetalStorage> {
    match s {
        Storage::Metal(s) => Some(s),
        _ => None,
    }
}
