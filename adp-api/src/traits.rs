//! The four pipeline traits and the backend that creates them.
use crate::requests::*;
use crate::{BackboneCheckpoint, ClipCheckpoint, Concept, Device, DiffusionSpec, Error, ImageBatch, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The parts of the pipeline a backend may provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Capability {
    TextImageEncoder,
    LatentDiffuser,
    ConceptOptimizer,
    Scorer,
    FeatureExtractor,
}

impl Capability {
    /// Every part, in pipeline order: what a complete backend declares.
    pub const ALL: [Capability; 5] = [
        Self::TextImageEncoder,
        Self::LatentDiffuser,
        Self::ConceptOptimizer,
        Self::Scorer,
        Self::FeatureExtractor,
    ];
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What a backend says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendInfo {
    pub name: String,
    pub version: String,
    /// What it wraps, e.g. "libtorch 2.13.0" or "candle 0.11".
    pub runtime: String,
    pub devices: Vec<Device>,
    pub provides: Vec<Capability>,
}

impl BackendInfo {
    /// A backend that provides every part ([`Capability::ALL`]).
    pub fn complete(name: &str, version: &str, runtime: &str, devices: Vec<Device>) -> Self {
        let provides = Capability::ALL.to_vec();
        Self {
            name: name.into(),
            version: version.into(),
            runtime: runtime.into(),
            devices,
            provides,
        }
    }
    pub fn check_device(&self, device: Device) -> Result<()> {
        if self.devices.contains(&device) {
            Ok(())
        } else {
            Err(Error::DeviceUnavailable {
                backend: self.name.clone(),
                device: device.to_string(),
            })
        }
    }
    pub fn unsupported(&self, capability: Capability) -> Error {
        Error::Unsupported {
            backend: self.name.clone(),
            capability: capability.to_string(),
        }
    }
}

/// A backend: the factory of the pipeline's parts. The defaults say "not provided", so a backend
/// implements exactly what it declares in [`BackendInfo::provides`].
pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;

    fn text_image_encoder(&self, _clip: &ClipCheckpoint, _device: Device) -> Result<Box<dyn TextImageEncoder>> {
        Err(self.info().unsupported(Capability::TextImageEncoder))
    }
    fn latent_diffuser(&self, _sd: &DiffusionSpec, _device: Device) -> Result<Box<dyn LatentDiffuser>> {
        Err(self.info().unsupported(Capability::LatentDiffuser))
    }
    fn concept_optimizer(
        &self,
        _clip: &ClipCheckpoint,
        _sd: &DiffusionSpec,
        _device: Device,
    ) -> Result<Box<dyn ConceptOptimizer>> {
        Err(self.info().unsupported(Capability::ConceptOptimizer))
    }
    fn scorer(&self, _device: Device) -> Result<Box<dyn Scorer>> {
        Err(self.info().unsupported(Capability::Scorer))
    }
    fn feature_extractor(&self, _backbone: &BackboneCheckpoint, _device: Device) -> Result<Box<dyn FeatureExtractor>> {
        Err(self.info().unsupported(Capability::FeatureExtractor))
    }
    /// Runs `work`, during which the calls this thread makes on the backend's objects spread
    /// their own work over at most `threads` threads (≥ 1; 0 counts as 1). Side-by-side callers
    /// (the service's workers) use it so that workers × threads fits the cores instead of each
    /// call's thread pool claiming every core. `work` may run on another thread (candle runs it
    /// inside a pool of that size); the thread's previous setting is back afterwards. The default
    /// runs `work` as it is, for backends with nothing to size.
    fn with_threads(&self, threads: usize, work: &mut (dyn FnMut() + Send)) {
        let _ = threads;
        work()
    }
}

/// CLIP: images and prompts into one embedding space (SPEC §2–3, §6).
pub trait TextImageEncoder: Send + Sync {
    fn dims(&self) -> EncoderDims;
    /// `[N, embed_dim]` image embeddings `f(x)` (not normalised). Images of any size are
    /// preprocessed as SPEC §2 says.
    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor>;
    /// Penultimate patch tokens and WinCLIP window embeddings for the given window sizes.
    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures>;
    /// `[P, embed_dim]` text embeddings `g(prompt)`, pooled at the first end token.
    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor>;
    /// The token embedding of a single-token word (a concept's starting point, e.g. "object").
    fn token_embedding(&self, word: &str) -> Result<Vec<f32>>;
    /// `P_CLIP(S_n(c) | x)` and optionally its gradient.
    fn state_probability(&self, request: &StateProbabilityRequest) -> Result<StateProbability>;
}

/// Stable Diffusion: latents, conditioning, the denoising loss and img2img (SPEC §4–5).
pub trait LatentDiffuser: Send + Sync {
    fn dims(&self) -> DiffuserDims;
    /// `scaling_factor · VAE.encode(x)` (posterior mean), images at `dims().image_size`.
    fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor>;
    /// Images in [0, 1] from scaled latents.
    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch>;
    /// `[P, context_length, text_width]` text-encoder states for the UNet's cross-attention.
    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor>;
    fn unet_prediction(&self, request: &UnetRequest) -> Result<Tensor>;
    fn denoising_loss(&self, request: &DenoisingLossRequest) -> Result<ValueAndGrad>;
    fn img2img(&self, request: &Img2ImgRequest) -> Result<ImageBatch>;
}

/// Learns one concept vector (SPEC eq. 3 / eq. 4). `progress` is called after every step and
/// may cancel the run, which then ends with [`Error::Cancelled`].
pub trait ConceptOptimizer: Send + Sync {
    fn learn(&self, request: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept>;
}

/// Reference association (SPEC eq. 8): memories of support features and nearest-neighbour
/// distances, computed on the backend's device.
pub trait Scorer: Send + Sync {
    /// `support` is `[K, P, D]` or `[M, D]`; the memory holds the unit-normalised rows.
    fn build_memory(&self, kind: FeatureKind, support: &Tensor) -> Result<ReferenceMemory>;
    /// For `test` `[N, P, D]`: `[N, P]` of `min_r ½(1 − ⟨F, r⟩)` over the memory.
    fn associate(&self, memory: &ReferenceMemory, test: &Tensor) -> Result<Tensor>;
}

/// An image-only backbone (EfficientNet-Lite) giving dense patch features for reference
/// association: the `visual` method, which needs no CLIP and no diffusion model.
pub trait FeatureExtractor: Send + Sync {
    fn dims(&self) -> FeatureDims;
    /// `[N, grid², dim]`: each feature stage locally averaged over its 3×3 neighbourhood, the
    /// deeper ones upsampled (bilinear) to the first one's grid, concatenated along channels.
    /// Images of any size are preprocessed by [`crate::preprocess::backbone_input`].
    fn patch_features(&self, images: &ImageBatch) -> Result<Tensor>;
    /// Every block group's output, the head features and the class logits.
    fn backbone_outputs(&self, images: &ImageBatch) -> Result<BackboneOutputs>;
}
