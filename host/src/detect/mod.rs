//! Detection: the methods, fitting a detector ([`fit`] for the CLIP methods, [`visual`] for the
//! backbone method), the detector file ([`file`]), its decision threshold ([`decision`]) and
//! scoring with it ([`scoring`]). The types every part shares live here; the parts depend on this
//! module, never the other way round.
use adp_api::requests::Progress;
use adp_api::{BackboneCheckpoint, ClipCheckpoint, Device, Error, Result};
use serde::{Deserialize, Serialize};

pub mod concepts;
pub mod decision;
pub mod file;
pub mod fit;
pub mod scoring;
pub mod support_views;
pub mod visual;

pub use concepts::ConceptFiles;
pub use decision::Decision;
pub use file::{DetectorFile, DetectorHeader};
pub use fit::Fitter;
pub use scoring::{score, Scoring};
pub use support_views::SupportViews;
pub use visual::VisualModel;

/// The default backbone file of `visual`, provided by `scripts/setup-weights.sh`.
pub fn default_backbone() -> std::path::PathBuf {
    adp_api::config::efficientnet::default_weights_dir().join("efficientnet-lite0.safetensors")
}

/// The method variants of SPEC §6–7, all on one code path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub const ALL: [Method; 7] = [
        Method::Adp,
        Method::AdpLabel,
        Method::Winclip,
        Method::Ti,
        Method::Cn,
        Method::Ca,
        Method::Visual,
    ];

    /// The default: ADP where a CLIP checkpoint is given, else `visual`.
    pub fn default_for(has_clip: bool) -> Self {
        if has_clip {
            Method::Adp
        } else {
            Method::Visual
        }
    }
    /// Whether the method learns concepts on Stable Diffusion (`ti`, `adp`, …).
    pub fn needs_diffusion(self) -> bool {
        !matches!(self, Method::Winclip | Method::Visual)
    }
    /// Whether the method runs on CLIP (all but `visual`).
    pub fn needs_clip(self) -> bool {
        self != Method::Visual
    }
}

impl std::str::FromStr for Method {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Method::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            Error::invalid("method", format!("unknown method {s:?} (one of: {})", names.join(", ")))
        })
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    /// The target false-alarm rate R of the stored decision ([`decision`], checked there): the
    /// share of normal photos the threshold may flag. Options stored before it read as 1 %.
    #[serde(default = "default_false_alarm_rate")]
    pub false_alarm_rate: f64,
    /// `visual`'s reference memory: the support photos alone, or with their quarter turns
    /// ([`SupportViews`]). Options stored before it read as `none`.
    #[serde(default)]
    pub support_views: SupportViews,
    /// Where concept learning saves resumable checkpoints (and whether to resume from them):
    /// how a fit runs, not what it computes, so not stored in the detector.
    #[serde(skip)]
    pub learning_checkpoints: Option<LearningCheckpoints>,
    /// Concept files: concepts to reuse instead of learning them, where to save the learned ones
    /// ([`concepts`]). The reused concepts are stored in the detector, the paths are not.
    #[serde(skip)]
    pub concept_files: ConceptFiles,
}

/// Resumable concept learning (`adp fit --checkpoint-dir DIR --checkpoint-every N --resume`):
/// each concept's state (vector, optimiser, loss history, step) is written atomically to
/// `DIR/<concept>.json` every `every` steps. With `resume`, a concept whose file holds a
/// checkpoint of the same learning request continues from it, drawing exactly what the
/// uninterrupted run would have; a file of another request is refused.
#[derive(Debug, Clone, PartialEq)]
pub struct LearningCheckpoints {
    pub dir: std::path::PathBuf,
    pub every: u64,
    pub resume: bool,
}

/// The default target false-alarm rate of a fit (1 %).
pub const DEFAULT_FALSE_ALARM_RATE: f64 = 0.01;

fn default_false_alarm_rate() -> f64 {
    DEFAULT_FALSE_ALARM_RATE
}

impl FitOptions {
    /// `adp-label` needs its class word (`label`, not blank); checked before any work starts.
    pub fn check_label(&self) -> Result<()> {
        if self.method == Method::AdpLabel && self.label.as_deref().is_none_or(|w| w.trim().is_empty()) {
            return Err(Error::invalid("method", "adp-label needs the class word: --label WORD"));
        }
        Ok(())
    }
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
            false_alarm_rate: DEFAULT_FALSE_ALARM_RATE,
            support_views: SupportViews::None,
            learning_checkpoints: None,
            concept_files: ConceptFiles::default(),
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
        Self {
            clip: Some(clip.clone()),
            backbone: None,
        }
    }
    pub fn backbone(backbone: &BackboneCheckpoint) -> Self {
        Self {
            clip: None,
            backbone: Some(backbone.clone()),
        }
    }
}
