use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure adp reports. Messages name the file, tensor or shape at fault.
///
/// The type is serialisable so that an error raised inside a plugin reaches the host as the very
/// same variant: a caller cannot tell an in-process backend from a loaded one.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        what: String,
        expected: String,
        got: Vec<usize>,
    },
    #[error("{what}: non-finite value (NaN or infinity) at flat index {index}")]
    NonFinite { what: String, index: usize },
    #[error("empty support set: at least one normal image is needed")]
    EmptySupportSet,
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    #[error("checkpoint {file}: missing tensor `{tensor}`")]
    MissingTensor { file: PathBuf, tensor: String },
    #[error("checkpoint {file}: tensor `{tensor}` has shape {got:?}, the config implies {expected:?}")]
    TensorShape {
        file: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("checkpoint {file}: tensor `{tensor}` has dtype {dtype}, expected {expected}")]
    TensorDtype {
        file: PathBuf,
        tensor: String,
        dtype: String,
        expected: String,
    },
    #[error("{file}: {message}")]
    Config { file: PathBuf, message: String },
    #[error("prompt {prompt:?} has {tokens} tokens; the context holds {context}")]
    PromptTooLong {
        prompt: String,
        tokens: usize,
        context: usize,
    },
    #[error("backend `{backend}` does not provide {capability}")]
    Unsupported { backend: String, capability: String },
    #[error("device {device} is not available to backend `{backend}`")]
    DeviceUnavailable { backend: String, device: String },
    #[error("cancelled at step {step}")]
    Cancelled { step: u64 },
    #[error("backend `{backend}`: {message}")]
    Backend { backend: String, message: String },
    #[error("plugin {path}: file not found")]
    PluginNotFound { path: PathBuf },
    #[error("plugin {path}: not a loadable shared library: {reason}")]
    NotASharedLibrary { path: PathBuf, reason: String },
    #[error("plugin {path}: declaration symbol `{symbol}` not found; is this an adp plugin?")]
    MissingDeclaration { path: PathBuf, symbol: String },
    #[error("plugin {path}: built for adp plugin ABI {plugin}, this host speaks ABI {host}")]
    AbiMismatch { path: PathBuf, plugin: u32, host: u32 },
    #[error("plugin `{backend}` panicked: {message}")]
    PluginPanic { backend: String, message: String },
    #[error("plugin `{backend}`: broken call protocol: {message}")]
    Protocol { backend: String, message: String },
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: impl std::fmt::Display) -> Self {
        Error::Io {
            path: path.into(),
            message: err.to_string(),
        }
    }
    pub fn invalid(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.into(),
        }
    }
    pub fn config(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Config {
            file: file.into(),
            message: message.into(),
        }
    }
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }
}
