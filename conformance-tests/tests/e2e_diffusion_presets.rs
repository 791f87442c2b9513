//! Host end-to-end test (not backend conformance): `adp fixtures --diffusion` and `adp fit` on the
//! small SD 1.5, SD 2.1-base and SD 2.1 layouts (conv or linear projections, per-block heads, the
//! folder's pad token, epsilon or v-prediction, 32 or 48 px), through either plugin.
//!
//! Tiny settings (one step, two 40-pixel photos, two DDIM steps): this checks that every stage
//! runs on each layout and that the detector scores, not what it learns (the weights are random).
use adp_conformance::{adp, build_dir, textured_photos};
use std::path::Path;

fn fit_and_score_on_every_small_preset(plugin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let support = textured_photos(dir.path(), 2);
    let plugins = build_dir();
    let plugins = plugins.to_str().unwrap();
    for preset in ["sd-1.5-small", "sd-2.1-base-small", "sd-2.1-small"] {
        let root = dir.path().join(preset);
        let printed = adp(&["fixtures", "--diffusion", preset, "--out", root.to_str().unwrap()]);
        let lines: Vec<&str> = printed.lines().collect();
        let [clip, sd] = lines[..] else {
            panic!("adp fixtures --diffusion {preset} printed {printed:?}")
        };
        assert_eq!(Path::new(sd), root.join(preset));
        for method in ["ti", "adp"] {
            let detector = root.join(format!("{method}.adp"));
            let mut args = vec![
                "fit",
                "--plugin",
                plugin,
                "--plugin-dir",
                plugins,
                "--clip",
                clip,
                "--sd",
                sd,
                "--method",
                method,
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--ddim-steps",
                "2",
                "--validation-pseudo",
                "1",
                "--quiet",
                "-o",
                detector.to_str().unwrap(),
                "--support",
            ];
            args.extend(support.iter().map(|p| p.to_str().unwrap()));
            adp(&args);
            let out = adp(&[
                "score",
                "--detector",
                detector.to_str().unwrap(),
                "--plugin",
                plugin,
                "--plugin-dir",
                plugins,
                "--quiet",
                support[0].to_str().unwrap(),
            ]);
            let row: serde_json::Value = serde_json::from_str(out.lines().last().unwrap())
                .unwrap_or_else(|e| panic!("{preset} {method}: {e}: {out}"));
            let score = row["score"]
                .as_f64()
                .unwrap_or_else(|| panic!("{preset} {method}: {out}"));
            assert!((0.0..=1.0).contains(&score), "{preset} {method}: {out}");
            eprintln!("{plugin} {preset} --method {method}: score {score:.4}");
        }
    }
}

#[test]
fn ti_and_adp_fit_and_score_on_the_small_sd_layouts_with_candle() {
    fit_and_score_on_every_small_preset("candle");
}

#[cfg(feature = "tch")]
#[test]
fn ti_and_adp_fit_and_score_on_the_small_sd_layouts_with_tch() {
    fit_and_score_on_every_small_preset("tch");
}
