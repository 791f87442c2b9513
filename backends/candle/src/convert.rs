//! Between adp's host tensors and candle's, and between their errors.
use adp_api::{Device, Error};
use candle_core::Tensor;

pub fn err(e: candle_core::Error) -> Error {
    Error::Backend { backend: crate::NAME.into(), message: e.to_string() }
}

pub fn device(d: Device) -> adp_api::Result<candle_core::Device> {
    match d {
        Device::Cpu => Ok(candle_core::Device::Cpu),
        Device::Cuda(n) => candle_core::Device::new_cuda(n)
            .map_err(|_| Error::DeviceUnavailable { backend: crate::NAME.into(), device: d.to_string() }),
    }
}

pub fn to_candle(t: &adp_api::Tensor, device: &candle_core::Device) -> adp_api::Result<Tensor> {
    Tensor::from_slice(t.data(), t.shape(), device).map_err(err)
}

pub fn from_candle(t: &Tensor) -> adp_api::Result<adp_api::Tensor> {
    let shape = t.dims().to_vec();
    let data = t.flatten_all().and_then(|t| t.to_dtype(candle_core::DType::F32)).and_then(|t| t.to_vec1::<f32>()).map_err(err)?;
    adp_api::Tensor::new(shape, data)
}
