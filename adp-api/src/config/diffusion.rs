//! A Stable Diffusion checkpoint in the diffusers folder layout, read from its configs.
use super::{check_bounds, read_json};
use crate::{requests::Prediction, Dtype, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextEncoderConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    #[serde(default = "d_77")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    #[serde(default = "d_quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "d_ln_eps")]
    pub layer_norm_eps: f64,
}

/// Every other key of a config, checked against [`UNET_FIXED`] / [`VAE_FIXED`]: what adp does
/// not implement is refused at load, naming the key and its value.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// `attention_head_dim` is a number or one number per block in diffusers configs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    pub fn get(&self, block: usize) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v[block.min(v.len().saturating_sub(1))],
        }
    }

    /// The one value of a number or of a list whose entries are all equal.
    pub fn uniform(&self) -> Option<usize> {
        match self {
            PerBlock::One(v) => Some(*v),
            PerBlock::Each(v) => v.first().copied().filter(|f| v.iter().all(|x| x == f)),
        }
    }

    fn max(&self) -> usize {
        match self {
            PerBlock::One(v) => *v,
            PerBlock::Each(v) => v.iter().copied().max().unwrap_or(0),
        }
    }

    fn count(&self) -> usize {
        match self {
            PerBlock::One(_) => 1,
            PerBlock::Each(v) => v.len(),
        }
    }
}

impl std::fmt::Display for PerBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PerBlock::One(v) => write!(f, "{v}"),
            PerBlock::Each(v) => write!(f, "{v:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnetConfig {
    #[serde(default)]
    pub sample_size: Option<usize>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    /// One number, or one per block (adp runs equal ones only).
    #[serde(default = "d_2_blocks")]
    pub layers_per_block: PerBlock,
    /// One width, or one per block (adp runs equal ones only).
    pub cross_attention_dim: PerBlock,
    /// diffusers' naming quirk: without `num_attention_heads` this is the number of HEADS per
    /// block (a number or one per block), as `UNet2DConditionModel` reads it.
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock,
    /// diffusers refuses this key (its naming issue 2011); so does adp.
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    /// `false` (SD 1.x): `proj_in`/`proj_out` are 1×1 convolutions; `true` (SD 2.x): linear.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// SD 2.1 (768) computes attention scores in float32 under fp16; adp computes in float32
    /// throughout, so it is accepted and has no further effect.
    #[serde(default)]
    pub upcast_attention: bool,
    /// `BasicTransformerBlock`s per attention (adp runs 1).
    #[serde(default = "d_1_blocks")]
    pub transformer_layers_per_block: PerBlock,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps5")]
    pub norm_eps: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
    #[serde(flatten)]
    pub extra: Extra,
}

impl UnetConfig {
    /// The cross-attention width (every block's, once [`DiffusionSpec::check_supported`] passed).
    pub fn cross_dim(&self) -> usize {
        self.cross_attention_dim.get(0)
    }

    /// Resnets per down block (every block's, once checked).
    pub fn layers(&self) -> usize {
        self.layers_per_block.get(0)
    }
}

/// UNet keys whose other values adp does not implement: `(key, allowed values)`; an absent key
/// takes diffusers' default, which is always allowed.
const UNET_FIXED: &[(&str, &[&str])] = &[
    ("center_input_sample", &["false"]),
    ("dual_cross_attention", &["false"]),
    ("class_embed_type", &["null"]),
    ("num_class_embeds", &["null"]),
    ("class_embeddings_concat", &["false"]),
    ("addition_embed_type", &["null"]),
    ("addition_time_embed_dim", &["null"]),
    ("projection_class_embeddings_input_dim", &["null"]),
    ("encoder_hid_dim", &["null"]),
    ("encoder_hid_dim_type", &["null"]),
    ("mid_block_type", &["\"UNetMidBlock2DCrossAttn\""]),
    ("mid_block_only_cross_attention", &["null", "false"]),
    ("mid_block_scale_factor", &["1", "1.0"]),
    ("time_embedding_type", &["\"positional\""]),
    ("time_embedding_dim", &["null"]),
    ("time_embedding_act_fn", &["null"]),
    ("timestep_post_act", &["null"]),
    ("time_cond_proj_dim", &["null"]),
    ("act_fn", &["\"silu\""]),
    ("resnet_time_scale_shift", &["\"default\""]),
    ("resnet_skip_time_act", &["false"]),
    ("resnet_out_scale_factor", &["1", "1.0"]),
    ("conv_in_kernel", &["3"]),
    ("conv_out_kernel", &["3"]),
    ("downsample_padding", &["1"]),
    ("attention_type", &["\"default\""]),
    ("cross_attention_norm", &["null"]),
    ("reverse_transformer_layers_per_block", &["null"]),
];

/// VAE keys whose other values adp does not implement (`force_upcast` is a no-op in float32).
const VAE_FIXED: &[(&str, &[&str])] = &[
    ("act_fn", &["\"silu\""]),
    ("use_quant_conv", &["true"]),
    ("use_post_quant_conv", &["true"]),
    ("mid_block_add_attention", &["true"]),
    ("shift_factor", &["null"]),
    ("latents_mean", &["null"]),
    ("latents_std", &["null"]),
];

/// The first key of `extra` whose value `fixed` does not allow, as an error naming `file`.
fn check_fixed(file: &Path, extra: &Extra, fixed: &[(&str, &[&str])]) -> Result<()> {
    for (key, allowed) in fixed {
        if let Some(v) = extra.get(*key) {
            let text = v.to_string();
            if !allowed.contains(&text.as_str()) {
                return Err(Error::config(
                    file,
                    format!("`{key}` is {text}; adp supports {}", allowed.join(" or ")),
                ));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "d_3")]
    pub in_channels: usize,
    #[serde(default = "d_3")]
    pub out_channels: usize,
    #[serde(default = "d_4")]
    pub latent_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "d_1")]
    pub layers_per_block: usize,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub sample_size: Option<usize>,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f32,
    #[serde(flatten)]
    pub extra: Extra,
}

/// One block of the VAE's encoder (`down_blocks.i`) or decoder (`up_blocks.i`), as diffusers
/// builds it: the `(in, out)` channels of each resnet, its output channels, and whether a
/// resampling convolution follows (stride 2 down, nearest ×2 then 3×3 up; not after the last).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeBlock {
    pub resnets: Vec<(usize, usize)>,
    pub out: usize,
    pub resample: bool,
}

impl VaeConfig {
    /// The encoder's blocks, in order. `DiffusionSpec::check_supported` makes sure of one.
    pub fn encoder_blocks(&self) -> Vec<VaeBlock> {
        let ch = &self.block_out_channels;
        (0..ch.len())
            .map(|i| {
                let cin = if i == 0 { ch[0] } else { ch[i - 1] };
                VaeBlock {
                    resnets: (0..self.layers_per_block)
                        .map(|j| (if j == 0 { cin } else { ch[i] }, ch[i]))
                        .collect(),
                    out: ch[i],
                    resample: i + 1 < ch.len(),
                }
            })
            .collect()
    }

    /// The decoder's blocks, in order: the channels reversed, one resnet more per block.
    pub fn decoder_blocks(&self) -> Vec<VaeBlock> {
        let ch = &self.block_out_channels;
        let n = ch.len();
        (0..n)
            .map(|i| {
                let (prev, out) = (if i == 0 { ch[n - 1] } else { ch[n - i] }, ch[n - 1 - i]);
                VaeBlock {
                    resnets: (0..self.layers_per_block + 1)
                        .map(|j| (if j == 0 { prev } else { out }, out))
                        .collect(),
                    out,
                    resample: i + 1 < n,
                }
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "d_1000")]
    pub num_train_timesteps: usize,
    #[serde(default = "d_beta_start")]
    pub beta_start: f64,
    #[serde(default = "d_beta_end")]
    pub beta_end: f64,
    #[serde(default = "d_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "d_epsilon")]
    pub prediction_type: String,
    #[serde(default)]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default = "d_leading")]
    pub timestep_spacing: String,
}

impl SchedulerConfig {
    /// The training noise schedule β_t, as diffusers builds it.
    pub fn betas(&self) -> Result<Vec<f64>> {
        let n = self.num_train_timesteps;
        let (a, b) = (self.beta_start, self.beta_end);
        let lin = |a: f64, b: f64| (0..n).map(move |i| a + (b - a) * i as f64 / (n.max(2) - 1) as f64);
        match self.beta_schedule.as_str() {
            "linear" => Ok(lin(a, b).collect()),
            "scaled_linear" => Ok(lin(a.sqrt(), b.sqrt()).map(|x| x * x).collect()),
            other => Err(Error::invalid(
                "beta_schedule",
                format!("{other:?} (supported: linear, scaled_linear)"),
            )),
        }
    }

    /// ᾱ_t = Π_{s ≤ t} (1 − β_s).
    pub fn alphas_cumprod(&self) -> Result<Vec<f64>> {
        let mut acc = 1.0;
        Ok(self
            .betas()?
            .into_iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect())
    }

    /// DDIM inference timesteps, descending, as diffusers' `set_timesteps` makes them.
    pub fn ddim_timesteps(&self, steps: usize) -> Result<Vec<usize>> {
        let n = self.num_train_timesteps;
        if steps == 0 || steps > n {
            return Err(Error::invalid("inference steps", format!("{steps} (1 to {n})")));
        }
        let mut t: Vec<usize> = match self.timestep_spacing.as_str() {
            "leading" => (0..steps).map(|i| i * (n / steps) + self.steps_offset).collect(),
            "trailing" => {
                let ratio = n as f64 / steps as f64;
                (1..=steps)
                    .map(|i| ((i as f64 * ratio).round() as usize).saturating_sub(1))
                    .collect()
            }
            "linspace" => (0..steps)
                .map(|i| ((n - 1) as f64 * i as f64 / (steps - 1).max(1) as f64).round() as usize)
                .collect(),
            other => {
                return Err(Error::invalid(
                    "timestep_spacing",
                    format!("{other:?} (supported: leading, trailing, linspace)"),
                ))
            }
        };
        t.reverse();
        Ok(t)
    }

    /// The timesteps img2img runs at `strength`: the last `steps · strength` of the schedule, as
    /// diffusers' `StableDiffusionImg2ImgPipeline.get_timesteps` picks them.
    pub fn img2img_timesteps(&self, steps: usize, strength: f32) -> Result<Vec<usize>> {
        if !(0.0..=1.0).contains(&strength) {
            return Err(Error::invalid("strength", format!("{strength} is outside [0, 1]")));
        }
        let all = self.ddim_timesteps(steps)?;
        let init = ((steps as f32 * strength) as usize).min(steps);
        Ok(all[steps - init..].to_vec())
    }

    /// The step between consecutive DDIM timesteps.
    pub fn ddim_step(&self, steps: usize) -> usize {
        self.num_train_timesteps / steps.max(1)
    }

    pub fn prediction(&self) -> Result<Prediction> {
        match self.prediction_type.as_str() {
            "epsilon" => Ok(Prediction::Epsilon),
            "v_prediction" => Ok(Prediction::VPrediction),
            other => Err(Error::invalid(
                "prediction_type",
                format!("{other:?} (supported: epsilon, v_prediction)"),
            )),
        }
    }
}

/// A diffusers folder: `model_index.json` and one sub-folder per part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiffusionSpec {
    pub root: PathBuf,
    pub text_encoder: TextEncoderConfig,
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
    pub prediction: Prediction,
    /// The id prompts are padded with, from the `tokenizer/` folder's `pad_token`: 49407
    /// (`<|endoftext|>`) in SD 1.x, 0 (`!`) in SD 2.x.
    #[serde(default)]
    pub pad_token_id: u32,
    /// The precision the backend loads and runs the text encoder, UNet and VAE in (`--dtype`).
    #[serde(default)]
    pub dtype: Dtype,
}

impl DiffusionSpec {
    /// The same models, run in `dtype`.
    pub fn with_dtype(self, dtype: Dtype) -> Self {
        Self { dtype, ..self }
    }

    pub fn from_dir(root: &Path) -> Result<Self> {
        let index = root.join("model_index.json");
        let index_json: serde_json::Value = read_json(&index)?;
        for part in ["text_encoder", "tokenizer", "unet", "vae", "scheduler"] {
            if index_json.get(part).is_none() {
                return Err(Error::config(&index, format!("no `{part}` entry")));
            }
        }
        let scheduler_path = ["scheduler_config.json", "config.json"]
            .iter()
            .map(|n| root.join("scheduler").join(n))
            .find(|p| p.is_file())
            .unwrap_or_else(|| root.join("scheduler/scheduler_config.json"));
        let scheduler: SchedulerConfig = read_json(&scheduler_path)?;
        check_bounds(
            &scheduler_path,
            &[
                ("num_train_timesteps", scheduler.num_train_timesteps, 1, 100_000),
                ("steps_offset", scheduler.steps_offset, 0, 100_000),
            ],
        )?;
        let prediction = scheduler
            .prediction()
            .map_err(|e| Error::config(&scheduler_path, e.to_string()))?;
        scheduler
            .betas()
            .map_err(|e| Error::config(&scheduler_path, e.to_string()))?;
        let spec = DiffusionSpec {
            root: root.to_path_buf(),
            text_encoder: read_json(&root.join("text_encoder/config.json"))?,
            unet: read_json(&root.join("unet/config.json"))?,
            vae: read_json(&root.join("vae/config.json"))?,
            scheduler,
            prediction,
            pad_token_id: 0,
            dtype: Dtype::F32,
        };
        spec.check_limits()?;
        let pad_token_id = crate::tokenizer::pad_token_id(&root.join("tokenizer"))?;
        if pad_token_id as usize >= spec.text_encoder.vocab_size {
            return Err(Error::config(
                root.join("tokenizer"),
                format!(
                    "pad token id {pad_token_id} is outside the text encoder's vocab_size {}",
                    spec.text_encoder.vocab_size
                ),
            ));
        }
        let spec = DiffusionSpec { pad_token_id, ..spec };
        spec.validate()?;
        Ok(spec)
    }

    /// Bounds every size that allocates (about 4× SDXL), before anything is built from it; the
    /// error names the config file, the key and the range.
    pub fn check_limits(&self) -> Result<()> {
        const CH: usize = 8192;
        let (t, u, v) = (&self.text_encoder, &self.unet, &self.vae);
        check_bounds(
            &self.root.join("text_encoder/config.json"),
            &[
                ("hidden_size", t.hidden_size, 1, CH),
                ("intermediate_size", t.intermediate_size, 1, 4 * CH),
                ("num_attention_heads", t.num_attention_heads, 1, 256),
                ("num_hidden_layers", t.num_hidden_layers, 1, 256),
                ("max_position_embeddings", t.max_position_embeddings, 2, 1024),
                ("vocab_size", t.vocab_size, 1, 1 << 20),
            ],
        )?;
        let max_of = |v: &[usize]| v.iter().copied().max().unwrap_or(1);
        check_bounds(
            &self.root.join("unet/config.json"),
            &[
                ("sample_size", u.sample_size.unwrap_or(64), 1, 1024),
                ("in_channels", u.in_channels, 1, 64),
                ("out_channels", u.out_channels, 1, 64),
                ("block_out_channels (count)", u.block_out_channels.len(), 0, 16),
                ("block_out_channels", max_of(&u.block_out_channels), 1, CH),
                ("down_block_types (count)", u.down_block_types.len(), 0, 16),
                ("up_block_types (count)", u.up_block_types.len(), 0, 16),
                ("layers_per_block (count)", u.layers_per_block.count(), 1, 16),
                ("layers_per_block", u.layers_per_block.max(), 1, 16),
                ("cross_attention_dim (count)", u.cross_attention_dim.count(), 1, 16),
                ("cross_attention_dim", u.cross_attention_dim.max(), 1, CH),
                ("attention_head_dim (count)", u.attention_head_dim.count(), 0, 16),
                ("attention_head_dim", u.attention_head_dim.max(), 1, 1024),
                (
                    "transformer_layers_per_block (count)",
                    u.transformer_layers_per_block.count(),
                    1,
                    16,
                ),
                (
                    "transformer_layers_per_block",
                    u.transformer_layers_per_block.max(),
                    0,
                    64,
                ),
                ("norm_num_groups", u.norm_num_groups, 1, 1024),
                ("freq_shift", u.freq_shift, 0, 1024),
            ],
        )?;
        check_bounds(
            &self.root.join("vae/config.json"),
            &[
                ("in_channels", v.in_channels, 1, 64),
                ("out_channels", v.out_channels, 1, 64),
                ("latent_channels", v.latent_channels, 1, 64),
                ("block_out_channels (count)", v.block_out_channels.len(), 0, 16),
                ("block_out_channels", max_of(&v.block_out_channels), 1, CH),
                ("layers_per_block", v.layers_per_block, 1, 16),
                ("norm_num_groups", v.norm_num_groups, 1, 1024),
                ("sample_size", v.sample_size.unwrap_or(512), 1, 8192),
            ],
        )
    }

    /// What every checkpoint must satisfy: one block type per block, and a UNet that cross-attends
    /// to the text encoder's width.
    pub fn validate(&self) -> Result<()> {
        let u = &self.unet;
        if u.down_block_types.len() != u.block_out_channels.len()
            || u.up_block_types.len() != u.block_out_channels.len()
        {
            return Err(Error::config(
                self.root.join("unet/config.json"),
                format!(
                    "{} down and {} up block types for {} block_out_channels",
                    u.down_block_types.len(),
                    u.up_block_types.len(),
                    u.block_out_channels.len()
                ),
            ));
        }
        if u.cross_attention_dim.uniform() != Some(self.text_encoder.hidden_size) {
            return Err(Error::config(
                self.root.join("unet/config.json"),
                format!(
                    "cross_attention_dim {} differs from the text encoder's hidden_size {}",
                    u.cross_attention_dim, self.text_encoder.hidden_size
                ),
            ));
        }
        Ok(())
    }

    /// The layouts adp's UNet and VAE implement, beyond [`Self::validate`]'s consistency: known
    /// block types, one per block, up blocks mirroring the down blocks' cross-attention, head
    /// sizes given, a VAE with blocks and a schedule with timesteps. Both backends call it first.
    pub fn check_supported(&self) -> Result<()> {
        let u = &self.unet;
        let n = u.block_out_channels.len();
        let cross = |t: &str| t.starts_with("CrossAttn");
        let known = |t: &str| {
            matches!(
                t,
                "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D"
            )
        };
        let bad = |m: String| Err(Error::config(self.root.join("unet/config.json"), m));
        if let Some(t) = u.down_block_types.iter().chain(&u.up_block_types).find(|t| !known(t)) {
            return bad(format!("unsupported block type {t:?}"));
        }
        if n == 0 {
            let (down, up) = (u.down_block_types.len(), u.up_block_types.len());
            return bad(format!("{down} down and {up} up block types for 0 block_out_channels"));
        }
        self.validate()?;
        if matches!(&u.attention_head_dim, PerBlock::Each(v) if v.is_empty()) {
            return bad("empty attention_head_dim".into());
        }
        if (0..n).any(|i| cross(&u.down_block_types[i]) != cross(&u.up_block_types[n - 1 - i])) {
            return bad("up blocks do not mirror the down blocks' cross-attention".into());
        }
        if self.vae.block_out_channels.is_empty() {
            return Err(Error::config(
                self.root.join("vae/config.json"),
                "empty block_out_channels",
            ));
        }
        if self.scheduler.num_train_timesteps == 0 {
            return Err(Error::config(self.root.join("scheduler"), "num_train_timesteps is 0"));
        }
        self.check_limits()?;
        self.check_unet_keys()?;
        self.check_text_encoder_and_vae_keys()
    }

    /// The UNet keys that decide its structure, beyond the block types: what adp builds must be
    /// what diffusers builds, or the checkpoint is refused here rather than by a shape error.
    fn check_unet_keys(&self) -> Result<()> {
        let (u, file) = (&self.unet, self.root.join("unet/config.json"));
        let n = u.block_out_channels.len();
        let bad = |m: String| Err(Error::config(&file, m));
        if let Some(h) = &u.num_attention_heads {
            return bad(format!(
                "`num_attention_heads` is {h}; like diffusers' UNet2DConditionModel, adp takes the \
                 head count from `attention_head_dim` (diffusers issue 2011)"
            ));
        }
        for (key, v) in [
            ("attention_head_dim", &u.attention_head_dim),
            ("cross_attention_dim", &u.cross_attention_dim),
            ("layers_per_block", &u.layers_per_block),
            ("transformer_layers_per_block", &u.transformer_layers_per_block),
        ] {
            if matches!(v, PerBlock::Each(l) if l.len() != n) {
                return bad(format!("`{key}` is {v}: {} entries for {n} blocks", v.count()));
            }
        }
        for (key, v) in [
            ("layers_per_block", &u.layers_per_block),
            ("cross_attention_dim", &u.cross_attention_dim),
        ] {
            if v.uniform().is_none() {
                return bad(format!("`{key}` is {v}; adp supports one value for every block"));
            }
        }
        if u.transformer_layers_per_block.uniform() != Some(1) {
            return bad(format!(
                "`transformer_layers_per_block` is {}; adp supports 1",
                u.transformer_layers_per_block
            ));
        }
        match u.extra.get("only_cross_attention") {
            None | Some(serde_json::Value::Bool(false)) => {}
            Some(serde_json::Value::Array(a)) if a.iter().all(|v| v == &serde_json::Value::Bool(false)) => {}
            Some(v) => return bad(format!("`only_cross_attention` is {v}; adp supports false")),
        }
        check_fixed(&file, &u.extra, UNET_FIXED)?;
        for (i, &c) in u.block_out_channels.iter().enumerate() {
            let heads = u.attention_head_dim.get(i);
            if heads == 0 || c % heads != 0 {
                return bad(format!(
                    "block {i}: `block_out_channels` {c} is not a multiple of `attention_head_dim` {heads} \
                     (the number of heads)"
                ));
            }
            if c % u.norm_num_groups != 0 {
                return bad(format!(
                    "block {i}: `block_out_channels` {c} is not a multiple of `norm_num_groups` {}",
                    u.norm_num_groups
                ));
            }
        }
        Ok(())
    }

    fn check_text_encoder_and_vae_keys(&self) -> Result<()> {
        let (t, file) = (&self.text_encoder, self.root.join("text_encoder/config.json"));
        if !matches!(t.hidden_act.as_str(), "quick_gelu" | "gelu") {
            return Err(Error::config(
                &file,
                format!(
                    "`hidden_act` is {:?}; adp supports \"quick_gelu\" or \"gelu\"",
                    t.hidden_act
                ),
            ));
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return Err(Error::config(
                &file,
                format!(
                    "`hidden_size` {} is not a multiple of `num_attention_heads` {}",
                    t.hidden_size, t.num_attention_heads
                ),
            ));
        }
        let (v, file) = (&self.vae, self.root.join("vae/config.json"));
        check_fixed(&file, &v.extra, VAE_FIXED)?;
        let n = v.block_out_channels.len();
        for (key, kind) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            let Some(types) = v.extra.get(key) else { continue };
            let ok = types
                .as_array()
                .is_some_and(|a| a.len() == n && a.iter().all(|t| t.as_str() == Some(kind)));
            if !ok {
                return Err(Error::config(
                    &file,
                    format!("`{key}` is {types}; adp supports {n} × {kind:?}"),
                ));
            }
        }
        if let Some(c) = v.block_out_channels.iter().find(|&&c| c % v.norm_num_groups != 0) {
            return Err(Error::config(
                &file,
                format!(
                    "`block_out_channels` {c} is not a multiple of `norm_num_groups` {}",
                    v.norm_num_groups
                ),
            ));
        }
        Ok(())
    }

    /// The safetensors file of a part (`unet`, `vae`, `text_encoder`).
    pub fn weights(&self, part: &str) -> Result<PathBuf> {
        let dir = self.root.join(part);
        ["diffusion_pytorch_model.safetensors", "model.safetensors"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::io(&dir, "no diffusion_pytorch_model.safetensors or model.safetensors"))
    }

    /// The image side the pipeline generates at, as diffusers computes it (SPEC §2): the UNet's
    /// `sample_size` (64 when absent) × 2^(VAE blocks − 1): 512 for 2.1-base, 768 for 2.1. The
    /// VAE config's own `sample_size` is not the image size (2.1-base's says 768).
    pub fn image_size(&self) -> usize {
        self.unet.sample_size.unwrap_or(64) * self.vae_downsampling()
    }

    /// The shapes a diffuser on this checkpoint works at.
    pub fn dims(&self) -> crate::requests::DiffuserDims {
        crate::requests::DiffuserDims {
            image_size: self.image_size(),
            latent_channels: self.vae.latent_channels,
            vae_downsampling: self.vae_downsampling(),
            unet_downsampling: 1 << self.unet.block_out_channels.len().saturating_sub(1),
            text_width: self.text_encoder.hidden_size,
            context_length: self.text_encoder.max_position_embeddings,
            train_timesteps: self.scheduler.num_train_timesteps,
            prediction: self.prediction,
        }
    }

    /// Latent side = image side / 2^(VAE blocks − 1).
    pub fn vae_downsampling(&self) -> usize {
        1 << self.vae.block_out_channels.len().saturating_sub(1)
    }
}

fn d_1() -> usize {
    1
}
fn d_2_blocks() -> PerBlock {
    PerBlock::One(2)
}
fn d_1_blocks() -> PerBlock {
    PerBlock::One(1)
}
fn d_3() -> usize {
    3
}
fn d_4() -> usize {
    4
}
fn d_32() -> usize {
    32
}
fn d_77() -> usize {
    77
}
fn d_1000() -> usize {
    1000
}
fn d_vocab() -> usize {
    49408
}
fn d_head_dim() -> PerBlock {
    PerBlock::One(8)
}
fn d_true() -> bool {
    true
}
fn d_eps5() -> f64 {
    1e-5
}
fn d_ln_eps() -> f64 {
    1e-5
}
fn d_scaling() -> f32 {
    0.18215
}
fn d_beta_start() -> f64 {
    0.0001
}
fn d_beta_end() -> f64 {
    0.02
}
fn d_beta_schedule() -> String {
    "linear".into()
}
fn d_epsilon() -> String {
    "epsilon".into()
}
fn d_leading() -> String {
    "leading".into()
}
fn d_quick_gelu() -> String {
    "quick_gelu".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vae_blocks_follow_diffusers() {
        // SD's VAE: diffusers' `Encoder`/`Decoder` with block_out_channels [128, 256, 512, 512].
        let c: VaeConfig =
            serde_json::from_str(r#"{"block_out_channels": [128, 256, 512, 512], "layers_per_block": 2}"#).unwrap();
        let enc = c.encoder_blocks();
        let resnets: Vec<_> = enc.iter().map(|b| b.resnets.clone()).collect();
        assert_eq!(
            resnets,
            [
                vec![(128, 128), (128, 128)],
                vec![(128, 256), (256, 256)],
                vec![(256, 512), (512, 512)],
                vec![(512, 512), (512, 512)],
            ]
        );
        assert_eq!(
            enc.iter().map(|b| b.resample).collect::<Vec<_>>(),
            [true, true, true, false]
        );
        let dec = c.decoder_blocks();
        assert_eq!(dec[0].resnets, [(512, 512); 3]);
        assert_eq!(dec[2].resnets, [(512, 256), (256, 256), (256, 256)]);
        assert_eq!(dec[3].resnets, [(256, 128), (128, 128), (128, 128)]);
        assert_eq!(dec.iter().map(|b| b.out).collect::<Vec<_>>(), [512, 512, 256, 128]);
        assert_eq!(
            dec.iter().map(|b| b.resample).collect::<Vec<_>>(),
            [true, true, true, false]
        );
    }

    #[test]
    fn scaled_linear_matches_diffusers() {
        let s: SchedulerConfig = serde_json::from_str(
            r#"{"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "prediction_type": "v_prediction", "num_train_timesteps": 1000}"#,
        )
        .unwrap();
        let b = s.betas().unwrap();
        assert!((b[0] - 0.00085).abs() < 1e-12 && (b[999] - 0.012).abs() < 1e-12);
        // diffusers: torch.linspace(0.00085**0.5, 0.012**0.5, 1000)**2, element 500
        let mid = (0.00085f64.sqrt() + (0.012f64.sqrt() - 0.00085f64.sqrt()) * 500.0 / 999.0).powi(2);
        assert!((b[500] - mid).abs() < 1e-15);
        assert_eq!(s.prediction().unwrap(), Prediction::VPrediction);
        let ac = s.alphas_cumprod().unwrap();
        assert!((ac[0] - (1.0 - 0.00085)).abs() < 1e-12 && ac[999] < ac[0]);
    }

    #[test]
    fn ddim_timesteps_match_diffusers() {
        let s: SchedulerConfig = serde_json::from_str(r#"{"steps_offset": 1, "timestep_spacing": "leading"}"#).unwrap();
        // DDIMScheduler(steps_offset=1).set_timesteps(30).timesteps[:3] and [-1]
        let t = s.ddim_timesteps(30).unwrap();
        assert_eq!((&t[..3], t[29]), (&[958usize, 925, 892][..], 1));
        let i2i = s.img2img_timesteps(30, 0.5).unwrap();
        assert_eq!((i2i.len(), i2i[0]), (15, 463));
    }

    /// Asserts that `base` with `edit` applied is refused by `check_supported` with `fragment`.
    fn refused(base: &DiffusionSpec, edit: &dyn Fn(&mut DiffusionSpec), fragment: &str) {
        let mut spec = base.clone();
        edit(&mut spec);
        let e = spec.check_supported().unwrap_err().to_string();
        assert!(e.contains(fragment), "{e:?} does not contain {fragment:?}");
    }

    fn tiny_spec() -> DiffusionSpec {
        DiffusionSpec {
            root: PathBuf::from("sd"),
            text_encoder: serde_json::from_str(
                r#"{"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1}"#,
            )
            .unwrap(),
            unet: serde_json::from_str(
                r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16], "cross_attention_dim": 8,
                    "norm_num_groups": 4,
                    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}"#,
            )
            .unwrap(),
            vae: serde_json::from_str(r#"{"block_out_channels": [8], "norm_num_groups": 4}"#).unwrap(),
            scheduler: serde_json::from_str("{}").unwrap(),
            prediction: Prediction::Epsilon,
            pad_token_id: 0,
            dtype: Dtype::F32,
        }
    }

    #[test]
    fn image_size_is_the_unet_sample_size_times_the_vae_downsampling() {
        // 2.1-base: unet.sample_size 64, 4 VAE blocks; its VAE config says sample_size 768.
        let mut spec = tiny_spec();
        spec.unet.sample_size = Some(64);
        spec.vae = serde_json::from_str(r#"{"block_out_channels": [128, 256, 512, 512], "sample_size": 768}"#).unwrap();
        assert_eq!((spec.image_size(), spec.dims().image_size), (512, 512));
        // 2.1: 96 × 8.
        spec.unet.sample_size = Some(96);
        assert_eq!(spec.dims().image_size, 768);
        // No UNet sample_size: diffusers' 64 latents.
        spec.unet.sample_size = None;
        spec.vae.sample_size = Some(256);
        assert_eq!(spec.dims().image_size, 512);
    }

    #[test]
    fn unsupported_layouts_are_named() {
        tiny_spec().check_supported().unwrap();
        let base = tiny_spec();
        let fails = |edit: &dyn Fn(&mut DiffusionSpec), fragment: &str| refused(&base, edit, fragment);
        fails(
            &|s| s.unet.down_block_types[1] = "AttnDownBlock2D".into(),
            "unet/config.json: unsupported block",
        );
        fails(
            &|s| s.unet.up_block_types.pop().map(drop).unwrap(),
            "2 down and 1 up block types for 2 block_out",
        );
        let none = |s: &mut DiffusionSpec| {
            s.unet.block_out_channels.clear();
            s.unet.down_block_types.clear();
            s.unet.up_block_types.clear();
        };
        fails(&none, "0 down and 0 up block types for 0 block_out_channels");
        fails(
            &|s| s.unet.cross_attention_dim = PerBlock::One(4),
            "cross_attention_dim 4 differs from the text encoder's hidden_size",
        );
        fails(
            &|s| s.unet.attention_head_dim = PerBlock::Each(vec![]),
            "empty attention_head_dim",
        );
        fails(
            &|s| s.unet.up_block_types.reverse(),
            "up blocks do not mirror the down blocks' cross-attention",
        );
        fails(
            &|s| s.vae.block_out_channels.clear(),
            "vae/config.json: empty block_out_channels",
        );
        fails(
            &|s| s.scheduler.num_train_timesteps = 0,
            "scheduler: num_train_timesteps is 0",
        );
    }

    #[test]
    fn sd_keys_are_read_and_what_adp_cannot_run_is_refused_naming_key_and_value() {
        let mut spec = tiny_spec();
        // SD 1.5's spelling: one head count, conv projections; SD 2.1's: per-block lists, upcast.
        spec.unet = serde_json::from_value(serde_json::json!({
            "in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16], "norm_num_groups": 4,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "cross_attention_dim": [8, 8], "attention_head_dim": [2, 4], "layers_per_block": [1, 1],
            "transformer_layers_per_block": 1, "use_linear_projection": false, "upcast_attention": true,
            "only_cross_attention": [false, false], "mid_block_type": "UNetMidBlock2DCrossAttn",
            "act_fn": "silu", "mid_block_scale_factor": 1, "dual_cross_attention": false,
            "class_embed_type": null, "_class_name": "UNet2DConditionModel"
        }))
        .unwrap();
        spec.check_supported().unwrap();
        assert_eq!(
            (
                spec.unet.cross_dim(),
                spec.unet.layers(),
                spec.unet.attention_head_dim.get(1)
            ),
            (8, 1, 4)
        );
        assert!(spec.unet.upcast_attention && !spec.unet.use_linear_projection);
        let fails = |edit: &dyn Fn(&mut DiffusionSpec), fragment: &str| refused(&spec, edit, fragment);
        let set = |key: &'static str, v: serde_json::Value| {
            move |s: &mut DiffusionSpec| {
                s.unet.extra.insert(key.into(), v.clone());
            }
        };
        fails(
            &|s| s.unet.num_attention_heads = Some(PerBlock::One(2)),
            "unet/config.json: `num_attention_heads` is 2",
        );
        fails(
            &|s| s.unet.attention_head_dim = PerBlock::Each(vec![2, 4, 4]),
            "`attention_head_dim` is [2, 4, 4]: 3 entries for 2 blocks",
        );
        fails(
            &|s| s.unet.attention_head_dim = PerBlock::Each(vec![3, 4]),
            "block 0: `block_out_channels` 8 is not a multiple of `attention_head_dim` 3",
        );
        fails(
            &|s| s.unet.layers_per_block = PerBlock::Each(vec![1, 2]),
            "`layers_per_block` is [1, 2]; adp supports one value for every block",
        );
        fails(
            &|s| s.unet.cross_attention_dim = PerBlock::Each(vec![8, 16]),
            "cross_attention_dim [8, 16] differs from the text encoder's hidden_size 8",
        );
        fails(
            &|s| s.unet.transformer_layers_per_block = PerBlock::One(2),
            "`transformer_layers_per_block` is 2; adp supports 1",
        );
        fails(
            &set("only_cross_attention", serde_json::json!([true, false])),
            "`only_cross_attention` is [true,false]; adp supports false",
        );
        fails(
            &set("dual_cross_attention", true.into()),
            "`dual_cross_attention` is true",
        );
        fails(
            &set("class_embed_type", "timestep".into()),
            "`class_embed_type` is \"timestep\"; adp supports null",
        );
        fails(
            &set("addition_embed_type", "text_time".into()),
            "`addition_embed_type` is \"text_time\"",
        );
        fails(
            &set("mid_block_type", "UNetMidBlock2DSimpleCrossAttn".into()),
            "`mid_block_type` is",
        );
        fails(
            &set("mid_block_type", serde_json::Value::Null),
            "`mid_block_type` is null",
        );
        fails(
            &set("time_embedding_type", "fourier".into()),
            "`time_embedding_type` is \"fourier\"",
        );
        fails(&set("act_fn", "gelu".into()), "unet/config.json: `act_fn` is \"gelu\"");
        fails(&set("conv_in_kernel", 7.into()), "`conv_in_kernel` is 7");
        // Every fixed key refuses a value outside its list.
        for (key, _) in UNET_FIXED {
            fails(&set(key, "nonsense".into()), &format!("`{key}` is \"nonsense\""));
        }
        for (key, _) in VAE_FIXED {
            fails(
                &|s| {
                    s.vae.extra.insert((*key).into(), "nonsense".into());
                },
                &format!("vae/config.json: `{key}` is \"nonsense\""),
            );
        }
        fails(
            &|s| {
                s.vae
                    .extra
                    .insert("down_block_types".into(), serde_json::json!(["DownBlock2D"]));
            },
            "vae/config.json: `down_block_types` is [\"DownBlock2D\"]; adp supports 1 × \"DownEncoderBlock2D\"",
        );
        fails(
            &|s| s.text_encoder.hidden_act = "relu".into(),
            "text_encoder/config.json: `hidden_act` is \"relu\"",
        );
        fails(
            &|s| s.text_encoder.num_attention_heads = 3,
            "`hidden_size` 8 is not a multiple of `num_attention_heads` 3",
        );
        fails(
            &|s| s.unet.norm_num_groups = 16,
            "block 0: `block_out_channels` 8 is not a multiple of `norm_num_groups` 16",
        );
    }

    #[test]
    fn absurd_sizes_are_refused_naming_file_key_and_range() {
        tiny_spec().check_limits().unwrap();
        let base = tiny_spec();
        let fails = |edit: &dyn Fn(&mut DiffusionSpec), fragment: &str| refused(&base, edit, fragment);
        fails(
            &|s| s.unet.layers_per_block = PerBlock::One(1 << 40),
            "unet/config.json: `layers_per_block` is 1099511627776, outside the supported range 1..=16",
        );
        fails(
            &|s| s.unet.sample_size = Some(1_000_000),
            "unet/config.json: `sample_size`",
        );
        fails(
            &|s| s.unet.block_out_channels[1] = 1 << 30,
            "`block_out_channels` is 1073741824",
        );
        fails(
            &|s| s.vae.latent_channels = 100_000,
            "vae/config.json: `latent_channels`",
        );
        fails(
            &|s| s.text_encoder.num_hidden_layers = 1_000_000_000,
            "text_encoder/config.json: `num_hidden_layers`",
        );
    }

    #[test]
    fn missing_parts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = DiffusionSpec::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("model_index.json"), "{e}");
        std::fs::write(
            dir.path().join("model_index.json"),
            r#"{"unet": ["diffusers", "UNet2DConditionModel"]}"#,
        )
        .unwrap();
        let e = DiffusionSpec::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no `text_encoder` entry"), "{e}");
    }
}
