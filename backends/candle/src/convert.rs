//! Between adp's host tensors and candle's, and between their errors.
use adp_api::requests::Prompt;
use adp_api::{Device, Error, Result};
use candle_core::Tensor;
use candle_core::Var;

pub fn err(e: candle_core::Error) -> Error {
    Error::Backend {
        backend: crate::NAME.into(),
        message: e.to_string(),
    }
}

pub fn device(d: Device) -> Result<candle_core::Device> {
    match d {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        Device::Cuda(n) => candle_core::Device::new_cuda(n).map_err(|_| Error::DeviceUnavailable {
            backend: crate::NAME.into(),
            device: d.to_string(),
        }),
    }
}

/// Refuses what candle cannot run: its CPU matmul (gemm) has f16 kernels but none for bf16.
pub fn check_dtype(d: adp_api::Dtype, device: &candle_core::Device) -> Result<()> {
    if d == adp_api::Dtype::Bf16 && device.is_cpu() {
        return Err(Error::invalid(
            "dtype",
            format!(
                "bf16 needs cuda on backend {} (its CPU matmul has no bf16 kernel); use f16 or f32 on the cpu",
                crate::NAME
            ),
        ));
    }
    Ok(())
}

/// candle's dtype for `--dtype`; f16 runs on the CPU too, slowly (see [`check_dtype`]).
pub fn dtype(d: adp_api::Dtype) -> candle_core::DType {
    match d {
        adp_api::Dtype::F32 => candle_core::DType::F32,
        adp_api::Dtype::F16 => candle_core::DType::F16,
        adp_api::Dtype::Bf16 => candle_core::DType::BF16,
    }
}

pub fn to_candle(t: &adp_api::Tensor, device: &candle_core::Device) -> Result<Tensor> {
    Tensor::from_slice(t.data(), t.shape(), device).map_err(err)
}

pub fn from_candle(t: &Tensor) -> Result<adp_api::Tensor> {
    let shape = t.dims().to_vec();
    let data = t
        .flatten_all()
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(err)?;
    adp_api::Tensor::new(shape, data)
}

/// Every prompt's concept vectors as tensors on `device`; those named by `trainable` share its
/// `Var`, so gradients reach it.
pub fn concept_slots(
    prompts: &[Prompt],
    width: usize,
    trainable: Option<(&str, &Var)>,
    device: &candle_core::Device,
) -> Result<Vec<Vec<Tensor>>> {
    adp_api::layout::concept_slots(prompts, width, |c| match trainable {
        Some((name, var)) if name == c.placeholder => Ok(var.as_tensor().clone()),
        _ => Tensor::new(c.vector.as_slice(), device).map_err(err),
    })
}

/// The `Var` to differentiate with respect to: the first concept named `gradient_of`, or `None`.
pub fn trainable_var(
    prompts: &[&Prompt],
    gradient_of: Option<&String>,
    device: &candle_core::Device,
) -> Result<Option<Var>> {
    let Some(c) = adp_api::checks::trainable_concept(prompts, gradient_of)? else {
        return Ok(None);
    };
    Var::new(c.vector.as_slice(), device).map(Some).map_err(err)
}
