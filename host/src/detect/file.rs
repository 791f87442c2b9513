//! The detector file: everything scoring needs — method, prototypes, reference memories, the
//! learned concepts with their weights, the identity of the checkpoints used, the options and the
//! seed — in one safetensors file with JSON metadata, written atomically.
//!
//! Detector files come from other people's machines: loading reads at most [`MAX_DETECTOR_BYTES`]
//! of a regular file, bounds every header field that sizes work, checks the SHA-256 recorded at
//! save time ([`content_hash`]) and that every tensor is finite, before anything is used.
use super::{default_backbone, Checkpoints, Method};
use crate::score::prototypes::Prototypes;
use adp_api::atomic::write_atomic;
use adp_api::config::st::serialize_f32;
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::{BackboneCheckpoint, ClipCheckpoint};
use adp_api::{Concept, Error, Result, Tensor};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Version 2 records a SHA-256 of the content; version 1 files (no hash) are refused.
pub const DETECTOR_FORMAT: &str = "adp-detector/2";
/// The metadata key of the content hash.
const HASH_KEY: &str = "adp.sha256";
/// A detector is prototypes and reference memories: far below this even for ViT-H at 16 shots.
pub const MAX_DETECTOR_BYTES: u64 = 4 << 30;
/// Bounds on header fields that size scoring's work (about 4× the largest real model).
const MAX_GRID: usize = 256;
const MAX_IMAGE_SIZE: usize = 4096;
const MAX_ENTRIES: usize = 64;

/// Everything but the tensors, stored as the file's JSON metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorHeader {
    pub format: String,
    pub method: String,
    /// The backend that fitted it and the CLIP folder used: defaults for scoring.
    pub backend: String,
    /// The version the backend declared when fitting (informative; scoring resolves by name).
    #[serde(default)]
    pub backend_version: String,
    pub clip_dir: std::path::PathBuf,
    /// The image backbone file (`visual` only): the default for scoring.
    #[serde(default)]
    pub backbone: Option<std::path::PathBuf>,
    /// SHA-256 of the checkpoint files, by role ("clip", "diffusion").
    pub checkpoints: BTreeMap<String, String>,
    pub options: serde_json::Value,
    pub seed: u64,
    pub grid: usize,
    pub image_size: usize,
    pub concepts: Vec<Concept>,
    pub weights: Vec<f32>,
    pub memory_kinds: Vec<FeatureKind>,
    /// The threshold chosen from the support photos ([`super::decision`]); none in detectors
    /// fitted before decisions existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<super::Decision>,
}

impl DetectorHeader {
    /// The checkpoints a detector scores with: the given ones, else those recorded in it (a
    /// `visual` detector needs its image backbone, the others their CLIP folder).
    pub fn checkpoints(&self, clip: Option<&Path>, backbone: Option<&Path>) -> Result<Checkpoints> {
        if self.method == Method::Visual.name() {
            let file = backbone
                .map(Path::to_path_buf)
                .or(self.backbone.clone())
                .unwrap_or_else(default_backbone);
            Ok(Checkpoints::backbone(&BackboneCheckpoint::from_file(&file)?))
        } else {
            Ok(Checkpoints::clip(&ClipCheckpoint::from_dir(
                clip.unwrap_or(&self.clip_dir),
            )?))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DetectorFile {
    pub header: DetectorHeader,
    pub prototypes: Option<Prototypes>,
    pub memories: Vec<ReferenceMemory>,
}

fn memory_name(kind: FeatureKind) -> String {
    match kind {
        FeatureKind::PatchTokens => "memory.patch_tokens".into(),
        FeatureKind::Window(s) => format!("memory.window_{s}"),
    }
}

/// SHA-256 over a canonical byte string of the content: the header's JSON as stored, then every
/// tensor in name order (name, dtype, shape, bytes), each part length-prefixed.
fn content_hash<'a>(
    header_json: &str,
    tensors: impl IntoIterator<Item = (&'a str, String, &'a [usize], &'a [u8])>,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut part = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    part(DETECTOR_FORMAT.as_bytes());
    part(header_json.as_bytes());
    let mut tensors: Vec<_> = tensors.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    for (name, dtype, shape, bytes) in tensors {
        part(name.as_bytes());
        part(dtype.as_bytes());
        let dims: Vec<u8> = shape.iter().flat_map(|&d| (d as u64).to_le_bytes()).collect();
        part(&dims);
        part(bytes);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl DetectorHeader {
    /// Refuses header fields that would size absurd work, naming the key and the limit.
    fn check_bounds(&self, path: &Path) -> Result<()> {
        let bound = |key: &str, v: usize, max: usize| match v <= max {
            true => Ok(()),
            false => Err(Error::config(
                path,
                format!("detector `{key}` is {v}, above the limit of {max}"),
            )),
        };
        bound("grid", self.grid, MAX_GRID)?;
        bound("image_size", self.image_size, MAX_IMAGE_SIZE)?;
        bound("memory_kinds", self.memory_kinds.len(), MAX_ENTRIES)?;
        bound("concepts", self.concepts.len(), MAX_ENTRIES)?;
        bound("weights", self.weights.len(), MAX_ENTRIES)?;
        for kind in &self.memory_kinds {
            if let FeatureKind::Window(s) = kind {
                bound("memory_kinds window", *s, MAX_GRID)?;
            }
        }
        let what = |k: &str| format!("{}: {k}", path.display());
        adp_api::tensor::check_finite(&what("weights"), &self.weights)?;
        for c in &self.concepts {
            adp_api::tensor::check_finite(&what(&format!("concept {}", c.name)), &c.vector)?;
        }
        Ok(())
    }

    /// Relative checkpoint paths are taken relative to the detector's own folder `dir`.
    fn resolve_paths(&mut self, dir: &Path) {
        if !self.clip_dir.as_os_str().is_empty() && self.clip_dir.is_relative() {
            self.clip_dir = dir.join(&self.clip_dir);
        }
        if let Some(b) = self.backbone.as_mut().filter(|b| b.is_relative()) {
            *b = dir.join(&*b);
        }
    }
}

/// A path made absolute against the current folder (empty stays empty: "none recorded").
fn absolute(p: &Path) -> Result<PathBuf> {
    if p.as_os_str().is_empty() {
        return Ok(PathBuf::new());
    }
    std::path::absolute(p).map_err(|e| Error::io(p, e))
}

impl DetectorFile {
    /// Writes the detector atomically; checkpoint paths are stored absolute (a relative one is
    /// resolved against the current folder), so the file scores from any folder.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut header = self.header.clone();
        header.clip_dir = absolute(&header.clip_dir)?;
        header.backbone = header.backbone.as_deref().map(absolute).transpose()?;
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        if let Some(p) = &self.prototypes {
            tensors.push(("prototype.normal".into(), vec![p.normal.len()], &p.normal));
            tensors.push(("prototype.anomalous".into(), vec![p.anomalous.len()], &p.anomalous));
        }
        for m in &self.memories {
            tensors.push((memory_name(m.kind), m.features.shape().to_vec(), m.features.data()));
        }
        let json = serde_json::to_string(&header).expect("json");
        let bytes: Vec<Vec<u8>> = tensors
            .iter()
            .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
            .collect();
        let hash = content_hash(
            &json,
            tensors.iter().zip(&bytes).map(|((n, s, _), b)| {
                (
                    n.as_str(),
                    format!("{:?}", safetensors::Dtype::F32),
                    s.as_slice(),
                    b.as_slice(),
                )
            }),
        );
        let meta = HashMap::from([("adp.detector".to_string(), json), (HASH_KEY.to_string(), hash)]);
        write_atomic(path, &serialize_f32(&tensors, Some(meta), path)?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = adp_api::config::read_bounded(path, MAX_DETECTOR_BYTES)?;
        let bad = |m: String| Error::config(path, m);
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a detector file: {e}")))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let json = meta
            .get("adp.detector")
            .ok_or_else(|| bad("no `adp.detector` metadata: not a detector file".into()))?;
        let format = serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(str::to_string));
        if format.as_deref() != Some(DETECTOR_FORMAT) {
            return Err(bad(format!(
                "format {format:?}, this build reads {DETECTOR_FORMAT:?} (older detectors carry no \
                 content hash and are refused: fit again)"
            )));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let want = meta
            .get(HASH_KEY)
            .ok_or_else(|| bad(format!("no `{HASH_KEY}` metadata")))?;
        let got = content_hash(
            json,
            st.tensors()
                .into_iter()
                .map(|(n, v)| (n, format!("{:?}", v.dtype()), v.shape().to_vec(), v.data()))
                .collect::<Vec<_>>()
                .iter()
                .map(|(n, d, s, b)| (n.as_str(), d.clone(), s.as_slice(), *b)),
        );
        if &got != want {
            return Err(bad(format!(
                "content does not match its recorded SHA-256 (recorded {want}, computed {got}): the file is corrupt or was altered"
            )));
        }
        let mut header: DetectorHeader =
            serde_json::from_str(json).map_err(|e| bad(format!("detector metadata: {e}")))?;
        header.check_bounds(path)?;
        header.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        let read = |name: &str| -> Result<Tensor> {
            let t = adp_api::config::st::read_f32(&st, name, path)?;
            t.check_finite(&format!("{}: {name}", path.display()))?;
            Ok(t)
        };
        let prototypes = match (read("prototype.normal"), read("prototype.anomalous")) {
            (Ok(n), Ok(a)) => Some(Prototypes {
                normal: n.into_data(),
                anomalous: a.into_data(),
            }),
            (Err(e @ Error::NonFinite { .. }), _) | (_, Err(e @ Error::NonFinite { .. })) => return Err(e),
            _ => None,
        };
        let memories = header
            .memory_kinds
            .iter()
            .map(|&kind| {
                let features: Tensor = read(&memory_name(kind))?;
                Ok(ReferenceMemory { kind, features })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            header,
            prototypes,
            memories,
        })
    }
}

/// Refuses checkpoint `key` (`clip`, `backbone`) at `path` unless it is, by SHA-256, the file
/// the detector was fitted with.
pub fn check_checkpoint(header: &DetectorHeader, key: &str, path: &Path) -> Result<()> {
    let want = header.checkpoints.get(key).cloned().unwrap_or_default();
    let got = file_hash(path)?;
    if want != got {
        let what = if key == "clip" { "CLIP checkpoint" } else { key };
        return Err(Error::config(
            path,
            format!("this detector was fitted with another {what} (sha256 {want}, this one {got})"),
        ));
    }
    Ok(())
}

/// SHA-256 of a file, streamed.
pub fn file_hash(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_checkpoint_paths_resolve_against_the_detector_folder() {
        let mut h: DetectorHeader = serde_json::from_value(serde_json::json!({
            "format": DETECTOR_FORMAT, "method": "adp", "backend": "candle", "clip_dir": "clip",
            "backbone": "w/b.safetensors", "checkpoints": {}, "options": {}, "seed": 0, "grid": 2,
            "image_size": 64, "concepts": [], "weights": [], "memory_kinds": [],
        }))
        .unwrap();
        h.resolve_paths(Path::new("/models/bottle"));
        assert_eq!(h.clip_dir, Path::new("/models/bottle/clip"));
        assert_eq!(h.backbone.as_deref(), Some(Path::new("/models/bottle/w/b.safetensors")));
        // Absolute paths and "none recorded" stay as they are.
        h.clip_dir = PathBuf::new();
        h.resolve_paths(Path::new("/elsewhere"));
        assert_eq!(h.clip_dir, PathBuf::new());
        assert_eq!(h.backbone.as_deref(), Some(Path::new("/models/bottle/w/b.safetensors")));
    }
}
