//! Reading the golden files (`conformance-tests/goldens/*.safetensors`) written by
//! `tools/golden/make_goldens.py` from open_clip and diffusers, and the fixture checkpoints they
//! were computed on (regenerated here by `adp_host::fixtures`, seed 0).
use adp_api::{ClipCheckpoint, DiffusionSpec, Tensor};
use adp_host::fixtures::diffusers::DiffusionPreset;
use adp_host::fixtures::{FixturePaths, PresetPaths};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

pub struct Golden {
    pub name: String,
    bytes: Vec<u8>,
    pub meta: HashMap<String, serde_json::Value>,
}

pub fn goldens_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("goldens")
}

impl Golden {
    pub fn open(name: &str) -> Golden {
        let path = goldens_dir().join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (_, meta) = SafeTensors::read_metadata(&bytes).expect("golden header");
        let meta = meta
            .metadata()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, serde_json::from_str(&v).unwrap_or(serde_json::Value::String(v))))
            .collect();
        Golden {
            name: name.into(),
            bytes,
            meta,
        }
    }

    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("golden file")
    }

    /// Whether the golden stores `tensor`.
    pub fn has(&self, tensor: &str) -> bool {
        self.st().tensor(tensor).is_ok()
    }

    pub fn f32(&self, tensor: &str) -> Tensor {
        let path = goldens_dir().join(&self.name);
        adp_api::config::st::read_f32(&self.st(), tensor, &path).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn i64(&self, tensor: &str) -> (Vec<usize>, Vec<i64>) {
        let st = self.st();
        let v = st
            .tensor(tensor)
            .unwrap_or_else(|_| panic!("golden {} lacks `{tensor}`", self.name));
        assert_eq!(v.dtype(), Dtype::I64, "{tensor}");
        (
            v.shape().to_vec(),
            v.data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
        )
    }

    pub fn u8(&self, tensor: &str) -> (Vec<usize>, Vec<u8>) {
        let st = self.st();
        let v = st
            .tensor(tensor)
            .unwrap_or_else(|_| panic!("golden {} lacks `{tensor}`", self.name));
        assert_eq!(v.dtype(), Dtype::U8, "{tensor}");
        (v.shape().to_vec(), v.data().to_vec())
    }

    pub fn meta_str(&self, key: &str) -> String {
        match self.meta.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => panic!("golden {} has no metadata `{key}`", self.name),
        }
    }

    pub fn meta_json(&self, key: &str) -> serde_json::Value {
        self.meta
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("golden {} has no metadata `{key}`", self.name))
    }
}

/// Makes the fixture folder `done` with `write` unless it is there, complete. Written in a
/// temporary folder beside it, marked complete, then renamed into place; a complete `done` is
/// never removed: tests of this process (serialised here) and of other test processes may be
/// reading it. When another writer wins the race, its copy (identical) stays and ours is dropped.
fn materialise(done: &std::path::Path, write: impl FnOnce(&std::path::Path)) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let complete = |d: &std::path::Path| d.join(".complete").exists();
    if complete(done) {
        return;
    }
    let root = done.parent().expect("fixture folder has a parent");
    std::fs::create_dir_all(root).expect("fixture folder");
    let tmp = tempfile::tempdir_in(root).expect("temp dir");
    write(tmp.path());
    std::fs::write(tmp.path().join(".complete"), b"").expect("marker");
    if std::fs::rename(tmp.path(), done).is_err() && !complete(done) {
        // A folder left incomplete (by an older writer that was killed): replace it.
        let _ = std::fs::remove_dir_all(done);
        std::fs::rename(tmp.path(), done).expect("fixture folder into place");
    }
}

/// The fixture checkpoints (seed 0), written once into the build folder and reused by every test
/// process (`goldens_were_made_from_these_fixtures` checks they are still the goldens' inputs).
pub fn fixtures() -> &'static FixturePaths {
    static PATHS: OnceLock<FixturePaths> = OnceLock::new();
    PATHS.get_or_init(|| {
        let root = crate::build_dir().join("adp-fixtures");
        let done = root.join("tiny-seed0");
        materialise(&done, |dir| {
            adp_host::fixtures::write_all(dir, 0, "tiny")
                .map(drop)
                .expect("fixtures")
        });
        FixturePaths::under(&done)
    })
}

pub fn clip_checkpoint() -> ClipCheckpoint {
    ClipCheckpoint::from_dir(&fixtures().clip).expect("fixture CLIP checkpoint")
}

pub fn diffusion_spec(v_prediction: bool) -> DiffusionSpec {
    let f = fixtures();
    DiffusionSpec::from_dir(if v_prediction { &f.sd_v } else { &f.sd_epsilon }).expect("fixture diffusers folder")
}

/// The CLIP fixture of preset `tiny-quickgelu` (seed 0: the tiny weights, OpenAI's QuickGELU),
/// written once into the build folder like [`fixtures`]; the golden `clip_quickgelu` was
/// computed on it (`tools/golden/make_clip_presets_golden.py`). The folder holding `clip/`.
pub fn quickgelu_fixtures() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = crate::build_dir().join("adp-fixtures");
        let done = root.join("tiny-quickgelu-seed0");
        materialise(&done, |dir| {
            let cfg = adp_host::fixtures::preset("tiny-quickgelu").expect("preset");
            adp_host::fixtures::open_clip::write(&dir.join("clip"), &cfg, 0).expect("fixture");
        });
        done
    })
}

/// Asserts that golden `g` was computed on the fixture files under `root` (its `fixture_sha256`).
pub fn assert_made_from(g: &Golden, root: &std::path::Path) {
    let hashes = g.meta_json("fixture_sha256");
    let hashes = hashes.as_object().expect("fixture_sha256 object");
    assert!(!hashes.is_empty());
    for (file, want) in hashes {
        let bytes = std::fs::read(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let got: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            Some(got.as_str()),
            want.as_str(),
            "{}: fixture {file} changed; regenerate the golden (tools/golden/README.md)",
            g.name
        );
    }
}

/// The small release presets that have goldens (`preset_<name>.safetensors`, written by
/// `tools/golden/make_diffusion_presets_golden.py`).
pub const SMALL_PRESETS: [DiffusionPreset; 3] = [
    DiffusionPreset::Sd15Small,
    DiffusionPreset::Sd21BaseSmall,
    DiffusionPreset::Sd21Small,
];

/// The golden of a small preset: `sd-1.5-small` → `preset_sd_15_small`.
pub fn preset_golden(preset: DiffusionPreset) -> Golden {
    Golden::open(&format!("preset_{}", preset.name().replace('-', "_").replace('.', "")))
}

/// A preset's fixture (seed 0, `adp fixtures --diffusion NAME`), written once into the build
/// folder, and checked to be the one its golden was computed from.
pub fn preset_fixture(preset: DiffusionPreset) -> PresetPaths {
    let root = crate::build_dir().join("adp-fixtures");
    let done = root.join(format!("{}-seed0", preset.name()));
    materialise(&done, |dir| {
        adp_host::fixtures::write_preset(dir, 0, preset, None).expect("preset fixture");
    });
    assert_made_from(&preset_golden(preset), &done);
    PresetPaths {
        clip: done.join("clip"),
        sd: done.join(preset.name()),
    }
}

pub fn preset_spec(preset: DiffusionPreset) -> DiffusionSpec {
    DiffusionSpec::from_dir(&preset_fixture(preset).sd).expect("preset diffusers folder")
}
