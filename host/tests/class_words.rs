//! Class words (SPEC §6/§7) on the in-process test fixture: `adp eval` gives each category its
//! own word (the folder name with `_` read as a space, or a `--label CATEGORY=WORD` override),
//! and `adp-label` without a word is refused before anything is loaded or learned.
mod common;

use adp_api::requests::Flow;
use adp_api::ImageBatch;
use adp_host::detect::fit::fit_files;
use adp_host::detect::{Checkpoints, FitOptions, Fitter, Method};
use adp_host::eval::{self, EvalOptions};
use common::{specs, Recording};
use std::path::{Path, PathBuf};

fn png(path: &Path, grey: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([grey, (x * 32) as u8, (y * 32) as u8]))
        .save(path)
        .unwrap();
}

fn quick(method: Method, label: Option<&str>) -> FitOptions {
    FitOptions {
        method,
        label: label.map(str::to_string),
        steps: 2,
        batch_size: 1,
        ddim_steps: 2,
        pseudo_per_image: 1,
        validation_pseudo: 2,
        window_sizes: vec![2], // the fixture's grid is 2×2
        ..FitOptions::default()
    }
}

#[test]
fn adp_label_without_a_word_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, sd) = specs(dir.path());
    let support = ImageBatch::read_files(&[{
        let p = dir.path().join("good.png");
        png(&p, 120);
        p
    }])
    .unwrap();
    for label in [None, Some(""), Some("  ")] {
        let backend = Recording::default();
        let mut stages = 0;
        let fitter = Fitter {
            backend: &backend,
            clip: &clip,
            sd: Some(&sd),
            options: quick(Method::AdpLabel, label),
        };
        let e = fitter
            .fit(&support, &mut |_| {
                stages += 1;
                Flow::Continue
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("adp-label needs the class word"), "{label:?}: {e}");
        assert_eq!(stages, 0, "{label:?}: no stage ran");
        backend.log(|l| {
            assert!(
                l.parts.is_empty(),
                "{label:?}: no backend part opened, got {:?}",
                l.parts
            );
            assert!(l.learned.is_empty(), "{label:?}: nothing learned, got {:?}", l.learned);
        });

        // Through the file path too: refused before the support files are even read.
        let missing = [dir.path().join("no-such-photo.png")];
        let e = fit_files(
            &backend,
            &Checkpoints::clip(&clip),
            Some(&sd),
            &missing,
            quick(Method::AdpLabel, label),
            &mut |_| Flow::Continue,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("adp-label needs the class word"), "{label:?}: {e}");
        backend.log(|l| assert!(l.parts.is_empty()));
    }

    // With its word the same fit runs through: the stub is a working backend, and the word is
    // in the prompts.
    let backend = Recording::default();
    let fitter = Fitter {
        backend: &backend,
        clip: &clip,
        sd: Some(&sd),
        options: quick(Method::AdpLabel, Some("metal plate")),
    };
    let detector = fitter.fit(&support, &mut |_| Flow::Continue).unwrap();
    assert_eq!(detector.header.method, "adp-label");
    backend.log(|l| {
        assert_eq!(l.learned, ["c_n", "c_a"]);
        assert!(
            l.prompts.iter().any(|p| p.ends_with("damaged metal plate")),
            "{:?}",
            l.prompts
        );
    });
}

/// `<root>/<category>/{train/good,test/good,test/crack}` with one small photo each.
fn dataset(root: &Path, categories: &[&str]) {
    for (i, c) in categories.iter().enumerate() {
        let c = root.join(c);
        png(&c.join("train/good/000.png"), 100 + i as u8);
        png(&c.join("test/good/000.png"), 101 + i as u8);
        png(&c.join("test/crack/000.png"), 200);
    }
}

fn eval_options(data: &Path, out: PathBuf, categories: &[&str], labels: &[&str]) -> EvalOptions {
    EvalOptions {
        data: data.to_path_buf(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        shots: vec![1],
        seeds: vec![0],
        methods: vec![Method::Winclip],
        fit: quick(Method::Winclip, None),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        limit: None,
        overlays: 0,
        out,
    }
}

/// The words in the state prompts ("… flawless WORD", "… damaged WORD") the pipeline encoded.
fn words(backend: &Recording) -> std::collections::BTreeSet<String> {
    backend.log(|l| {
        l.prompts
            .iter()
            .filter_map(|p| {
                p.split_once("flawless ")
                    .or_else(|| p.split_once("damaged "))
                    .map(|(_, w)| w.to_string())
            })
            .collect()
    })
}

#[test]
fn eval_gives_each_category_its_own_word() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, _) = specs(dir.path());
    let data = dir.path().join("data");
    let cats = ["metal_plate", "pipe_fryum"];
    dataset(&data, &cats);
    let checkpoints = Checkpoints::clip(&clip);

    // Default: each folder name with `_` read as a space.
    let backend = Recording::default();
    let o = eval_options(&data, dir.path().join("out1"), &cats, &[]);
    let report = eval::run(&backend, &checkpoints, None, &o, &mut |_, _| Flow::Continue).unwrap();
    assert_eq!(report.runs.len(), 2);
    assert_eq!(words(&backend), ["metal plate", "pipe fryum"].map(String::from).into());

    // An override for one category; the other keeps its folder name.
    let backend = Recording::default();
    let o = eval_options(&data, dir.path().join("out2"), &cats, &["metal_plate=steel sheet"]);
    eval::run(&backend, &checkpoints, None, &o, &mut |_, _| Flow::Continue).unwrap();
    assert_eq!(words(&backend), ["pipe fryum", "steel sheet"].map(String::from).into());

    // A bare word for two categories: refused before anything runs or is written.
    let backend = Recording::default();
    let out = dir.path().join("out3");
    let o = eval_options(&data, out.clone(), &cats, &["object"]);
    let e = eval::run(&backend, &checkpoints, None, &o, &mut |_, _| Flow::Continue)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`object` has no category") && e.contains("metal_plate, pipe_fryum"),
        "{e}"
    );
    backend.log(|l| assert!(l.parts.is_empty() && l.prompts.is_empty()));
    assert!(!out.exists());

    // A bare word for one category is that category's word.
    let backend = Recording::default();
    let o = eval_options(&data, dir.path().join("out4"), &["metal_plate"], &["plate"]);
    eval::run(&backend, &checkpoints, None, &o, &mut |_, _| Flow::Continue).unwrap();
    assert_eq!(words(&backend), ["plate"].map(String::from).into());
}
