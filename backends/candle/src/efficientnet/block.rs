//! The MBConv block of EfficientNet-Lite (`_blocks.N`): expand 1×1 + ReLU6 (when the expansion
//! ratio is not 1), depthwise k×k + ReLU6, project 1×1 (linear), plus the input when the shape is
//! kept. No squeeze-excitation in the Lite models; batch norms are folded into the convolutions.
use super::conv::SameConv;
use adp_api::config::efficientnet::BlockSpec;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub struct MbConv {
    expand: Option<SameConv>,
    depthwise: SameConv,
    project: SameConv,
    skip: bool,
}

impl MbConv {
    /// `vb` at `_blocks.{index}`.
    pub fn new(vb: VarBuilder, b: &BlockSpec) -> Result<Self> {
        let hidden = b.expanded();
        let expand = (b.expand_ratio != 1)
            .then(|| SameConv::new(vb.pp("_expand_conv"), b.input, hidden, 1, 1, 1))
            .transpose()?;
        Ok(Self {
            expand,
            depthwise: SameConv::new(vb.pp("_depthwise_conv"), hidden, hidden, b.kernel, b.stride, hidden)?,
            project: SameConv::new(vb.pp("_project_conv"), hidden, b.output, 1, 1, 1)?,
            skip: b.has_skip(),
        })
    }
}

impl Module for MbConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward_fused(x, true, None)?,
            None => x.clone(),
        };
        let h = self.depthwise.forward_fused(&h, true, None)?;
        self.project.forward_fused(&h, false, self.skip.then_some(x))
    }
}
