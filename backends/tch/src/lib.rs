//! adp's libtorch backend (tch).
//!
//! It reports itself and its devices; the pipeline parts land with the tch-backend issue, and
//! until then it declares no capabilities rather than pretending to.
use adp_api::{Backend, BackendInfo, Device};

pub const NAME: &str = "tch";

#[derive(Debug, Default, Clone, Copy)]
pub struct TchBackend;

impl TchBackend {
    pub fn new() -> Self {
        Self
    }
}

/// The CPU, then every CUDA device the loaded libtorch sees (none with a CPU libtorch).
fn devices() -> Vec<Device> {
    let cuda = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    std::iter::once(Device::Cpu).chain((0..cuda).map(Device::Cuda)).collect()
}

impl Backend for TchBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            runtime: "libtorch 2.13 (tch 0.26)".into(),
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
        let info = TchBackend.info();
        assert_eq!(info.name, "tch");
        assert_eq!(info.devices[0], Device::Cpu);
        assert!(info.provides.is_empty());
        // libtorch really is loaded and computes.
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).sum(tch::Kind::Float);
        assert_eq!(f32::try_from(t).unwrap(), 6.0);
    }
}
