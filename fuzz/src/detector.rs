//! Detector files for fuzzing: a small valid seed, and mutants re-signed with the content hash the
//! loader checks, so that header bounds and tensor checks are reached (an unsigned mutant stops at
//! the hash). The hash is rebuilt here from its documented layout (`detect/file.rs`).
use crate::formats::st_split;
use crate::mutate;
use crate::rng::Rng;
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::Tensor;
use adp_host::detect::file::DETECTOR_FORMAT;
use adp_host::detect::{DetectorFile, DetectorHeader};
use adp_host::score::prototypes::Prototypes;
use serde_json::{json, Value};

/// A detector with prototypes and two reference memories, as `fit` would write one.
pub fn seed() -> DetectorFile {
    let header: DetectorHeader = serde_json::from_value(json!({
        "format": DETECTOR_FORMAT, "method": "adp", "backend": "candle", "backend_version": "0.1.0",
        "clip_dir": "/models/clip", "checkpoints": {"clip": "ab"}, "options": {"steps": 3},
        "seed": 7, "grid": 2, "image_size": 32, "concepts": [], "weights": [0.5, 0.25],
        "memory_kinds": ["PatchTokens", {"Window": 2}],
    }))
    .expect("seed header");
    let memory = |n: usize| Tensor::new(vec![n, 4], (0..n * 4).map(|i| i as f32 * 0.125 - 1.0).collect());
    DetectorFile {
        header,
        prototypes: Some(Prototypes {
            normal: vec![0.5, -0.5, 0.25, 1.0],
            anomalous: vec![-0.5, 0.5, 1.0, 0.0],
        }),
        memories: vec![
            ReferenceMemory {
                kind: FeatureKind::PatchTokens,
                features: memory(8).expect("memory"),
            },
            ReferenceMemory {
                kind: FeatureKind::Window(2),
                features: memory(3).expect("memory"),
            },
        ],
    }
}

/// A tensor as stored: name, dtype, shape, bytes.
type Stored = (String, String, Vec<u64>, Vec<u8>);

/// A detector file taken apart: the header JSON text and the tensors.
#[derive(Debug, Clone)]
pub struct Parts {
    header: String,
    tensors: Vec<Stored>,
}

impl Parts {
    pub fn parse(file: &[u8]) -> Option<Self> {
        let (outer, data) = st_split(file)?;
        let header = outer["__metadata__"]["adp.detector"].as_str()?.to_string();
        let mut tensors = Vec::new();
        for (name, v) in outer.as_object()? {
            if name == "__metadata__" {
                continue;
            }
            let off = |i: usize| v["data_offsets"][i].as_u64().map(|o| o as usize);
            let shape = v["shape"]
                .as_array()?
                .iter()
                .map(Value::as_u64)
                .collect::<Option<_>>()?;
            let dtype = v["dtype"].as_str()?.to_string();
            tensors.push((name.clone(), dtype, shape, data.get(off(0)?..off(1)?)?.to_vec()));
        }
        Some(Self { header, tensors })
    }

    /// The header JSON edited (bounds, types, paths, concepts, weights).
    pub fn with_header(&self, rng: &mut Rng) -> Self {
        let doc: Value = serde_json::from_str(&self.header).expect("seed header json");
        let mut p = self.clone();
        p.header = mutate::json(&doc, rng);
        p
    }

    /// One tensor edited: non-finite values, shapes that disagree with the data, other dtypes,
    /// missing or renamed tensors.
    pub fn with_tensors(&self, rng: &mut Rng) -> Self {
        let mut p = self.clone();
        let i = rng.below(p.tensors.len());
        let t = &mut p.tensors[i];
        match rng.below(6) {
            0 => {
                let at = 4 * rng.below((t.3.len() / 4).max(1));
                let v: f32 = *rng.pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 0.0]);
                if t.3.len() >= at + 4 {
                    t.3[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            1 => {
                let d = rng.below(t.2.len() + 1);
                let v = *rng.pick(&[0u64, 1, 3, 1 << 31, u32::MAX as u64, u64::MAX]);
                match t.2.get_mut(d) {
                    Some(x) => *x = v,
                    None => t.2.push(v),
                }
            }
            2 => t.1 = rng.pick(&["F16", "BF16", "F64", "I32", "U8", "BOOL"]).to_string(),
            3 => drop(p.tensors.remove(i)),
            4 => {
                t.0 = rng
                    .pick(&["memory.window_999", "memory.patch_tokens", "prototype.normal", ""])
                    .to_string()
            }
            _ => mutate::bytes(&mut t.3, rng),
        }
        p
    }

    /// The safetensors file, with the content hash the loader will recompute.
    pub fn build(&self) -> Vec<u8> {
        let mut tensors = self.tensors.clone();
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        let mut header = serde_json::Map::new();
        let mut data: Vec<u8> = Vec::new();
        for (name, dtype, shape, bytes) in &tensors {
            let start = data.len();
            data.extend(bytes);
            header.insert(
                name.clone(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        header.insert(
            "__metadata__".into(),
            json!({"adp.detector": self.header, "adp.sha256": self.hash(&tensors)}),
        );
        let mut text = Value::Object(header).to_string().into_bytes();
        text.resize(text.len().next_multiple_of(8), b' ');
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text);
        out.extend(data);
        out
    }

    /// The loader's content hash: each part length-prefixed; format, header, then tensors by name.
    fn hash(&self, sorted: &[Stored]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(DETECTOR_FORMAT.as_bytes());
        part(self.header.as_bytes());
        for (name, dtype, shape, bytes) in sorted {
            part(name.as_bytes());
            part(dtype.as_bytes());
            part(&shape.iter().flat_map(|d| d.to_le_bytes()).collect::<Vec<_>>());
            part(bytes);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilt_seed_loads_so_resigned_mutants_pass_the_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.adp");
        seed().save(&path).unwrap();
        let parts = Parts::parse(&std::fs::read(&path).unwrap()).unwrap();
        std::fs::write(&path, parts.build()).unwrap();
        let loaded = DetectorFile::load(&path).unwrap();
        assert_eq!(loaded.memories, seed().memories);
        assert_eq!(loaded.prototypes, seed().prototypes);
    }
}
