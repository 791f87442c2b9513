//! The detector file on hostile input: a content hash checked on load, finite tensors, bounded
//! header fields and reads, and checkpoint paths that do not depend on the current folder.
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::Tensor;
use adp_host::detect::{DetectorFile, DetectorHeader};
use std::path::Path;

fn detector(backbone: &str, grid: usize, memory: Vec<f32>) -> DetectorFile {
    let header: DetectorHeader = serde_json::from_value(serde_json::json!({
        "format": adp_host::detect::file::DETECTOR_FORMAT, "method": "visual", "backend": "candle",
        "backend_version": "0.1.0", "clip_dir": "", "backbone": backbone, "checkpoints": {"backbone": "ab"},
        "options": {"steps": 3}, "seed": 7, "grid": grid, "image_size": 64, "concepts": [], "weights": [],
        "memory_kinds": ["PatchTokens"],
    }))
    .unwrap();
    let n = memory.len();
    DetectorFile {
        header,
        prototypes: None,
        memories: vec![ReferenceMemory {
            kind: FeatureKind::PatchTokens,
            features: Tensor::new(vec![n / 4, 4], memory).unwrap(),
        }],
    }
}

fn small() -> DetectorFile {
    detector(
        "/w/backbone.safetensors",
        2,
        (0..32).map(|i| i as f32 * 0.25 - 3.0).collect(),
    )
}

/// xorshift64*: the mutations are the same on every run.
fn rng(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn a_saved_detector_loads_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.adp");
    small().save(&path).unwrap();
    assert_eq!(DetectorFile::load(&path).unwrap(), small());
}

#[test]
fn one_flipped_bit_in_the_memory_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.adp");
    small().save(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // The last tensor byte: the top byte of the memory's last value (sign and exponent).
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let e = DetectorFile::load(&path).unwrap_err().to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("does not match its recorded SHA-256"),
        "{e}"
    );
}

#[test]
fn every_random_mutation_errors_or_loads_the_same_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.adp");
    small().save(&path).unwrap();
    let original = std::fs::read(&path).unwrap();
    let want = small();
    let (mut state, mut refused) = (0x9e37_79b9_7f4a_7c15u64, 0);
    for case in 0..300 {
        let mut bytes = original.clone();
        let at = (rng(&mut state) % bytes.len() as u64) as usize;
        match case % 3 {
            0 => bytes[at] ^= 1 << (rng(&mut state) % 8),
            1 => bytes[at] = rng(&mut state) as u8,
            _ => bytes.truncate(at),
        }
        std::fs::write(&path, &bytes).unwrap();
        match DetectorFile::load(&path) {
            Err(_) => refused += 1,
            Ok(got) => {
                let bits = |d: &DetectorFile| -> Vec<u32> {
                    d.memories
                        .iter()
                        .flat_map(|m| m.features.data().iter().map(|v| v.to_bits()))
                        .collect()
                };
                assert_eq!(got, want, "case {case}: mutation at byte {at} changed the content");
                assert_eq!(bits(&got), bits(&want), "case {case}");
            }
        }
    }
    assert!(refused > 250, "only {refused} of 300 mutations refused");
}

#[test]
fn a_detector_without_a_content_hash_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.adp");
    let d = small();
    let mut header = serde_json::to_value(&d.header).unwrap();
    header["format"] = "adp-detector/1".into();
    let meta = std::collections::HashMap::from([("adp.detector".to_string(), header.to_string())]);
    let m = &d.memories[0].features;
    let bytes = adp_api::config::st::serialize_f32(
        &[("memory.patch_tokens".into(), m.shape().to_vec(), m.data())],
        Some(meta),
        &path,
    )
    .unwrap();
    std::fs::write(&path, bytes).unwrap();
    let e = DetectorFile::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("adp-detector/1") && e.contains("no content hash") && e.contains("fit again"),
        "{e}"
    );
}

#[test]
fn non_finite_tensors_and_absurd_header_fields_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.adp");
    let mut memory: Vec<f32> = vec![0.5; 32];
    memory[9] = f32::INFINITY;
    detector("/w/b.safetensors", 2, memory).save(&path).unwrap();
    let e = DetectorFile::load(&path).unwrap_err().to_string();
    assert!(e.contains("memory.patch_tokens") && e.contains("d.adp"), "{e}");
    detector("/w/b.safetensors", 1 << 40, vec![0.5; 32])
        .save(&path)
        .unwrap();
    let e = DetectorFile::load(&path).unwrap_err().to_string();
    assert!(e.contains("`grid` is 1099511627776, above the limit of 256"), "{e}");
}

#[test]
fn devices_and_folders_are_refused_without_reading() {
    let t = std::time::Instant::now();
    let e = DetectorFile::load(Path::new("/dev/zero")).unwrap_err().to_string();
    assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    let e = DetectorFile::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("not a regular file") || e.contains("Is a directory"), "{e}");
    assert!(t.elapsed().as_secs() < 5);
}

#[test]
fn a_relative_backbone_is_stored_absolute() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.adp");
    detector("weights/b.safetensors", 2, vec![0.5; 32]).save(&path).unwrap();
    let loaded = DetectorFile::load(&path).unwrap();
    let want = std::env::current_dir().unwrap().join("weights/b.safetensors");
    assert_eq!(loaded.header.backbone, Some(want));
}
