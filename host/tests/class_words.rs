//! Class words (SPEC §6/§7) on the in-process test fixture: `adp eval` gives each category its
//! own word (the folder name with `_` read as a space, or a `--label CATEGORY=WORD` override),
//! and `adp-label` without a word is refused before anything is loaded or learned.
use adp_api::requests::{self, DenseFeatures, EncoderDims, Flow, Prompt, StateProbability, StateProbabilityRequest};
use adp_api::{
    Backend, BackendInfo, ClipCheckpoint, Concept, ConceptOptimizer, Device, DiffusionSpec, ImageBatch, LatentDiffuser,
    Result, Scorer, Tensor, TextImageEncoder,
};
use adp_host::detect::fit::fit_files;
use adp_host::detect::{Checkpoints, FitOptions, Fitter, Method};
use adp_host::eval::{self, EvalOptions};
use adp_plugin_test_fixture::{dummy_specs, FixtureBackend};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What the pipeline asked of the backend: every part opened, every concept learned, every
/// prompt encoded.
#[derive(Default)]
struct Log {
    parts: Vec<&'static str>,
    learned: Vec<String>,
    prompts: Vec<String>,
}

/// The fixture backend, recording into a shared [`Log`].
#[derive(Clone, Default)]
struct Recording(Arc<Mutex<Log>>);

impl Recording {
    fn part(&self, name: &'static str) {
        self.0.lock().unwrap().parts.push(name);
    }
    fn log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.0.lock().unwrap())
    }
}

struct Encoder(Box<dyn TextImageEncoder>, Recording);

impl TextImageEncoder for Encoder {
    fn dims(&self) -> EncoderDims {
        self.0.dims()
    }
    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
        self.0.image_embeddings(images)
    }
    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        self.0.dense_features(images, window_sizes)
    }
    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        self.1
             .0
            .lock()
            .unwrap()
            .prompts
            .extend(prompts.iter().map(|p| p.text.clone()));
        self.0.text_embeddings(prompts)
    }
    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        self.0.token_embedding(word)
    }
    fn state_probability(&self, request: &StateProbabilityRequest) -> Result<StateProbability> {
        self.0.state_probability(request)
    }
}

struct Optimizer(Box<dyn ConceptOptimizer>, Recording);

impl ConceptOptimizer for Optimizer {
    fn learn(
        &self,
        request: &requests::LearnRequest,
        progress: &mut dyn FnMut(&requests::Progress) -> Flow,
    ) -> Result<Concept> {
        self.1 .0.lock().unwrap().learned.push(request.name.clone());
        self.0.learn(request, progress)
    }
}

impl Backend for Recording {
    fn info(&self) -> BackendInfo {
        FixtureBackend.info()
    }
    fn text_image_encoder(&self, clip: &ClipCheckpoint, device: Device) -> Result<Box<dyn TextImageEncoder>> {
        self.part("text_image_encoder");
        Ok(Box::new(Encoder(
            FixtureBackend.text_image_encoder(clip, device)?,
            self.clone(),
        )))
    }
    fn latent_diffuser(&self, sd: &DiffusionSpec, device: Device) -> Result<Box<dyn LatentDiffuser>> {
        self.part("latent_diffuser");
        FixtureBackend.latent_diffuser(sd, device)
    }
    fn concept_optimizer(
        &self,
        clip: &ClipCheckpoint,
        sd: &DiffusionSpec,
        device: Device,
    ) -> Result<Box<dyn ConceptOptimizer>> {
        self.part("concept_optimizer");
        Ok(Box::new(Optimizer(
            FixtureBackend.concept_optimizer(clip, sd, device)?,
            self.clone(),
        )))
    }
    fn scorer(&self, device: Device) -> Result<Box<dyn Scorer>> {
        self.part("scorer");
        FixtureBackend.scorer(device)
    }
}

/// The fixture's checkpoint specs, with the weight files they name present (empty: the fixture
/// reads none, but the detector records their hashes).
fn specs(dir: &Path) -> (ClipCheckpoint, DiffusionSpec) {
    let (mut clip, mut sd) = dummy_specs();
    clip.config.vision_cfg.image_size = 4; // the fixture encoder's input size
    clip.weights = dir.join("open_clip_model.safetensors");
    std::fs::write(&clip.weights, b"").unwrap();
    sd.root = dir.join("sd");
    std::fs::create_dir_all(sd.root.join("unet")).unwrap();
    std::fs::write(sd.root.join("unet/diffusion_pytorch_model.safetensors"), b"").unwrap();
    (clip, sd)
}

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
