//! The `adp` command line on the fixtures: `adp embed` prints the golden embeddings through
//! either plugin, `adp plugins` lists what the build folder holds.
use adp_conformance::build_dir;
use adp_conformance::goldens::{assert_close, fixtures, Golden, FORWARD_TOLERANCE};
use std::process::Command;

fn adp(args: &[&str]) -> String {
    let exe = build_dir().join("adp");
    let out = Command::new(&exe).args(args).output().unwrap_or_else(|e| panic!("{}: {e} (cargo build --workspace first)", exe.display()));
    assert!(out.status.success(), "adp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn embed_matches_goldens(plugin: &str) {
    let g = Golden::open("clip");
    let texts: Vec<String> = serde_json::from_value(g.meta_json("prompts")).unwrap();
    let plain = texts.iter().position(|t| !t.contains("<c>")).expect("a plain prompt");
    let dir = build_dir();
    let clip = fixtures().clip.to_str().unwrap().to_string();
    let out = adp(&["embed", "--plugin", plugin, "--plugin-dir", dir.to_str().unwrap(), "--clip", &clip, "--text", &texts[plain]]);
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["text"], texts[plain].as_str());
    let got: Vec<f32> = serde_json::from_value(line["embedding"].clone()).unwrap();
    let want = g.f32("text_embeddings");
    let want = adp_api::Tensor::new(vec![want.shape()[1]], want.row(plain).to_vec()).unwrap();
    assert_close(&format!("adp embed --plugin {plugin}"), &adp_api::Tensor::new(vec![got.len()], got).unwrap(), &want, FORWARD_TOLERANCE);
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
    let by_name = |n: &str| rows.iter().find(|r| r["name"] == n).unwrap_or_else(|| panic!("{n} not listed: {out}"));
    assert_eq!(by_name("candle")["abi"], adp_plugin_abi::ADP_ABI_VERSION);
    assert_eq!(by_name("candle")["traits"].as_array().unwrap().len(), 4);
    assert_eq!(by_name("test-fixture")["traits"].as_array().unwrap().len(), 4);
    assert!(rows.iter().any(|r| r["error"].as_str().is_some_and(|e| e.contains("ABI"))), "the future-ABI fixture is reported");
}
