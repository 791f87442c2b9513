//! Arguments several subcommands share.
use adp_api::{BackboneCheckpoint, ClipCheckpoint, Device, Dtype};
use adp_host::detect::{default_backbone, Checkpoints, Method, SupportViews};
use adp_host::plugin::{self, Plugin};
use std::path::PathBuf;

/// Where plugins are searched.
#[derive(clap::Args)]
pub struct PluginDirs {
    /// Folder to search for plugins (repeatable). Default: $ADP_PLUGIN_PATH, else the folder of
    /// `adp`.
    #[arg(long = "plugin-dir")]
    pub plugin_dirs: Vec<PathBuf>,
}

impl PluginDirs {
    pub fn dirs(&self) -> Vec<PathBuf> {
        plugin::plugin_dirs(&self.plugin_dirs)
    }
    /// The plugin named by backend name (searched in the folders) or by path.
    pub fn find(&self, name_or_path: &str) -> adp_api::Result<Plugin> {
        plugin::find(name_or_path, &self.dirs())
    }
}

/// Where the work runs and what stderr shows.
#[derive(clap::Args)]
pub struct Run {
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Nothing on stderr but errors (no progress bars, no tables); stdout keeps its JSON lines.
    #[arg(long)]
    pub quiet: bool,
}

/// The plugin and models a fit or an evaluation runs on.
#[derive(clap::Args)]
pub struct Models {
    /// Plugin name (searched in the plugin folders) or path.
    #[arg(long, default_value = "candle")]
    pub plugin: String,
    #[command(flatten)]
    pub dirs: PluginDirs,
    /// open_clip checkpoint folder (`open_clip_config.json`, `open_clip_model.safetensors`);
    /// needed by every method but `visual`.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// EfficientNet-Lite safetensors for `visual` [default: the one scripts/setup-weights.sh
    /// provides, $ADP_WEIGHTS_DIR/efficientnet-lite0.safetensors]
    #[arg(long)]
    pub backbone: Option<PathBuf>,
    /// Stable Diffusion folder (diffusers layout); not needed by `winclip` and `visual`.
    #[arg(long)]
    pub sd: Option<PathBuf>,
    #[arg(long, default_value = "f32", help = DTYPE_HELP)]
    pub dtype: Dtype,
}

pub const DTYPE_HELP: &str = "Precision the frozen CLIP and Stable Diffusion models run in: f32, f16 or bf16 \
    (concept vectors, their optimiser state and the `visual` EfficientNet stay f32)";

impl Models {
    pub fn backend(&self) -> adp_api::Result<Plugin> {
        self.dirs.find(&self.plugin)
    }
    /// The default method for these models: ADP with `--clip`, else `visual`.
    pub fn default_method(&self) -> Method {
        Method::default_for(self.clip.is_some())
    }
    /// CLIP where given; the backbone where one of `methods` needs it.
    pub fn checkpoints(&self, methods: &[Method]) -> anyhow::Result<Checkpoints> {
        let backbone = match methods.iter().any(|m| !m.needs_clip()) {
            true => Some(BackboneCheckpoint::from_file(
                &self.backbone.clone().unwrap_or_else(default_backbone),
            )?),
            false => None,
        };
        Ok(Checkpoints {
            clip: self
                .clip
                .as_deref()
                .map(|d| ClipCheckpoint::from_dir(d).map(|c| c.with_dtype(self.dtype)))
                .transpose()?,
            backbone,
        })
    }
    pub fn sd(&self) -> anyhow::Result<Option<adp_api::DiffusionSpec>> {
        let sd = self.sd.as_deref().map(adp_api::DiffusionSpec::from_dir).transpose()?;
        Ok(sd.map(|s| s.with_dtype(self.dtype)))
    }
}

/// Fitting hyperparameters shared by `adp fit` and `adp eval`.
#[derive(clap::Args)]
pub struct Training {
    /// Optimisation steps per concept (the paper: 3000).
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    #[arg(long, default_value_t = 4)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 30)]
    pub ddim_steps: usize,
    #[arg(long, default_value_t = 20)]
    pub validation_pseudo: usize,
}

/// The stored decision's target (`adp fit`, and every fit of `adp eval`).
#[derive(clap::Args)]
pub struct DecisionArgs {
    /// The share of normal photos the stored threshold may flag (0 < R < 1). The threshold is
    /// chosen from the support photos alone: each scored against the others' memory, with moved
    /// views (docs/method.md, "The decision"); `adp score` decides with it.
    #[arg(long, default_value_t = adp_host::detect::DEFAULT_FALSE_ALARM_RATE)]
    pub false_alarm_rate: f64,
}

/// How `visual` builds its reference memory (`adp fit`, and every fit of `adp eval`).
#[derive(clap::Args)]
pub struct VisualArgs {
    /// `visual`'s reference memory: `none` (the support photos) or `rotations` (each support
    /// photo and its 90°, 180° and 270° turns: for textures photographed at any orientation; 4×
    /// the memory and the association time; README "Results").
    #[arg(long, default_value = "none", value_parser = parsed::<SupportViews>)]
    pub support_views: SupportViews,
}

/// Parses a value named on the command line (a method, support views) with its own `FromStr`,
/// whose error lists the accepted names.
pub fn parsed<T: std::str::FromStr<Err = adp_api::Error>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: adp_api::Error| e.to_string())
}
