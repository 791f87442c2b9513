//! Between adp's host tensors and tch's, and between their errors and devices.
use adp_api::{Device, Error};
use tch::{Kind, TchError, Tensor};

pub fn err(e: TchError) -> Error {
    Error::Backend { backend: crate::NAME.into(), message: e.to_string() }
}

/// The CUDA devices the loaded libtorch sees (none with a CPU libtorch).
pub fn cuda_count() -> usize {
    usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
}

pub fn device(d: Device) -> adp_api::Result<tch::Device> {
    match d {
        Device::Cpu => Ok(tch::Device::Cpu),
        Device::Cuda(n) if n < cuda_count() => Ok(tch::Device::Cuda(n)),
        Device::Cuda(_) => Err(Error::DeviceUnavailable { backend: crate::NAME.into(), device: d.to_string() }),
    }
}

/// Sizes as libtorch wants them.
pub fn dims(shape: &[usize]) -> Vec<i64> {
    shape.iter().map(|&d| d as i64).collect()
}

/// Indices for `index_select` / `index_add`.
pub fn index(values: &[usize], device: tch::Device) -> adp_api::Result<Tensor> {
    let v: Vec<i64> = values.iter().map(|&i| i as i64).collect();
    Tensor::f_from_slice(&v).and_then(|t| t.f_to_device(device)).map_err(err)
}

pub fn to_tch(t: &adp_api::Tensor, device: tch::Device) -> adp_api::Result<Tensor> {
    Tensor::f_from_slice(t.data()).and_then(|x| x.f_reshape(dims(t.shape()))).and_then(|x| x.f_to_device(device)).map_err(err)
}

/// A flat `Vec<f32>` of any tensor, on any device.
pub fn to_vec(t: &Tensor) -> adp_api::Result<Vec<f32>> {
    let flat = t.f_to_device(tch::Device::Cpu).and_then(|x| x.f_to_kind(Kind::Float)).and_then(|x| x.f_reshape([-1])).map_err(err)?;
    Vec::<f32>::try_from(&flat).map_err(err)
}

/// A vector on `device`.
pub fn vector(v: &[f32], device: tch::Device) -> adp_api::Result<Tensor> {
    Tensor::f_from_slice(v).and_then(|t| t.f_to_device(device)).map_err(err)
}

pub fn from_tch(t: &Tensor) -> adp_api::Result<adp_api::Tensor> {
    let shape = t.size().into_iter().map(|d| d as usize).collect();
    adp_api::Tensor::new(shape, to_vec(t)?)
}

/// Every prompt's concept vectors as tensors on `device`, checked against the text width; those
/// named by `trainable` are that one leaf tensor, so its gradient collects every use.
pub fn concept_slots(
    prompts: &[adp_api::requests::Prompt],
    width: usize,
    trainable: Option<(&str, &tch::Tensor)>,
    device: tch::Device,
) -> adp_api::Result<Vec<Vec<tch::Tensor>>> {
    prompts
        .iter()
        .map(|p| {
            p.concepts
                .iter()
                .map(|c| {
                    if c.vector.len() != width {
                        return Err(adp_api::Error::shape(format!("concept {}", c.placeholder), format!("[{width}]"), &[c.vector.len()]));
                    }
                    match trainable {
                        Some((name, leaf)) if name == c.placeholder => Ok(leaf.shallow_clone()),
                        _ => vector(&c.vector, device),
                    }
                })
                .collect()
        })
        .collect()
}
