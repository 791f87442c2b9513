//! `adp score` end to end (the built binary, the test-fixture plugin from its folder, a CLIP
//! folder of `adp fixtures`) on a detector fitted through the library on the same backend (the
//! fixture's 2×2 patch grid needs 2×2 windows only, which `adp fit` does not offer): the stored
//! decision, the per-photo verdicts and overlays, and a photo that cannot be read failing alone.
//! Needs the plugins beside the binary (`cargo build --workspace`).
use adp_api::requests::Flow;
use adp_api::ClipCheckpoint;
use adp_host::detect::fit::fit_files;
use adp_host::detect::{Checkpoints, DetectorFile, FitOptions, Method};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn adp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adp"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running adp")
}

fn ok(args: &[&str]) -> String {
    let out = adp(args);
    assert!(
        out.status.success(),
        "adp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn plugin_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_adp")).parent().unwrap().to_path_buf();
    let plugin = dir.join(format!(
        "{}adp_plugin_test_fixture{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        plugin.is_file(),
        "{} is missing: cargo build --workspace first",
        plugin.display()
    );
    dir
}

fn photo(path: &Path, shade: u8, defect: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(40, 36, |x, y| {
        if defect && (24..34).contains(&x) && (20..30).contains(&y) {
            return image::Rgb([255, 255, 255]);
        }
        image::Rgb([(x * 5) as u8, (y * 6) as u8, shade])
    })
    .save(path)
    .unwrap();
}

fn lines(stdout: &str) -> Vec<Value> {
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn fit_stores_a_decision_and_score_decides_every_photo_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pd = plugin_dir();
    ok(&["fixtures", "--out", s(&d.join("fx"))]);
    for k in 0..3 {
        photo(&d.join(format!("support/{k:03}.png")), 60 + 30 * k, false);
    }
    let detector = d.join("d.adp");
    // `adp fit` refuses a rate outside (0, 1) before any work.
    let fit = |rate: &str| {
        let clip = d.join("fx/clip");
        let support = d.join("support");
        let args = [
            "fit",
            "--plugin",
            "test-fixture",
            "--plugin-dir",
            s(&pd),
            "--clip",
            s(&clip),
            "--method",
            "winclip",
        ];
        adp(&[
            &args[..],
            &["--false-alarm-rate", rate, "--support", s(&support), "-o", s(&detector)],
        ]
        .concat())
    };
    let out = fit("0");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("false_alarm_rate"));
    let clip = ClipCheckpoint::from_dir(&d.join("fx/clip")).unwrap();
    let support: Vec<PathBuf> = (0..3).map(|k| d.join(format!("support/{k:03}.png"))).collect();
    let options = FitOptions {
        method: Method::Winclip,
        window_sizes: vec![2],
        false_alarm_rate: 0.05,
        ..FitOptions::default()
    };
    let backend = adp_plugin_test_fixture::FixtureBackend;
    let fitted = fit_files(
        &backend,
        &Checkpoints::clip(&clip),
        None,
        &support,
        options,
        &mut |_| Flow::Continue,
    )
    .unwrap();
    fitted.save(&detector).unwrap();
    let decision = fitted.header.decision.expect("a stored decision");
    assert_eq!(decision.false_alarm_rate, 0.05);
    assert_eq!(
        decision.null_scores.len(),
        3 * 6,
        "3 photos, each unshifted and with 5 shifted views"
    );
    let max_null = decision.null_scores.iter().copied().fold(f32::MIN, f32::max);
    assert!(decision.threshold >= max_null, "{decision:?}");

    // Two readable photos around one that is not an image.
    photo(&d.join("test/a_good.png"), 75, false);
    std::fs::write(d.join("test/b_broken.png"), b"not a png at all").unwrap();
    photo(&d.join("test/c_defect.png"), 75, true);
    let tests = d.join("test");
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--detector", s(&detector), "--plugin-dir", s(&pd), "--quiet"];
        args.extend_from_slice(extra);
        args.push(s(&tests));
        adp(&args)
    };
    let out = score(&["--overlays", s(&d.join("ov"))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "some photos failed: {stderr}");
    assert!(stderr.contains("b_broken.png"), "{stderr}");
    let v = lines(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(v.len(), 3, "one line per photo: {v:?}");
    assert!(v[1]["path"].as_str().unwrap().ends_with("b_broken.png"));
    assert!(v[1]["error"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", v[1]);
    for line in [&v[0], &v[2]] {
        let score = line["score"].as_f64().unwrap() as f32;
        assert_eq!(line["threshold"].as_f64().unwrap() as f32, decision.threshold);
        assert_eq!(
            line["anomalous"].as_bool().unwrap(),
            score > decision.threshold,
            "{line}"
        );
        let n = line["normalised"].as_f64().unwrap();
        assert!(
            (0.0..=1.0).contains(&n) && (n > 0.5) == (score > decision.threshold),
            "{line}"
        );
        assert!(Path::new(line["overlay"].as_str().unwrap()).is_file(), "{line}");
    }
    assert!(d.join("ov/a_good_overlay.png").is_file() && !d.join("ov/b_broken_overlay.png").exists());

    // --threshold overrides the stored one; all photos readable: exit 0.
    std::fs::remove_file(d.join("test/b_broken.png")).unwrap();
    let flagged = |extra: &[&str]| {
        let out = score(extra);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        lines(&String::from_utf8(out.stdout).unwrap())
            .iter()
            .map(|l| l["anomalous"].as_bool())
            .collect::<Vec<_>>()
    };
    assert_eq!(flagged(&["--threshold=-1"]), [Some(true), Some(true)]);
    assert_eq!(flagged(&["--threshold", "1000"]), [Some(false), Some(false)]);

    // A detector from before decisions: no verdict, said on stderr, unless --threshold is given.
    let mut old = DetectorFile::load(&detector).unwrap();
    old.header.decision = None;
    old.save(&detector).unwrap();
    let out = score(&[]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no threshold"));
    let v = lines(&String::from_utf8(out.stdout).unwrap());
    assert!(v.iter().all(|l| l["anomalous"].is_null()), "{v:?}");
    assert_eq!(flagged(&["--threshold=-1"]), [Some(true), Some(true)]);
}
