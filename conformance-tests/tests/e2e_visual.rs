//! Host end-to-end test (not backend conformance): `adp_host`'s visual method, library and binary.
//!
//! The `visual` method end to end with the real pretrained EfficientNet-Lite0 (provisioned by
//! `scripts/setup-weights.sh`) on real photos from `../shared/data/mvtec_ad/bottle`: through the
//! library with each backend, and through `adp fit` / `adp score` with no checkpoint given.
use adp_api::{BackboneCheckpoint, Backend, Device, ImageBatch};
use adp_conformance::tolerance::REORDERING;
use adp_conformance::{adp, build_dir, pngs, shared_data};
use adp_host::detect::DetectorFile;
use adp_host::detect::{default_backbone, VisualModel};
use adp_host::detect::{score, Checkpoints, FitOptions, Method, SupportViews};
use adp_host::eval::metrics::image_auroc;
use std::path::PathBuf;
use std::process::Command;

fn backbone() -> BackboneCheckpoint {
    let path = default_backbone();
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup-weights.sh (CI does)",
        path.display()
    );
    BackboneCheckpoint::from_file(&path).unwrap()
}

/// Five good and five defective test photos, and their labels.
fn test_set(root: &std::path::Path) -> (Vec<PathBuf>, Vec<bool>) {
    let mut files = pngs(root.join("test/good"), 5);
    files.extend(pngs(root.join("test/broken_large"), 3));
    files.extend(pngs(root.join("test/contamination"), 2));
    let labels = (0..files.len()).map(|i| i >= 5).collect();
    (files, labels)
}

fn fits_scores_and_separates(backend: &dyn Backend) {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image visual test") else {
        return;
    };
    let backbone = backbone();
    let model = VisualModel::open(backend, &backbone, Device::Cpu).unwrap();
    let size = model.extractor.dims().image_size;
    let support = adp_host::images::read_resized(&pngs(root.join("train/good"), 4), size).unwrap();
    let options = FitOptions {
        method: Method::Visual,
        ..FitOptions::default()
    };
    let detector = model
        .fit(&support, &options, &mut |_| adp_api::requests::Flow::Continue)
        .unwrap();
    assert_eq!(detector.header.method, "visual");
    assert!(detector.prototypes.is_none());
    assert_eq!(detector.memories[0].features.shape(), &[4 * 28 * 28, 152]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bottle.adp");
    detector.save(&file).unwrap();
    let loaded = DetectorFile::load(&file).unwrap();
    assert_eq!(loaded, detector);

    let (files, labels) = test_set(&root);
    let images: Vec<ImageBatch> = files
        .iter()
        .map(|f| ImageBatch::read_files(std::slice::from_ref(f)).unwrap())
        .collect();
    let run = || {
        score(
            backend,
            &Checkpoints::backbone(&backbone),
            &loaded,
            &images,
            Device::Cpu,
        )
        .unwrap()
    };
    let scores = run();
    for (s, img) in scores.iter().zip(&images) {
        assert_eq!(
            (s.height, s.width, s.map.len()),
            (img.height(), img.width(), img.height() * img.width())
        );
        assert!(s.map.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)));
        assert!(s.language.is_none() && s.score.is_finite() && s.score <= s.association + 1e-6);
    }
    let values: Vec<f32> = scores.iter().map(|s| s.score).collect();
    let auroc = image_auroc(&values, &labels).unwrap();
    // Pretrained features tell broken and contaminated bottles from good ones with four shots.
    assert!(auroc >= 0.9, "image AUROC {auroc} on {values:?}");
    // A rerun computes the same operations, but the thread pool may split the sums another way:
    // equal up to REORDERING, which a leak of random state (another draw, another memory) exceeds.
    let again = run();
    let close = |a: f32, b: f32, scale: f32| (a - b).abs() <= REORDERING * scale.max(f32::MIN_POSITIVE);
    for (a, b) in again.iter().zip(&scores) {
        let scale = b.map.iter().fold(b.score.abs(), |m, v| m.max(v.abs()));
        assert!(close(a.score, b.score, scale), "rerun score {} vs {}", a.score, b.score);
        assert!(
            a.map.iter().zip(&b.map).all(|(x, y)| close(*x, *y, scale)),
            "rerun map differs"
        );
    }
}

#[test]
fn visual_fits_scores_and_separates_real_defects_with_candle() {
    fits_scores_and_separates(&adp_backend_candle::CandleBackend::new());
}

#[test]
fn visual_through_the_candle_plugin() {
    fits_scores_and_separates(&*adp_conformance::plugin("adp_plugin_candle"));
}

#[cfg(feature = "tch")]
#[test]
fn visual_through_the_tch_plugin() {
    fits_scores_and_separates(&*adp_conformance::plugin("adp_plugin_tch"));
}

#[test]
fn visual_detector_refuses_another_backbone() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image visual test") else {
        return;
    };
    let backend = adp_backend_candle::CandleBackend::new();
    let backbone = backbone();
    let model = VisualModel::open(&backend, &backbone, Device::Cpu).unwrap();
    let support = adp_host::images::read_resized(&pngs(root.join("train/good"), 1), 224).unwrap();
    let detector = model
        .fit(
            &support,
            &FitOptions {
                method: Method::Visual,
                ..FitOptions::default()
            },
            &mut |_| adp_api::requests::Flow::Continue,
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("efficientnet-lite0.safetensors");
    let mut bytes = std::fs::read(&backbone.weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&other, bytes).unwrap();
    let err = score(
        &backend,
        &Checkpoints::backbone(&BackboneCheckpoint::from_file(&other).unwrap()),
        &detector,
        &[support],
        Device::Cpu,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("another backbone") && err.contains(other.to_str().unwrap()),
        "{err}"
    );
}

/// `--support-views rotations`: the memory holds each support photo and its three quarter turns,
/// photo by photo (the decision leaves a photo's four views out together), the option is stored
/// in the detector, and only `visual` takes it.
#[test]
fn visual_support_rotations_fill_the_memory_photo_by_photo() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image visual test") else {
        return;
    };
    let backend = adp_backend_candle::CandleBackend::new();
    let model = VisualModel::open(&backend, &backbone(), Device::Cpu).unwrap();
    let support = adp_host::images::read_resized(&pngs(root.join("train/good"), 2), 224).unwrap();
    let fit = |views| {
        let options = FitOptions {
            method: Method::Visual,
            support_views: views,
            ..FitOptions::default()
        };
        adp_host::detect::fit::fit_visual(&model, &support, &options, &mut |_| adp_api::requests::Flow::Continue)
            .unwrap()
    };
    let (plain, turned) = (fit(SupportViews::None), fit(SupportViews::Rotations));
    let (rows, dim) = (28 * 28, 152);
    assert_eq!(turned.memories[0].features.shape(), &[2 * 4 * rows, dim]);
    assert_eq!(turned.header.options["support_views"], "rotations");
    assert_eq!(plain.header.options["support_views"], "none");
    // Photo 1's own view follows photo 0's four views; both match the plain memory's rows (the
    // same features, computed in another batch: equal up to REORDERING).
    let (p, t) = (plain.memories[0].features.data(), turned.memories[0].features.data());
    let block = rows * dim;
    for (plain_block, turned_block) in [(0, 0), (1, 4)] {
        let a = &p[plain_block * block..][..block];
        let b = &t[turned_block * block..][..block];
        assert!(a
            .iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= REORDERING * x.abs().max(1.0)));
    }
    // A turned view is not the photo again.
    assert!(t[block..2 * block]
        .iter()
        .zip(&p[..block])
        .any(|(x, y)| (x - y).abs() > 0.1));
    // The decision scores each photo against the memory without its four views (`leave_out`
    // refuses rows it cannot split by photo).
    let d = turned.header.decision.as_ref().expect("a decision");
    assert!(d.threshold.is_finite() && d.threshold > 0.0, "{d:?}");
    let loaded = {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("turned.adp");
        turned.save(&file).unwrap();
        DetectorFile::load(&file).unwrap()
    };
    assert_eq!(loaded, turned);
    // Another method refuses the option before any work.
    let err = adp_host::detect::fit::fit_files(
        &backend,
        &Checkpoints::default(),
        None,
        &pngs(root.join("train/good"), 1),
        FitOptions {
            method: Method::Winclip,
            support_views: SupportViews::Rotations,
            ..FitOptions::default()
        },
        &mut |_| adp_api::requests::Flow::Continue,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("rotations") && err.contains("visual method only"), "{err}");
}

/// The rotated memory and its decision are the same through both plugins (the turns are the
/// host's; each backend only sees more photos).
#[cfg(feature = "tch")]
#[test]
fn visual_support_rotations_agree_across_plugins() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image visual test") else {
        return;
    };
    let support = adp_host::images::read_resized(&pngs(root.join("train/good"), 2), 224).unwrap();
    let fit = |crate_name: &str| {
        let backend = adp_conformance::plugin(crate_name);
        let model = VisualModel::open(&*backend, &backbone(), Device::Cpu).unwrap();
        let options = FitOptions {
            method: Method::Visual,
            support_views: SupportViews::Rotations,
            ..FitOptions::default()
        };
        adp_host::detect::fit::fit_visual(&model, &support, &options, &mut |_| adp_api::requests::Flow::Continue)
            .unwrap()
    };
    let (candle, tch) = (fit("adp_plugin_candle"), fit("adp_plugin_tch"));
    adp_conformance::tolerance::assert_close(
        "rotated memory, tch against candle",
        &tch.memories[0].features,
        &candle.memories[0].features,
        adp_conformance::tolerance::FORWARD,
    );
    let threshold = |d: &DetectorFile| d.header.decision.as_ref().unwrap().threshold;
    let (a, b) = (threshold(&tch), threshold(&candle));
    assert!(
        (a - b).abs() <= adp_conformance::tolerance::FORWARD * b.abs(),
        "threshold {a} vs {b}"
    );
}

/// The README's main command: no checkpoint given, the default backbone and plugin.
#[test]
fn adp_fit_and_score_work_out_of_the_box() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image visual test") else {
        return;
    };
    backbone();
    let dir = tempfile::tempdir().unwrap();
    let support = dir.path().join("support");
    std::fs::create_dir(&support).unwrap();
    for f in pngs(root.join("train/good"), 3) {
        std::os::unix::fs::symlink(&f, support.join(f.file_name().unwrap())).unwrap();
    }
    let det = dir.path().join("bottle.adp");
    let plugins = build_dir();
    let out = adp(&[
        "fit",
        "--plugin-dir",
        plugins.to_str().unwrap(),
        "--support",
        support.to_str().unwrap(),
        "-o",
        det.to_str().unwrap(),
    ]);
    let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (line["method"].as_str(), line["support"].as_u64()),
        (Some("visual"), Some(3))
    );

    let maps = dir.path().join("maps");
    let (files, _) = test_set(&root);
    let mut args = vec![
        "score",
        "--plugin-dir",
        plugins.to_str().unwrap(),
        "--detector",
        det.to_str().unwrap(),
        "--maps",
        maps.to_str().unwrap(),
    ];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = adp(&args);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), files.len());
    for (l, f) in lines.iter().zip(&files) {
        assert_eq!(l["path"].as_str(), f.to_str());
        assert!(l["score"].as_f64().is_some_and(f64::is_finite));
        let map = image::open(l["map"].as_str().unwrap()).unwrap();
        let src = image::open(f).unwrap();
        assert_eq!((map.width(), map.height()), (src.width(), src.height()));
    }
}

/// `adp bench` times each plugin on the same images in one run and gives ratios to the first.
#[test]
fn adp_bench_reports_ratios_to_the_first_plugin() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image visual test") else {
        return;
    };
    backbone();
    let plugins = build_dir();
    let mut args = vec!["bench", "--plugin-dir", plugins.to_str().unwrap(), "--plugin", "candle"];
    if cfg!(feature = "tch") {
        args.extend(["--plugin", "tch"]);
    } else {
        args.extend(["--plugin", "candle"]);
    }
    let files = pngs(root.join("train/good"), 3);
    args.extend(["--shots", "2", "--repeats", "2", "--quiet"]);
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = adp(&args);
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(rows[0]["plugin"], "candle");
    assert_eq!(rows[0]["ratio"].as_f64(), Some(1.0), "the first plugin is the peer");
    for r in &rows {
        assert_eq!(
            (
                r["row"].as_str(),
                r["items"].as_u64(),
                r["repeats"].as_u64(),
                r["per"].as_str()
            ),
            (Some("visual"), Some(1), Some(2), Some("photo")),
            "{r}"
        );
        let (f, a, t) = (
            r["parts"]["features"].as_f64().unwrap(),
            r["parts"]["association"].as_f64().unwrap(),
            r["ms"].as_f64().unwrap(),
        );
        assert!(f > 0.0 && a > 0.0 && (f + a - t).abs() < 1e-9 * t.max(1.0), "{r}");
        // Each row ran in a process of its own, which reports its peak memory (Linux).
        if cfg!(target_os = "linux") {
            assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0, "{r}");
        }
        let ratio = r["ratio"].as_f64().unwrap();
        assert!((ratio - t / rows[0]["ms"].as_f64().unwrap()).abs() < 1e-9, "{r}");
    }

    let bin = build_dir().join("adp");
    let out = Command::new(bin)
        .args(["bench", "--plugin-dir", plugins.to_str().unwrap(), "--shots", "3"])
        .args(files.iter())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("more images (3) than --shots (3)"), "{err}");
}
