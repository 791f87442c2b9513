//! OpenCLIP model configs (the JSON files of open_clip's `model_configs/`) and checkpoints.
use super::{check_bounds, check_ratio, read_json};
use crate::{Dtype, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

fn default_head_width() -> usize {
    64
}
fn default_mlp_ratio() -> f32 {
    4.0
}
fn default_context() -> usize {
    77
}
fn default_vocab() -> usize {
    49408
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub image_size: usize,
    pub layers: usize,
    pub width: usize,
    pub patch_size: usize,
    #[serde(default = "default_head_width")]
    pub head_width: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    #[serde(default = "default_context")]
    pub context_length: usize,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    pub width: usize,
    pub heads: usize,
    pub layers: usize,
    #[serde(default = "default_mlp_ratio")]
    pub mlp_ratio: f32,
}

/// An open_clip model config: `{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub embed_dim: usize,
    #[serde(default)]
    pub quick_gelu: bool,
    pub vision_cfg: VisionConfig,
    pub text_cfg: TextConfig,
}

impl ClipConfig {
    fn preset(embed_dim: usize, v: (usize, usize, usize, usize, usize), t: (usize, usize, usize)) -> Self {
        ClipConfig {
            embed_dim,
            quick_gelu: false,
            vision_cfg: VisionConfig {
                image_size: v.0,
                layers: v.1,
                width: v.2,
                patch_size: v.3,
                head_width: v.4,
                mlp_ratio: 4.0,
            },
            text_cfg: TextConfig {
                context_length: 77,
                vocab_size: 49408,
                width: t.0,
                heads: t.1,
                layers: t.2,
                mlp_ratio: 4.0,
            },
        }
    }
    pub fn vit_b_16() -> Self {
        Self::preset(512, (224, 12, 768, 16, 64), (512, 8, 12))
    }
    pub fn vit_b_16_plus_240() -> Self {
        Self::preset(640, (240, 12, 896, 16, 64), (640, 10, 12))
    }
    pub fn vit_l_14() -> Self {
        Self::preset(768, (224, 24, 1024, 14, 64), (768, 12, 12))
    }
    /// The paper's default (laion2b_s32b_b79k weights).
    pub fn vit_h_14() -> Self {
        Self::preset(1024, (224, 32, 1280, 14, 80), (1024, 16, 24))
    }

    pub const PRESETS: [&'static str; 4] = ["ViT-B-16", "ViT-B-16-plus-240", "ViT-L-14", "ViT-H-14"];

    pub fn from_preset(name: &str) -> Result<Self> {
        match name {
            "ViT-B-16" => Ok(Self::vit_b_16()),
            "ViT-B-16-plus-240" => Ok(Self::vit_b_16_plus_240()),
            "ViT-L-14" => Ok(Self::vit_l_14()),
            "ViT-H-14" => Ok(Self::vit_h_14()),
            _ => Err(Error::invalid(
                "CLIP preset",
                format!("{name:?}; known: {}", Self::PRESETS.join(", ")),
            )),
        }
    }

    /// Reads an open_clip model config, or a hub `open_clip_config.json` (`{"model_cfg": …}`).
    pub fn from_file(path: &Path) -> Result<Self> {
        let value: serde_json::Value = read_json(path)?;
        let model = value.get("model_cfg").cloned().unwrap_or(value);
        let cfg: ClipConfig = serde_json::from_value(model).map_err(|e| Error::config(path, e.to_string()))?;
        cfg.check_limits(path)?;
        cfg.validate().map_err(|m| Error::config(path, m))?;
        Ok(cfg)
    }

    /// Bounds every size that allocates (about 4× ViT-bigG-14), before anything is built from
    /// it; `file` names the config in the error.
    pub fn check_limits(&self, file: &Path) -> Result<()> {
        let (v, t) = (&self.vision_cfg, &self.text_cfg);
        check_bounds(
            file,
            &[
                ("embed_dim", self.embed_dim, 1, 8192),
                ("vision_cfg.image_size", v.image_size, 1, 2048),
                ("vision_cfg.patch_size", v.patch_size, 1, 256),
                ("vision_cfg.width", v.width, 1, 8192),
                ("vision_cfg.layers", v.layers, 1, 256),
                ("vision_cfg.head_width", v.head_width, 1, 1024),
                ("text_cfg.context_length", t.context_length, 2, 1024),
                ("text_cfg.vocab_size", t.vocab_size, 1, 1 << 20),
                ("text_cfg.width", t.width, 1, 8192),
                ("text_cfg.heads", t.heads, 1, 256),
                ("text_cfg.layers", t.layers, 1, 256),
            ],
        )?;
        check_ratio(file, "vision_cfg.mlp_ratio", v.mlp_ratio, 16.0)?;
        check_ratio(file, "text_cfg.mlp_ratio", t.mlp_ratio, 16.0)
    }

    /// Checks the relations between sizes that the architecture needs.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let v = &self.vision_cfg;
        let t = &self.text_cfg;
        let mut problems = Vec::new();
        if v.patch_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            problems.push(format!(
                "vision_cfg.image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.head_width == 0 || !v.width.is_multiple_of(v.head_width) {
            problems.push(format!(
                "vision_cfg.width {} is not a multiple of head_width {}",
                v.width, v.head_width
            ));
        }
        if t.heads == 0 || !t.width.is_multiple_of(t.heads) {
            problems.push(format!(
                "text_cfg.width {} is not a multiple of heads {}",
                t.width, t.heads
            ));
        }
        if t.context_length < 2 {
            problems.push(format!(
                "text_cfg.context_length {} leaves no room for start and end tokens",
                t.context_length
            ));
        }
        if self.embed_dim == 0 || v.layers == 0 || t.layers == 0 {
            problems.push("embed_dim and layer counts must be positive".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Every tensor of an open_clip `CLIP` state dict for this config, with its shape; the
    /// config's limits are checked first (no name is built for a billion layers).
    pub fn tensor_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.check_limits(Path::new("open_clip config"))?;
        fn block(out: &mut Vec<(String, Vec<usize>)>, prefix: &str, w: usize, mlp_ratio: f32) {
            let hidden = (w as f32 * mlp_ratio) as usize;
            for (name, shape) in [
                ("ln_1.weight", vec![w]),
                ("ln_1.bias", vec![w]),
                ("attn.in_proj_weight", vec![3 * w, w]),
                ("attn.in_proj_bias", vec![3 * w]),
                ("attn.out_proj.weight", vec![w, w]),
                ("attn.out_proj.bias", vec![w]),
                ("ln_2.weight", vec![w]),
                ("ln_2.bias", vec![w]),
                ("mlp.c_fc.weight", vec![hidden, w]),
                ("mlp.c_fc.bias", vec![hidden]),
                ("mlp.c_proj.weight", vec![w, hidden]),
                ("mlp.c_proj.bias", vec![w]),
            ] {
                out.push((format!("{prefix}.{name}"), shape));
            }
        }
        let (v, t) = (&self.vision_cfg, &self.text_cfg);
        let w = v.width;
        let mut out = vec![
            ("visual.class_embedding".to_string(), vec![w]),
            (
                "visual.positional_embedding".into(),
                vec![self.grid() * self.grid() + 1, w],
            ),
            ("visual.conv1.weight".into(), vec![w, 3, v.patch_size, v.patch_size]),
            ("visual.ln_pre.weight".into(), vec![w]),
            ("visual.ln_pre.bias".into(), vec![w]),
        ];
        for i in 0..v.layers {
            block(&mut out, &format!("visual.transformer.resblocks.{i}"), w, v.mlp_ratio);
        }
        out.push(("visual.ln_post.weight".into(), vec![w]));
        out.push(("visual.ln_post.bias".into(), vec![w]));
        out.push(("visual.proj".into(), vec![w, self.embed_dim]));
        out.push(("token_embedding.weight".into(), vec![t.vocab_size, t.width]));
        out.push(("positional_embedding".into(), vec![t.context_length, t.width]));
        for i in 0..t.layers {
            block(&mut out, &format!("transformer.resblocks.{i}"), t.width, t.mlp_ratio);
        }
        out.push(("ln_final.weight".into(), vec![t.width]));
        out.push(("ln_final.bias".into(), vec![t.width]));
        out.push(("text_projection".into(), vec![t.width, self.embed_dim]));
        out.push(("logit_scale".into(), vec![]));
        Ok(out)
    }

    /// The shapes an encoder on this config works at.
    pub fn encoder_dims(&self) -> crate::requests::EncoderDims {
        crate::requests::EncoderDims {
            image_size: self.vision_cfg.image_size,
            grid: self.grid(),
            embed_dim: self.embed_dim,
            vision_width: self.vision_cfg.width,
            text_width: self.text_cfg.width,
            context_length: self.text_cfg.context_length,
        }
    }

    pub fn grid(&self) -> usize {
        self.vision_cfg.image_size / self.vision_cfg.patch_size
    }
    pub fn vision_heads(&self) -> usize {
        self.vision_cfg.width / self.vision_cfg.head_width
    }
}

/// A CLIP checkpoint on disk: open_clip-named safetensors plus its model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipCheckpoint {
    pub config: ClipConfig,
    pub config_path: PathBuf,
    pub weights: PathBuf,
    /// The precision the backend loads and runs the model in (`--dtype`); not a property of
    /// the file, which may hold any float type.
    #[serde(default)]
    pub dtype: Dtype,
}

impl ClipCheckpoint {
    const CONFIG_NAMES: [&'static str; 2] = ["open_clip_config.json", "config.json"];
    const WEIGHT_NAMES: [&'static str; 2] = ["open_clip_model.safetensors", "model.safetensors"];

    /// Finds the config and the weights in a folder (open_clip hub names first).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(dir, "CLIP checkpoint folder not found"));
        }
        let find = |names: &[&str], what: &str| {
            names
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .ok_or_else(|| Error::io(dir, format!("no {what} found (looked for {})", names.join(", "))))
        };
        let config_path = find(&Self::CONFIG_NAMES, "open_clip model config")?;
        let weights = find(&Self::WEIGHT_NAMES, "safetensors weights")?;
        Ok(Self {
            config: ClipConfig::from_file(&config_path)?,
            config_path,
            weights,
            dtype: Dtype::F32,
        })
    }

    /// The same checkpoint, run in `dtype`.
    pub fn with_dtype(self, dtype: Dtype) -> Self {
        Self { dtype, ..self }
    }

    /// Checks the weights file against the config: every tensor present, with the implied shape.
    pub fn check_weights(&self) -> Result<()> {
        self.config.check_limits(&self.config_path)?;
        super::st::check_tensors(&self.weights, &self.config.tensor_shapes()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_open_clip_json() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ViT-H-14.json");
        std::fs::write(
            &p,
            r#"{"embed_dim": 1024, "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280,
              "head_width": 80, "patch_size": 14}, "text_cfg": {"context_length": 77,
              "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}"#,
        )
        .unwrap();
        assert_eq!(ClipConfig::from_file(&p).unwrap(), ClipConfig::vit_h_14());
        assert_eq!(ClipConfig::vit_h_14().grid(), 16);
        assert_eq!(ClipConfig::vit_b_16_plus_240().grid(), 15);
    }

    #[test]
    fn absurd_sizes_are_refused_naming_the_key_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("open_clip_config.json");
        for (section, key, value) in [
            ("vision_cfg", "image_size", 1_000_000_000usize),
            ("vision_cfg", "image_size", 100_000),
            ("vision_cfg", "layers", 1_000_000_000),
            ("vision_cfg", "width", 1 << 40),
            ("vision_cfg", "patch_size", 0),
            ("text_cfg", "context_length", 1 << 30),
            ("text_cfg", "vocab_size", 1 << 40),
            ("text_cfg", "layers", 1_000_000_000),
            ("text_cfg", "heads", 100_000),
        ] {
            let mut cfg = serde_json::to_value(ClipConfig::vit_b_16()).unwrap();
            cfg[section][key] = value.into();
            std::fs::write(&p, cfg.to_string()).unwrap();
            let e = ClipConfig::from_file(&p).unwrap_err().to_string();
            let want = format!("`{section}.{key}` is {value}, outside the supported range");
            assert!(e.contains("open_clip_config.json") && e.contains(&want), "{e}");
        }
        let mut cfg = serde_json::to_value(ClipConfig::vit_b_16()).unwrap();
        cfg["vision_cfg"]["mlp_ratio"] = 1e30.into();
        std::fs::write(&p, cfg.to_string()).unwrap();
        let e = ClipConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("`vision_cfg.mlp_ratio`"), "{e}");
        // Built in code, the same config is refused before any layer's name is made.
        let mut cfg = ClipConfig::vit_b_16();
        cfg.vision_cfg.layers = usize::MAX;
        assert!(cfg
            .tensor_shapes()
            .unwrap_err()
            .to_string()
            .contains("vision_cfg.layers"));
        assert_eq!(
            ClipConfig::vit_h_14().tensor_shapes().unwrap().len(),
            5 + 32 * 12 + 3 + 2 + 24 * 12 + 4
        );
    }

    #[test]
    fn a_config_that_is_not_a_regular_file_is_refused_before_reading() {
        let e = ClipConfig::from_file(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn contradictions_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.json");
        let mut cfg = ClipConfig::vit_b_16();
        cfg.vision_cfg.patch_size = 15;
        std::fs::write(&p, serde_json::to_string(&cfg).unwrap()).unwrap();
        let e = ClipConfig::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("bad.json") && e.contains("patch_size 15"), "{e}");
        assert!(ClipConfig::from_preset("ViT-X")
            .unwrap_err()
            .to_string()
            .contains("ViT-H-14"));
    }
}
