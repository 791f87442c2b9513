//! OpenCLIP ViT models, module names mirroring open_clip's state dict.
pub mod text;
pub mod transformer;
pub mod vision;

use adp_api::ClipConfig;
use candle_core::Result;
use candle_nn::VarBuilder;

pub struct OpenClip {
    pub visual: vision::VisionTransformer,
    pub text: text::TextTransformer,
}

impl OpenClip {
    /// `vb` at the root of an open_clip state dict.
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        Ok(Self {
            visual: vision::VisionTransformer::new(vb.pp("visual"), cfg)?,
            text: text::TextTransformer::new(vb, cfg)?,
        })
    }
}
