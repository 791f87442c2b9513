//! OpenCLIP ViT models on libtorch, parameter names mirroring open_clip's state dict.
pub mod text;
pub mod transformer;
pub mod vision;

use crate::nn::Weights;
use adp_api::{ClipConfig, Result};

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
        Ok(Self {
            visual: vision::VisionTransformer::new(w.pp("visual"), cfg)?,
            text: text::TextTransformer::new(w, cfg)?,
        })
    }
}
