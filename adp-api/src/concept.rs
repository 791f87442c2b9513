//! Learned concepts and their provenance, stored as safetensors with JSON metadata.
use crate::{atomic::write_atomic, tensor::check_finite, Error, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const VECTOR_TENSOR: &str = "concept";
const META_KEY: &str = "adp.concept";
pub const CONCEPT_FORMAT: &str = "adp-concept/1";

/// The loss terms of one logged step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub step: u64,
    pub loss: f32,
    pub diffusion_loss: f32,
    pub clip_normal: f32,
    pub clip_anomaly: f32,
}

/// Where a concept came from: enough to reproduce it and to refuse it with other checkpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// Checkpoint identities (content hashes), by role: "clip", "diffusion".
    pub checkpoints: BTreeMap<String, String>,
    pub hyperparameters: BTreeMap<String, serde_json::Value>,
    pub seed: u64,
    pub backend: String,
    pub steps: u64,
    pub loss_history: Vec<LossRecord>,
}

/// A pseudo-word: its name, placeholder and learned token embedding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Concept {
    pub name: String,
    pub placeholder: String,
    pub vector: Vec<f32>,
    pub provenance: Provenance,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    name: String,
    placeholder: String,
    provenance: Provenance,
}

impl Concept {
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        check_finite(&format!("concept `{}`", self.name), &self.vector)?;
        let header = Header {
            format: CONCEPT_FORMAT.into(),
            name: self.name.clone(),
            placeholder: self.placeholder.clone(),
            provenance: self.provenance.clone(),
        };
        let bytes: Vec<u8> = self.vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.vector.len()], &bytes)
            .map_err(|e| Error::invalid("concept vector", e.to_string()))?;
        let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&header).expect("json"))]);
        safetensors::serialize([(VECTOR_TENSOR, view)], Some(meta))
            .map_err(|e| Error::invalid("concept", e.to_string()))
    }

    /// Writes the concept atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, path)
    }

    /// `origin` names the source in errors.
    pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Self> {
        let bad = |m: String| Error::config(origin, m);
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let header = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad(format!("no `{META_KEY}` metadata: not an adp concept file")))?;
        let header: Header = serde_json::from_str(header).map_err(|e| bad(format!("concept metadata: {e}")))?;
        if header.format != CONCEPT_FORMAT {
            return Err(bad(format!(
                "format {:?}, this build reads {CONCEPT_FORMAT:?}",
                header.format
            )));
        }
        let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
        let vector = crate::config::st::read_f32(&st, VECTOR_TENSOR, origin)?;
        vector.expect_shape(&format!("{}: tensor `{VECTOR_TENSOR}`", origin.display()), &[None])?;
        vector.check_finite(&format!("{}: tensor `{VECTOR_TENSOR}`", origin.display()))?;
        Ok(Concept {
            name: header.name,
            placeholder: header.placeholder,
            vector: vector.into_data(),
            provenance: header.provenance,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Concept {
        let mut provenance = Provenance {
            seed: 7,
            backend: "candle".into(),
            steps: 3,
            ..Default::default()
        };
        provenance.checkpoints.insert("clip".into(), "sha256:abc".into());
        provenance
            .hyperparameters
            .insert("alpha".into(), serde_json::json!(0.003));
        provenance.loss_history.push(LossRecord {
            step: 1,
            loss: 0.5,
            diffusion_loss: 0.4,
            clip_normal: 0.9,
            clip_anomaly: 0.0,
        });
        Concept {
            name: "c_n".into(),
            placeholder: "<c_n>".into(),
            vector: vec![0.25, -1.0, 3.5],
            provenance,
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        sample().save(&path).unwrap();
        assert_eq!(Concept::load(&path).unwrap(), sample());
    }

    #[test]
    fn rejects_truncated_and_foreign_files() {
        let bytes = sample().to_bytes().unwrap();
        let e = Concept::from_bytes(&bytes[..bytes.len() - 2], Path::new("cut.safetensors")).unwrap_err();
        assert!(e.to_string().starts_with("cut.safetensors:"), "{e}");
        let view = TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        let plain = safetensors::serialize([("x", view)], None).unwrap();
        let e = Concept::from_bytes(&plain, Path::new("plain.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an adp concept file"), "{e}");
    }

    #[test]
    fn refuses_nan() {
        let mut c = sample();
        c.vector[1] = f32::NAN;
        assert!(matches!(c.to_bytes(), Err(Error::NonFinite { index: 1, .. })));
    }
}
