//! Host end-to-end test (not backend conformance): `adp_host`'s pipeline over candle.
//!
//! The ADP pipeline end to end on the fixture checkpoints with real photos from
//! `../shared/data/mvtec_ad/bottle` (the untrained tiny models make the scores meaningless; this
//! checks that every stage runs, the detector file round-trips, and a rerun gives the same numbers).
use adp_api::{ClipCheckpoint, Device, ImageBatch};
use adp_conformance::goldens::{clip_checkpoint, diffusion_spec};
use adp_conformance::{pngs, shared_data};
use adp_host::detect::DetectorFile;
use adp_host::detect::{score, Checkpoints, FitOptions, Fitter, Method, Stage};

fn options(method: Method) -> FitOptions {
    FitOptions {
        method,
        steps: 2,
        batch_size: 2,
        ddim_steps: 2,
        pseudo_per_image: 1,
        validation_pseudo: 2,
        seed: 5,
        ..FitOptions::default()
    }
}

#[test]
fn fit_score_save_load_and_rerun_on_real_photos() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image pipeline test") else {
        return;
    };
    let backend = adp_backend_candle::CandleBackend::new();
    let (clip, sd) = (clip_checkpoint(), diffusion_spec(false));
    let support = ImageBatch::read_files(&pngs(root.join("train/good"), 2)).unwrap();
    let tests: Vec<ImageBatch> = [root.join("test/good"), root.join("test/broken_large")]
        .into_iter()
        .map(|d| ImageBatch::read_files(&pngs(d, 1)).unwrap())
        .collect();
    let fitter = Fitter {
        backend: &backend,
        clip: &clip,
        sd: Some(&sd),
        options: options(Method::Adp),
    };
    let mut stages = Vec::new();
    let detector = fitter
        .fit(&support, &mut |s| {
            stages.push(match s {
                Stage::Learning { concept, .. } => format!("learn {concept}"),
                Stage::Synthesis { .. } => "synthesis".into(),
                Stage::Memories => "memories".into(),
            });
            adp_api::requests::Flow::Continue
        })
        .unwrap();
    assert!(
        stages.contains(&"learn c_n".to_string())
            && stages.contains(&"learn c_a".to_string())
            && stages.contains(&"synthesis".to_string())
    );
    assert_eq!(detector.header.concepts.len(), 2);
    assert_eq!(detector.header.weights.len(), 2);
    assert!(detector.header.weights.iter().all(|w| (0.0..=2.0).contains(w)));
    assert_eq!(detector.memories.len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bottle.adp");
    detector.save(&path).unwrap();
    let loaded = DetectorFile::load(&path).unwrap();
    assert_eq!(loaded, detector);

    let scores = score(&backend, &Checkpoints::clip(&clip), &loaded, &tests, Device::Cpu).unwrap();
    assert_eq!(scores.len(), 2);
    for s in &scores {
        assert!((0.0..=1.0).contains(&s.score), "{s:?}");
        assert_eq!(s.map.len(), s.height * s.width);
        assert!(s.map.iter().all(|v| v.is_finite()));
    }
    let again = fitter
        .fit(&support, &mut |_| adp_api::requests::Flow::Continue)
        .unwrap();
    assert_eq!(again, detector, "same seed, different detector");

    // Another CLIP checkpoint is refused by name.
    let other = tempfile::tempdir().unwrap();
    let paths = adp_host::fixtures::write_all(other.path(), 1, "tiny").unwrap();
    let err = score(
        &backend,
        &Checkpoints::clip(&ClipCheckpoint::from_dir(&paths.clip).unwrap()),
        &loaded,
        &tests,
        Device::Cpu,
    )
    .unwrap_err();
    assert!(err.to_string().contains("another CLIP checkpoint"), "{err}");
}

#[test]
fn winclip_needs_no_diffusion_and_adp_label_needs_a_label() {
    let Some(root) = shared_data("mvtec_ad/bottle", "the real-image pipeline test") else {
        return;
    };
    let backend = adp_backend_candle::CandleBackend::new();
    let clip = clip_checkpoint();
    let support = ImageBatch::read_files(&pngs(root.join("train/good"), 1)).unwrap();
    let mut o = options(Method::Winclip);
    o.label = Some("bottle".into());
    let d = Fitter {
        backend: &backend,
        clip: &clip,
        sd: None,
        options: o,
    }
    .fit(&support, &mut |_| adp_api::requests::Flow::Continue)
    .unwrap();
    assert_eq!((d.header.method.as_str(), d.header.concepts.len()), ("winclip", 0));
    let err = Fitter {
        backend: &backend,
        clip: &clip,
        sd: None,
        options: options(Method::Adp),
    }
    .fit(&support, &mut |_| adp_api::requests::Flow::Continue)
    .unwrap_err();
    assert!(err.to_string().contains("needs a Stable Diffusion checkpoint"), "{err}");
    let empty = ImageBatch::new(adp_api::Tensor::zeros(vec![0, 3, 8, 8])).unwrap();
    let err = Fitter {
        backend: &backend,
        clip: &clip,
        sd: None,
        options: options(Method::Winclip),
    }
    .fit(&empty, &mut |_| adp_api::requests::Flow::Continue)
    .unwrap_err();
    assert_eq!(err, adp_api::Error::EmptySupportSet);
}
