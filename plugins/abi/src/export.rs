//! The plugin side of the boundary: the functions behind the tables, generic over the backend a
//! plugin exports. Use [`crate::export_plugin!`] rather than these directly.
use crate::ffi::*;
use crate::wire::{self, Call, Open, Reply, Request};
use adp_api::requests::{Flow, Progress};
use adp_api::{Backend, ConceptOptimizer, Error, FeatureExtractor, LatentDiffuser, Result, Scorer, TextImageEncoder};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What [`crate::export_plugin!`] implements for a plugin.
pub trait PluginEntry: 'static {
    const NAME: &'static str;
    fn backend() -> &'static dyn Backend;
}

enum Part {
    Encoder(Box<dyn TextImageEncoder>),
    Diffuser(Box<dyn LatentDiffuser>),
    Optimizer(Box<dyn ConceptOptimizer>),
    Scorer(Box<dyn Scorer>),
    Features(Box<dyn FeatureExtractor>),
}

/// What an `AdpObject` pointer really is.
struct Object {
    backend: &'static str,
    part: Part,
}

fn into_buffer(bytes: Vec<u8>) -> AdpBuffer {
    let mut bytes = std::mem::ManuallyDrop::new(bytes);
    AdpBuffer {
        ptr: bytes.as_mut_ptr(),
        len: bytes.len(),
        capacity: bytes.capacity(),
    }
}

/// # Safety
/// `buffer` must come from this plugin, once.
pub unsafe extern "C" fn free_buffer(buffer: AdpBuffer) {
    if !buffer.ptr.is_null() {
        drop(Vec::from_raw_parts(buffer.ptr, buffer.len, buffer.capacity));
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// Runs `f`, writing its reply or its error to `out`; a panic becomes `ADP_PANIC`.
unsafe fn guarded(out: *mut AdpBuffer, f: impl FnOnce() -> Result<Vec<u8>>) -> i32 {
    let (code, bytes) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(bytes)) => (ADP_OK, bytes),
        Ok(Err(err)) => (ADP_ERROR, wire::encode(&err).unwrap_or_default()),
        Err(payload) => (ADP_PANIC, panic_message(payload).into_bytes()),
    };
    if !out.is_null() {
        *out = into_buffer(bytes);
    }
    code
}

fn protocol(backend: &str, message: impl std::fmt::Display) -> Error {
    Error::Protocol {
        backend: backend.into(),
        message: message.to_string(),
    }
}

pub struct BackendTableFor<E>(PhantomData<E>);

impl<E: PluginEntry> BackendTableFor<E> {
    pub const TABLE: AdpBackendTable = AdpBackendTable {
        info: info::<E>,
        open: open::<E>,
        free_buffer,
    };
}

pub struct ObjectTableFor<E>(PhantomData<E>);

impl<E: PluginEntry> ObjectTableFor<E> {
    pub const TABLE: AdpObjectTable = AdpObjectTable { call: call::<E>, close };
}

unsafe extern "C" fn info<E: PluginEntry>(out: *mut AdpBuffer) -> i32 {
    guarded(out, || wire::encode(&E::backend().info()))
}

unsafe extern "C" fn open<E: PluginEntry>(request: AdpBytes, object: *mut *mut AdpObject, out: *mut AdpBuffer) -> i32 {
    guarded(out, || {
        let open: Open = wire::decode(request.as_slice()).map_err(|e| protocol(E::NAME, e))?;
        let backend = E::backend();
        let part = match open {
            Open::TextImageEncoder { clip, device } => Part::Encoder(backend.text_image_encoder(&clip, device)?),
            Open::LatentDiffuser { sd, device } => Part::Diffuser(backend.latent_diffuser(&sd, device)?),
            Open::ConceptOptimizer { clip, sd, device } => {
                Part::Optimizer(backend.concept_optimizer(&clip, &sd, device)?)
            }
            Open::Scorer { device } => Part::Scorer(backend.scorer(device)?),
            Open::FeatureExtractor { backbone, device } => {
                Part::Features(backend.feature_extractor(&backbone, device)?)
            }
        };
        let boxed = Box::new(Object { backend: E::NAME, part });
        if object.is_null() {
            return Err(protocol(E::NAME, "open called without an object slot"));
        }
        *object = Box::into_raw(boxed).cast();
        Ok(Vec::new())
    })
}

unsafe extern "C" fn close(object: *mut AdpObject) {
    if !object.is_null() {
        // Dropping a backend's object must not unwind into the host either.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(object.cast::<Object>()))));
    }
}

unsafe extern "C" fn call<E: PluginEntry>(
    object: *const AdpObject,
    request: AdpBytes,
    progress: AdpProgressFn,
    user: *mut c_void,
    out: *mut AdpBuffer,
) -> i32 {
    guarded(out, || {
        let object = object
            .cast::<Object>()
            .as_ref()
            .ok_or_else(|| protocol("?", "call on a null object"))?;
        let Request::<Call> { threads, call } =
            wire::decode(request.as_slice()).map_err(|e| protocol(object.backend, e))?;
        let reply = match threads {
            // Learning reports progress through the host's callback, which must run on the
            // host's own thread, so it keeps the backend's default threads.
            Some(threads) if !matches!(call, Call::Learn(_)) => {
                let mut call = Some(call);
                let mut reply = None;
                E::backend().with_threads(threads as usize, &mut || {
                    if let Some(call) = call.take() {
                        reply = Some(dispatch(object, call, &mut |_| Flow::Continue));
                    }
                });
                reply.unwrap_or_else(|| Err(protocol(object.backend, "the backend did not run the call")))
            }
            _ => {
                let mut observe = |p: &Progress| match progress {
                    Some(f) if f(user, &AdpProgress::from(p)) != 0 => Flow::Cancel,
                    _ => Flow::Continue,
                };
                dispatch(object, call, &mut observe)
            }
        };
        wire::encode(&reply?)
    })
}

fn dispatch(object: &Object, call: Call, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Reply> {
    use Call as C;
    Ok(match (&object.part, call) {
        (Part::Encoder(e), C::EncoderDims) => Reply::EncoderDims(e.dims()),
        (Part::Encoder(e), C::ImageEmbeddings(b)) => Reply::Tensor(e.image_embeddings(&b)?),
        (Part::Encoder(e), C::DenseFeatures(b, w)) => Reply::Dense(e.dense_features(&b, &w)?),
        (Part::Encoder(e), C::TextEmbeddings(p)) => Reply::Tensor(e.text_embeddings(&p)?),
        (Part::Encoder(e), C::TokenEmbedding(w)) => Reply::Vector(e.token_embedding(&w)?),
        (Part::Encoder(e), C::StateProbability(r)) => Reply::StateProbability(e.state_probability(&r)?),
        (Part::Diffuser(d), C::DiffuserDims) => Reply::DiffuserDims(d.dims()),
        (Part::Diffuser(d), C::VaeEncode(b)) => Reply::Tensor(d.vae_encode(&b)?),
        (Part::Diffuser(d), C::VaeDecode(z)) => Reply::Images(d.vae_decode(&z)?),
        (Part::Diffuser(d), C::TextConditioning(p)) => Reply::Tensor(d.text_conditioning(&p)?),
        (Part::Diffuser(d), C::UnetPrediction(r)) => Reply::Tensor(d.unet_prediction(&r)?),
        (Part::Diffuser(d), C::DenoisingLoss(r)) => Reply::ValueAndGrad(d.denoising_loss(&r)?),
        (Part::Diffuser(d), C::Img2Img(r)) => Reply::Images(d.img2img(&r)?),
        (Part::Optimizer(o), C::Learn(r)) => Reply::Concept(o.learn(&r, progress)?),
        (Part::Scorer(s), C::BuildMemory(kind, t)) => Reply::Memory(s.build_memory(kind, &t)?),
        (Part::Scorer(s), C::Associate(m, t)) => Reply::Tensor(s.associate(&m, &t)?),
        (Part::Features(f), C::FeatureDims) => Reply::FeatureDims(f.dims()),
        (Part::Features(f), C::PatchFeatures(b)) => Reply::Tensor(f.patch_features(&b)?),
        (Part::Features(f), C::BackboneOutputs(b)) => Reply::BackboneOutputs(f.backbone_outputs(&b)?),
        (_, call) => {
            return Err(protocol(
                object.backend,
                format!("{call:?} sent to the wrong kind of object"),
            ))
        }
    })
}

/// Exports a backend as an adp plugin: `export_plugin!("name", MyBackend::new());`
/// The expression is evaluated once, on first use.
#[macro_export]
macro_rules! export_plugin {
    ($name:literal, $backend:expr) => {
        #[doc(hidden)]
        pub struct __AdpPluginEntry;

        impl $crate::export::PluginEntry for __AdpPluginEntry {
            const NAME: &'static str = $name;
            fn backend() -> &'static dyn $crate::adp_api::Backend {
                static BACKEND: ::std::sync::OnceLock<::std::boxed::Box<dyn $crate::adp_api::Backend>> =
                    ::std::sync::OnceLock::new();
                BACKEND.get_or_init(|| ::std::boxed::Box::new($backend)).as_ref()
            }
        }

        #[no_mangle]
        pub static adp_plugin_declaration: $crate::ffi::AdpPluginDeclaration = $crate::ffi::AdpPluginDeclaration {
            abi_version: $crate::ffi::ADP_ABI_VERSION,
            declaration_size: ::core::mem::size_of::<$crate::ffi::AdpPluginDeclaration>() as u32,
            crate_version: concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast(),
            backend_name: concat!($name, "\0").as_ptr().cast(),
            abi_crate_version: $crate::API_VERSION_NUL.as_ptr().cast(),
            backend: &$crate::export::BackendTableFor::<__AdpPluginEntry>::TABLE,
            object: &$crate::export::ObjectTableFor::<__AdpPluginEntry>::TABLE,
        };
    };
}
