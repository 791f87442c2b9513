//! adp's candle backend.
//!
//! It reports itself and its devices; the pipeline parts land with the candle-backend issue, and
//! until then it declares no capabilities rather than pretending to.
use adp_api::{Backend, BackendInfo, Device};

pub const NAME: &str = "candle";

#[derive(Debug, Default, Clone, Copy)]
pub struct CandleBackend;

impl CandleBackend {
    pub fn new() -> Self {
        Self
    }
}

/// The CPU, then every CUDA device candle can open (only with the `cuda` feature).
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if candle_core::utils::cuda_is_available() {
        devices.extend((0..64).take_while(|&i| candle_core::Device::new_cuda(i).is_ok()).map(Device::Cuda));
    }
    devices
}

impl Backend for CandleBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            runtime: "candle-core 0.11".into(),
            devices: devices(),
            provides: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn reports_cpu_and_no_capabilities_yet() {
        let info = CandleBackend.info();
        assert_eq!(info.name, "candle");
        assert_eq!(info.devices[0], Device::Cpu);
        assert!(info.provides.is_empty());
    }
}
