//! The proxy: a loaded plugin behind the very same traits as an in-process backend.
use super::library::{self, Library, Remote};
use adp_api::requests::*;
use adp_api::*;
use adp_plugin_abi::ffi::ADP_ABI_VERSION;
use adp_plugin_abi::wire::{Call, Open, Reply};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// A loaded plugin: its declaration, what it says of itself, and (through [`adp_api::Backend`])
/// the pipeline parts it provides.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) lib: Arc<Library>,
    pub(crate) info: BackendInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("path", &self.lib.path)
            .field("info", &self.info)
            .finish()
    }
}

impl Plugin {
    /// Asks an opened library what it is.
    pub(crate) fn from_library(lib: Arc<Library>) -> Result<Self> {
        let info = library::backend_info(&lib)?;
        Ok(Self { lib, info })
    }
    pub fn path(&self) -> &Path {
        &self.lib.path
    }
    pub fn abi_version(&self) -> u32 {
        ADP_ABI_VERSION
    }
    /// The plugin crate's own version.
    pub fn crate_version(&self) -> &str {
        &self.lib.crate_version
    }
    pub fn abi_crate_version(&self) -> &str {
        &self.lib.abi_crate_version
    }
    pub fn backend_info(&self) -> &BackendInfo {
        &self.info
    }
}

/// Unpacks the one reply variant a call can have.
macro_rules! expect {
    ($remote:expr, $reply:expr, $variant:ident) => {
        match $reply? {
            Reply::$variant(v) => Ok(v),
            other => Err($remote
                .lib
                .protocol(format!("expected {} reply, got {other:?}", stringify!($variant)))),
        }
    };
}

impl Backend for Plugin {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }
    /// The budget crosses the boundary with every call `work` makes on this thread; the plugin
    /// applies it around each call (ABI 4).
    fn with_threads(&self, threads: usize, work: &mut (dyn FnMut() + Send)) {
        library::with_call_threads(threads, work)
    }
    fn text_image_encoder(&self, clip: &ClipCheckpoint, device: Device) -> Result<Box<dyn TextImageEncoder>> {
        let remote = Remote::open(
            &self.lib,
            &Open::TextImageEncoder {
                clip: Cow::Borrowed(clip),
                device,
            },
        )?;
        let dims = expect!(remote, remote.call(&Call::EncoderDims, None), EncoderDims)?;
        Ok(Box::new(ProxyEncoder { remote, dims }))
    }
    fn latent_diffuser(&self, sd: &DiffusionSpec, device: Device) -> Result<Box<dyn LatentDiffuser>> {
        let remote = Remote::open(
            &self.lib,
            &Open::LatentDiffuser {
                sd: Cow::Borrowed(sd),
                device,
            },
        )?;
        let dims = expect!(remote, remote.call(&Call::DiffuserDims, None), DiffuserDims)?;
        Ok(Box::new(ProxyDiffuser { remote, dims }))
    }
    fn concept_optimizer(
        &self,
        clip: &ClipCheckpoint,
        sd: &DiffusionSpec,
        device: Device,
    ) -> Result<Box<dyn ConceptOptimizer>> {
        let open = Open::ConceptOptimizer {
            clip: Cow::Borrowed(clip),
            sd: Cow::Borrowed(sd),
            device,
        };
        Ok(Box::new(ProxyOptimizer {
            remote: Remote::open(&self.lib, &open)?,
        }))
    }
    fn scorer(&self, device: Device) -> Result<Box<dyn Scorer>> {
        Ok(Box::new(ProxyScorer {
            remote: Remote::open(&self.lib, &Open::Scorer { device })?,
        }))
    }
    fn feature_extractor(&self, backbone: &BackboneCheckpoint, device: Device) -> Result<Box<dyn FeatureExtractor>> {
        let remote = Remote::open(
            &self.lib,
            &Open::FeatureExtractor {
                backbone: Cow::Borrowed(backbone),
                device,
            },
        )?;
        let dims = expect!(remote, remote.call(&Call::FeatureDims, None), FeatureDims)?;
        Ok(Box::new(ProxyFeatures { remote, dims }))
    }
}

struct ProxyEncoder {
    remote: Remote,
    dims: EncoderDims,
}

impl TextImageEncoder for ProxyEncoder {
    fn dims(&self) -> EncoderDims {
        self.dims
    }
    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
        expect!(
            self.remote,
            self.remote.call(&Call::ImageEmbeddings(Cow::Borrowed(images)), None),
            Tensor
        )
    }
    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        let call = Call::DenseFeatures(Cow::Borrowed(images), Cow::Borrowed(window_sizes));
        expect!(self.remote, self.remote.call(&call, None), Dense)
    }
    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        expect!(
            self.remote,
            self.remote.call(&Call::TextEmbeddings(Cow::Borrowed(prompts)), None),
            Tensor
        )
    }
    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        expect!(
            self.remote,
            self.remote.call(&Call::TokenEmbedding(Cow::Borrowed(word)), None),
            Vector
        )
    }
    fn state_probability(&self, request: &StateProbabilityRequest) -> Result<StateProbability> {
        expect!(
            self.remote,
            self.remote.call(&Call::StateProbability(Cow::Borrowed(request)), None),
            StateProbability
        )
    }
}

struct ProxyDiffuser {
    remote: Remote,
    dims: DiffuserDims,
}

impl LatentDiffuser for ProxyDiffuser {
    fn dims(&self) -> DiffuserDims {
        self.dims
    }
    fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor> {
        expect!(
            self.remote,
            self.remote.call(&Call::VaeEncode(Cow::Borrowed(images)), None),
            Tensor
        )
    }
    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch> {
        expect!(
            self.remote,
            self.remote.call(&Call::VaeDecode(Cow::Borrowed(latents)), None),
            Images
        )
    }
    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        expect!(
            self.remote,
            self.remote.call(&Call::TextConditioning(Cow::Borrowed(prompts)), None),
            Tensor
        )
    }
    fn unet_prediction(&self, request: &UnetRequest) -> Result<Tensor> {
        expect!(
            self.remote,
            self.remote.call(&Call::UnetPrediction(Cow::Borrowed(request)), None),
            Tensor
        )
    }
    fn denoising_loss(&self, request: &DenoisingLossRequest) -> Result<ValueAndGrad> {
        expect!(
            self.remote,
            self.remote.call(&Call::DenoisingLoss(Cow::Borrowed(request)), None),
            ValueAndGrad
        )
    }
    fn img2img(&self, request: &Img2ImgRequest) -> Result<ImageBatch> {
        expect!(
            self.remote,
            self.remote.call(&Call::Img2Img(Cow::Borrowed(request)), None),
            Images
        )
    }
}

struct ProxyOptimizer {
    remote: Remote,
}

impl ConceptOptimizer for ProxyOptimizer {
    fn learn(&self, request: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept> {
        expect!(
            self.remote,
            self.remote.call(&Call::Learn(Cow::Borrowed(request)), Some(progress)),
            Concept
        )
    }
}

struct ProxyScorer {
    remote: Remote,
}

impl Scorer for ProxyScorer {
    fn build_memory(&self, kind: FeatureKind, support: &Tensor) -> Result<ReferenceMemory> {
        expect!(
            self.remote,
            self.remote.call(&Call::BuildMemory(kind, Cow::Borrowed(support)), None),
            Memory
        )
    }
    fn associate(&self, memory: &ReferenceMemory, test: &Tensor) -> Result<Tensor> {
        let call = Call::Associate(Cow::Borrowed(memory), Cow::Borrowed(test));
        expect!(self.remote, self.remote.call(&call, None), Tensor)
    }
}

struct ProxyFeatures {
    remote: Remote,
    dims: FeatureDims,
}

impl FeatureExtractor for ProxyFeatures {
    fn dims(&self) -> FeatureDims {
        self.dims.clone()
    }
    fn patch_features(&self, images: &ImageBatch) -> Result<Tensor> {
        expect!(
            self.remote,
            self.remote.call(&Call::PatchFeatures(Cow::Borrowed(images)), None),
            Tensor
        )
    }
    fn backbone_outputs(&self, images: &ImageBatch) -> Result<BackboneOutputs> {
        expect!(
            self.remote,
            self.remote.call(&Call::BackboneOutputs(Cow::Borrowed(images)), None),
            BackboneOutputs
        )
    }
}
