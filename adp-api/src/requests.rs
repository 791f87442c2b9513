//! Arguments and results of the trait calls. All are plain serialisable data, so they cross the
//! plugin boundary unchanged.
use crate::{ImageBatch, Tensor};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A learned token embedding to put where `placeholder` stands in a prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptSlot {
    pub placeholder: String,
    pub vector: Vec<f32>,
}

/// A text prompt, possibly naming concepts by their placeholders, e.g. `"a photo of a flawless <c>"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompt {
    pub text: String,
    pub concepts: Vec<ConceptSlot>,
}

impl Prompt {
    pub fn plain(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            concepts: Vec::new(),
        }
    }
    pub fn with_concept(text: impl Into<String>, placeholder: &str, vector: &[f32]) -> Self {
        let slot = ConceptSlot {
            placeholder: placeholder.into(),
            vector: vector.to_vec(),
        };
        Self {
            text: text.into(),
            concepts: vec![slot],
        }
    }
}

/// The shapes an encoder works at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncoderDims {
    /// Input side in pixels after preprocessing (224 for most presets).
    pub image_size: usize,
    /// Patches per side of the token grid.
    pub grid: usize,
    /// Width of the joint embedding space.
    pub embed_dim: usize,
    /// Width of the vision transformer's tokens (patch-token features).
    pub vision_width: usize,
    /// Width of a token embedding: the size of a concept vector.
    pub text_width: usize,
    pub context_length: usize,
}

/// The kinds of dense feature the reference association compares (SPEC eq. 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FeatureKind {
    /// The penultimate layer's patch tokens.
    PatchTokens,
    /// WinCLIP window embeddings of `n`×`n` patches.
    Window(usize),
}

/// WinCLIP window embeddings for one window size. Windows slide with stride 1 over the patch grid,
/// row-major, so there are `(grid − size + 1)²` of them per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowFeatures {
    pub size: usize,
    /// `[N, windows, embed_dim]`.
    pub embeddings: Tensor,
}

/// Dense features of a batch of images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenseFeatures {
    pub grid: usize,
    /// `[N, grid², vision_width]`: the penultimate layer's patch tokens.
    pub patch_tokens: Tensor,
    pub windows: Vec<WindowFeatures>,
}

/// What an image backbone's patch features look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureDims {
    /// Input side in pixels after preprocessing.
    pub image_size: usize,
    /// Patches per side of the feature grid (the shallowest feature stage's).
    pub grid: usize,
    /// Width of a patch feature: the sum of `stage_channels`.
    pub dim: usize,
    pub stage_channels: Vec<usize>,
}

/// A backbone's raw outputs, for parity checks against the reference implementation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneOutputs {
    /// Each block group's output, `[N, C, H, W]`.
    pub stages: Vec<Tensor>,
    /// `[N, head_width, H, W]` after the head convolution, batch norm and activation.
    pub head: Tensor,
    /// `[N, classes]`.
    pub logits: Tensor,
}

impl BackboneOutputs {
    /// The outputs of consecutive chunks of one batch, as that batch's.
    pub fn concat(parts: &[BackboneOutputs]) -> crate::Result<Self> {
        let stages = parts.first().map_or(0, |p| p.stages.len());
        let cat = |f: &dyn Fn(&BackboneOutputs) -> &Tensor| {
            Tensor::concat(&parts.iter().map(|p| f(p).clone()).collect::<Vec<_>>())
        };
        Ok(Self {
            stages: (0..stages)
                .map(|g| cat(&|p| &p.stages[g]))
                .collect::<crate::Result<_>>()?,
            head: cat(&|p| &p.head)?,
            logits: cat(&|p| &p.logits)?,
        })
    }
}

impl DenseFeatures {
    /// Checks every window size against `grid` ([`crate::checks::window_size`]), then gathers each
    /// size's embeddings and the patch tokens.
    pub fn gather(
        grid: usize,
        window_sizes: &[usize],
        mut window: impl FnMut(usize) -> crate::Result<Tensor>,
        patch_tokens: impl FnOnce() -> crate::Result<Tensor>,
    ) -> crate::Result<Self> {
        window_sizes
            .iter()
            .try_for_each(|&size| crate::checks::window_size(size, grid))?;
        let windows = window_sizes
            .iter()
            .map(|&size| {
                Ok(WindowFeatures {
                    size,
                    embeddings: window(size)?,
                })
            })
            .collect::<crate::Result<_>>()?;
        Ok(Self {
            grid,
            patch_tokens: patch_tokens()?,
            windows,
        })
    }
}

/// A scalar objective and, when asked for, its gradient with respect to a concept vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueAndGrad {
    pub value: f32,
    pub grad: Option<Vec<f32>>,
}

/// `P_CLIP(S_n(c) | x)` for each image (SPEC §3): softmax over the normal and the anomalous prompt
/// of `cos(f(x), g(prompt)) / temperature`. With `gradient_of`, the gradient of the batch mean with
/// respect to that concept's vector is returned too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateProbabilityRequest {
    pub images: ImageBatch,
    pub normal: Prompt,
    pub anomalous: Prompt,
    pub temperature: f32,
    pub gradient_of: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateProbability {
    /// `P(S_n | x_i)` per image.
    pub normal: Vec<f32>,
    /// d mean_i P(S_n | x_i) / d v, for the concept named in the request.
    pub grad: Option<Vec<f32>>,
}

/// What the diffusion model predicts, as read from the scheduler config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DiffuserDims {
    pub image_size: usize,
    pub latent_channels: usize,
    /// Latent side = image side / this.
    pub vae_downsampling: usize,
    /// The UNet takes latents whose sides are multiples of this, 2^(UNet blocks − 1).
    pub unet_downsampling: usize,
    pub text_width: usize,
    pub context_length: usize,
    pub train_timesteps: usize,
    pub prediction: Prediction,
}

/// The textual-inversion loss (SPEC §4): MSE between the UNet's prediction for
/// `z_t = sqrt(ᾱ_t) z0 + sqrt(1−ᾱ_t) ε` and ε (or v), one timestep, noise and prompt per image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DenoisingLossRequest {
    /// What `z0` comes from.
    pub input: DenoisingInput,
    pub prompts: Vec<Prompt>,
    pub timesteps: Vec<u32>,
    /// `[N, latent_channels, h, w]`.
    pub noise: Tensor,
    /// Placeholder of the concept to differentiate with respect to.
    pub gradient_of: Option<String>,
}

/// The clean side of a denoising loss: photos, or their latents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DenoisingInput {
    /// Photos, encoded in the call as [`crate::LatentDiffuser::vae_encode`] does.
    Images(ImageBatch),
    /// `[N, latent_channels, h, w]`: what `vae_encode` gave for the photos. A photo's encoding (the
    /// posterior mean) is the same at every step, and at 512 px it is about a third of a step, so a
    /// learning loop encodes each support photo once ([`crate::learning`]).
    Latents(Tensor),
}

impl DenoisingInput {
    /// How many images (latents) the loss averages over.
    pub fn len(&self) -> usize {
        match self {
            Self::Images(images) => images.len(),
            Self::Latents(latents) => latents.shape().first().copied().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// UNet prediction for given latents, timesteps and text conditioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnetRequest {
    pub latents: Tensor,
    pub timesteps: Vec<u32>,
    /// `[N, context_length, text_width]`, from `text_conditioning`.
    pub conditioning: Tensor,
}

/// SDEdit / img2img with classifier-free guidance (SPEC §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Img2ImgRequest {
    pub images: ImageBatch,
    pub prompt: Prompt,
    pub negative_prompt: Prompt,
    pub strength: f32,
    pub guidance: f32,
    pub steps: usize,
    pub seed: u64,
    /// Fixed initial noise `[N, c, h, w]`; drawn from `seed` when absent.
    pub noise: Option<Tensor>,
}

impl Img2ImgRequest {
    /// The SPEC's pseudo-anomaly settings: strength 0.5, guidance 7.5, 30 DDIM steps.
    pub fn spec_defaults(images: ImageBatch, prompt: Prompt, seed: u64) -> Self {
        Self {
            images,
            prompt,
            negative_prompt: Prompt::plain(""),
            strength: 0.5,
            guidance: 7.5,
            steps: 30,
            seed,
            noise: None,
        }
    }

    /// The classifier-free guidance batch for `n` images: the negative prompt `n` times, then the
    /// prompt `n` times (unconditional half first, as the UNet output is split).
    pub fn guidance_prompts(&self, n: usize) -> Vec<Prompt> {
        std::iter::repeat_n(self.negative_prompt.clone(), n)
            .chain(std::iter::repeat_n(self.prompt.clone(), n))
            .collect()
    }
}

/// The concept objective: SPEC eq. 3 (step 1), eq. 4 (step 2) or the diffusion loss alone (TI).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Objective {
    DiffusionOnly,
    /// Eq. 3: `L_diff − alpha · mean_i P(S_n | x_i, T_i)`.
    NormalAware {
        alpha: f32,
    },
    /// Eq. 4: eq. 3 with `alpha_normal`, plus `alpha_anomaly · Σ_j max(P(S_n | x̃_j, T) − gamma, 0)`
    /// over every pseudo-anomaly.
    AnomalyAware {
        alpha_normal: f32,
        alpha_anomaly: f32,
        gamma: f32,
    },
}

/// Where and how often a learning run saves a resumable checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPolicy {
    pub path: PathBuf,
    pub every: u64,
    /// Resume from `path` when it holds a checkpoint of the same request.
    pub resume: bool,
}

/// One concept-learning run (SPEC §4–5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LearnRequest {
    pub name: String,
    pub placeholder: String,
    pub support: ImageBatch,
    /// Pseudo-anomalies `x̃_j`, needed by [`Objective::AnomalyAware`].
    pub pseudo_anomalies: Option<ImageBatch>,
    /// Starting vector (the embedding of "object", or `v_n*` for step 2).
    pub init: Vec<f32>,
    pub objective: Objective,
    /// Prompt templates with `{}` where the state prompt goes (SPEC Appendix D).
    pub templates: Vec<String>,
    pub learning_rate: f32,
    /// Multiply the rate by the batch size, as LDM's "base learning rate" does.
    pub scale_lr_by_batch: bool,
    pub weight_decay: f32,
    pub steps: u64,
    pub batch_size: usize,
    pub seed: u64,
    pub checkpoint: Option<CheckpointPolicy>,
}

/// Loss terms after one optimisation step.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f32,
    pub diffusion_loss: f32,
    pub clip_normal: f32,
    pub clip_anomaly: f32,
}

/// What a progress observer wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Cancel,
}

/// Unit-normalised support features of one kind: `[M, D]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceMemory {
    pub kind: FeatureKind,
    pub features: Tensor,
}
