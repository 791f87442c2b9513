//! Concept files in a fit (SPEC §7): the checkpoint identities a learned concept records, and the
//! checks a reused concept passes before it replaces steps 1–2: the same checkpoints (by
//! SHA-256), the text encoder's width.
use super::file::file_hash;
use adp_api::{ClipCheckpoint, Concept, DiffusionSpec, Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `adp fit --concepts FILE` / `--save-concepts FILE`: reuse the concepts of a file instead of
/// learning them (steps 1–2 skipped; the file must hold the method's concepts, learned on the same
/// checkpoints), and save the learned concepts, with their provenance, once learned.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConceptFiles {
    pub reuse: Option<PathBuf>,
    pub save: Option<PathBuf>,
}

/// The files of a diffusers folder adp reads, by key `diffusion/<part>/<file>`.
fn diffusion_files(sd: &DiffusionSpec) -> Result<Vec<(String, PathBuf)>> {
    let mut files = vec![("model_index.json".to_string(), sd.root.join("model_index.json"))];
    for part in ["text_encoder", "unet", "vae"] {
        files.push((format!("{part}/config.json"), sd.root.join(part).join("config.json")));
        let weights = sd.weights(part)?;
        let name = weights.file_name().unwrap_or_default().to_string_lossy();
        files.push((format!("{part}/{name}"), weights.clone()));
    }
    let optional = [
        "scheduler/scheduler_config.json",
        "scheduler/config.json",
        "tokenizer/vocab.json",
        "tokenizer/merges.txt",
        "tokenizer/tokenizer_config.json",
        "tokenizer/special_tokens_map.json",
    ];
    files.extend(
        optional
            .iter()
            .map(|rel| (rel.to_string(), sd.root.join(rel)))
            .filter(|(_, p)| p.is_file()),
    );
    Ok(files)
}

/// SHA-256 of every checkpoint file a concept depends on: `clip` (the CLIP weights, as a detector
/// records them), `clip/<file>` (config and weights), and with a diffusion folder `diffusion` (the
/// UNet weights, as a detector records them) and `diffusion/<part>/<file>` for each config,
/// weight and tokenizer file.
pub fn checkpoint_hashes(clip: &ClipCheckpoint, sd: Option<&DiffusionSpec>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for path in [&clip.config_path, &clip.weights] {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        out.insert(format!("clip/{name}"), file_hash(path)?);
    }
    out.insert("clip".into(), file_hash(&clip.weights)?);
    if let Some(sd) = sd {
        for (key, path) in diffusion_files(sd)? {
            out.insert(format!("diffusion/{key}"), file_hash(&path)?);
        }
        out.insert("diffusion".into(), file_hash(&sd.weights("unet")?)?);
    }
    Ok(out)
}

/// Refuses `concept` (read from `file`) unless it was learned on the checkpoints of `current`
/// ([`checkpoint_hashes`] of the models this fit runs on): every role it is checked against
/// (`clip`, and `diffusion` where a diffusion folder is given) must be recorded, and every file
/// both know must have the same SHA-256. The error names the file, the key and both hashes.
pub fn check_checkpoints(file: &Path, concept: &Concept, current: &BTreeMap<String, String>) -> Result<()> {
    let recorded = &concept.provenance.checkpoints;
    for role in ["clip", "diffusion"].into_iter().filter(|r| current.contains_key(*r)) {
        if !recorded.contains_key(role) {
            return Err(Error::config(
                file,
                format!(
                    "concept `{}` records no `{role}` checkpoint, so it cannot be checked against this one \
                     (sha256 {})",
                    concept.name, current[role]
                ),
            ));
        }
    }
    for (key, now) in current {
        if let Some(then) = recorded.get(key).filter(|then| *then != now) {
            return Err(Error::config(
                file,
                format!(
                    "concept `{}` was learned on another checkpoint: `{key}` had sha256 {then}, \
                     this one has sha256 {now}",
                    concept.name
                ),
            ));
        }
    }
    Ok(())
}

/// The concepts `names` from concept file `file`, each checked against `current` checkpoints
/// ([`check_checkpoints`]) and the text encoder's `width`.
pub fn reuse(file: &Path, names: &[&str], current: &BTreeMap<String, String>, width: usize) -> Result<Vec<Concept>> {
    let all = adp_api::concept::load(file)?;
    names
        .iter()
        .map(|name| {
            let c = all.iter().find(|c| c.name == *name).ok_or_else(|| {
                let held: Vec<&str> = all.iter().map(|c| c.name.as_str()).collect();
                Error::config(
                    file,
                    format!(
                        "no concept `{name}` (it holds: {}); this method needs it",
                        held.join(", ")
                    ),
                )
            })?;
            check_checkpoints(file, c, current)?;
            if c.vector.len() != width {
                return Err(Error::config(
                    file,
                    format!(
                        "concept `{name}` is {} wide, the text encoder's token embeddings {width}",
                        c.vector.len()
                    ),
                ));
            }
            Ok(c.clone())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concept(checkpoints: &[(&str, &str)]) -> Concept {
        let mut c = Concept {
            name: "c_n".into(),
            placeholder: "<c_n>".into(),
            vector: vec![0.5; 4],
            provenance: Default::default(),
        };
        for (k, v) in checkpoints {
            c.provenance.checkpoints.insert(k.to_string(), v.to_string());
        }
        c
    }

    fn current() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("clip".to_string(), "aa".to_string()),
            ("diffusion".to_string(), "bb".to_string()),
            ("diffusion/vae/config.json".to_string(), "cc".to_string()),
        ])
    }

    #[test]
    fn refuses_other_checkpoints_naming_both_hashes() {
        let file = Path::new("c.safetensors");
        let same = concept(&[("clip", "aa"), ("diffusion", "bb"), ("diffusion/vae/config.json", "cc")]);
        check_checkpoints(file, &same, &current()).unwrap();
        let other = concept(&[("clip", "aa"), ("diffusion", "bb"), ("diffusion/vae/config.json", "dd")]);
        let e = check_checkpoints(file, &other, &current()).unwrap_err().to_string();
        assert!(
            e.starts_with("c.safetensors:") && e.contains("dd") && e.contains("cc") && e.contains("vae/config.json"),
            "{e}"
        );
        let e = check_checkpoints(file, &concept(&[("clip", "aa")]), &current())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `diffusion` checkpoint"), "{e}");
        // Without a diffusion folder only CLIP is checked.
        let clip_only = BTreeMap::from([("clip".to_string(), "aa".to_string())]);
        check_checkpoints(file, &concept(&[("clip", "aa")]), &clip_only).unwrap();
    }

    #[test]
    fn reuse_checks_names_and_width() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.safetensors");
        let c = concept(&[("clip", "aa"), ("diffusion", "bb")]);
        c.save(&file).unwrap();
        let cur = current();
        assert_eq!(reuse(&file, &["c_n"], &cur, 4).unwrap(), vec![c]);
        let e = reuse(&file, &["c_n"], &cur, 8).unwrap_err().to_string();
        assert!(
            e.contains("c.safetensors") && e.contains("4 wide") && e.contains("8"),
            "{e}"
        );
        let e = reuse(&file, &["c_n", "c_a"], &cur, 4).unwrap_err().to_string();
        assert!(e.contains("no concept `c_a`") && e.contains("holds: c_n"), "{e}");
    }
}
