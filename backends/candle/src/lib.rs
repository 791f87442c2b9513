//! adp's candle backend: OpenCLIP (`TextImageEncoder`), Stable Diffusion (`LatentDiffuser`),
//! concept learning (`ConceptOptimizer`), reference association (`Scorer`) and the
//! EfficientNet-Lite image backbone (`FeatureExtractor`).
mod activation;
mod attention;
/// Public for `examples/attention_rate.rs`, which times it against PyTorch's attention.
pub mod attention_cpu;
mod checkpoint;
/// Public for `examples/conv_rate.rs`, which times it against PyTorch's convolution.
pub mod conv_cpu;
mod convert;
mod diffuser;
pub mod diffusion;
pub mod efficientnet;
mod encoder;
mod features;
mod frozen;
mod frozen_add;
pub mod geglu;
mod gemm_view;
mod math;
mod nn;
mod norm;
mod norm_cpu;
mod op_times;
pub mod open_clip;
mod scorer;
mod storage;
#[cfg(test)]
mod testing;
mod threads;
mod weights;
mod winograd_cpu;

use adp_api::learning::Learner;
use adp_api::{
    BackboneCheckpoint, Backend, BackendInfo, ClipCheckpoint, ConceptOptimizer, Device, DiffusionSpec,
    FeatureExtractor, LatentDiffuser, Result, Scorer, TextImageEncoder,
};

pub const NAME: &str = "candle";

#[derive(Debug, Default, Clone, Copy)]
pub struct CandleBackend;

impl CandleBackend {
    pub fn new() -> Self {
        threads::keep_elementwise_maps_on_the_caller();
        Self
    }
}

/// The CPU, then every CUDA device candle can open (only with the `cuda` feature).
fn devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if candle_core::utils::cuda_is_available() {
        devices.extend(
            (0..64)
                .take_while(|&i| candle_core::Device::new_cuda(i).is_ok())
                .map(Device::Cuda),
        );
    }
    devices
}

impl Backend for CandleBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo::complete(NAME, env!("CARGO_PKG_VERSION"), "candle-core 0.11", devices())
    }

    fn text_image_encoder(&self, clip: &ClipCheckpoint, device: Device) -> Result<Box<dyn TextImageEncoder>> {
        Ok(Box::new(encoder::CandleEncoder::load(clip, convert::device(device)?)?))
    }

    fn latent_diffuser(&self, sd: &DiffusionSpec, device: Device) -> Result<Box<dyn LatentDiffuser>> {
        Ok(Box::new(diffuser::CandleDiffuser::load(sd, convert::device(device)?)?))
    }

    fn concept_optimizer(
        &self,
        clip: &ClipCheckpoint,
        sd: &DiffusionSpec,
        device: Device,
    ) -> Result<Box<dyn ConceptOptimizer>> {
        let device = convert::device(device)?;
        Ok(Box::new(Learner {
            backend: NAME,
            encoder: encoder::CandleEncoder::load(clip, device.clone())?,
            diffuser: diffuser::CandleDiffuser::load(sd, device)?,
        }))
    }

    fn scorer(&self, device: Device) -> Result<Box<dyn Scorer>> {
        Ok(Box::new(scorer::CandleScorer {
            device: convert::device(device)?,
            chunk: adp_api::layout::association_chunk(device),
        }))
    }

    fn feature_extractor(&self, backbone: &BackboneCheckpoint, device: Device) -> Result<Box<dyn FeatureExtractor>> {
        Ok(Box::new(features::CandleFeatures::load(
            backbone,
            convert::device(device)?,
        )?))
    }

    /// Runs `work` inside a rayon pool of `threads` threads owned by the calling thread: candle's
    /// matrix products (gemm), its convolutions and our own kernels split their work over the
    /// current rayon pool, so each caller gets its own share of the cores. (candle's pool for
    /// large element-wise maps is process-wide and serves one caller at a time.)
    fn with_threads(&self, threads: usize, work: &mut (dyn FnMut() + Send)) {
        threads::with_threads(threads, work)
    }
}
