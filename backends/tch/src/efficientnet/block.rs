//! The MBConv block of EfficientNet-Lite (`_blocks.N`): expand 1×1 + ReLU6 (when the expansion
//! ratio is not 1), depthwise k×k + ReLU6, project 1×1 (linear), plus the input when the shape is
//! kept. No squeeze-excitation in the Lite models; batch norms are folded into the convolutions.
use super::conv::{relu6, SameConv};
use crate::nn::Prefixed;
use adp_api::config::efficientnet::BlockSpec;
use adp_api::Result;
use tch::{TchError, Tensor};

pub struct MbConv {
    expand: Option<SameConv>,
    depthwise: SameConv,
    project: SameConv,
    skip: bool,
}

impl MbConv {
    /// `w` at `_blocks.{index}`.
    pub fn new(w: Prefixed, b: &BlockSpec) -> Result<Self> {
        let hidden = b.expanded();
        let expand = (b.expand_ratio != 1)
            .then(|| SameConv::new(w.pp("_expand_conv"), b.input, hidden, 1, 1, 1))
            .transpose()?;
        Ok(Self {
            expand,
            depthwise: SameConv::new(w.pp("_depthwise_conv"), hidden, hidden, b.kernel, b.stride, hidden)?,
            project: SameConv::new(w.pp("_project_conv"), hidden, b.output, 1, 1, 1)?,
            skip: b.has_skip(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> std::result::Result<Tensor, TchError> {
        let expanded;
        let h = match &self.expand {
            Some(e) => {
                expanded = relu6(&e.forward(x)?)?;
                &expanded
            }
            None => x,
        };
        let h = self.project.forward(&relu6(&self.depthwise.forward(h)?)?)?;
        if self.skip {
            h.f_add(x)
        } else {
            Ok(h)
        }
    }
}
