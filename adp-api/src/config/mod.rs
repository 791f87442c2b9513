//! Checkpoint specs: what the configs of user-supplied checkpoints say.
pub mod clip;
pub mod ddim;
pub mod diffusion;
pub mod efficientnet;
pub mod st;

use crate::{Error, Result};
use std::path::Path;

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path, e.to_string()))
}
