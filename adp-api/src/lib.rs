//! The neutral vocabulary of adp.
//!
//! Everything a backend plugin and the host exchange is defined here: owned f32 [`Tensor`]s,
//! [`ImageBatch`]es, learned [`Concept`]s, checkpoint specs ([`ClipConfig`], [`DiffusionSpec`]),
//! the [`Error`] type, and the four pipeline traits of ADP (see `../shared/docs/SPEC.md`):
//! [`TextImageEncoder`], [`LatentDiffuser`], [`ConceptOptimizer`] and [`Scorer`], created by a
//! [`Backend`]. All calls are synchronous; hosts that want async wrap them.

pub mod atomic;
pub mod checks;
pub mod concept;
pub mod config;
pub mod device;
pub mod error;
pub mod fold;
pub mod image;
pub mod layout;
pub mod learning;
pub mod preprocess;
pub mod requests;
pub mod rng;
pub mod tensor;
pub mod tokenizer;
pub mod traits;

pub use concept::{Concept, LossRecord, Provenance};
pub use config::clip::{ClipCheckpoint, ClipConfig, TextConfig, VisionConfig};
pub use config::diffusion::DiffusionSpec;
pub use config::efficientnet::{BackboneCheckpoint, EfficientNetConfig};
pub use device::{Device, Dtype};
pub use error::{Error, Result};
pub use image::ImageBatch;
pub use requests::*;
pub use tensor::Tensor;
pub use traits::{
    Backend, BackendInfo, Capability, ConceptOptimizer, FeatureExtractor, LatentDiffuser, Scorer, TextImageEncoder,
};

/// The version of this crate; plugins report the one they were built with.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
