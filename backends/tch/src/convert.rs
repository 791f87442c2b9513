//! Between adp's host tensors and tch's, and between their errors and devices.
use adp_api::requests::Prompt;
use adp_api::{Device, Error, Result};
use tch::{Kind, TchError, Tensor};

pub fn err(e: TchError) -> Error {
    Error::Backend {
        backend: crate::NAME.into(),
        message: e.to_string(),
    }
}

/// The CUDA devices the loaded libtorch sees (none with a CPU libtorch).
pub fn cuda_count() -> usize {
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

pub fn device(d: Device) -> Result<tch::Device> {
    match d {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda(n) if n < cuda_count() => Ok(tch::Device::Cuda(n)),
        Device::Cuda(_) => Err(Error::DeviceUnavailable {
            backend: crate::NAME.into(),
            device: d.to_string(),
        }),
    }
}

/// libtorch's kind for `--dtype`. Its CPU kernels cover f16 and bf16 for every op the models use.
pub fn kind(d: adp_api::Dtype) -> Kind {
    match d {
        adp_api::Dtype::F32 => Kind::Float,
        adp_api::Dtype::F16 => Kind::Half,
        adp_api::Dtype::Bf16 => Kind::BFloat16,
    }
}

/// Sizes as libtorch wants them.
pub fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

pub fn to_tch(t: &adp_api::Tensor, device: tch::Device) -> Result<Tensor> {
    Tensor::f_from_slice(t.data())
        .and_then(|x| x.f_reshape(dims(t.shape())))
        .and_then(|x| x.f_to_device(device))
        .map_err(err)
}

/// A flat `Vec<f32>` of any tensor, on any device.
pub fn to_vec(t: &Tensor) -> Result<Vec<f32>> {
    let flat = t
        .f_to_device(tch::Device::Cpu)
        .and_then(|x| x.f_to_kind(Kind::Float))
        .and_then(|x| x.f_reshape([-1]))
        .map_err(err)?;
    Vec::<f32>::try_from(&flat).map_err(err)
}

/// A vector on `device`.
pub fn vector(v: &[f32], device: tch::Device) -> Result<Tensor> {
    Tensor::f_from_slice(v).and_then(|t| t.f_to_device(device)).map_err(err)
}

pub fn from_tch(t: &Tensor) -> Result<adp_api::Tensor> {
    let shape = t.size().into_iter().map(|d| d as usize).collect();
    adp_api::Tensor::new(shape, to_vec(t)?)
}

/// Every prompt's concept vectors as tensors on `device`; those named by `trainable` are that one
/// leaf tensor, so its gradient collects every use.
pub fn concept_slots(
    prompts: &[Prompt],
    width: usize,
    trainable: Option<(&str, &Tensor)>,
    device: tch::Device,
) -> Result<Vec<Vec<Tensor>>> {
    adp_api::layout::concept_slots(prompts, width, |c| match trainable {
        Some((name, leaf)) if name == c.placeholder => Ok(leaf.shallow_clone()),
        _ => vector(&c.vector, device),
    })
}

/// The leaf to differentiate with respect to: the first concept named `gradient_of`, or `None`.
pub fn trainable_leaf(prompts: &[&Prompt], gradient: Option<&String>, device: tch::Device) -> Result<Option<Tensor>> {
    let Some(c) = adp_api::checks::trainable_concept(prompts, gradient)? else {
        return Ok(None);
    };
    vector(&c.vector, device)?
        .f_set_requires_grad(true)
        .map(Some)
        .map_err(err)
}
