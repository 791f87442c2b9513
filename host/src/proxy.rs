//! The proxy: a loaded plugin behind the very same traits as an in-process backend.
use crate::plugin::{Library, Plugin};
use adp_api::requests::*;
use adp_api::*;
use adp_plugin_abi::ffi::*;
use adp_plugin_abi::wire::{self, Call, Open, Reply};
use std::borrow::Cow;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

impl Library {
    /// Copies a plugin-allocated buffer out and hands it back to the plugin.
    fn take(&self, buffer: AdpBuffer) -> Vec<u8> {
        let bytes = if buffer.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin wrote `len` bytes at `ptr` and keeps them until `free_buffer`.
            unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.len).to_vec() }
        };
        // SAFETY: the buffer came from this plugin and is returned once.
        unsafe { (self.backend.free_buffer)(buffer) };
        bytes
    }

    /// Turns a status code and its buffer into the reply bytes or the plugin's error.
    fn outcome(&self, code: i32, buffer: AdpBuffer) -> Result<Vec<u8>> {
        let bytes = self.take(buffer);
        match code {
            ADP_OK => Ok(bytes),
            ADP_ERROR => Err(wire::decode::<Error>(&bytes).unwrap_or_else(|e| self.protocol(format!("undecodable error: {e}")))),
            ADP_PANIC => Err(Error::PluginPanic { backend: self.name.clone(), message: String::from_utf8_lossy(&bytes).into_owned() }),
            other => Err(self.protocol(format!("unknown status code {other}"))),
        }
    }

    fn protocol(&self, message: impl Into<String>) -> Error {
        Error::Protocol { backend: self.name.clone(), message: message.into() }
    }
}

pub(crate) fn backend_info(lib: &Library) -> Result<BackendInfo> {
    let mut out = AdpBuffer::empty();
    // SAFETY: the table belongs to a loaded library of our ABI.
    let code = unsafe { (lib.backend.info)(&mut out) };
    let bytes = lib.outcome(code, out)?;
    wire::decode(&bytes).map_err(|e| lib.protocol(format!("undecodable backend info: {e}")))
}

/// An object opened inside a plugin; closed when dropped.
struct Remote {
    lib: Arc<Library>,
    handle: *mut AdpObject,
}

// SAFETY: plugin objects are `Send + Sync` trait objects on the plugin side, and every entry
// point of the object table is reentrant.
unsafe impl Send for Remote {}
unsafe impl Sync for Remote {}

impl Drop for Remote {
    fn drop(&mut self) {
        // SAFETY: opened by this library, closed once.
        unsafe { (self.lib.object.close)(self.handle) };
    }
}

/// Hands each step's numbers to the host's observer; a panicking observer cancels the run.
unsafe extern "C" fn forward_progress(user: *mut c_void, progress: *const AdpProgress) -> i32 {
    let observer = &mut *user.cast::<&mut dyn FnMut(&Progress) -> Flow>();
    let p = Progress::from(&*progress);
    match catch_unwind(AssertUnwindSafe(|| observer(&p))) {
        Ok(Flow::Continue) => 0,
        _ => 1,
    }
}

impl Remote {
    fn open(plugin: &Plugin, request: &Open) -> Result<Self> {
        let bytes = wire::encode(request)?;
        let mut handle = std::ptr::null_mut();
        let mut out = AdpBuffer::empty();
        // SAFETY: the request outlives the call; `handle` and `out` are valid slots.
        let code = unsafe { (plugin.lib.backend.open)(AdpBytes::from_slice(&bytes), &mut handle, &mut out) };
        plugin.lib.outcome(code, out)?;
        if handle.is_null() {
            return Err(plugin.lib.protocol("open succeeded without an object"));
        }
        Ok(Remote { lib: plugin.lib.clone(), handle })
    }

    fn call(&self, call: &Call, progress: Option<&mut dyn FnMut(&Progress) -> Flow>) -> Result<Reply> {
        let bytes = wire::encode(call)?;
        let mut out = AdpBuffer::empty();
        let code = match progress {
            Some(mut observer) => {
                let user: *mut &mut dyn FnMut(&Progress) -> Flow = &mut observer;
                // SAFETY: `observer` lives across the call; the plugin calls back synchronously.
                unsafe { (self.lib.object.call)(self.handle, AdpBytes::from_slice(&bytes), Some(forward_progress), user.cast(), &mut out) }
            }
            // SAFETY: as above, without a callback.
            None => unsafe { (self.lib.object.call)(self.handle, AdpBytes::from_slice(&bytes), None, std::ptr::null_mut(), &mut out) },
        };
        let reply = self.lib.outcome(code, out)?;
        wire::decode(&reply).map_err(|e| self.lib.protocol(format!("undecodable reply: {e}")))
    }
}

/// Unpacks the one reply variant a call can have.
macro_rules! expect {
    ($remote:expr, $reply:expr, $variant:ident) => {
        match $reply? {
            Reply::$variant(v) => Ok(v),
            other => Err($remote.lib.protocol(format!("expected {} reply, got {other:?}", stringify!($variant)))),
        }
    };
}

impl Backend for Plugin {
    fn info(&self) -> BackendInfo {
        self.info.clone()
    }
    fn text_image_encoder(&self, clip: &ClipCheckpoint, device: Device) -> Result<Box<dyn TextImageEncoder>> {
        let remote = Remote::open(self, &Open::TextImageEncoder { clip: Cow::Borrowed(clip), device })?;
        let dims = expect!(remote, remote.call(&Call::EncoderDims, None), EncoderDims)?;
        Ok(Box::new(ProxyEncoder { remote, dims }))
    }
    fn latent_diffuser(&self, sd: &DiffusionSpec, device: Device) -> Result<Box<dyn LatentDiffuser>> {
        let remote = Remote::open(self, &Open::LatentDiffuser { sd: Cow::Borrowed(sd), device })?;
        let dims = expect!(remote, remote.call(&Call::DiffuserDims, None), DiffuserDims)?;
        Ok(Box::new(ProxyDiffuser { remote, dims }))
    }
    fn concept_optimizer(&self, clip: &ClipCheckpoint, sd: &DiffusionSpec, device: Device) -> Result<Box<dyn ConceptOptimizer>> {
        let open = Open::ConceptOptimizer { clip: Cow::Borrowed(clip), sd: Cow::Borrowed(sd), device };
        Ok(Box::new(ProxyOptimizer { remote: Remote::open(self, &open)? }))
    }
    fn scorer(&self, device: Device) -> Result<Box<dyn Scorer>> {
        Ok(Box::new(ProxyScorer { remote: Remote::open(self, &Open::Scorer { device })? }))
    }
    fn feature_extractor(&self, backbone: &BackboneCheckpoint, device: Device) -> Result<Box<dyn FeatureExtractor>> {
        let remote = Remote::open(self, &Open::FeatureExtractor { backbone: Cow::Borrowed(backbone), device })?;
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
        expect!(self.remote, self.remote.call(&Call::ImageEmbeddings(Cow::Borrowed(images)), None), Tensor)
    }
    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        let call = Call::DenseFeatures(Cow::Borrowed(images), Cow::Borrowed(window_sizes));
        expect!(self.remote, self.remote.call(&call, None), Dense)
    }
    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        expect!(self.remote, self.remote.call(&Call::TextEmbeddings(Cow::Borrowed(prompts)), None), Tensor)
    }
    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        expect!(self.remote, self.remote.call(&Call::TokenEmbedding(Cow::Borrowed(word)), None), Vector)
    }
    fn state_probability(&self, request: &StateProbabilityRequest) -> Result<StateProbability> {
        expect!(self.remote, self.remote.call(&Call::StateProbability(Cow::Borrowed(request)), None), StateProbability)
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
        expect!(self.remote, self.remote.call(&Call::VaeEncode(Cow::Borrowed(images)), None), Tensor)
    }
    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch> {
        expect!(self.remote, self.remote.call(&Call::VaeDecode(Cow::Borrowed(latents)), None), Images)
    }
    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        expect!(self.remote, self.remote.call(&Call::TextConditioning(Cow::Borrowed(prompts)), None), Tensor)
    }
    fn unet_prediction(&self, request: &UnetRequest) -> Result<Tensor> {
        expect!(self.remote, self.remote.call(&Call::UnetPrediction(Cow::Borrowed(request)), None), Tensor)
    }
    fn denoising_loss(&self, request: &DenoisingLossRequest) -> Result<ValueAndGrad> {
        expect!(self.remote, self.remote.call(&Call::DenoisingLoss(Cow::Borrowed(request)), None), ValueAndGrad)
    }
    fn img2img(&self, request: &Img2ImgRequest) -> Result<ImageBatch> {
        expect!(self.remote, self.remote.call(&Call::Img2Img(Cow::Borrowed(request)), None), Images)
    }
}

struct ProxyOptimizer {
    remote: Remote,
}

impl ConceptOptimizer for ProxyOptimizer {
    fn learn(&self, request: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept> {
        expect!(self.remote, self.remote.call(&Call::Learn(Cow::Borrowed(request)), Some(progress)), Concept)
    }
}

struct ProxyScorer {
    remote: Remote,
}

impl Scorer for ProxyScorer {
    fn build_memory(&self, kind: FeatureKind, support: &Tensor) -> Result<ReferenceMemory> {
        expect!(self.remote, self.remote.call(&Call::BuildMemory(kind, Cow::Borrowed(support)), None), Memory)
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
        expect!(self.remote, self.remote.call(&Call::PatchFeatures(Cow::Borrowed(images)), None), Tensor)
    }
    fn backbone_outputs(&self, images: &ImageBatch) -> Result<BackboneOutputs> {
        expect!(self.remote, self.remote.call(&Call::BackboneOutputs(Cow::Borrowed(images)), None), BackboneOutputs)
    }
}
