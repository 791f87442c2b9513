//! Host end-to-end test (not backend conformance): the `adp` binary and its plugins.
//!
//! The `adp` command line on the fixtures: `adp embed` prints the golden embeddings through
//! either plugin, `adp plugins` lists what the build folder holds.
use adp_conformance::goldens::{fixtures, Golden};
use adp_conformance::tolerance::{assert_close, FORWARD};
use adp_conformance::{adp, build_dir};
use std::process::Command;

fn embed_matches_goldens(plugin: &str) {
    let g = Golden::open("clip");
    let texts: Vec<String> = serde_json::from_value(g.meta_json("prompts")).unwrap();
    let plain = texts.iter().position(|t| !t.contains("<c>")).expect("a plain prompt");
    let dir = build_dir();
    let clip = fixtures().clip.to_str().unwrap().to_string();
    let out = adp(&[
        "embed",
        "--plugin",
        plugin,
        "--plugin-dir",
        dir.to_str().unwrap(),
        "--clip",
        &clip,
        "--text",
        &texts[plain],
    ]);
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["text"], texts[plain].as_str());
    let got: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
    let want = g.f32("text_embeddings");
    let want = adp_api::Tensor::new(vec![want.shape()[1]], want.row(plain).to_vec()).unwrap();
    assert_close(
        &format!("adp embed --plugin {plugin}"),
        &adp_api::Tensor::new(vec![got.len()], got).unwrap(),
        &want,
        FORWARD,
    );
}

#[test]
fn embed_prints_the_golden_text_embedding_with_candle() {
    embed_matches_goldens("candle");
}

#[cfg(feature = "tch")]
#[test]
fn embed_prints_the_golden_text_embedding_with_tch() {
    embed_matches_goldens("tch");
}

#[test]
fn plugins_lists_the_build_folder() {
    let out = adp(&["plugins", "--plugin-dir", build_dir().to_str().unwrap(), "--json"]);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_name = |n: &str| {
        rows.iter()
            .find(|r| r["name"] == n)
            .unwrap_or_else(|| panic!("{n} not listed: {out}"))
    };
    assert_eq!(by_name("candle")["abi"], adp_plugin_abi::ADP_ABI_VERSION);
    let traits = |n: &str| {
        by_name(n)["traits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let pipeline = ["TextImageEncoder", "LatentDiffuser", "ConceptOptimizer", "Scorer"];
    assert_eq!(
        traits("candle"),
        [&pipeline[..], &["FeatureExtractor"]].concat(),
        "the candle plugin also extracts backbone features"
    );
    assert_eq!(
        traits("test-fixture"),
        pipeline,
        "the fixture declares only the pipeline traits"
    );
    assert!(
        rows.iter()
            .any(|r| r["error"].as_str().is_some_and(|e| e.contains("ABI"))),
        "the future-ABI fixture is reported"
    );
}

/// A smoke `adp eval` on real photos (mpdd metal_plate, which has masks): the report, its
/// markdown table in the paper's shape and the overlays are written.
#[test]
fn eval_smoke_run_writes_the_report() {
    let Some(data) = adp_conformance::shared_data("mpdd", "the eval smoke test") else {
        return;
    };
    let f = fixtures();
    let out = tempfile::tempdir().unwrap();
    let dir = build_dir();
    let eval = |overlays: &str, again: &[&str]| {
        let mut args = vec![
            "eval",
            "--plugin",
            "candle",
            "--plugin-dir",
            dir.to_str().unwrap(),
            "--clip",
            f.clip.to_str().unwrap(),
            "--sd",
            f.sd_epsilon.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--category",
            "metal_plate",
            "--shots",
            "1,2",
            "--seeds",
            "0",
            "--method",
            "adp",
            "--method",
            "winclip",
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--ddim-steps",
            "2",
            "--validation-pseudo",
            "2",
            "--limit",
            "2",
            "--overlays",
            overlays,
            "--quiet",
            "--out",
            out.path().to_str().unwrap(),
        ];
        args.extend(again);
        adp(&args)
    };
    let lines = eval("1", &[]);
    let runs: Vec<serde_json::Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(runs.len(), 4, "2 methods × 2 shots × 1 seed");
    assert!(runs
        .iter()
        .all(|r| (0.0..=1.0).contains(&r["image_auroc"].as_f64().unwrap()) && r["pixel_auroc"].is_f64()));
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(
        md.contains("| category | adp K=1 | adp K=2 | winclip K=1 | winclip K=2 |") && md.contains("| metal_plate |"),
        "{md}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    let p = &report["provenance"];
    assert_eq!(
        (p["backend"].as_str(), p["device"].as_str()),
        (Some("candle"), Some("cpu")),
        "{p}"
    );
    let clip_sha = adp_host::detect::file::file_hash(&f.clip.join("open_clip_model.safetensors")).unwrap();
    assert_eq!(
        p["checkpoints"]["clip"]["sha256"].as_str(),
        Some(clip_sha.as_str()),
        "the report names the CLIP weights it used: {p}"
    );
    assert_eq!(p["checkpoints"]["sd"]["path"].as_str(), f.sd_epsilon.to_str());
    assert_eq!(report["runs"].as_array().unwrap().len(), 4);
    let overlays = std::fs::read_dir(out.path().join("overlays/metal_plate/adp"))
        .unwrap()
        .count();
    assert_eq!(overlays, 2, "one good and one defective overlay");
    // The same folder again: its finished runs are kept unless --overwrite says otherwise.
    let rerun = eval("0", &["--overwrite"]);
    assert_eq!(rerun, lines, "the same seeds gave other numbers");
}

#[test]
fn eval_names_a_missing_category() {
    let Some(data) = adp_conformance::shared_data("mpdd", "the missing-category test") else {
        return;
    };
    let f = fixtures();
    let out = Command::new(build_dir().join("adp"))
        .args([
            "eval",
            "--plugin",
            "candle",
            "--plugin-dir",
            build_dir().to_str().unwrap(),
            "--clip",
            f.clip.to_str().unwrap(),
            "--method",
            "winclip",
        ])
        .args([
            "--data",
            data.to_str().unwrap(),
            "--category",
            "nonesuch",
            "--out",
            "/tmp/adp-never-written",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nonesuch") && err.contains("metal_plate"), "{err}");
}
