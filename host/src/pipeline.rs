//! The ADP pipeline over the traits (SPEC §4–6): step 1 (normal-aware concept), step 2
//! (pseudo-anomalies by SDEdit, anomaly-aware concept), step 3 (self-tuning on a pseudo-validation
//! set, prototypes), reference memories; then scoring. The baselines run the same code path.
use crate::association::{anomaly_map, ReferenceMemories};
use crate::detector::{check_checkpoint, file_hash, DetectorFile, DetectorHeader, DETECTOR_FORMAT};
use crate::prompts::TEMPLATES;
use crate::prototypes::{final_score, image_features, language_score, prototypes, unweighted, weigh, ConceptToken, Prototypes};
use adp_api::preprocess::resize;
use adp_api::requests::*;
use adp_api::rng::SplitMix64;
use adp_api::{BackboneCheckpoint, Backend, ClipCheckpoint, Concept, Device, DiffusionSpec, Error, ImageBatch, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The method variants of SPEC §6–7, all on one code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ADP: both learned concepts, self-tuned.
    Adp,
    /// ADP_ℓ: the class word joins as a third concept.
    AdpLabel,
    /// WinCLIP+: hand-written state prompts, same reference association.
    Winclip,
    /// Naive textual inversion (diffusion loss only).
    Ti,
    /// The normal-aware concept alone.
    Cn,
    /// The anomaly-aware concept alone.
    Ca,
    /// No CLIP, no diffusion: reference association over a pretrained image backbone's patch
    /// features (EfficientNet-Lite), the out-of-the-box default.
    Visual,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Adp => "adp",
            Method::AdpLabel => "adp-label",
            Method::Winclip => "winclip",
            Method::Ti => "ti",
            Method::Cn => "cn",
            Method::Ca => "ca",
            Method::Visual => "visual",
        }
    }
    fn needs_diffusion(self) -> bool {
        !matches!(self, Method::Winclip | Method::Visual)
    }
    /// Whether the method runs on CLIP (all but `visual`).
    pub fn needs_clip(self) -> bool {
        self != Method::Visual
    }
}

/// Every hyperparameter of the SPEC, with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitOptions {
    pub method: Method,
    pub label: Option<String>,
    pub steps: u64,
    pub learning_rate: f32,
    pub scale_lr_by_batch: bool,
    pub batch_size: usize,
    pub weight_decay: f32,
    pub alpha_normal: f32,
    pub alpha_anomaly: f32,
    pub gamma: f32,
    pub strength: f32,
    pub guidance: f32,
    pub ddim_steps: usize,
    /// Pseudo-anomalies for step 2, per support image.
    pub pseudo_per_image: usize,
    /// L′: pseudo-anomalies of the pseudo-validation set (step 3).
    pub validation_pseudo: usize,
    pub window_sizes: Vec<usize>,
    pub seed: u64,
    pub device: Device,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            method: Method::Adp,
            label: None,
            steps: 3000,
            learning_rate: 5e-4,
            scale_lr_by_batch: false,
            batch_size: 4,
            weight_decay: 0.0,
            alpha_normal: 0.003,
            alpha_anomaly: 0.002,
            gamma: 0.8,
            strength: 0.5,
            guidance: 7.5,
            ddim_steps: 30,
            pseudo_per_image: 2,
            validation_pseudo: 20,
            window_sizes: vec![2, 3],
            seed: 0,
            device: Device::Cpu,
        }
    }
}

/// Where the pipeline stands, for progress bars.
#[derive(Debug, Clone)]
pub enum Stage {
    Learning { concept: String, progress: Progress },
    Synthesis { done: usize, total: usize },
    Memories,
}

/// A random resized crop (area 50–100 %, square), back at the original size.
fn random_resized_crop(images: &ImageBatch, rng: &mut SplitMix64) -> Result<ImageBatch> {
    let (h, w) = (images.height(), images.width());
    let mut out = Vec::with_capacity(images.pixels().len());
    for i in 0..images.len() {
        let area = 0.5 + 0.5 * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let side = ((area.sqrt() * h.min(w) as f64) as usize).max(1);
        let (top, left) = (rng.below((h - side + 1) as u64) as usize, rng.below((w - side + 1) as u64) as usize);
        let src = images.pixels().row(i);
        let crop: Vec<f32> = (0..3).flat_map(|c| (top..top + side).flat_map(move |y| (left..left + side).map(move |x| src[c * h * w + y * w + x]))).collect();
        let crop = ImageBatch::new(Tensor::new(vec![1, 3, side, side], crop)?)?;
        out.extend_from_slice(resize(&crop, h, w).pixels().data());
    }
    ImageBatch::new(Tensor::new(images.pixels().shape().to_vec(), out)?)
}

fn concat(batches: &[ImageBatch]) -> Result<ImageBatch> {
    let first = batches.first().ok_or_else(|| Error::invalid("images", "none"))?;
    let data: Vec<f32> = batches.iter().flat_map(|b| b.pixels().data().to_vec()).collect();
    let n = batches.iter().map(|b| b.len()).sum();
    ImageBatch::new(Tensor::new(vec![n, 3, first.height(), first.width()], data)?)
}

pub struct Fitter<'a> {
    pub backend: &'a dyn Backend,
    pub clip: &'a ClipCheckpoint,
    pub sd: Option<&'a DiffusionSpec>,
    pub options: FitOptions,
}

impl Fitter<'_> {
    /// SDEdit pseudo-anomalies: `count` images cycling through `sources`, each with one of
    /// `prompts` in turn, then a random resized crop.
    fn synthesize(&self, dif: &dyn adp_api::LatentDiffuser, sources: &ImageBatch, prompts: &[Prompt], count: usize, salt: u64, observer: &mut dyn FnMut(&Stage) -> Flow) -> Result<ImageBatch> {
        let o = &self.options;
        let mut rng = SplitMix64(o.seed ^ salt);
        let mut out = Vec::with_capacity(count);
        for k in 0..count {
            let mut r = Img2ImgRequest::spec_defaults(sources.image(k % sources.len()), prompts[k % prompts.len()].clone(), rng.next_u64());
            (r.strength, r.guidance, r.steps) = (o.strength, o.guidance, o.ddim_steps);
            out.push(random_resized_crop(&dif.img2img(&r)?, &mut rng)?);
            if observer(&Stage::Synthesis { done: k + 1, total: count }) == Flow::Cancel {
                return Err(Error::Cancelled { step: k as u64 + 1 });
            }
        }
        concat(&out)
    }

    fn learn(&self, opt: &dyn adp_api::ConceptOptimizer, name: &str, init: Vec<f32>, objective: Objective, support: &ImageBatch, pseudo: Option<ImageBatch>, observer: &mut dyn FnMut(&Stage) -> Flow) -> Result<Concept> {
        let o = &self.options;
        let request = LearnRequest {
            name: name.into(),
            placeholder: format!("<{name}>"),
            support: support.clone(),
            pseudo_anomalies: pseudo,
            init,
            objective,
            templates: TEMPLATES.iter().map(|t| t.to_string()).collect(),
            learning_rate: o.learning_rate,
            scale_lr_by_batch: o.scale_lr_by_batch,
            weight_decay: o.weight_decay,
            steps: o.steps,
            batch_size: o.batch_size,
            seed: o.seed ^ name.bytes().fold(0u64, |h, b| h.rotate_left(8) ^ b as u64),
            checkpoint: None,
        };
        opt.learn(&request, &mut |p| observer(&Stage::Learning { concept: name.into(), progress: *p }))
    }

    /// Fits a detector on the support set (any image size; at least one image).
    pub fn fit(&self, support: &ImageBatch, observer: &mut dyn FnMut(&Stage) -> Flow) -> Result<DetectorFile> {
        if support.is_empty() {
            return Err(Error::EmptySupportSet);
        }
        let o = &self.options;
        if !o.method.needs_clip() {
            return Err(Error::invalid("method", "visual runs on an image backbone: use visual::VisualModel::fit"));
        }
        let enc = self.backend.text_image_encoder(self.clip, o.device)?;
        let scorer = self.backend.scorer(o.device)?;
        let mut checkpoints = BTreeMap::from([("clip".to_string(), file_hash(&self.clip.weights)?)]);

        let mut concepts: Vec<ConceptToken> = Vec::new();
        let mut validation_pseudo = None;
        if o.method.needs_diffusion() {
            let sd = self.sd.ok_or_else(|| Error::invalid("method", format!("{} needs a Stable Diffusion checkpoint (--sd)", o.method.name())))?;
            checkpoints.insert("diffusion".into(), file_hash(&sd.weights("unet")?)?);
            let dif = self.backend.latent_diffuser(sd, o.device)?;
            let opt = self.backend.concept_optimizer(self.clip, sd, o.device)?;
            let sd_support = resize(support, dif.dims().image_size, dif.dims().image_size);
            let init = enc.token_embedding("object")?;
            if o.method == Method::Ti {
                concepts.push(ConceptToken::Learned(self.learn(&*opt, "c_ti", init, Objective::DiffusionOnly, support, None, observer)?));
            } else {
                let c_n = self.learn(&*opt, "c_n", init, Objective::NormalAware { alpha: o.alpha_normal }, support, None, observer)?;
                if o.method != Method::Cn {
                    let prompts = [Prompt::plain("a photo with damage"), Prompt::plain("a photo of an object with damage")];
                    let pseudo = self.synthesize(&*dif, &sd_support, &prompts, o.pseudo_per_image * support.len(), 1, observer)?;
                    let objective = Objective::AnomalyAware { alpha: o.alpha_anomaly, gamma: o.gamma };
                    let c_a = self.learn(&*opt, "c_a", c_n.vector.clone(), objective, support, Some(pseudo), observer)?;
                    let ph = &c_a.placeholder;
                    let prompts = [
                        Prompt::with_concept(format!("a photo of a damaged {ph}"), ph, &c_a.vector),
                        Prompt::with_concept(format!("a photo of a {ph} with damage"), ph, &c_a.vector),
                    ];
                    validation_pseudo = Some(self.synthesize(&*dif, &sd_support, &prompts, o.validation_pseudo, 2, observer)?);
                    if o.method != Method::Ca {
                        concepts.push(ConceptToken::Learned(c_n));
                    }
                    concepts.push(ConceptToken::Learned(c_a));
                } else {
                    concepts.push(ConceptToken::Learned(c_n));
                }
            }
        }
        if matches!(o.method, Method::AdpLabel | Method::Winclip) {
            concepts.push(ConceptToken::Word(o.label.clone().unwrap_or_else(|| "object".into())));
        }
        if o.method == Method::AdpLabel && o.label.is_none() {
            return Err(Error::invalid("method", "adp-label needs --label WORD"));
        }

        // Self-tuning (eq. 5) where there is a pseudo-validation set; equal weights otherwise.
        let support_f = image_features(&*enc, support)?;
        let weighted = concepts
            .iter()
            .map(|c| match &validation_pseudo {
                Some(p) if concepts.len() > 1 => weigh(&*enc, c, &support_f, &image_features(&*enc, p)?),
                _ => unweighted(&*enc, c),
            })
            .collect::<Result<Vec<_>>>()?;
        let protos = prototypes(&weighted)?;

        observer(&Stage::Memories);
        let dense = enc.dense_features(support, &o.window_sizes)?;
        let memories = ReferenceMemories::build(&*scorer, &dense)?;
        let header = DetectorHeader {
            format: DETECTOR_FORMAT.into(),
            method: o.method.name().into(),
            backend: self.backend.info().name,
            clip_dir: self.clip.config_path.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
            backbone: None,
            checkpoints,
            options: serde_json::to_value(o).expect("json"),
            seed: o.seed,
            grid: memories.grid,
            image_size: enc.dims().image_size,
            concepts: concepts.iter().filter_map(|c| if let ConceptToken::Learned(c) = c { Some(c.clone()) } else { None }).collect(),
            weights: weighted.iter().map(|w| w.weight).collect(),
            memory_kinds: memories.memories.iter().map(|m| m.kind).collect(),
        };
        Ok(DetectorFile { header, prototypes: Some(protos), memories: memories.memories })
    }
}

/// One test image's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageScore {
    pub score: f32,
    /// The language score (eq. 7); none for `visual`.
    pub language: Option<f32>,
    pub association: f32,
    /// `height × width`, row-major, at the scored image's size.
    #[serde(skip)]
    pub map: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// The models scoring may need: CLIP for the ADP methods, the image backbone for `visual`.
#[derive(Debug, Clone, Default)]
pub struct Checkpoints {
    pub clip: Option<ClipCheckpoint>,
    pub backbone: Option<BackboneCheckpoint>,
}

impl Checkpoints {
    pub fn clip(clip: &ClipCheckpoint) -> Self {
        Self { clip: Some(clip.clone()), backbone: None }
    }
    pub fn backbone(backbone: &BackboneCheckpoint) -> Self {
        Self { clip: None, backbone: Some(backbone.clone()) }
    }
}

/// Scores `images` with `detector`, opening its models for this one call; to score many images,
/// open a [`Scoring`] once.
pub fn score(backend: &dyn Backend, checkpoints: &Checkpoints, detector: &DetectorFile, images: &[ImageBatch], device: Device) -> Result<Vec<ImageScore>> {
    Scoring::open(backend, checkpoints, detector.clone(), device)?.score(images)
}

/// A detector's models opened and its checkpoints' identity checked once, with what scoring
/// needs taken out of the detector file, ready to score any number of images (`Send + Sync`: a
/// pool of workers shares one).
pub enum Scoring {
    Visual { model: crate::visual::VisualModel, memory: ReferenceMemory },
    Clip { encoder: Box<dyn adp_api::TextImageEncoder>, scorer: Box<dyn adp_api::Scorer>, memories: ReferenceMemories, windows: Vec<usize>, prototypes: Prototypes },
}

impl Scoring {
    pub fn open(backend: &dyn Backend, checkpoints: &Checkpoints, detector: DetectorFile, device: Device) -> Result<Self> {
        if detector.header.method == Method::Visual.name() {
            let backbone = checkpoints.backbone.as_ref().ok_or_else(|| Error::invalid("checkpoints", "a visual detector needs its image backbone"))?;
            let model = crate::visual::VisualModel::open(backend, backbone, device)?;
            model.check_identity(&detector)?;
            let memory = crate::visual::VisualModel::memory(&detector)?.clone();
            return Ok(Scoring::Visual { model, memory });
        }
        let clip = checkpoints.clip.as_ref().ok_or_else(|| Error::invalid("checkpoints", format!("a {} detector needs a CLIP checkpoint", detector.header.method)))?;
        check_checkpoint(&detector.header, "clip", &clip.weights)?;
        let prototypes = detector.prototypes.ok_or_else(|| Error::invalid("detector", "no prototypes"))?;
        let windows = detector.memories.iter().filter_map(|m| if let FeatureKind::Window(s) = m.kind { Some(s) } else { None }).collect();
        let memories = ReferenceMemories { grid: detector.header.grid, memories: detector.memories };
        Ok(Scoring::Clip { encoder: backend.text_image_encoder(clip, device)?, scorer: backend.scorer(device)?, memories, windows, prototypes })
    }

    pub fn score(&self, images: &[ImageBatch]) -> Result<Vec<ImageScore>> {
        let (encoder, scorer, memories, windows, protos) = match self {
            Scoring::Visual { model, memory } => return model.score(memory, images),
            Scoring::Clip { encoder, scorer, memories, windows, prototypes } => (encoder, scorer, memories, windows, prototypes),
        };
        images
            .iter()
            .map(|img| {
                let f = image_features(&**encoder, img)?;
                let maps = memories.patch_maps(&**scorer, &encoder.dense_features(img, windows)?)?;
                let g = memories.grid;
                Ok((0..img.len()).map(|i| {
                    let language = language_score(&f[i], protos);
                    let patch = maps.row(i);
                    ImageScore {
                        score: final_score(language, patch),
                        language: Some(language),
                        association: patch.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                        map: anomaly_map(patch, g, img.height(), img.width(), 4.0),
                        height: img.height(),
                        width: img.width(),
                    }
                }).collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect())
    }
}
