//! The concept-learning loop of SPEC §4–5, written once over the traits: a backend's
//! `ConceptOptimizer` is a [`Learner`] over its encoder and diffuser, which calls [`learn`]. AdamW runs on the
//! host (the concept is one vector); randomness comes from the seed and the step number, so a
//! resumed run draws exactly what the uninterrupted one would have.
//!
//! Each step minimises, on a batch of `B` support images `x_i` with templates `T_i` drawn at random:
//! - [`Objective::DiffusionOnly`]: `L_diff(v; x_i, T_i(S_n(c)))`;
//! - [`Objective::NormalAware`] (eq. 3): `L_diff − α · mean_i P(S_n(c) | x_i, T_i)`;
//! - [`Objective::AnomalyAware`] (eq. 4): `L_diff − α_n · mean_i P(S_n(c) | x_i, T_i)
//!   + α_a · Σ_j max(P(S_n(c) | x̃_j, T) − γ, 0)`, two weights (α_n = 0.003 keeps eq. 3's, α_a = 0.002
//!   weighs the hinge); the hinge is a sum, not a mean, over **every** pseudo-anomaly `x̃_j` at every
//!   step, all under one template `T` drawn for the step.
//!
//! The progress reports `clip_normal = mean_i P(S_n | x_i, T_i)` and `clip_anomaly` = the hinge sum,
//! both unweighted.
use crate::atomic::write_atomic;
use crate::preprocess::resize;
use crate::requests::*;
use crate::rng::{normals, SplitMix64};
use crate::TextImageEncoder;
use crate::{Concept, ConceptOptimizer, Error, ImageBatch, LatentDiffuser, LossRecord, Provenance, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A backend's `ConceptOptimizer`: [`learn`] over its own encoder and diffuser.
pub struct Learner<E, D> {
    /// The backend's name, recorded in the concept's provenance.
    pub backend: &'static str,
    pub encoder: E,
    pub diffuser: D,
}

impl<E: TextImageEncoder, D: LatentDiffuser> ConceptOptimizer for Learner<E, D> {
    fn learn(&self, request: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept> {
        learn(self.backend, &self.encoder, &self.diffuser, request, progress)
    }
}

/// AdamW as torch.optim.AdamW computes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamW {
    pub lr: f32,
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub t: u64,
}

impl AdamW {
    pub fn new(lr: f32, weight_decay: f32, dim: usize) -> Self {
        Self {
            lr,
            weight_decay,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            m: vec![0.0; dim],
            v: vec![0.0; dim],
            t: 0,
        }
    }

    pub fn step(&mut self, params: &mut [f32], grad: &[f32]) {
        self.t += 1;
        let (c1, c2) = (
            1.0 - self.beta1.powi(self.t as i32),
            1.0 - self.beta2.powi(self.t as i32),
        );
        for i in 0..params.len() {
            params[i] *= 1.0 - self.lr * self.weight_decay;
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * grad[i];
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * grad[i] * grad[i];
            params[i] -= self.lr * (self.m[i] / c1) / ((self.v[i] / c2).sqrt() + self.eps);
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    fingerprint: String,
    step: u64,
    vector: Vec<f32>,
    optimizer: AdamW,
    history: Vec<LossRecord>,
}

/// What must match for a checkpoint to be resumed: everything but the step count and the policy.
fn fingerprint(r: &LearnRequest) -> String {
    let mut r = r.clone();
    r.steps = 0;
    r.checkpoint = None;
    let pixels = |b: &ImageBatch| {
        b.pixels()
            .data()
            .iter()
            .fold(0u64, |h, v| h.rotate_left(5) ^ v.to_bits() as u64)
    };
    let summary = (pixels(&r.support), r.pseudo_anomalies.as_ref().map(pixels));
    r.support = ImageBatch::new(Tensor::zeros(vec![0, 3, 1, 1])).expect("empty batch");
    r.pseudo_anomalies = None;
    format!("{}|{:?}", serde_json::to_string(&r).expect("json"), summary)
}

fn state_prompt(template: &str, state: &str, placeholder: &str, v: &[f32]) -> Prompt {
    Prompt::with_concept(
        template.replace("{}", &format!("{state} {placeholder}")),
        placeholder,
        v,
    )
}

fn pick(images: &ImageBatch, idx: &[usize]) -> Result<ImageBatch> {
    let data: Vec<f32> = idx.iter().flat_map(|&i| images.pixels().row(i).to_vec()).collect();
    let s = images.pixels().shape();
    ImageBatch::new(Tensor::new(vec![idx.len(), 3, s[2], s[3]], data)?)
}

fn validate(r: &LearnRequest, text_width: usize) -> Result<()> {
    if r.support.is_empty() {
        return Err(Error::EmptySupportSet);
    }
    if r.init.len() != text_width {
        return Err(Error::shape(
            "initial concept vector",
            format!("[{text_width}]"),
            &[r.init.len()],
        ));
    }
    crate::tensor::check_finite("initial concept vector", &r.init)?;
    if r.templates.is_empty() || r.templates.iter().any(|t| !t.contains("{}")) {
        return Err(Error::invalid(
            "templates",
            "need at least one, each with `{}` for the state prompt",
        ));
    }
    if r.batch_size == 0 || r.learning_rate.is_nan() || r.learning_rate <= 0.0 {
        return Err(Error::invalid(
            "learn request",
            "batch size and learning rate must be positive",
        ));
    }
    if matches!(r.objective, Objective::AnomalyAware { .. }) && r.pseudo_anomalies.as_ref().is_none_or(|p| p.is_empty())
    {
        return Err(Error::invalid(
            "learn request",
            "the anomaly-aware objective (eq. 4) needs pseudo-anomalies",
        ));
    }
    Ok(())
}

/// `α · mean_i P(S_n | x_i, T_i)` and its gradient, grouping the images by template.
fn clip_term(
    enc: &dyn TextImageEncoder,
    images: &ImageBatch,
    templates: &[usize],
    r: &LearnRequest,
    v: &[f32],
) -> Result<(f32, Vec<f32>)> {
    let n = images.len() as f32;
    let (mut value, mut grad) = (0.0, vec![0.0; v.len()]);
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    templates
        .iter()
        .enumerate()
        .for_each(|(i, &t)| groups.entry(t).or_default().push(i));
    for (t, idx) in groups {
        let tpl = &r.templates[t];
        let req = StateProbabilityRequest {
            images: pick(images, &idx)?,
            normal: state_prompt(tpl, "flawless", &r.placeholder, v),
            anomalous: state_prompt(tpl, "damaged", &r.placeholder, v),
            temperature: 0.01,
            gradient_of: Some(r.placeholder.clone()),
        };
        let p = enc.state_probability(&req)?;
        let k = idx.len() as f32;
        value += p.normal.iter().sum::<f32>() / n;
        grad.iter_mut()
            .zip(p.grad.unwrap_or_default())
            .for_each(|(g, d)| *g += d * k / n);
    }
    Ok((value, grad))
}

/// Pseudo-anomalies per `state_probability` call of the hinge: bounds the memory of one call.
const HINGE_CHUNK: usize = 16;

/// `Σ_j max(P(S_n | x̃_j, T) − γ, 0)` over every pseudo-anomaly, one template `T`, and its gradient.
fn hinge_term(
    enc: &dyn TextImageEncoder,
    images: &ImageBatch,
    template: &str,
    r: &LearnRequest,
    v: &[f32],
    gamma: f32,
) -> Result<(f32, Vec<f32>)> {
    let (mut value, mut grad) = (0.0, vec![0.0; v.len()]);
    let all: Vec<usize> = (0..images.len()).collect();
    for chunk in all.chunks(HINGE_CHUNK) {
        let mut req = StateProbabilityRequest {
            images: pick(images, chunk)?,
            normal: state_prompt(template, "flawless", &r.placeholder, v),
            anomalous: state_prompt(template, "damaged", &r.placeholder, v),
            temperature: 0.01,
            gradient_of: None,
        };
        let p = enc.state_probability(&req)?.normal;
        let active: Vec<usize> = (0..p.len()).filter(|&j| p[j] > gamma).collect();
        if active.is_empty() {
            continue;
        }
        value += active.iter().map(|&j| p[j] - gamma).sum::<f32>();
        let rows: Vec<usize> = active.iter().map(|&j| chunk[j]).collect();
        req.images = pick(images, &rows)?;
        req.gradient_of = Some(r.placeholder.clone());
        // The encoder gives the gradient of the mean over the active images; the hinge is their sum.
        let g = enc.state_probability(&req)?.grad.unwrap_or_default();
        grad.iter_mut().zip(g).for_each(|(a, d)| *a += d * active.len() as f32);
    }
    Ok((value, grad))
}

/// One step's loss terms (the progress numbers) and the gradient of the loss.
struct StepLoss {
    loss: f32,
    diffusion_loss: f32,
    clip_normal: f32,
    clip_anomaly: f32,
    grad: Vec<f32>,
}

/// The support photos' latents, each encoded the first time a step draws it: a photo's encoding
/// (the posterior mean) is the same at every step, and at 512 px it is about a third of a step.
/// One photo per `vae_encode` call, so that a latent does not depend on which photos happened to
/// be encoded with it: a resumed run gets the values of an uninterrupted one.
#[derive(Default)]
struct SupportLatents(Vec<Option<Tensor>>);

impl SupportLatents {
    /// `[idx.len(), C, h, w]`: the latents of `support`'s photos `idx`.
    fn get(&mut self, dif: &dyn LatentDiffuser, support: &ImageBatch, idx: &[usize]) -> Result<Tensor> {
        self.0.resize(support.len(), None);
        let mut rows = Vec::with_capacity(idx.len());
        for &i in idx {
            if self.0[i].is_none() {
                self.0[i] = Some(dif.vae_encode(&pick(support, &[i])?)?);
            }
            rows.extend(self.0[i].clone());
        }
        Tensor::concat(&rows)
    }
}

/// The objective of `r` at `v` for step `step` (0-based), its draws seeded by the step.
fn step_loss(
    enc: &dyn TextImageEncoder,
    dif: &dyn LatentDiffuser,
    r: &LearnRequest,
    support: &ImageBatch,
    support_latents: &mut SupportLatents,
    step: u64,
    v: &[f32],
) -> Result<StepLoss> {
    let dims = dif.dims();
    let latent = dims.image_size / dims.vae_downsampling;
    let mut rng = SplitMix64(r.seed ^ (step + 1).wrapping_mul(0xA24B_AED4_963E_E407));
    let b = r.batch_size;
    let idx: Vec<usize> = (0..b).map(|_| rng.below(support.len() as u64) as usize).collect();
    let tpl: Vec<usize> = (0..b).map(|_| rng.below(r.templates.len() as u64) as usize).collect();
    let timesteps: Vec<u32> = (0..b).map(|_| rng.below(dims.train_timesteps as u64) as u32).collect();
    let noise = Tensor::new(
        vec![b, dims.latent_channels, latent, latent],
        normals(rng.next_u64(), b * dims.latent_channels * latent * latent),
    )?;
    let latents = support_latents.get(dif, support, &idx)?;
    let prompts = tpl
        .iter()
        .map(|&t| state_prompt(&r.templates[t], "flawless", &r.placeholder, v))
        .collect();
    let diff = dif.denoising_loss(&DenoisingLossRequest {
        input: DenoisingInput::Latents(latents),
        prompts,
        timesteps,
        noise,
        gradient_of: Some(r.placeholder.clone()),
    })?;
    let mut out = StepLoss {
        loss: diff.value,
        diffusion_loss: diff.value,
        clip_normal: 0.0,
        clip_anomaly: 0.0,
        grad: diff.grad.unwrap_or_default(),
    };
    let alpha_normal = match r.objective {
        Objective::DiffusionOnly => None,
        Objective::NormalAware { alpha } => Some(alpha),
        Objective::AnomalyAware { alpha_normal, .. } => Some(alpha_normal),
    };
    if let Some(alpha) = alpha_normal {
        // The drawn photos themselves only where CLIP scores them (the diffusion term has their
        // latents).
        let (p, g) = clip_term(enc, &pick(support, &idx)?, &tpl, r, v)?;
        out.clip_normal = p;
        out.loss -= alpha * p;
        out.grad.iter_mut().zip(g).for_each(|(a, d)| *a -= alpha * d);
    }
    if let (
        Objective::AnomalyAware {
            alpha_anomaly, gamma, ..
        },
        Some(pseudo),
    ) = (r.objective, &r.pseudo_anomalies)
    {
        let t = &r.templates[rng.below(r.templates.len() as u64) as usize];
        let (h, g) = hinge_term(enc, pseudo, t, r, v, gamma)?;
        out.clip_anomaly = h;
        out.loss += alpha_anomaly * h;
        out.grad.iter_mut().zip(g).for_each(|(a, d)| *a += alpha_anomaly * d);
    }
    Ok(out)
}

/// Runs one learning request to completion, cancellation or error.
pub fn learn(
    backend: &str,
    enc: &dyn TextImageEncoder,
    dif: &dyn LatentDiffuser,
    r: &LearnRequest,
    progress: &mut dyn FnMut(&Progress) -> Flow,
) -> Result<Concept> {
    let dims = dif.dims();
    validate(r, dims.text_width.min(enc.dims().text_width))?;
    let size = dims.image_size;
    let support = resize(&r.support, size, size);
    let lr = r.learning_rate * if r.scale_lr_by_batch { r.batch_size as f32 } else { 1.0 };
    let key = fingerprint(r);
    let mut state = Checkpoint {
        fingerprint: key.clone(),
        step: 0,
        vector: r.init.clone(),
        optimizer: AdamW::new(lr, r.weight_decay, r.init.len()),
        history: Vec::new(),
    };
    if let Some(cp) = r.checkpoint.as_ref().filter(|c| c.resume && c.path.exists()) {
        let text = std::fs::read_to_string(&cp.path).map_err(|e| Error::io(&cp.path, e))?;
        let saved: Checkpoint = serde_json::from_str(&text).map_err(|e| Error::config(&cp.path, e.to_string()))?;
        if saved.fingerprint != key {
            return Err(Error::config(&cp.path, "checkpoint of a different learning request"));
        }
        state = saved;
    }
    let mut support_latents = SupportLatents::default();
    while state.step < r.steps {
        let v = state.vector.clone();
        let StepLoss {
            loss,
            diffusion_loss,
            clip_normal,
            clip_anomaly,
            grad,
        } = step_loss(enc, dif, r, &support, &mut support_latents, state.step, &v)?;
        crate::tensor::check_finite("concept gradient", &grad)?;
        state.optimizer.step(&mut state.vector, &grad);
        state.step += 1;
        let record = LossRecord {
            step: state.step,
            loss,
            diffusion_loss,
            clip_normal,
            clip_anomaly,
        };
        state.history.push(record);
        if let Some(cp) = r
            .checkpoint
            .as_ref()
            .filter(|c| c.every > 0 && state.step.is_multiple_of(c.every))
        {
            write_atomic(&cp.path, serde_json::to_string(&state).expect("json").as_bytes())?;
        }
        let p = Progress {
            step: state.step,
            total_steps: r.steps,
            loss,
            diffusion_loss,
            clip_normal,
            clip_anomaly,
        };
        if progress(&p) == Flow::Cancel {
            return Err(Error::Cancelled { step: state.step });
        }
    }
    let mut hyper = BTreeMap::new();
    hyper.insert("objective".into(), serde_json::to_value(r.objective).expect("json"));
    hyper.insert("learning_rate".into(), serde_json::json!(r.learning_rate));
    hyper.insert("scale_lr_by_batch".into(), serde_json::json!(r.scale_lr_by_batch));
    hyper.insert("effective_learning_rate".into(), serde_json::json!(lr));
    hyper.insert("weight_decay".into(), serde_json::json!(r.weight_decay));
    hyper.insert("batch_size".into(), serde_json::json!(r.batch_size));
    hyper.insert("templates".into(), serde_json::json!(r.templates));
    let provenance = Provenance {
        checkpoints: BTreeMap::new(),
        hyperparameters: hyper,
        seed: r.seed,
        backend: backend.into(),
        steps: state.step,
        loss_history: state.history,
    };
    Ok(Concept {
        name: r.name.clone(),
        placeholder: r.placeholder.clone(),
        vector: state.vector,
        provenance,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const WIDTH: usize = 3;
    /// The direction of every stub gradient of `P(S_n)`: `d P(S_n | x) / d v = mean(x) · U`.
    const U: [f32; WIDTH] = [1.0, 2.0, 3.0];
    /// The stub diffuser's loss and gradient, whatever it is asked.
    const DIFF_VALUE: f32 = 0.25;
    const DIFF_GRAD: [f32; WIDTH] = [0.1, -0.2, 0.3];

    /// One `state_probability` call: the normal prompt's text, the images' means, with gradient or not.
    type Call = (String, Vec<f32>, bool);

    /// An encoder whose `P(S_n | x)` is the mean pixel of `x`, and whose gradient of the batch
    /// mean is `mean_i mean(x_i) · U`; it records every call.
    #[derive(Default)]
    struct StubEncoder {
        calls: Mutex<Vec<Call>>,
    }

    fn means(images: &ImageBatch) -> Vec<f32> {
        (0..images.len())
            .map(|i| {
                let row = images.pixels().row(i);
                row.iter().sum::<f32>() / row.len() as f32
            })
            .collect()
    }

    impl TextImageEncoder for StubEncoder {
        fn dims(&self) -> EncoderDims {
            EncoderDims {
                image_size: 8,
                grid: 1,
                embed_dim: 4,
                vision_width: 4,
                text_width: WIDTH,
                context_length: 77,
            }
        }
        fn image_embeddings(&self, _: &ImageBatch) -> Result<Tensor> {
            unimplemented!()
        }
        fn dense_features(&self, _: &ImageBatch, _: &[usize]) -> Result<DenseFeatures> {
            unimplemented!()
        }
        fn text_embeddings(&self, _: &[Prompt]) -> Result<Tensor> {
            unimplemented!()
        }
        fn token_embedding(&self, _: &str) -> Result<Vec<f32>> {
            unimplemented!()
        }
        fn state_probability(&self, r: &StateProbabilityRequest) -> Result<StateProbability> {
            let normal = means(&r.images);
            let with_grad = r.gradient_of.is_some();
            self.calls
                .lock()
                .unwrap()
                .push((r.normal.text.clone(), normal.clone(), with_grad));
            let mean = normal.iter().sum::<f32>() / normal.len() as f32;
            let grad = with_grad.then(|| U.iter().map(|u| mean * u).collect());
            Ok(StateProbability { normal, grad })
        }
    }

    /// A diffuser whose denoising loss is `DIFF_VALUE` with gradient `DIFF_GRAD`; a photo's latent
    /// (1×1, one channel) is its mean pixel. It records the photos it encodes and the latents each
    /// loss gets.
    #[derive(Default)]
    struct StubDiffuser {
        encoded: Mutex<Vec<f32>>,
        losses: Mutex<Vec<Vec<f32>>>,
    }

    impl LatentDiffuser for StubDiffuser {
        fn dims(&self) -> DiffuserDims {
            DiffuserDims {
                image_size: 8,
                latent_channels: 1,
                vae_downsampling: 8,
                unet_downsampling: 1,
                text_width: WIDTH,
                context_length: 77,
                train_timesteps: 1000,
                prediction: Prediction::Epsilon,
            }
        }
        fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor> {
            let m = means(images);
            self.encoded.lock().unwrap().extend(&m);
            Tensor::new(vec![m.len(), 1, 1, 1], m)
        }
        fn vae_decode(&self, _: &Tensor) -> Result<ImageBatch> {
            unimplemented!()
        }
        fn text_conditioning(&self, _: &[Prompt]) -> Result<Tensor> {
            unimplemented!()
        }
        fn unet_prediction(&self, _: &UnetRequest) -> Result<Tensor> {
            unimplemented!()
        }
        fn denoising_loss(&self, r: &DenoisingLossRequest) -> Result<ValueAndGrad> {
            let DenoisingInput::Latents(latents) = &r.input else {
                panic!("a learning step sends its photos' latents");
            };
            self.losses.lock().unwrap().push(latents.data().to_vec());
            Ok(ValueAndGrad {
                value: DIFF_VALUE,
                grad: r.gradient_of.as_ref().map(|_| DIFF_GRAD.to_vec()),
            })
        }
        fn img2img(&self, _: &Img2ImgRequest) -> Result<ImageBatch> {
            unimplemented!()
        }
    }

    /// Flat 8×8 images, one per value.
    fn flat(values: &[f32]) -> ImageBatch {
        let data = values.iter().flat_map(|&v| vec![v; 3 * 8 * 8]).collect();
        ImageBatch::new(Tensor::new(vec![values.len(), 3, 8, 8], data).unwrap()).unwrap()
    }

    const SUPPORT: f32 = 0.5;
    /// Six pseudo-anomalies; at γ = 0.8 four are active, with hinge `0.1 + 0.05 + 0.15 + 0.02`.
    const PSEUDO: [f32; 6] = [0.9, 0.85, 0.7, 0.95, 0.82, 0.6];
    const GAMMA: f32 = 0.8;
    const HINGE: f32 = 0.32;
    const ALPHA_N: f32 = 0.003;
    const ALPHA_A: f32 = 0.002;

    fn eq4_request(steps: u64) -> LearnRequest {
        LearnRequest {
            name: "c_a".into(),
            placeholder: "<c_a>".into(),
            support: flat(&[SUPPORT, SUPPORT]),
            pseudo_anomalies: Some(flat(&PSEUDO)),
            init: vec![0.0; WIDTH],
            objective: Objective::AnomalyAware {
                alpha_normal: ALPHA_N,
                alpha_anomaly: ALPHA_A,
                gamma: GAMMA,
            },
            templates: vec!["a photo of a {}".into(), "a rendering of a {}".into(), "a {}".into()],
            learning_rate: 1e-3,
            scale_lr_by_batch: false,
            weight_decay: 0.0,
            steps,
            batch_size: 2,
            seed: 5,
            checkpoint: None,
        }
    }

    /// The objective's value and gradient at the first step, with a fresh stub diffuser.
    fn first_step(enc: &StubEncoder, r: &LearnRequest, support: &ImageBatch) -> StepLoss {
        let dif = StubDiffuser::default();
        step_loss(enc, &dif, r, support, &mut SupportLatents::default(), 0, &r.init).unwrap()
    }

    fn run(enc: &StubEncoder, r: &LearnRequest) -> Vec<Progress> {
        let mut seen = Vec::new();
        learn("stub", enc, &StubDiffuser::default(), r, &mut |p| {
            seen.push(*p);
            Flow::Continue
        })
        .unwrap();
        seen
    }

    /// Every support photo is encoded once, the first time a step draws it, one photo per call;
    /// each step's loss gets the latents of the photos it drew.
    #[test]
    fn each_support_photo_is_encoded_once() {
        let mut r = eq4_request(12);
        r.support = flat(&[0.125, 0.25, 0.5]);
        let dif = StubDiffuser::default();
        learn("stub", &StubEncoder::default(), &dif, &r, &mut |_| Flow::Continue).unwrap();
        let mut encoded = dif.encoded.lock().unwrap().clone();
        encoded.sort_by(f32::total_cmp);
        assert_eq!(
            encoded,
            [0.125, 0.25, 0.5],
            "12 steps of 2 draws encode each photo once"
        );
        let losses = dif.losses.lock().unwrap();
        assert_eq!(losses.len(), 12);
        for latents in losses.iter() {
            assert_eq!(latents.len(), 2);
            assert!(latents.iter().all(|v| [0.125, 0.25, 0.5].contains(v)), "{latents:?}");
        }
    }

    /// Eq. 4: `L_diff − α_n · mean_i P(S_n | x_i) + α_a · Σ_j max(P(S_n | x̃_j) − γ, 0)`, with two
    /// different weights.
    #[test]
    fn eq4_weighs_the_attraction_by_alpha_normal_and_the_hinge_by_alpha_anomaly() {
        let seen = run(&StubEncoder::default(), &eq4_request(3));
        let by_hand = DIFF_VALUE - ALPHA_N * SUPPORT + ALPHA_A * HINGE;
        let one_alpha = DIFF_VALUE - ALPHA_A * SUPPORT + ALPHA_A * HINGE;
        assert!(
            (by_hand - one_alpha).abs() > 1e-4,
            "the test cannot tell the weights apart"
        );
        for p in seen {
            assert!((p.clip_normal - SUPPORT).abs() < 1e-6, "{p:?}");
            assert!(
                (p.loss - by_hand).abs() < 1e-6,
                "loss {} ≠ {by_hand} by hand: {p:?}",
                p.loss
            );
        }
    }

    /// Eq. 4's gradient: `∇L_diff − α_n · ∇mean_i P(S_n | x_i) + α_a · Σ_{j active} ∇P(S_n | x̃_j)`.
    #[test]
    fn eq4_gradient_weighs_each_term_by_its_own_alpha() {
        let r = eq4_request(1);
        let (enc, support) = (StubEncoder::default(), r.support.clone());
        let got = first_step(&enc, &r, &support);
        let active: f32 = PSEUDO.iter().filter(|&&m| m > GAMMA).sum();
        let by_hand: Vec<f32> = (0..WIDTH)
            .map(|k| DIFF_GRAD[k] - ALPHA_N * SUPPORT * U[k] + ALPHA_A * active * U[k])
            .collect();
        let one_alpha: Vec<f32> = (0..WIDTH)
            .map(|k| DIFF_GRAD[k] - ALPHA_A * SUPPORT * U[k] + ALPHA_A * active * U[k])
            .collect();
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(!close(&by_hand, &one_alpha), "the test cannot tell the weights apart");
        assert!(
            close(&got.grad, &by_hand),
            "gradient {:?} ≠ {by_hand:?} by hand",
            got.grad
        );
        assert!((got.loss - (DIFF_VALUE - ALPHA_N * SUPPORT + ALPHA_A * HINGE)).abs() < 1e-6);
        // Eq. 3 alone: the same attraction, no hinge.
        let mut r = r;
        r.objective = Objective::NormalAware { alpha: ALPHA_N };
        let got = first_step(&enc, &r, &support);
        let by_hand: Vec<f32> = (0..WIDTH).map(|k| DIFF_GRAD[k] - ALPHA_N * SUPPORT * U[k]).collect();
        assert!(
            close(&got.grad, &by_hand),
            "eq. 3 gradient {:?} ≠ {by_hand:?}",
            got.grad
        );
        assert_eq!(got.clip_anomaly, 0.0);
    }

    /// More pseudo-anomalies than one encoder call takes: the hinge still sums over all of them.
    #[test]
    fn eq4_hinge_spans_every_chunk() {
        let mut r = eq4_request(1);
        let many: Vec<f32> = (0..2 * HINGE_CHUNK + 3).map(|j| PSEUDO[j % PSEUDO.len()]).collect();
        r.pseudo_anomalies = Some(flat(&many));
        let got = first_step(&StubEncoder::default(), &r, &r.support);
        let hinge: f32 = many.iter().map(|m| (m - GAMMA).max(0.0)).sum();
        let active: f32 = many.iter().filter(|&&m| m > GAMMA).sum();
        assert!(
            (got.clip_anomaly - hinge).abs() < 1e-5,
            "{} ≠ {hinge}",
            got.clip_anomaly
        );
        let want = DIFF_GRAD[2] - ALPHA_N * SUPPORT * U[2] + ALPHA_A * active * U[2];
        assert!((got.grad[2] - want).abs() < 1e-5, "{} ≠ {want}", got.grad[2]);
    }

    /// Eq. 4's hinge is a sum over every pseudo-anomaly at every step, all with the step's template.
    #[test]
    fn eq4_hinge_sums_over_every_pseudo_anomaly_with_one_template() {
        let enc = StubEncoder::default();
        let seen = run(&enc, &eq4_request(4));
        let mean = HINGE / PSEUDO.len() as f32;
        for p in &seen {
            assert!(
                (p.clip_anomaly - HINGE).abs() < 1e-5,
                "hinge {} is not the sum {HINGE} over all pseudo-anomalies (their mean: {mean})",
                p.clip_anomaly
            );
        }
        // Every step evaluates each pseudo-anomaly once, without gradient, under one template.
        let calls = enc.calls.lock().unwrap();
        let pseudo: Vec<&Call> = calls
            .iter()
            .filter(|c| !c.2 && c.1.iter().all(|&m| m != SUPPORT))
            .collect();
        let mut per_step = pseudo.chunks_exact(pseudo.len() / seen.len());
        assert_eq!(pseudo.len() % seen.len(), 0);
        for step in per_step.by_ref() {
            let mut got: Vec<f32> = step.iter().flat_map(|c| c.1.clone()).collect();
            got.sort_by(f32::total_cmp);
            let mut want = means(&flat(&PSEUDO));
            want.sort_by(f32::total_cmp);
            assert_eq!(got, want, "one step's pseudo-anomalies");
            assert!(step.iter().all(|c| c.0 == step[0].0), "two templates in one step");
        }
    }

    #[test]
    fn adamw_matches_torch() {
        // torch.optim.AdamW([p], lr=0.1, weight_decay=0.01) on p = [1, -2] with grads [0.5, 0.5] then [-1, 2]
        let mut p = vec![1.0f32, -2.0];
        let mut opt = AdamW::new(0.1, 0.01, 2);
        opt.step(&mut p, &[0.5, 0.5]);
        assert!((p[0] - 0.899).abs() < 1e-6 && (p[1] - (-2.098)).abs() < 1e-6, "{p:?}");
        opt.step(&mut p, &[-1.0, 2.0]);
        assert!(
            (p[0] - 0.934_711_4).abs() < 1e-5 && (p[1] - (-2.184_339_5)).abs() < 1e-5,
            "{p:?}"
        );
    }
}
