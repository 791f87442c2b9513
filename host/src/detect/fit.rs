//! The ADP pipeline over the traits (SPEC §4–6): step 1 (normal-aware concept), step 2
//! (pseudo-anomalies by SDEdit, anomaly-aware concept), step 3 (self-tuning on a pseudo-validation
//! set, prototypes), reference memories, and the decision threshold from the support photos
//! ([`super::decision`]). The baselines run the same code path.
use super::concepts::{checkpoint_hashes, reuse as reuse_concepts};
use super::decision::{check_rate, decide, shift_step};
use super::file::{DetectorFile, DetectorHeader, DETECTOR_FORMAT};
use super::scoring::Scoring;
use super::visual::VisualModel;
use super::{Checkpoints, FitOptions, Method, Stage, SupportViews};
use crate::images::{read_each, read_resized, squares};
use crate::score::association::ReferenceMemories;
use crate::score::prompts::TEMPLATES;
use crate::score::prototypes::{image_features, prototypes, unweighted, weigh, ConceptToken};
use adp_api::preprocess::resize;
use adp_api::requests::*;
use adp_api::rng::SplitMix64;
use adp_api::{Backend, ClipCheckpoint, Concept, DiffusionSpec, Error, ImageBatch, Result, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The models concept learning runs on: the fit's own CLIP and Stable Diffusion, not a backend
/// `ConceptOptimizer`, which would load both again (about 9 GB more for ViT-H-14 and SD 2.1 in
/// f32, resident beside them through the learning).
type Models<'a> = (&'a dyn adp_api::TextImageEncoder, &'a dyn adp_api::LatentDiffuser);

/// A random resized crop (area 50–100 %, square), back at the original size.
fn random_resized_crop(images: &ImageBatch, rng: &mut SplitMix64) -> Result<ImageBatch> {
    let (h, w) = (images.height(), images.width());
    let mut out = Vec::with_capacity(images.pixels().len());
    for i in 0..images.len() {
        let area = 0.5 + 0.5 * (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let side = ((area.sqrt() * h.min(w) as f64) as usize).max(1);
        let (top, left) = (
            rng.below((h - side + 1) as u64) as usize,
            rng.below((w - side + 1) as u64) as usize,
        );
        let src = images.pixels().row(i);
        let crop: Vec<f32> = (0..3)
            .flat_map(|c| {
                (top..top + side).flat_map(move |y| (left..left + side).map(move |x| src[c * h * w + y * w + x]))
            })
            .collect();
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

/// Which source image and which prompt each of `count` pseudo-anomalies uses: the sources in
/// turn, each prompt drawn uniformly from its own seeded stream, independently of the source
/// (SPEC §5).
fn synthesis_plan(seed: u64, count: usize, sources: usize, prompts: usize) -> Vec<(usize, usize)> {
    let mut rng = SplitMix64(seed ^ 0x9E6C_63D0_676A_9A99);
    (0..count)
        .map(|k| (k % sources, rng.below(prompts as u64) as usize))
        .collect()
}

pub struct Fitter<'a> {
    pub backend: &'a dyn Backend,
    pub clip: &'a ClipCheckpoint,
    pub sd: Option<&'a DiffusionSpec>,
    pub options: FitOptions,
}

impl Fitter<'_> {
    /// SDEdit pseudo-anomalies: `count` images cycling through `sources`, each with one of
    /// `prompts` drawn independently of its source ([`synthesis_plan`]), then a random resized crop.
    fn synthesize(
        &self,
        dif: &dyn adp_api::LatentDiffuser,
        sources: &ImageBatch,
        prompts: &[Prompt],
        count: usize,
        salt: u64,
        observer: &mut dyn FnMut(&Stage) -> Flow,
    ) -> Result<ImageBatch> {
        let o = &self.options;
        let mut rng = SplitMix64(o.seed ^ salt);
        let mut out = Vec::with_capacity(count);
        for (k, (source, prompt)) in synthesis_plan(o.seed ^ salt, count, sources.len(), prompts.len())
            .into_iter()
            .enumerate()
        {
            let mut r = Img2ImgRequest::spec_defaults(sources.image(source), prompts[prompt].clone(), rng.next_u64());
            (r.strength, r.guidance, r.steps) = (o.strength, o.guidance, o.ddim_steps);
            out.push(random_resized_crop(&dif.img2img(&r)?, &mut rng)?);
            if observer(&Stage::Synthesis {
                done: k + 1,
                total: count,
            }) == Flow::Cancel
            {
                return Err(Error::Cancelled { step: k as u64 + 1 });
            }
        }
        concat(&out)
    }

    /// Learns concept `name` from `init` towards `goal`: its objective, with the pseudo-anomalies
    /// the anomaly-aware objective pushes away from.
    fn learn(
        &self,
        models: Models,
        name: &str,
        init: Vec<f32>,
        goal: (Objective, Option<ImageBatch>),
        support: &ImageBatch,
        observer: &mut dyn FnMut(&Stage) -> Flow,
    ) -> Result<Concept> {
        let (objective, pseudo) = goal;
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
            checkpoint: o.learning_checkpoints.as_ref().map(|c| CheckpointPolicy {
                path: c.dir.join(format!("{name}.json")),
                every: c.every,
                resume: c.resume,
            }),
        };
        let (enc, dif) = models;
        adp_api::learning::learn(&self.backend.info().name, enc, dif, &request, &mut |p| {
            observer(&Stage::Learning {
                concept: name.into(),
                progress: *p,
            })
        })
    }

    /// Steps 1–2: the concepts of the method, in the order they are learned (`ca` learns `c_n` on
    /// the way to `c_a`).
    fn learn_concepts(
        &self,
        dif: &dyn adp_api::LatentDiffuser,
        enc: &dyn adp_api::TextImageEncoder,
        sd_support: &ImageBatch,
        observer: &mut dyn FnMut(&Stage) -> Flow,
    ) -> Result<Vec<Concept>> {
        let o = &self.options;
        let init = enc.token_embedding("object")?;
        if o.method == Method::Ti {
            let goal = (Objective::DiffusionOnly, None);
            return Ok(vec![self.learn(
                (enc, dif),
                "c_ti",
                init,
                goal,
                sd_support,
                observer,
            )?]);
        }
        let goal = (Objective::NormalAware { alpha: o.alpha_normal }, None);
        let c_n = self.learn((enc, dif), "c_n", init, goal, sd_support, observer)?;
        if o.method == Method::Cn {
            return Ok(vec![c_n]);
        }
        let prompts = [
            Prompt::plain("a photo with damage"),
            Prompt::plain("a photo of an object with damage"),
        ];
        let count = o.pseudo_per_image * sd_support.len();
        let pseudo = self.synthesize(dif, sd_support, &prompts, count, 1, observer)?;
        // Eq. 4: eq. 3's attraction keeps α_n; α_a weighs the hinge.
        let objective = Objective::AnomalyAware {
            alpha_normal: o.alpha_normal,
            alpha_anomaly: o.alpha_anomaly,
            gamma: o.gamma,
        };
        let c_a = self.learn(
            (enc, dif),
            "c_a",
            c_n.vector.clone(),
            (objective, Some(pseudo)),
            sd_support,
            observer,
        )?;
        Ok(vec![c_n, c_a])
    }

    /// Fits a detector on the support set: photos of one size, any size (at least one photo).
    /// See [`Fitter::fit_photos`].
    pub fn fit(&self, support: &ImageBatch, observer: &mut dyn FnMut(&Stage) -> Flow) -> Result<DetectorFile> {
        self.fit_photos(std::slice::from_ref(support), observer)
    }

    /// Fits a detector on support photos as read (each batch one size, any size; at least one
    /// photo), in the detection geometry of SPEC §2: CLIP (reference memories, self-tuning
    /// features) sees every photo resized once, straight from its pixels, to its square input;
    /// the diffusion model (concept learning, SDEdit sources) sees every photo resized once,
    /// straight from its pixels, to its own image size; pseudo-anomalies are resized straight to
    /// CLIP's input. No crop anywhere, and never a resize of a resize of a photo.
    pub fn fit_photos(&self, photos: &[ImageBatch], observer: &mut dyn FnMut(&Stage) -> Flow) -> Result<DetectorFile> {
        // Before anything is loaded or learned: a run that cannot finish must not start.
        check(&self.options)?;
        if photos.iter().all(|p| p.is_empty()) {
            return Err(Error::EmptySupportSet);
        }
        let o = &self.options;
        if !o.method.needs_clip() {
            return Err(Error::invalid(
                "method",
                "visual runs on an image backbone: use visual::VisualModel::fit",
            ));
        }
        let enc = self.backend.text_image_encoder(self.clip, o.device)?;
        let s = enc.dims().image_size;
        let support = squares(photos, s)?;
        let scorer = self.backend.scorer(o.device)?;
        // Reused concepts skip steps 1–2; only the pseudo-validation set of ADP and ADP_ℓ still
        // needs the diffusion model then.
        let reuse = o.concept_files.reuse.as_deref();
        let validates = matches!(o.method, Method::Adp | Method::AdpLabel);
        let sd = match self.sd.filter(|_| o.method.needs_diffusion()) {
            None if o.method.needs_diffusion() && (reuse.is_none() || validates) => {
                return Err(Error::invalid(
                    "method",
                    format!("{} needs a Stable Diffusion checkpoint (--sd)", o.method.name()),
                ))
            }
            sd => sd,
        };
        let hashes = checkpoint_hashes(self.clip, sd)?;
        let checkpoints: BTreeMap<String, String> = ["clip", "diffusion"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), hashes.get(k)?.clone())))
            .collect();

        let mut concepts: Vec<ConceptToken> = Vec::new();
        let mut validation_pseudo = None;
        if o.method.needs_diffusion() {
            // A reused concept of `ti`, `cn` or `ca` needs no diffusion model (its checkpoint is
            // still checked where given).
            let dif = sd
                .filter(|_| reuse.is_none() || validates)
                .map(|sd| self.backend.latent_diffuser(sd, o.device))
                .transpose()?;
            let sd_support = dif.as_ref().map(|d| squares(photos, d.dims().image_size)).transpose()?;
            let learned = match (reuse, sd, &dif, &sd_support) {
                (Some(file), ..) => {
                    let width = enc.token_embedding("object")?.len();
                    reuse_concepts(file, learned_names(o.method), &hashes, width)?
                }
                (None, Some(_), Some(dif), Some(sd_support)) => {
                    let mut learned = self.learn_concepts(&**dif, &*enc, sd_support, observer)?;
                    for c in &mut learned {
                        c.provenance.checkpoints = hashes.clone();
                        c.provenance
                            .hyperparameters
                            .insert("fit".into(), fit_hyperparameters(o));
                    }
                    learned
                }
                _ => unreachable!("a fit that learns has a diffusion model (checked above)"),
            };
            if let Some(path) = &o.concept_files.save {
                adp_api::concept::save(path, &learned)?;
            }
            if let (true, Some(dif), Some(sd_support)) = (validates, &dif, &sd_support) {
                let c_a = learned
                    .iter()
                    .find(|c| c.name == "c_a")
                    .expect("ADP learns or reuses c_a");
                let ph = &c_a.placeholder;
                let prompts = [
                    Prompt::with_concept(format!("a photo of a damaged {ph}"), ph, &c_a.vector),
                    Prompt::with_concept(format!("a photo of a {ph} with damage"), ph, &c_a.vector),
                ];
                validation_pseudo =
                    Some(self.synthesize(&**dif, sd_support, &prompts, o.validation_pseudo, 2, observer)?);
            }
            // `ca` learns c_n on the way to c_a, and detects with c_a alone.
            let used = learned_names(o.method);
            concepts.extend(
                learned
                    .into_iter()
                    .filter(|c| used.contains(&c.name.as_str()))
                    .map(ConceptToken::Learned),
            );
        }
        if matches!(o.method, Method::AdpLabel | Method::Winclip) {
            concepts.push(ConceptToken::Word(o.label.clone().unwrap_or_else(|| "object".into())));
        }

        // Self-tuning (eq. 5) where there is a pseudo-validation set; equal weights otherwise.
        let support_f = image_features(&*enc, &support)?;
        let validation_f = match &validation_pseudo {
            // Pseudo-anomalies come at the diffusion model's size: straight to CLIP's input.
            Some(p) if concepts.len() > 1 => Some(image_features(&*enc, &resize(p, s, s))?),
            _ => None,
        };
        let weighted = concepts
            .iter()
            .map(|c| match &validation_f {
                Some(p) => weigh(&*enc, c, &support_f, p),
                _ => unweighted(&*enc, c),
            })
            .collect::<Result<Vec<_>>>()?;
        let protos = prototypes(&weighted)?;

        observer(&Stage::Memories);
        let dense = enc.dense_features(&support, &o.window_sizes)?;
        let memories = ReferenceMemories::build(&*scorer, &dense)?;
        let header = DetectorHeader {
            format: DETECTOR_FORMAT.into(),
            method: o.method.name().into(),
            backend: self.backend.info().name,
            backend_version: self.backend.info().version,
            clip_dir: self
                .clip
                .config_path
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or_default(),
            backbone: None,
            checkpoints,
            options: serde_json::to_value(o).expect("json"),
            seed: o.seed,
            grid: memories.grid,
            image_size: enc.dims().image_size,
            concepts: concepts
                .iter()
                .filter_map(|c| {
                    if let ConceptToken::Learned(c) = c {
                        Some(c.clone())
                    } else {
                        None
                    }
                })
                .collect(),
            weights: weighted.iter().map(|w| w.weight).collect(),
            memory_kinds: memories.memories.iter().map(|m| m.kind).collect(),
            decision: None,
        };
        // The decision scores the support photos as `adp score` would, through the models
        // already open.
        let scoring = Scoring::Clip {
            encoder: enc,
            scorer,
            memories,
            windows: o.window_sizes.clone(),
            prototypes: protos,
        };
        let decision = decide(
            scoring.memories(),
            &support,
            shift_step(header.image_size, header.grid),
            o.false_alarm_rate,
            &|m, b| scoring.score_against(m, std::slice::from_ref(b)),
        )?;
        let Scoring::Clip {
            memories, prototypes, ..
        } = scoring
        else {
            unreachable!("built as Scoring::Clip above")
        };
        Ok(DetectorFile {
            header: DetectorHeader {
                decision: Some(decision),
                ..header
            },
            prototypes: Some(prototypes),
            memories: memories.memories,
        })
    }
}

/// The learned concepts method `method` detects with.
fn learned_names(method: Method) -> &'static [&'static str] {
    match method {
        Method::Ti => &["c_ti"],
        Method::Cn => &["c_n"],
        Method::Ca => &["c_a"],
        Method::Adp | Method::AdpLabel => &["c_n", "c_a"],
        Method::Winclip | Method::Visual => &[],
    }
}

/// The fit's own settings a concept depends on, beyond its learning request's (recorded by the
/// optimiser): the method and how the pseudo-anomalies of step 2 were made.
fn fit_hyperparameters(o: &FitOptions) -> serde_json::Value {
    serde_json::json!({
        "method": o.method.name(),
        "pseudo_per_image": o.pseudo_per_image,
        "strength": o.strength,
        "guidance": o.guidance,
        "ddim_steps": o.ddim_steps,
    })
}

/// The checks that can fail before any work starts: the class word, the false-alarm rate, and
/// concept files only for methods that learn concepts.
fn check(options: &FitOptions) -> Result<()> {
    options.check_label()?;
    let files = &options.concept_files;
    if (files.reuse.is_some() || files.save.is_some()) && learned_names(options.method).is_empty() {
        return Err(Error::invalid(
            "method",
            format!(
                "{} learns no concepts: a concept file does not apply",
                options.method.name()
            ),
        ));
    }
    if options.support_views != SupportViews::None && options.method != Method::Visual {
        return Err(Error::invalid(
            "support views",
            format!(
                "{} applies to the visual method only, not {}",
                options.support_views.name(),
                options.method.name()
            ),
        ));
    }
    check_rate(options.false_alarm_rate)
}

/// `visual`'s fit ([`VisualModel::fit`]) with its decision: the support photos (at the
/// backbone's square) scored by `model` against memories without their own rows.
pub fn fit_visual(
    model: &VisualModel,
    support: &ImageBatch,
    options: &FitOptions,
    observer: &mut dyn FnMut(&Stage) -> Flow,
) -> Result<DetectorFile> {
    check(options)?;
    let mut detector = model.fit(support, options, observer)?;
    let step = shift_step(detector.header.image_size, detector.header.grid);
    let decision = decide(&detector.memories, support, step, options.false_alarm_rate, &|m, b| {
        model.score(&m[0], std::slice::from_ref(b))
    })?;
    detector.header.decision = Some(decision);
    Ok(detector)
}

/// Fits a detector on support photo files, any method: `visual` on `checkpoints.backbone`, the
/// others on `checkpoints.clip` (and `sd` where they synthesise or learn).
pub fn fit_files(
    backend: &dyn Backend,
    checkpoints: &Checkpoints,
    sd: Option<&DiffusionSpec>,
    files: &[PathBuf],
    options: FitOptions,
    observer: &mut dyn FnMut(&Stage) -> Flow,
) -> Result<DetectorFile> {
    check(&options)?;
    if !options.method.needs_clip() {
        let backbone = checkpoints
            .backbone
            .as_ref()
            .ok_or_else(|| Error::invalid("method", "visual needs an image backbone (--backbone)"))?;
        let model = VisualModel::open(backend, backbone, options.device)?;
        // One resize, straight from the file's pixels, to the backbone's square.
        let support = read_resized(files, model.extractor.dims().image_size)?;
        return fit_visual(&model, &support, &options, observer);
    }
    let clip = checkpoints.clip.as_ref().ok_or_else(|| {
        Error::invalid(
            "method",
            format!("{} needs a CLIP checkpoint (--clip)", options.method.name()),
        )
    })?;
    // Read as they are: the fit resizes each photo straight to each model's input.
    let photos = read_each(files)?;
    Fitter {
        backend,
        clip,
        sd,
        options,
    }
    .fit_photos(&photos, observer)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §5: each pseudo-anomaly's prompt is drawn independently of its source, from the seed.
    #[test]
    fn synthesis_draws_each_prompt_independently_of_the_source() {
        let seed = FitOptions::default().seed ^ 1;
        let plan = synthesis_plan(seed, 8, 2, 2);
        assert_eq!(plan, synthesis_plan(seed, 8, 2, 2), "the draw is not reproducible");
        // The sources still cycle, so each is used equally.
        assert!(plan.iter().enumerate().all(|(k, &(s, _))| s == k % 2), "{plan:?}");
        assert!(
            (0..2).any(|s| (0..2).all(|p| plan.contains(&(s, p)))),
            "no source meets both prompts: {plan:?}"
        );
        assert!(plan.iter().all(|&(_, p)| p < 2));
        // Another seed, another draw (for some seed among a few).
        assert!((2..10).any(|other| synthesis_plan(other, 8, 2, 2) != plan));
    }
}
