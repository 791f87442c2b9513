//! The detector file: everything scoring needs — method, prototypes, reference memories, the
//! learned concepts with their weights, the identity of the checkpoints used, the options and the
//! seed — in one safetensors file with JSON metadata, written atomically.
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
use std::path::Path;

pub const DETECTOR_FORMAT: &str = "adp-detector/1";

/// Everything but the tensors, stored as the file's JSON metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorHeader {
    pub format: String,
    pub method: String,
    /// The backend that fitted it and the CLIP folder used: defaults for scoring.
    pub backend: String,
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

impl DetectorFile {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        if let Some(p) = &self.prototypes {
            tensors.push(("prototype.normal".into(), vec![p.normal.len()], &p.normal));
            tensors.push(("prototype.anomalous".into(), vec![p.anomalous.len()], &p.anomalous));
        }
        for m in &self.memories {
            tensors.push((memory_name(m.kind), m.features.shape().to_vec(), m.features.data()));
        }
        let meta = HashMap::from([(
            "adp.detector".to_string(),
            serde_json::to_string(&self.header).expect("json"),
        )]);
        write_atomic(path, &serialize_f32(&tensors, Some(meta), path)?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |m: String| Error::config(path, m);
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("not a detector file: {e}")))?;
        let header = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("adp.detector"))
            .ok_or_else(|| bad("no `adp.detector` metadata: not a detector file".into()))?;
        let header: DetectorHeader =
            serde_json::from_str(header).map_err(|e| bad(format!("detector metadata: {e}")))?;
        if header.format != DETECTOR_FORMAT {
            return Err(bad(format!(
                "format {:?}, this build reads {DETECTOR_FORMAT:?}",
                header.format
            )));
        }
        let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
        let read = |name: &str| adp_api::config::st::read_f32(&st, name, path);
        let prototypes = match (read("prototype.normal"), read("prototype.anomalous")) {
            (Ok(n), Ok(a)) => Some(Prototypes {
                normal: n.into_data(),
                anomalous: a.into_data(),
            }),
            _ => None,
        };
        let memories = header
            .memory_kinds
            .iter()
            .map(|&kind| {
                let features: Tensor = read(&memory_name(kind))?;
                features.check_finite(&format!("{}: {}", path.display(), memory_name(kind)))?;
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
