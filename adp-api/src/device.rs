use serde::{Deserialize, Serialize};
use std::{fmt, str::FromStr};

/// Where a backend computes: the CPU or the n-th CUDA device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl FromStr for Device {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = || crate::Error::invalid("device", format!("{s:?}: expected `cpu`, `cuda` or `cuda:N`"));
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(bad),
        }
    }
}

/// The precision the frozen models (CLIP, the diffusion text encoder, UNet and VAE) are loaded
/// and run in. The concept vector, its gradient and optimiser state, and every value that
/// crosses to the host stay f32; a backend casts at the models' entry and exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];
    pub fn is_half(self) -> bool {
        self != Dtype::F32
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        })
    }
}

impl FromStr for Dtype {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.to_string() == s)
            .ok_or_else(|| crate::Error::invalid("dtype", format!("{s:?}: expected `f32`, `f16` or `bf16`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn dtypes_parse_print_and_serialize() {
        for d in Dtype::ALL {
            assert_eq!(d.to_string().parse::<Dtype>().unwrap(), d);
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert_eq!(Dtype::default(), Dtype::F32);
        let err = "half".parse::<Dtype>().unwrap_err().to_string();
        assert!(err.contains("\"half\""), "{err}");
    }
    #[test]
    fn parses_and_prints() {
        for (s, d) in [("cpu", Device::Cpu), ("cuda:1", Device::Cuda(1))] {
            assert_eq!(s.parse::<Device>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        let err = "gpu0".parse::<Device>().unwrap_err().to_string();
        assert!(err.contains("\"gpu0\""), "{err}");
    }
}
