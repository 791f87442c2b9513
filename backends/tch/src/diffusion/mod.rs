//! Stable Diffusion from a diffusers folder, on libtorch: the transformers text encoder, the
//! diffusers UNet and VAE (`AutoencoderKL`), all read under their original tensor names, and DDIM.
//! The layers mirror the candle backend's module for module.
pub mod ddim;
pub mod text_encoder;
pub mod unet;
pub mod vae;

use crate::open_clip::Prefixed;
use adp_api::Result;
use tch::{TchError, Tensor};

pub type TchResult<T> = std::result::Result<T, TchError>;

/// `nn.Linear`, with or without a bias.
pub struct Linear {
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(w: Prefixed, inp: usize, out: usize, bias: bool) -> Result<Self> {
        let weight_t = w.get("weight", &[out, inp])?.f_tr().map_err(crate::convert::err)?;
        let bias = bias.then(|| w.get("bias", &[out])).transpose()?;
        Ok(Self { weight_t, bias })
    }
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        let y = x.f_matmul(&self.weight_t)?;
        match &self.bias {
            Some(b) => y.f_add(b),
            None => Ok(y),
        }
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    width: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(w: Prefixed, width: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get("weight", &[width])?, bias: w.get("bias", &[width])?, width: width as i64, eps })
    }
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        x.f_layer_norm([self.width], Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `nn.GroupNorm` with affine parameters.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(w: Prefixed, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || channels % groups != 0 {
            return Err(adp_api::Error::invalid("norm_num_groups", format!("{groups} groups do not divide {channels} channels")));
        }
        Ok(Self { weight: w.get("weight", &[channels])?, bias: w.get("bias", &[channels])?, groups: groups as i64, eps })
    }
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        x.f_group_norm(self.groups, Some(&self.weight), Some(&self.bias), self.eps, true)
    }
}

/// `nn.Conv2d` with a bias, square kernel.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(w: Prefixed, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[cout, cin, kernel, kernel])?,
            bias: w.get("bias", &[cout])?,
            stride: stride as i64,
            padding: padding as i64,
        })
    }
    /// 3×3, padding 1.
    pub fn k3(w: Prefixed, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        Self::new(w, cin, cout, 3, stride, 1)
    }
    /// 1×1, no padding.
    pub fn k1(w: Prefixed, cin: usize, cout: usize) -> Result<Self> {
        Self::new(w, cin, cout, 1, 1, 0)
    }
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        x.f_conv2d(&self.weight, Some(&self.bias), [self.stride, self.stride], [self.padding, self.padding], [1, 1], 1)
    }
}

/// Splits `[B, S, H·D]` into `[B, H, S, D]`.
pub fn split_heads(y: &Tensor, heads: i64) -> TchResult<Tensor> {
    let (b, s, w) = y.size3()?;
    y.f_reshape([b, s, heads, w / heads])?.f_transpose(1, 2)
}

/// Scaled dot-product attention on `[B, H, S, D]` heads, merged back to `[B, S, H·D]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> TchResult<Tensor> {
    let (b, h, t, d) = q.size4()?;
    let scores = q.f_matmul(&k.f_transpose(-2, -1)?)?.f_div_scalar((d as f64).sqrt())?;
    scores.f_softmax(-1, tch::Kind::Float)?.f_matmul(v)?.f_transpose(1, 2)?.f_reshape([b, t, h * d])
}
