//! diffusers' `AutoencoderKL` (names as in its state dict): the encoder to the posterior's mean
//! and the decoder. GroupNorm eps 1e-6 and SiLU throughout, as diffusers builds them.
use crate::nn::{attend, split_heads, Conv2d, GroupNorm, Linear, Prefixed, TchResult, Weights};
use adp_api::config::diffusion::{VaeBlock, VaeConfig};
use adp_api::Result;
use tch::Tensor;

const EPS: f64 = 1e-6;

/// `ResnetBlock2D` without a time embedding.
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(w: Prefixed, cin: usize, cout: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(w.pp("norm1"), groups, cin, EPS)?,
            conv1: Conv2d::k3(w.pp("conv1"), cin, cout, 1)?,
            norm2: GroupNorm::new(w.pp("norm2"), groups, cout, EPS)?,
            conv2: Conv2d::k3(w.pp("conv2"), cout, cout, 1)?,
            shortcut: (cin != cout)
                .then(|| Conv2d::k1(w.pp("conv_shortcut"), cin, cout))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.f_silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.f_silu()?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.shallow_clone(),
        };
        skip.f_add(&h)
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
    fn new(w: Prefixed, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::new(w.pp("group_norm"), groups, c, EPS)?,
            to_q: Linear::new(w.pp("to_q"), c, c, true)?,
            to_k: Linear::new(w.pp("to_k"), c, c, true)?,
            to_v: Linear::new(w.pp("to_v"), c, c, true)?,
            to_out: Linear::new(w.pp("to_out.0"), c, c, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        let (b, c, h, w) = x.size4()?;
        let hs = self
            .group_norm
            .forward(x)?
            .f_reshape([b, c, h * w])?
            .f_transpose(1, 2)?;
        let q = split_heads(&self.to_q.forward(&hs)?, 1)?;
        let k = split_heads(&self.to_k.forward(&hs)?, 1)?;
        let v = split_heads(&self.to_v.forward(&hs)?, 1)?;
        let out = self.to_out.forward(&attend(&q, &k, &v, None)?)?;
        out.f_transpose(1, 2)?.f_reshape([b, c, h, w])?.f_add(x)
    }
}

struct Mid {
    resnet0: Resnet,
    attention: Attention,
    resnet1: Resnet,
}

impl Mid {
    fn new(w: Prefixed, c: usize, groups: usize) -> Result<Self> {
        Ok(Self {
            resnet0: Resnet::new(w.pp("resnets.0"), c, c, groups)?,
            attention: Attention::new(w.pp("attentions.0"), c, groups)?,
            resnet1: Resnet::new(w.pp("resnets.1"), c, c, groups)?,
        })
    }
    fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
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
    latent_channels: i64,
}

impl Vae {
    pub fn new(w: &Weights, c: &VaeConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let (g, lc, last) = (c.norm_num_groups, c.latent_channels, ch[ch.len() - 1]);
        let (e, d) = (w.pp("encoder"), w.pp("decoder"));
        let blocks = |w: &Prefixed, kind: &str, specs: Vec<VaeBlock>, up: bool| {
            specs
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    let wb = w.pp(format!("{kind}.{i}"));
                    let resnets = (b.resnets.iter().enumerate())
                        .map(|(j, &(cin, cout))| Resnet::new(wb.pp(format!("resnets.{j}")), cin, cout, g))
                        .collect::<Result<_>>()?;
                    let resample = b
                        .resample
                        .then(|| match up {
                            true => Conv2d::k3(wb.pp("upsamplers.0.conv"), b.out, b.out, 1),
                            false => Conv2d::new(wb.pp("downsamplers.0.conv"), b.out, b.out, 3, 2, 0),
                        })
                        .transpose()?;
                    Ok(Block { resnets, resample })
                })
                .collect::<Result<Vec<_>>>()
        };
        let enc_down = blocks(&e, "down_blocks", c.encoder_blocks(), false)?;
        let dec_up = blocks(&d, "up_blocks", c.decoder_blocks(), true)?;
        Ok(Self {
            enc_conv_in: Conv2d::k3(e.pp("conv_in"), c.in_channels, ch[0], 1)?,
            enc_down,
            enc_mid: Mid::new(e.pp("mid_block"), last, g)?,
            enc_norm_out: GroupNorm::new(e.pp("conv_norm_out"), g, last, EPS)?,
            enc_conv_out: Conv2d::k3(e.pp("conv_out"), last, 2 * lc, 1)?,
            quant_conv: Conv2d::k1(w.pp("quant_conv"), 2 * lc, 2 * lc)?,
            post_quant_conv: Conv2d::k1(w.pp("post_quant_conv"), lc, lc)?,
            dec_conv_in: Conv2d::k3(d.pp("conv_in"), lc, last, 1)?,
            dec_mid: Mid::new(d.pp("mid_block"), last, g)?,
            dec_up,
            dec_norm_out: GroupNorm::new(d.pp("conv_norm_out"), g, ch[0], EPS)?,
            dec_conv_out: Conv2d::k3(d.pp("conv_out"), ch[0], c.out_channels, 1)?,
            latent_channels: lc as i64,
        })
    }

    /// The posterior's mean (unscaled) for images in [-1, 1].
    pub fn encode_mean(&self, x: &Tensor) -> TchResult<Tensor> {
        let mut h = self.enc_conv_in.forward(x)?;
        for block in &self.enc_down {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.resample {
                h = conv.forward(&h.f_constant_pad_nd([0, 1, 0, 1])?)?;
            }
        }
        let h = self.enc_mid.forward(&h)?;
        let h = self.enc_conv_out.forward(&self.enc_norm_out.forward(&h)?.f_silu()?)?;
        self.quant_conv.forward(&h)?.f_narrow(1, 0, self.latent_channels)
    }

    /// Images in [-1, 1] (unclamped) from unscaled latents.
    pub fn decode(&self, z: &Tensor) -> TchResult<Tensor> {
        let h = self.dec_conv_in.forward(&self.post_quant_conv.forward(z)?)?;
        let mut h = self.dec_mid.forward(&h)?;
        for block in &self.dec_up {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.resample {
                let (_, _, hh, ww) = h.size4()?;
                h = conv.forward(&h.f_upsample_nearest2d([hh * 2, ww * 2], None, None)?)?;
            }
        }
        self.dec_conv_out.forward(&self.dec_norm_out.forward(&h)?.f_silu()?)
    }
}
