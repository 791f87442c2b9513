//! The in-process test fixture backend, recording what the pipeline asks of it: every part
//! opened, every batch encoded, every prompt encoded, every concept learned and the support set
//! it was learned on. Shared by the host's integration tests.
#![allow(dead_code)] // each test file uses the part of the log it checks
use adp_api::requests::{self, DenseFeatures, EncoderDims, Prompt, StateProbability, StateProbabilityRequest};
use adp_api::{
    Backend, BackendInfo, ClipCheckpoint, ConceptOptimizer, Device, DiffusionSpec, ImageBatch, LatentDiffuser, Result,
    Scorer, Tensor, TextImageEncoder,
};
use adp_plugin_test_fixture::{dummy_specs, FixtureBackend};
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Log {
    pub parts: Vec<&'static str>,
    pub encoded: Vec<ImageBatch>,
    pub prompts: Vec<String>,
    /// The concepts learned, in order.
    pub learned: Vec<String>,
    /// Every batch the diffusion model encoded.
    pub learned_on: Vec<ImageBatch>,
}

/// The fixture backend, recording into a shared [`Log`].
#[derive(Clone, Default)]
pub struct Recording(Arc<Mutex<Log>>);

impl Recording {
    fn record(&self, f: impl FnOnce(&mut Log)) {
        f(&mut self.0.lock().unwrap())
    }
    fn part(&self, name: &'static str) {
        self.record(|l| l.parts.push(name));
    }
    pub fn log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.0.lock().unwrap())
    }
}

struct Encoder(Box<dyn TextImageEncoder>, Recording);

impl TextImageEncoder for Encoder {
    fn dims(&self) -> EncoderDims {
        self.0.dims()
    }
    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
        self.1.record(|l| l.encoded.push(images.clone()));
        self.0.image_embeddings(images)
    }
    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        self.1.record(|l| l.encoded.push(images.clone()));
        self.0.dense_features(images, window_sizes)
    }
    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        self.1
            .record(|l| l.prompts.extend(prompts.iter().map(|p| p.text.clone())));
        self.0.text_embeddings(prompts)
    }
    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        self.0.token_embedding(word)
    }
    fn state_probability(&self, request: &StateProbabilityRequest) -> Result<StateProbability> {
        self.0.state_probability(request)
    }
}

struct Diffuser(Box<dyn LatentDiffuser>, Recording);

/// Concept learning runs over the fit's own encoder and diffuser, so it is seen here: each
/// batch the diffusion model encodes (the support photos, at its size), and each loss with a
/// gradient, whose placeholder names the concept being learned.
impl LatentDiffuser for Diffuser {
    fn dims(&self) -> requests::DiffuserDims {
        self.0.dims()
    }
    fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor> {
        self.1.record(|l| l.learned_on.push(images.clone()));
        self.0.vae_encode(images)
    }
    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch> {
        self.0.vae_decode(latents)
    }
    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        self.0.text_conditioning(prompts)
    }
    fn unet_prediction(&self, request: &requests::UnetRequest) -> Result<Tensor> {
        self.0.unet_prediction(request)
    }
    fn denoising_loss(&self, request: &requests::DenoisingLossRequest) -> Result<requests::ValueAndGrad> {
        if let Some(placeholder) = &request.gradient_of {
            let name = placeholder.trim_start_matches('<').trim_end_matches('>').to_string();
            // One entry per learning: its steps follow each other, and the pipeline never learns
            // one concept twice in a row (c_n, then c_a; each fit of an eval anew).
            self.1.record(|l| {
                if l.learned.last() != Some(&name) {
                    l.learned.push(name);
                }
            });
        }
        self.0.denoising_loss(request)
    }
    fn img2img(&self, request: &requests::Img2ImgRequest) -> Result<ImageBatch> {
        self.0.img2img(request)
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
        Ok(Box::new(Diffuser(
            FixtureBackend.latent_diffuser(sd, device)?,
            self.clone(),
        )))
    }
    fn concept_optimizer(
        &self,
        clip: &ClipCheckpoint,
        sd: &DiffusionSpec,
        device: Device,
    ) -> Result<Box<dyn ConceptOptimizer>> {
        self.part("concept_optimizer");
        FixtureBackend.concept_optimizer(clip, sd, device)
    }
    fn scorer(&self, device: Device) -> Result<Box<dyn Scorer>> {
        self.part("scorer");
        FixtureBackend.scorer(device)
    }
}

/// The fixture's checkpoint specs with the config and weight files they name present (empty:
/// the fixture reads none, but a fit records their hashes as the concepts' provenance);
/// CLIP input 4×4.
pub fn specs(dir: &Path) -> (ClipCheckpoint, DiffusionSpec) {
    let (mut clip, mut sd) = dummy_specs();
    clip.config.vision_cfg.image_size = 4; // the fixture encoder's input size
    clip.config_path = dir.join("open_clip_config.json");
    clip.weights = dir.join("open_clip_model.safetensors");
    sd.root = dir.join("sd");
    let files = [
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
    ];
    for file in [clip.config_path.clone(), clip.weights.clone()]
        .into_iter()
        .chain(files.map(|f| sd.root.join(f)))
    {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"").unwrap();
    }
    (clip, sd)
}
