//! Host end-to-end test (not backend conformance): `adp score` against the whole-pipeline golden.
//!
//! `goldens/pipeline.safetensors` (tools/golden/make_pipeline_golden.py) holds, computed with
//! open_clip from the fixture CLIP and the stored concepts and weights of the detectors in
//! `goldens/pipeline/` (prototypes and memories recomputed, not copied), the score, language score,
//! association and full-size anomaly map of real photos, square and non-square, as docs/SPEC.md
//! defines them. Each test runs the built `adp score` on those photos with one detector and one
//! plugin and compares everything it prints and draws; every mismatch is listed before failing.
use adp_conformance::build_dir;
use adp_conformance::goldens::{fixtures, goldens_dir, Golden};
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;
use std::process::Command;

/// Score, language score and association: absolute 1e-5. Both sides evaluate the same float32
/// definitions; what separates them is rounding (the encoders agree with open_clip to about 1e-6,
/// and the softmax at τ = 0.01 multiplies cosine differences by 100), which stays near 1e-6, while
/// a wrong definition (another normalisation, crop or memory) moves these values far more.
const SCORE_TOL: f64 = 1e-5;

/// Maps: `adp score --maps` writes 8-bit PNGs and the golden stores the same quantisation
/// `round(clip(m, 0, 1) · 255)`; two maps equal up to float rounding can round to neighbouring
/// levels, so every pixel must be within one 8-bit level.
const MAP_LEVELS: i32 = 1;

/// The golden's uint8 map `name`: its `[height, width]` and values.
fn golden_map(name: &str) -> (Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(goldens_dir().join("pipeline.safetensors")).expect("pipeline golden");
    let st = SafeTensors::deserialize(&bytes).expect("pipeline golden");
    let t = st
        .tensor(name)
        .unwrap_or_else(|_| panic!("the pipeline golden lacks `{name}`"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    (t.shape().to_vec(), t.data().to_vec())
}

fn check(detector: &str, plugin: &str) {
    let Some(data) = adp_conformance::shared_data("", "the whole-pipeline golden") else {
        return;
    };
    let g = Golden::open("pipeline");
    let tests: Vec<String> = serde_json::from_value(g.meta_json("tests")).unwrap();
    let photos: Vec<PathBuf> = tests.iter().map(|t| data.join(t)).collect();
    let maps = tempfile::tempdir().unwrap();
    let file = goldens_dir()
        .join("pipeline")
        .join(format!("{detector}.detector.safetensors"));
    let dir = build_dir();
    let out = Command::new(dir.join("adp"))
        .args([
            "score",
            "--quiet",
            "--plugin",
            plugin,
            "--plugin-dir",
            dir.to_str().unwrap(),
        ])
        .args([
            "--detector",
            file.to_str().unwrap(),
            "--clip",
            fixtures().clip.to_str().unwrap(),
        ])
        .args(["--maps", maps.path().to_str().unwrap()])
        .args(&photos)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --workspace first)", dir.join("adp").display()));
    assert!(
        out.status.success(),
        "adp score: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), tests.len(), "one line per photo");

    let mut failures = Vec::new();
    for (i, (line, test)) in lines.iter().zip(&tests).enumerate() {
        let case = format!("{detector}/{plugin} {test}");
        for key in ["score", "language", "association"] {
            let want = g.f32(&format!("{detector}.test{i}.{key}")).data()[0] as f64;
            let got = line[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{case}: no {key} in {line}"));
            let diff = (got - want).abs();
            eprintln!("{case} {key}: adp {got:.7} golden {want:.7} |diff| {diff:.2e}");
            if diff > SCORE_TOL {
                failures.push(format!(
                    "{case} {key}: adp {got:.7}, golden {want:.7}, |diff| {diff:.2e} > {SCORE_TOL:e}"
                ));
            }
        }
        let (shape, want) = golden_map(&format!("{detector}.test{i}.map"));
        let path = line["map"]
            .as_str()
            .unwrap_or_else(|| panic!("{case}: no map in {line}"));
        let got = image::open(path).unwrap_or_else(|e| panic!("{path}: {e}")).to_luma8();
        if [got.height() as usize, got.width() as usize] != shape[..] {
            failures.push(format!(
                "{case} map: {}×{} (h×w), golden {}×{}",
                got.height(),
                got.width(),
                shape[0],
                shape[1]
            ));
            continue;
        }
        let diffs: Vec<i32> = got
            .as_raw()
            .iter()
            .zip(&want)
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .collect();
        let worst = diffs.iter().copied().max().unwrap_or(0);
        let over = diffs.iter().filter(|&&d| d > MAP_LEVELS).count();
        let peak = want.iter().copied().max().unwrap_or(0);
        eprintln!(
            "{case} map: max |diff| {worst} levels, {over} of {} pixels over {MAP_LEVELS} (golden peak {peak})",
            diffs.len()
        );
        if over > 0 {
            failures.push(format!(
                "{case} map: {over} of {} pixels differ by more than {MAP_LEVELS} level (max {worst})",
                diffs.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "adp score disagrees with the pipeline golden:\n  {}",
        failures.join("\n  ")
    );
}

#[test]
fn adp_detector_scores_like_the_golden_with_candle() {
    check("adp", "candle");
}

#[test]
fn adp_label_detector_scores_like_the_golden_with_candle() {
    check("adp-label", "candle");
}

#[test]
fn winclip_detector_scores_like_the_golden_with_candle() {
    check("winclip", "candle");
}

#[test]
fn cn_detector_scores_like_the_golden_with_candle() {
    check("cn", "candle");
}

#[cfg(feature = "tch")]
#[test]
fn adp_detector_scores_like_the_golden_with_tch() {
    check("adp", "tch");
}

#[cfg(feature = "tch")]
#[test]
fn adp_label_detector_scores_like_the_golden_with_tch() {
    check("adp-label", "tch");
}

#[cfg(feature = "tch")]
#[test]
fn winclip_detector_scores_like_the_golden_with_tch() {
    check("winclip", "tch");
}

#[cfg(feature = "tch")]
#[test]
fn cn_detector_scores_like_the_golden_with_tch() {
    check("cn", "tch");
}
