//! OpenCLIP ViT models on libtorch, parameter names mirroring open_clip's state dict.
pub mod text;
pub mod transformer;
pub mod vision;

use crate::convert::{dims, err};
use adp_api::{ClipConfig, Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// The tensors of an open_clip safetensors file, as f32 on one device, by their open_clip names.
pub struct Weights {
    file: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads every tensor of `file` once, widening f16 / bf16 to f32, onto `device`.
    pub fn load(file: &Path, device: tch::Device) -> Result<Self> {
        let named = Tensor::read_safetensors(file).map_err(|e| Error::io(file, e))?;
        let tensors = named
            .into_iter()
            .map(|(name, t)| {
                let t = t.f_to_kind(Kind::Float).and_then(|t| t.f_to_device(device)).map_err(err)?;
                Ok((name, t))
            })
            .collect::<Result<_>>()?;
        Ok(Self { file: file.into(), tensors })
    }

    /// Tensors already on their device (e.g. folded at load), named as in `file`.
    pub fn from_tensors(file: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Self { file: file.into(), tensors }
    }

    /// The tensor `name`, which must have `shape` (a view: no copy).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor { file: self.file.clone(), tensor: name.into() })?;
        if t.size() != dims(shape) {
            let got = t.size().into_iter().map(|d| d as usize).collect();
            return Err(Error::TensorShape { file: self.file.clone(), tensor: name.into(), expected: shape.to_vec(), got });
        }
        Ok(t.shallow_clone())
    }

    /// A view of these weights under `prefix.` (like candle's `VarBuilder::pp`).
    pub fn pp(&self, prefix: impl std::fmt::Display) -> Prefixed<'_> {
        Prefixed { weights: self, prefix: prefix.to_string() }
    }
}

/// [`Weights`] under a name prefix.
pub struct Prefixed<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl Prefixed<'_> {
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(&format!("{}.{name}", self.prefix), shape)
    }
    pub fn pp(&self, prefix: impl std::fmt::Display) -> Prefixed<'_> {
        Prefixed { weights: self.weights, prefix: format!("{}.{prefix}", self.prefix) }
    }
}

pub struct OpenClip {
    pub visual: vision::VisionTransformer,
    pub text: text::TextTransformer,
}

// SAFETY: `tch::Tensor` is `Send` but not `Sync` because a tensor could be mutated through a
// shared reference. `OpenClip` only ever reads its weights: they are loaded once, never handed out
// mutably, never require gradients (so autograd never accumulates into them), and every forward
// pass creates fresh tensors. Concurrent read-only use of tensors is thread-safe in libtorch (it is
// how multi-threaded inference with one shared module works).
unsafe impl Sync for OpenClip {}

impl OpenClip {
    pub fn new(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        Ok(Self { visual: vision::VisionTransformer::new(w.pp("visual"), cfg)?, text: text::TextTransformer::new(w, cfg)? })
    }
}
