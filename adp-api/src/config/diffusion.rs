//! A Stable Diffusion checkpoint in the diffusers folder layout, read from its configs.
use super::{check_bounds, read_json};
use crate::{requests::Prediction, Error, Result};
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
    #[serde(default = "d_2")]
    pub layers_per_block: usize,
    pub cross_attention_dim: usize,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_32")]
    pub norm_num_groups: usize,
    #[serde(default = "d_eps5")]
    pub norm_eps: f64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
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
}

impl DiffusionSpec {
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
        };
        spec.check_limits()?;
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
        let per_block = |v: &PerBlock| match v {
            PerBlock::One(x) => (1, *x),
            PerBlock::Each(v) => (v.len(), v.iter().copied().max().unwrap_or(0)),
        };
        let (head_blocks, head_dim) = per_block(&u.attention_head_dim);
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
                ("layers_per_block", u.layers_per_block, 1, 16),
                ("cross_attention_dim", u.cross_attention_dim, 1, CH),
                ("attention_head_dim (count)", head_blocks, 0, 16),
                ("attention_head_dim", head_dim, 1, 1024),
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
        if u.cross_attention_dim != self.text_encoder.hidden_size {
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
        self.check_limits()
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
fn d_2() -> usize {
    2
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

    fn tiny_spec() -> DiffusionSpec {
        DiffusionSpec {
            root: PathBuf::from("sd"),
            text_encoder: serde_json::from_str(
                r#"{"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_hidden_layers": 1}"#,
            )
            .unwrap(),
            unet: serde_json::from_str(
                r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [8, 16], "cross_attention_dim": 8,
                    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}"#,
            )
            .unwrap(),
            vae: serde_json::from_str(r#"{"block_out_channels": [8]}"#).unwrap(),
            scheduler: serde_json::from_str("{}").unwrap(),
            prediction: Prediction::Epsilon,
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
        let fails = |edit: &dyn Fn(&mut DiffusionSpec), fragment: &str| {
            let mut spec = tiny_spec();
            edit(&mut spec);
            let e = spec.check_supported().unwrap_err().to_string();
            assert!(e.contains(fragment), "{e:?} does not contain {fragment:?}");
        };
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
            &|s| s.unet.cross_attention_dim = 4,
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
    fn absurd_sizes_are_refused_naming_file_key_and_range() {
        tiny_spec().check_limits().unwrap();
        let fails = |edit: &dyn Fn(&mut DiffusionSpec), fragment: &str| {
            let mut spec = tiny_spec();
            edit(&mut spec);
            let e = spec.check_supported().unwrap_err().to_string();
            assert!(e.contains(fragment), "{e:?} does not contain {fragment:?}");
        };
        fails(
            &|s| s.unet.layers_per_block = 1 << 40,
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
