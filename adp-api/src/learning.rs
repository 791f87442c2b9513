//! The concept-learning loop of SPEC §4–5, written once over the traits: a backend's
//! `ConceptOptimizer` is a [`Learner`] over its encoder and diffuser, which calls [`learn`]. AdamW runs on the
//! host (the concept is one vector); randomness comes from the seed and the step number, so a
//! resumed run draws exactly what the uninterrupted one would have.
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

/// `Σ_j max(P(S_n | x̃_j, T) − γ, 0)` over a batch of pseudo-anomalies, and its gradient.
fn hinge_term(
    enc: &dyn TextImageEncoder,
    images: &ImageBatch,
    template: &str,
    r: &LearnRequest,
    v: &[f32],
    gamma: f32,
) -> Result<(f32, Vec<f32>)> {
    let mut req = StateProbabilityRequest {
        images: images.clone(),
        normal: state_prompt(template, "flawless", &r.placeholder, v),
        anomalous: state_prompt(template, "damaged", &r.placeholder, v),
        temperature: 0.01,
        gradient_of: None,
    };
    let p = enc.state_probability(&req)?.normal;
    let active: Vec<usize> = (0..p.len()).filter(|&j| p[j] > gamma).collect();
    if active.is_empty() {
        return Ok((0.0, vec![0.0; v.len()]));
    }
    let value = active.iter().map(|&j| p[j] - gamma).sum();
    req.images = pick(images, &active)?;
    req.gradient_of = Some(r.placeholder.clone());
    let g = enc.state_probability(&req)?.grad.unwrap_or_default();
    Ok((value, g.into_iter().map(|d| d * active.len() as f32).collect()))
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
    let latent = size / dims.vae_downsampling;
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
    while state.step < r.steps {
        let mut rng = SplitMix64(r.seed ^ (state.step + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let b = r.batch_size;
        let idx: Vec<usize> = (0..b).map(|_| rng.below(support.len() as u64) as usize).collect();
        let tpl: Vec<usize> = (0..b).map(|_| rng.below(r.templates.len() as u64) as usize).collect();
        let timesteps: Vec<u32> = (0..b).map(|_| rng.below(dims.train_timesteps as u64) as u32).collect();
        let noise = Tensor::new(
            vec![b, dims.latent_channels, latent, latent],
            normals(rng.next_u64(), b * dims.latent_channels * latent * latent),
        )?;
        let images = pick(&support, &idx)?;
        let v = state.vector.clone();
        let prompts = tpl
            .iter()
            .map(|&t| state_prompt(&r.templates[t], "flawless", &r.placeholder, &v))
            .collect();
        let diff = dif.denoising_loss(&DenoisingLossRequest {
            images: images.clone(),
            prompts,
            timesteps,
            noise,
            gradient_of: Some(r.placeholder.clone()),
        })?;
        let mut grad = diff.grad.unwrap_or_default();
        let (mut clip_normal, mut clip_anomaly, mut loss) = (0.0, 0.0, diff.value);
        if let Objective::NormalAware { alpha } | Objective::AnomalyAware { alpha, .. } = r.objective {
            let (p, g) = clip_term(enc, &images, &tpl, r, &v)?;
            clip_normal = p;
            loss -= alpha * p;
            grad.iter_mut().zip(g).for_each(|(a, d)| *a -= alpha * d);
        }
        if let (Objective::AnomalyAware { alpha, gamma }, Some(pseudo)) = (r.objective, &r.pseudo_anomalies) {
            let j: Vec<usize> = (0..b).map(|_| rng.below(pseudo.len() as u64) as usize).collect();
            let t = &r.templates[rng.below(r.templates.len() as u64) as usize];
            let (h, g) = hinge_term(enc, &pick(pseudo, &j)?, t, r, &v, gamma)?;
            clip_anomaly = h;
            loss += alpha * h;
            grad.iter_mut().zip(g).for_each(|(a, d)| *a += alpha * d);
        }
        crate::tensor::check_finite("concept gradient", &grad)?;
        state.optimizer.step(&mut state.vector, &grad);
        state.step += 1;
        let record = LossRecord {
            step: state.step,
            loss,
            diffusion_loss: diff.value,
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
            diffusion_loss: diff.value,
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
