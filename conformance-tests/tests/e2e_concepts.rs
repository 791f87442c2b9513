//! Host end-to-end test (not backend conformance): concept files (SPEC §7) through the `adp`
//! binary. `adp fit --save-concepts` writes the learned concepts with their provenance; `adp fit
//! --concepts` reuses them, skipping steps 1–2, on the same backend or another, and refuses a file
//! learned on other checkpoints or a broken one, naming the file. Tiny fixture models; photos
//! generated here.
use adp_conformance::goldens::fixtures;
use adp_conformance::{adp, build_dir};
use adp_host::detect::DetectorFile;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `n` photos of a pattern shifted by `first`, `k`, with a magenta blob or not.
fn photos(dir: &Path, name: &str, (first, n): (u32, u32), blob: bool) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    for k in first..first + n {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            let hit = blob && (10..22).contains(&x) && (8..20).contains(&y);
            match hit {
                true => image::Rgb([250, 10, 200]),
                false => image::Rgb([(x * 5 + k * 30) as u8, (y * 6) as u8, ((x + y) * 3) as u8]),
            }
        });
        img.save(folder.join(format!("{k:03}.png"))).unwrap();
    }
    folder
}

/// `adp fit` on the fixtures with tiny settings, plus `extra`.
fn fit_args(plugin: &str, method: &str, support: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let f = fixtures();
    let mut args: Vec<String> = [
        "fit",
        "--plugin",
        plugin,
        "--plugin-dir",
        build_dir().to_str().unwrap(),
        "--clip",
        f.clip.to_str().unwrap(),
        "--method",
        method,
        "--steps",
        "3",
        "--batch-size",
        "2",
        "--ddim-steps",
        "2",
        "--validation-pseudo",
        "2",
        "--quiet",
        "--support",
        support.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> String {
    adp(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The stderr of a run that must fail.
fn fails(args: &[String]) -> String {
    let out = Command::new(build_dir().join("adp")).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "adp {args:?} succeeded");
    err
}

fn sd() -> String {
    fixtures().sd_epsilon.to_str().unwrap().to_string()
}

#[test]
fn saved_concepts_carry_provenance_and_refit_to_the_same_detector() {
    let dir = tempfile::tempdir().unwrap();
    let good = photos(dir.path(), "good", (0, 2), false);
    let (learned, reused, file) = (
        dir.path().join("learned.adp"),
        dir.path().join("reused.adp"),
        dir.path().join("c.safetensors"),
    );
    let line = run(&fit_args(
        "candle",
        "adp",
        &good,
        &learned,
        &["--sd", &sd(), "--save-concepts", file.to_str().unwrap()],
    ));
    assert!(line.contains("c.safetensors"), "{line}");
    let concepts = adp_api::concept::load(&file).unwrap();
    let names: Vec<&str> = concepts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["c_n", "c_a"]);
    let clip_sha = adp_host::detect::file::file_hash(&fixtures().clip.join("open_clip_model.safetensors")).unwrap();
    let unet = fixtures().sd_epsilon.join("unet/diffusion_pytorch_model.safetensors");
    for c in &concepts {
        let p = &c.provenance;
        assert_eq!((p.backend.as_str(), p.steps), ("candle", 3));
        assert_eq!(p.loss_history.len(), 3, "{}: one loss per step", c.name);
        assert_eq!(p.checkpoints["clip"], clip_sha);
        assert_eq!(
            p.checkpoints["diffusion"],
            adp_host::detect::file::file_hash(&unet).unwrap()
        );
        assert!(
            p.checkpoints.contains_key("diffusion/text_encoder/config.json"),
            "{:?}",
            p.checkpoints
        );
        assert!(
            p.checkpoints.contains_key("clip/open_clip_config.json"),
            "{:?}",
            p.checkpoints
        );
        for key in [
            "learning_rate",
            "scale_lr_by_batch",
            "effective_learning_rate",
            "batch_size",
            "fit",
        ] {
            assert!(p.hyperparameters.contains_key(key), "{}: no {key}", c.name);
        }
    }

    // Reused on the same backend: steps 1–2 are skipped, and what follows computes what the
    // learning fit computed after them (its own seeded draws), up to reordered float sums.
    run(&fit_args(
        "candle",
        "adp",
        &good,
        &reused,
        &["--sd", &sd(), "--concepts", file.to_str().unwrap()],
    ));
    let (a, b) = (
        DetectorFile::load(&learned).unwrap(),
        DetectorFile::load(&reused).unwrap(),
    );
    assert_eq!(a.header.concepts, b.header.concepts, "the file's concepts, bit for bit");
    assert_eq!(a.header.checkpoints, b.header.checkpoints);
    same_detector("reused on candle", &a, &b, adp_conformance::tolerance::REORDERING);

    // `cn` reuses c_n without the diffusion model.
    let cn = dir.path().join("cn.adp");
    run(&fit_args(
        "candle",
        "cn",
        &good,
        &cn,
        &["--concepts", file.to_str().unwrap()],
    ));
    let cn = DetectorFile::load(&cn).unwrap();
    assert_eq!(cn.header.concepts, concepts[..1].to_vec());
}

/// Two detectors agree within `rel`: weights, prototypes, memories, threshold.
fn same_detector(what: &str, a: &DetectorFile, b: &DetectorFile, rel: f32) {
    use adp_api::Tensor;
    use adp_conformance::tolerance::assert_close;
    let t = |v: &[f32]| Tensor::new(vec![v.len()], v.to_vec()).unwrap();
    assert_close(
        &format!("{what}: weights"),
        &t(&b.header.weights),
        &t(&a.header.weights),
        rel,
    );
    let (pa, pb) = (a.prototypes.as_ref().unwrap(), b.prototypes.as_ref().unwrap());
    assert_close(
        &format!("{what}: normal prototype"),
        &t(&pb.normal),
        &t(&pa.normal),
        rel,
    );
    assert_close(
        &format!("{what}: anomalous prototype"),
        &t(&pb.anomalous),
        &t(&pa.anomalous),
        rel,
    );
    assert_eq!(a.memories.len(), b.memories.len());
    for (ma, mb) in a.memories.iter().zip(&b.memories) {
        assert_close(
            &format!("{what}: memory {:?}", ma.kind),
            &mb.features,
            &ma.features,
            rel,
        );
    }
    let th = |d: &DetectorFile| t(&[d.header.decision.as_ref().unwrap().threshold]);
    assert_close(&format!("{what}: threshold"), &th(b), &th(a), rel);
}

#[test]
fn concepts_of_other_checkpoints_and_broken_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = photos(dir.path(), "good", (0, 2), false);
    let file = dir.path().join("c.safetensors");
    let out = dir.path().join("d.adp");
    run(&fit_args(
        "candle",
        "cn",
        &good,
        &out,
        &["--sd", &sd(), "--save-concepts", file.to_str().unwrap()],
    ));
    let reuse = |clip: &Path, file: &Path| {
        let mut args = fit_args("candle", "cn", &good, &out, &["--concepts", file.to_str().unwrap()]);
        let at = args.iter().position(|a| a == "--clip").unwrap();
        args[at + 1] = clip.to_str().unwrap().to_string();
        fails(&args)
    };

    // Another CLIP checkpoint (the fixtures of another seed): both hashes and the file named.
    let other = tempfile::tempdir().unwrap();
    let paths = adp_host::fixtures::write_all(other.path(), 1, "tiny").unwrap();
    let (theirs, ours) = (
        adp_host::detect::file::file_hash(&fixtures().clip.join("open_clip_model.safetensors")).unwrap(),
        adp_host::detect::file::file_hash(&paths.clip.join("open_clip_model.safetensors")).unwrap(),
    );
    let err = reuse(&paths.clip, &file);
    assert!(
        err.contains("c.safetensors") && err.contains(&theirs) && err.contains(&ours),
        "{err}"
    );
    // Another diffusion checkpoint, where one is given.
    let mut args = fit_args(
        "candle",
        "adp",
        &good,
        &out,
        &["--concepts", file.to_str().unwrap(), "--sd"],
    );
    args.push(paths.sd_epsilon.to_str().unwrap().into());
    let err = fails(&args);
    assert!(
        err.contains("c.safetensors") && err.contains("another checkpoint"),
        "{err}"
    );

    let bytes = std::fs::read(&file).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 3]).unwrap();
    let err = reuse(&fixtures().clip, &cut);
    assert!(err.contains("cut.safetensors"), "{err}");

    // The right checkpoints, a vector of the wrong width.
    let mut c = adp_api::Concept::load(&file).unwrap();
    c.vector.truncate(c.vector.len() - 1);
    let narrow = dir.path().join("narrow.safetensors");
    c.save(&narrow).unwrap();
    let err = reuse(&fixtures().clip, &narrow);
    assert!(err.contains("narrow.safetensors") && err.contains("wide"), "{err}");

    // A file without the method's concept.
    let err = fails(&fit_args(
        "candle",
        "ti",
        &good,
        &out,
        &["--concepts", file.to_str().unwrap()],
    ));
    assert!(err.contains("no concept `c_ti`"), "{err}");
    // A method that learns nothing.
    let err = fails(&fit_args(
        "candle",
        "winclip",
        &good,
        &out,
        &["--concepts", file.to_str().unwrap()],
    ));
    assert!(err.contains("learns no concepts"), "{err}");
}

/// SPEC §7: a concept learned on one backend scores the same on the other. Each backend learns
/// concepts; the other reuses them, and both fit and score with them. The fits differ only in
/// the backend's forward passes (CLIP, and the DDIM img2img of the pseudo-validation set), so the
/// detectors and scores agree within [`SAMPLED`](adp_conformance::tolerance::SAMPLED), the bound of
/// sampled images.
#[cfg(feature = "tch")]
#[test]
fn a_concept_learned_on_one_backend_scores_the_same_on_the_other() {
    use adp_api::{Device, ImageBatch, Tensor};
    use adp_conformance::tolerance::{assert_close, SAMPLED};
    use adp_host::detect::{score, Checkpoints};
    let dir = tempfile::tempdir().unwrap();
    let good = photos(dir.path(), "good", (0, 2), false);
    let tests = [
        photos(dir.path(), "test_good", (3, 1), false),
        photos(dir.path(), "test_bad", (4, 1), true),
    ];
    let tests: Vec<ImageBatch> = tests
        .iter()
        .map(|d| ImageBatch::read_files(&adp_conformance::pngs(d.clone(), 1)).unwrap())
        .collect();
    let clip = adp_conformance::goldens::clip_checkpoint();
    let p = |n: &str| dir.path().join(n);
    for (learner, other) in [("candle", "tch"), ("tch", "candle")] {
        let file = p(&format!("{learner}.safetensors"));
        let (here, there) = (p(&format!("{learner}.adp")), p(&format!("{learner}-on-{other}.adp")));
        run(&fit_args(
            learner,
            "adp",
            &good,
            &here,
            &["--sd", &sd(), "--save-concepts", file.to_str().unwrap()],
        ));
        let saved = adp_api::concept::load(&file).unwrap();
        assert_eq!(saved.len(), 2);
        assert!(saved.iter().all(|c| c.provenance.backend == learner));
        run(&fit_args(
            other,
            "adp",
            &good,
            &there,
            &["--sd", &sd(), "--concepts", file.to_str().unwrap()],
        ));
        let (a, b) = (DetectorFile::load(&here).unwrap(), DetectorFile::load(&there).unwrap());
        assert_eq!(a.header.concepts, b.header.concepts, "the file's concepts, bit for bit");
        assert_eq!(b.header.backend, other);
        let what = format!("learned on {learner}, fitted on {other}");
        same_detector(&what, &a, &b, SAMPLED);
        let plugin = |name: &str| adp_conformance::plugin(&format!("adp_plugin_{name}"));
        let (pa, pb) = (plugin(learner), plugin(other));
        let sa = score(&*pa, &Checkpoints::clip(&clip), &a, &tests, Device::Cpu).unwrap();
        let sb = score(&*pb, &Checkpoints::clip(&clip), &b, &tests, Device::Cpu).unwrap();
        let scores = |s: &[adp_host::detect::ImageScore]| {
            Tensor::new(vec![s.len()], s.iter().map(|x| x.score).collect()).unwrap()
        };
        assert_close(&format!("{what}: scores"), &scores(&sb), &scores(&sa), SAMPLED);
        for (x, y) in sa.iter().zip(&sb) {
            let map = |s: &adp_host::detect::ImageScore| Tensor::new(vec![s.map.len()], s.map.clone()).unwrap();
            assert_close(&format!("{what}: anomaly map"), &map(y), &map(x), SAMPLED);
        }
    }
}
