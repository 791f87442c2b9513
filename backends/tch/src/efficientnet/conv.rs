//! A convolution with its batch norm folded in (`adp_api::fold`) and TensorFlow's "SAME" padding,
//! computed from the actual input: output side `ceil(i / s)`, the odd pixel of padding at the
//! bottom / right (asymmetric for stride 2).
use crate::nn::Prefixed;
use adp_api::Result;
use tch::{TchError, Tensor};

pub struct SameConv {
    weight: Tensor,
    bias: Tensor,
    kernel: i64,
    stride: i64,
    groups: i64,
}

/// TF "SAME" padding of one axis, `(before, after)`, as libtorch sizes.
fn same_padding(input: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let (before, after) = adp_api::layout::same_padding(input as usize, kernel as usize, stride as usize);
    (before as i64, after as i64)
}

impl SameConv {
    /// `w` at the convolution's name (`…_depthwise_conv`): reads `weight` and the folded `bias`.
    pub fn new(w: Prefixed, input: usize, output: usize, kernel: usize, stride: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[output, input / groups, kernel, kernel])?,
            bias: w.get("bias", &[output])?,
            kernel: kernel as i64,
            stride: stride as i64,
            groups: groups as i64,
        })
    }

    pub fn forward(&self, x: &Tensor) -> std::result::Result<Tensor, TchError> {
        let (_, _, h, w) = x.size4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let padded;
        let x = if top + bottom + left + right == 0 {
            x
        } else {
            padded = x.f_constant_pad_nd([left, right, top, bottom])?;
            &padded
        };
        x.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [0, 0],
            [1, 1],
            self.groups,
        )
    }
}

/// ReLU6, the Lite models' activation.
pub fn relu6(x: &Tensor) -> std::result::Result<Tensor, TchError> {
    x.f_clamp(0.0, 6.0)
}
