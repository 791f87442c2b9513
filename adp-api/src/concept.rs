//! Learned concepts and their provenance, stored as safetensors with JSON metadata (SPEC §7).
//!
//! A concept file (`adp-concept/2`) holds one or more concepts: tensor `concept/<name>` is each
//! learned token embedding (f32, one dimension), metadata `adp.concept` their names, placeholders
//! and provenance. Files of `adp-concept/1` (one concept, tensor `concept`) are still read.
use crate::{atomic::write_atomic, tensor::check_finite, Error, Result};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const META_KEY: &str = "adp.concept";
pub const CONCEPT_FORMAT: &str = "adp-concept/2";
/// One concept per file, tensor `concept`.
const CONCEPT_FORMAT_V1: &str = "adp-concept/1";
const V1_TENSOR: &str = "concept";

/// The tensor holding concept `name`'s vector.
fn tensor_name(name: &str) -> String {
    format!("concept/{name}")
}

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
    /// Checkpoint identities (SHA-256 of the files), by role: "clip", "diffusion", and one entry
    /// per file read (`clip/<file>`, `diffusion/<part>/<file>`).
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

/// One concept's metadata: everything but its vector.
#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    placeholder: String,
    provenance: Provenance,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    concepts: Vec<Entry>,
}

/// `adp-concept/1`: one concept.
#[derive(Deserialize)]
struct HeaderV1 {
    name: String,
    placeholder: String,
    provenance: Provenance,
}

/// The file's bytes for `concepts` (at least one, names unique, vectors finite).
pub fn to_bytes(concepts: &[Concept]) -> Result<Vec<u8>> {
    if concepts.is_empty() {
        return Err(Error::invalid("concept file", "no concept to write"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for c in concepts {
        check_finite(&format!("concept `{}`", c.name), &c.vector)?;
        if c.name.is_empty() || !seen.insert(c.name.as_str()) {
            return Err(Error::invalid(
                "concept file",
                format!("concept name {:?} is empty or repeated", c.name),
            ));
        }
    }
    let header = Header {
        format: CONCEPT_FORMAT.into(),
        concepts: concepts
            .iter()
            .map(|c| Entry {
                name: c.name.clone(),
                placeholder: c.placeholder.clone(),
                provenance: c.provenance.clone(),
            })
            .collect(),
    };
    let bytes: Vec<Vec<u8>> = concepts
        .iter()
        .map(|c| c.vector.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = concepts
        .iter()
        .zip(&bytes)
        .map(|(c, b)| {
            TensorView::new(Dtype::F32, vec![c.vector.len()], b)
                .map(|v| (tensor_name(&c.name), v))
                .map_err(|e| Error::invalid("concept vector", e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([(META_KEY.to_string(), serde_json::to_string(&header).expect("json"))]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::invalid("concept", e.to_string()))
}

/// Writes `concepts` to one file, atomically.
pub fn save(path: &Path, concepts: &[Concept]) -> Result<()> {
    write_atomic(path, &to_bytes(concepts)?)
}

/// Every concept of a file.
pub fn load(path: &Path) -> Result<Vec<Concept>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, path)
}

/// The concepts in `bytes`; `origin` names the source in errors.
pub fn from_bytes(bytes: &[u8], origin: &Path) -> Result<Vec<Concept>> {
    let bad = |m: String| Error::config(origin, m);
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let header = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| bad(format!("no `{META_KEY}` metadata: not an adp concept file")))?;
    let format: serde_json::Value = serde_json::from_str(header).map_err(|e| bad(format!("concept metadata: {e}")))?;
    let entries = match format.get("format").and_then(|f| f.as_str()) {
        Some(CONCEPT_FORMAT) => {
            let h: Header = serde_json::from_value(format).map_err(|e| bad(format!("concept metadata: {e}")))?;
            h.concepts.into_iter().map(|e| (tensor_name(&e.name), e)).collect()
        }
        Some(CONCEPT_FORMAT_V1) => {
            let h: HeaderV1 = serde_json::from_value(format).map_err(|e| bad(format!("concept metadata: {e}")))?;
            let entry = Entry {
                name: h.name,
                placeholder: h.placeholder,
                provenance: h.provenance,
            };
            vec![(V1_TENSOR.to_string(), entry)]
        }
        other => {
            return Err(bad(format!(
                "format {other:?}, this build reads {CONCEPT_FORMAT:?} and {CONCEPT_FORMAT_V1:?}"
            )))
        }
    };
    if entries.is_empty() {
        return Err(bad("holds no concept".into()));
    }
    let st = SafeTensors::deserialize(bytes).map_err(|e| bad(e.to_string()))?;
    if st.len() != entries.len() {
        return Err(bad(format!(
            "{} tensors for {} concepts in its metadata",
            st.len(),
            entries.len()
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    entries
        .into_iter()
        .map(|(tensor, e)| {
            if e.name.is_empty() || !seen.insert(e.name.clone()) {
                return Err(bad(format!("concept name {:?} is empty or repeated", e.name)));
            }
            let what = format!("{}: tensor `{tensor}`", origin.display());
            let vector = crate::config::st::read_f32(&st, &tensor, origin)?;
            vector.expect_shape(&what, &[None])?;
            if vector.data().is_empty() {
                return Err(bad(format!("tensor `{tensor}` is empty")));
            }
            vector.check_finite(&what)?;
            Ok(Concept {
                name: e.name,
                placeholder: e.placeholder,
                vector: vector.into_data(),
                provenance: e.provenance,
            })
        })
        .collect()
}

impl Concept {
    /// Writes this concept alone to a file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        save(path, std::slice::from_ref(self))
    }

    /// The one concept of a file (an error names the file if it holds several).
    pub fn load(path: &Path) -> Result<Self> {
        let mut all = load(path)?;
        match all.len() {
            1 => Ok(all.remove(0)),
            n => Err(Error::config(path, format!("holds {n} concepts, not one"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> Concept {
        let mut provenance = Provenance {
            seed: 7,
            backend: "candle".into(),
            steps: 3,
            ..Default::default()
        };
        provenance.checkpoints.insert("clip".into(), "abc".into());
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
            name: name.into(),
            placeholder: format!("<{name}>"),
            vector: vec![0.25, -1.0, 3.5],
            provenance,
        }
    }

    #[test]
    fn round_trips_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.safetensors");
        sample("c_n").save(&path).unwrap();
        assert_eq!(Concept::load(&path).unwrap(), sample("c_n"));
        let both = [sample("c_n"), sample("c_a")];
        save(&path, &both).unwrap();
        assert_eq!(load(&path).unwrap(), both);
        let e = Concept::load(&path).unwrap_err().to_string();
        assert!(e.contains("holds 2 concepts"), "{e}");
    }

    #[test]
    fn reads_format_1() {
        let c = sample("c_n");
        let header = serde_json::json!({
            "format": CONCEPT_FORMAT_V1, "name": c.name, "placeholder": c.placeholder,
            "provenance": c.provenance,
        });
        let bytes: Vec<u8> = c.vector.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![3], &bytes).unwrap();
        let meta = HashMap::from([(META_KEY.to_string(), header.to_string())]);
        let file = safetensors::serialize([(V1_TENSOR, view)], Some(meta)).unwrap();
        assert_eq!(from_bytes(&file, Path::new("v1.safetensors")).unwrap(), vec![c]);
    }

    #[test]
    fn rejects_truncated_foreign_and_unknown_files() {
        let bytes = to_bytes(&[sample("c_n")]).unwrap();
        let e = from_bytes(&bytes[..bytes.len() - 2], Path::new("cut.safetensors")).unwrap_err();
        assert!(e.to_string().starts_with("cut.safetensors:"), "{e}");
        let view = TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        let plain = safetensors::serialize([("x", view)], None).unwrap();
        let e = from_bytes(&plain, Path::new("plain.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an adp concept file"), "{e}");
        let meta = HashMap::from([(META_KEY.to_string(), r#"{"format":"adp-concept/9"}"#.to_string())]);
        let view = TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap();
        let future = safetensors::serialize([("concept/x", view)], Some(meta)).unwrap();
        let e = from_bytes(&future, Path::new("f.safetensors")).unwrap_err().to_string();
        assert!(e.starts_with("f.safetensors:") && e.contains("adp-concept/9"), "{e}");
    }

    #[test]
    fn rejects_non_finite_vectors_and_missing_tensors() {
        let mut c = sample("c_n");
        c.vector[1] = f32::NAN;
        assert!(matches!(to_bytes(&[c]), Err(Error::NonFinite { index: 1, .. })));
        // Written around the check: the reader refuses it, naming file and tensor.
        let header = serde_json::json!({ "format": CONCEPT_FORMAT, "concepts": [
            { "name": "c_n", "placeholder": "<c_n>", "provenance": Provenance::default() }] });
        let meta = HashMap::from([(META_KEY.to_string(), header.to_string())]);
        let nan: Vec<u8> = [1.0f32, f32::INFINITY].iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![2], &nan).unwrap();
        let file = safetensors::serialize([("concept/c_n", view)], Some(meta.clone())).unwrap();
        let e = from_bytes(&file, Path::new("inf.safetensors")).unwrap_err().to_string();
        assert!(e.contains("inf.safetensors") && e.contains("concept/c_n"), "{e}");
        let view = TensorView::new(Dtype::F32, vec![2], &nan).unwrap();
        let file = safetensors::serialize([("concept/other", view)], Some(meta)).unwrap();
        let e = from_bytes(&file, Path::new("m.safetensors")).unwrap_err().to_string();
        assert!(e.contains("m.safetensors") && e.contains("concept/c_n"), "{e}");
    }

    #[test]
    fn refuses_repeated_names() {
        let e = to_bytes(&[sample("c_n"), sample("c_n")]).unwrap_err().to_string();
        assert!(e.contains("repeated"), "{e}");
    }
}
