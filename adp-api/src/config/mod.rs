//! Checkpoint specs: what the configs of user-supplied checkpoints say.
//!
//! Configs come from other people's machines: every value that sizes an allocation is checked
//! against a generous limit (about 4× the largest real model) before anything is built from it,
//! and files are read only when regular and within a size limit ([`read_bounded`]).
pub mod clip;
pub mod ddim;
pub mod diffusion;
pub mod efficientnet;
pub mod st;
pub mod st_file;

use crate::{Error, Result};
use std::path::Path;

/// No model config is near this size.
const MAX_CONFIG_BYTES: u64 = 16 << 20;

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_bounded(path, MAX_CONFIG_BYTES)?;
    serde_json::from_slice(&bytes).map_err(|e| Error::config(path, e.to_string()))
}

/// Reads a whole regular file of at most `max` bytes: a device (`/dev/zero`), a folder or a larger
/// file is refused before anything is read, and the read stops at the limit if the file grows.
pub fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::config(path, "not a regular file"));
    }
    if meta.len() > max {
        return Err(Error::config(
            path,
            format!("{} bytes, above the limit of {max}", meta.len()),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(Error::config(
            path,
            format!("grew past the limit of {max} bytes while read"),
        ));
    }
    Ok(bytes)
}

/// Checks `(key, value, min, max)` bounds in order; the first one out of range is an error naming
/// `file`, the key, the value and the range.
pub(crate) fn check_bounds(file: &Path, bounds: &[(&str, usize, usize, usize)]) -> Result<()> {
    match bounds.iter().find(|(_, v, lo, hi)| v < lo || v > hi) {
        Some((key, v, lo, hi)) => Err(Error::config(
            file,
            format!("`{key}` is {v}, outside the supported range {lo}..={hi}"),
        )),
        None => Ok(()),
    }
}

/// A ratio (e.g. `mlp_ratio`) finite and within `(0, max]`.
pub(crate) fn check_ratio(file: &Path, key: &str, v: f32, max: f32) -> Result<()> {
    if v.is_finite() && v > 0.0 && v <= max {
        return Ok(());
    }
    Err(Error::config(
        file,
        format!("`{key}` is {v}, outside the supported range (0, {max}]"),
    ))
}
