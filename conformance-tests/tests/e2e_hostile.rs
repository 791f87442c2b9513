//! Host end-to-end test (not backend conformance): files from others cannot make adp open a
//! library. A test library (`adp_plugin_test_fixture_marker`) writes a marker file from its
//! constructor the moment it is loaded; the marker must never appear where adp must not load it.
//! Needs the `adp` binary and the plugins in the build folder (`cargo build --workspace`).
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::Tensor;
use adp_conformance::{build_dir, built_plugin_path};
use adp_host::detect::{DetectorFile, DetectorHeader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MARKER_ENV: &str = "ADP_TEST_MARKER";

/// A valid (hashed) visual detector whose `backend` field is `backend`.
fn detector_naming(backend: &str, path: &Path) {
    let header: DetectorHeader = serde_json::from_value(serde_json::json!({
        "format": adp_host::detect::file::DETECTOR_FORMAT, "method": "visual", "backend": backend,
        "clip_dir": "", "backbone": "/nonexistent/backbone.safetensors", "checkpoints": {},
        "options": {}, "seed": 0, "grid": 2, "image_size": 64, "concepts": [], "weights": [],
        "memory_kinds": ["PatchTokens"],
    }))
    .unwrap();
    let features = Tensor::new(vec![4, 3], (0..12).map(|i| i as f32).collect()).unwrap();
    DetectorFile {
        header,
        prototypes: None,
        memories: vec![ReferenceMemory {
            kind: FeatureKind::PatchTokens,
            features,
        }],
    }
    .save(path)
    .unwrap();
}

/// A plugin folder holding the marker library and a link to the candle plugin.
fn plugin_folder(dir: &Path) -> (PathBuf, PathBuf) {
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let marker_lib = plugins.join(built_plugin_path("adp_plugin_test_fixture_marker").file_name().unwrap());
    std::fs::copy(built_plugin_path("adp_plugin_test_fixture_marker"), &marker_lib).unwrap();
    let candle = built_plugin_path("adp_plugin_candle");
    std::os::unix::fs::symlink(&candle, plugins.join(candle.file_name().unwrap())).unwrap();
    (plugins, marker_lib)
}

fn adp(args: &[&str], marker: &Path) -> Output {
    Command::new(build_dir().join("adp"))
        .args(args)
        .env(MARKER_ENV, marker)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_marker_library_writes_its_marker_when_loaded() {
    // The control: the user's own `--plugin PATH` does load it, so a missing marker below means
    // the library was not opened, not that the fixture is inert.
    let dir = tempfile::tempdir().unwrap();
    let (plugins, marker_lib) = plugin_folder(dir.path());
    let marker = dir.path().join("marker");
    let det = dir.path().join("d.adp");
    detector_naming("candle", &det);
    let plugin = marker_lib.to_str().unwrap();
    let o = adp(
        &[
            "score",
            "--detector",
            det.to_str().unwrap(),
            "--plugin",
            plugin,
            "--plugin-dir",
            plugins.to_str().unwrap(),
            "x.png",
        ],
        &marker,
    );
    assert!(!o.status.success());
    assert!(marker.exists(), "{}", stderr(&o));
}

#[test]
fn a_detector_naming_a_library_by_path_cannot_load_it() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, marker_lib) = plugin_folder(dir.path());
    let marker = dir.path().join("marker");
    let relative = format!("plugins/{}", marker_lib.file_name().unwrap().to_str().unwrap());
    for backend in [
        marker_lib.to_str().unwrap(),
        relative.as_str(),
        "../plugins/x",
        "Test_Fixture_Marker",
    ] {
        let det = dir.path().join("d.adp");
        detector_naming(backend, &det);
        let o = Command::new(build_dir().join("adp"))
            .args(["score", "--detector", det.to_str().unwrap(), "--plugin-dir"])
            .arg(&plugins)
            .arg("x.png")
            .current_dir(dir.path())
            .env(MARKER_ENV, &marker)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{backend}: {err}");
        assert!(
            err.contains("is not a plugin name") && err.contains("[a-z0-9_-]+"),
            "{backend}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!marker.exists(), "{backend} loaded the library");
    }
}

#[test]
fn a_named_plugin_opens_no_other_library_of_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, _) = plugin_folder(dir.path());
    let marker = dir.path().join("marker");
    let det = dir.path().join("d.adp");
    for plugin in [None, Some("candle"), Some("nonesuch")] {
        detector_naming("candle", &det);
        let mut args = vec![
            "score",
            "--detector",
            det.to_str().unwrap(),
            "--plugin-dir",
            plugins.to_str().unwrap(),
        ];
        args.extend(plugin.map(|p| ["--plugin", p]).into_iter().flatten());
        args.push("x.png");
        let o = adp(&args, &marker);
        // It fails later (no backbone file), after the plugin was opened, or names what is there.
        assert!(!o.status.success());
        if plugin == Some("nonesuch") {
            let err = stderr(&o);
            assert!(
                err.contains("no plugin named \"nonesuch\"") && err.contains("test-fixture-marker"),
                "{err}"
            );
        } else {
            assert!(stderr(&o).contains("backbone"), "{}", stderr(&o));
        }
        assert!(!marker.exists(), "--plugin {plugin:?} opened the marker library");
    }
}
