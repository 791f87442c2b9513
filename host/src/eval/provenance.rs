//! What produced a report, recorded beside it so that a table can be traced to its software and
//! weights, and so that resumed runs and merged shards are known to come from the same setup.
use crate::detect::file::file_hash;
use crate::detect::Checkpoints;
use adp_api::{Backend, Device, DiffusionSpec, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What produced a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// adp's version.
    pub adp: String,
    pub backend: String,
    pub runtime: String,
    pub device: String,
    pub data: PathBuf,
    /// Each checkpoint used (`clip`, `backbone`, `sd`): its file or folder and, for weight
    /// files, their SHA-256.
    pub checkpoints: std::collections::BTreeMap<String, serde_json::Value>,
}

impl Provenance {
    pub fn new(
        backend: &dyn Backend,
        checkpoints: &Checkpoints,
        sd: Option<&DiffusionSpec>,
        device: Device,
        data: &Path,
    ) -> Result<Self> {
        let info = backend.info();
        let mut files = std::collections::BTreeMap::new();
        let mut weights = |name: &str, path: &Path| -> Result<()> {
            files.insert(
                name.to_string(),
                serde_json::json!({ "path": path, "sha256": file_hash(path)? }),
            );
            Ok(())
        };
        if let Some(c) = &checkpoints.clip {
            weights("clip", &c.weights)?;
        }
        if let Some(b) = &checkpoints.backbone {
            weights("backbone", &b.weights)?;
        }
        if let Some(sd) = sd {
            files.insert("sd".into(), serde_json::json!({ "path": sd.root }));
        }
        Ok(Self {
            adp: env!("CARGO_PKG_VERSION").into(),
            backend: info.name,
            runtime: info.runtime,
            device: device.to_string(),
            data: data.to_path_buf(),
            checkpoints: files,
        })
    }
}
