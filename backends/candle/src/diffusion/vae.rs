//! diffusers' `AutoencoderKL` (names as in its state dict): the encoder to the posterior's mean
//! and the decoder, on our frozen convolutions (`crate::conv_cpu` on the CPU: candle's own
//! convolution made the VAE encode most of a 512 px learning step). GroupNorm eps 1e-6 and SiLU
//! throughout, as diffusers builds them; the same structure as the tch backend's `vae.rs`.
use crate::activation::silu;
use crate::frozen::{conv2d, linear, FrozenConv2d as Conv2d, FrozenLinear as Linear};
use crate::norm::{group_norm, GroupNorm};
use adp_api::config::diffusion::{VaeBlock, VaeConfig};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

const EPS: f64 = 1e-6;

/// A k×k convolution at `stride` with `padding`.
fn conv(vb: VarBuilder, cin: usize, cout: usize, k: usize, padding: usize, stride: usize) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    conv2d(cin, cout, k, cfg, vb)
}

/// `ResnetBlock2D` without a time embedding.
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(groups, cin, EPS, vb.pp("norm1"))?,
            conv1: conv(vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: group_norm(groups, cout, EPS, vb.pp("norm2"))?,
            conv2: conv(vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            shortcut: (cin != cout)
                .then(|| conv(vb.pp("conv_shortcut"), cin, cout, 1, 0, 1))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let h = self.conv2.forward(&silu(&self.norm2.forward(&h)?)?)?;
        match &self.shortcut {
            Some(s) => s.forward(x)? + h,
            None => x + h,
        }
    }
}

/// The mid block's single-head self-attention over pixels, with a residual.
struct Attention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
}

impl Attention {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: group_norm(groups, c, EPS, vb.pp("group_norm"))?,
            to_q: linear(c, c, vb.pp("to_q"))?,
            to_k: linear(c, c, vb.pp("to_k"))?,
            to_v: linear(c, c, vb.pp("to_v"))?,
            to_out: linear(c, c, vb.pp("to_out.0"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hs = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?;
        // One head: `[b, 1, h·w, c]`.
        let head = |l: &Linear| l.forward(&hs)?.unsqueeze(1);
        let out = crate::attention::attention(&head(&self.to_q)?, &head(&self.to_k)?, &head(&self.to_v)?)?;
        let out = self.to_out.forward(&out.squeeze(1)?)?;
        out.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))? + x
    }
}

struct Mid {
    resnet0: Resnet,
    attention: Attention,
    resnet1: Resnet,
}

impl Mid {
    fn new(vb: VarBuilder, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            resnet0: Resnet::new(vb.pp("resnets.0"), c, c, groups)?,
            attention: Attention::new(vb.pp("attentions.0"), c, groups)?,
            resnet1: Resnet::new(vb.pp("resnets.1"), c, c, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.resnet1
            .forward(&self.attention.forward(&self.resnet0.forward(x)?)?)
    }
}

struct Block {
    resnets: Vec<Resnet>,
    /// Down: stride-2 conv after padding right/bottom by one; up: nearest ×2 then conv.
    resample: Option<Conv2d>,
}

pub struct Vae {
    enc_conv_in: Conv2d,
    enc_down: Vec<Block>,
    enc_mid: Mid,
    enc_norm_out: GroupNorm,
    enc_conv_out: Conv2d,
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    dec_conv_in: Conv2d,
    dec_mid: Mid,
    dec_up: Vec<Block>,
    dec_norm_out: GroupNorm,
    dec_conv_out: Conv2d,
    latent_channels: usize,
}

impl Vae {
    /// `vb` at the root of `vae/diffusion_pytorch_model.safetensors`.
    pub fn new(vb: VarBuilder, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let (g, lc, last) = (c.norm_num_groups, c.latent_channels, ch[ch.len() - 1]);
        let (e, d) = (vb.pp("encoder"), vb.pp("decoder"));
        let blocks = |vb: &VarBuilder, kind: &str, specs: Vec<VaeBlock>, resample: &str, up: bool| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    let vbb = vb.pp(format!("{kind}.{i}"));
                    let resnets = (b.resnets.iter().enumerate())
                        .map(|(j, &(cin, cout))| Resnet::new(vbb.pp(format!("resnets.{j}")), cin, cout, g))
                        .collect::<Result<_>>()?;
                    let (padding, stride) = if up { (1, 1) } else { (0, 2) };
                    let resample = b
                        .resample
                        .then(|| conv(vbb.pp(resample), b.out, b.out, 3, padding, stride))
                        .transpose()?;
                    Ok(Block { resnets, resample })
                })
                .collect::<Result<Vec<_>>>()
        };
        let enc_down = blocks(&e, "down_blocks", c.encoder_blocks(), "downsamplers.0.conv", false)?;
        let dec_up = blocks(&d, "up_blocks", c.decoder_blocks(), "upsamplers.0.conv", true)?;
        Ok(Self {
            enc_conv_in: conv(e.pp("conv_in"), c.in_channels, ch[0], 3, 1, 1)?,
            enc_down,
            enc_mid: Mid::new(e.pp("mid_block"), last, g)?,
            enc_norm_out: group_norm(g, last, EPS, e.pp("conv_norm_out"))?,
            enc_conv_out: conv(e.pp("conv_out"), last, 2 * lc, 3, 1, 1)?,
            quant_conv: conv(vb.pp("quant_conv"), 2 * lc, 2 * lc, 1, 0, 1)?,
            post_quant_conv: conv(vb.pp("post_quant_conv"), lc, lc, 1, 0, 1)?,
            dec_conv_in: conv(d.pp("conv_in"), lc, last, 3, 1, 1)?,
            dec_mid: Mid::new(d.pp("mid_block"), last, g)?,
            dec_up,
            dec_norm_out: group_norm(g, ch[0], EPS, d.pp("conv_norm_out"))?,
            dec_conv_out: conv(d.pp("conv_out"), ch[0], c.out_channels, 3, 1, 1)?,
            latent_channels: lc,
        })
    }

    /// The posterior's mean (unscaled) for images in [-1, 1].
    pub fn encode_mean(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.enc_conv_in.forward(x)?;
        for block in &self.enc_down {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.resample {
                h = conv.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        let h = self.enc_mid.forward(&h)?;
        let h = self.enc_conv_out.forward(&silu(&self.enc_norm_out.forward(&h)?)?)?;
        self.quant_conv.forward(&h)?.narrow(1, 0, self.latent_channels)
    }

    /// Images in [-1, 1] (unclamped) from unscaled latents.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.dec_conv_in.forward(&self.post_quant_conv.forward(z)?)?;
        let mut h = self.dec_mid.forward(&h)?;
        for block in &self.dec_up {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.resample {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        self.dec_conv_out.forward(&silu(&self.dec_norm_out.forward(&h)?)?)
    }
}
