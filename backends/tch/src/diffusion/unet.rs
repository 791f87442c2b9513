//! diffusers' `UNet2DConditionModel` (names as in its state dict), ported from the candle
//! backend's UNet: every sample of a batch has its own timestep, and the concept's gradient flows
//! back through cross-attention.
use crate::nn::{attend, split_heads, Conv2d, GroupNorm, LayerNorm, Linear, Prefixed, TchResult, Weights};
use adp_api::config::diffusion::UnetConfig;
use adp_api::layout;
use adp_api::Result;
use tch::Tensor;

struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(w: Prefixed, cin: usize, cout: usize, temb: usize, c: &UnetConfig) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::new(w.pp("norm1"), c.norm_num_groups, cin, c.norm_eps)?,
            conv1: Conv2d::k3(w.pp("conv1"), cin, cout, 1)?,
            time_emb_proj: Linear::new(w.pp("time_emb_proj"), temb, cout, true)?,
            norm2: GroupNorm::new(w.pp("norm2"), c.norm_num_groups, cout, c.norm_eps)?,
            conv2: Conv2d::k3(w.pp("conv2"), cout, cout, 1)?,
            shortcut: (cin != cout)
                .then(|| Conv2d::k1(w.pp("conv_shortcut"), cin, cout))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor) -> TchResult<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.f_silu()?)?;
        let t = self
            .time_emb_proj
            .forward(&temb.f_silu()?)?
            .f_unsqueeze(2)?
            .f_unsqueeze(3)?;
        let h = self.conv2.forward(&self.norm2.forward(&h.f_add(&t)?)?.f_silu()?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.shallow_clone(),
        };
        skip.f_add(&h)
    }
}

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: i64,
}

impl Attention {
    fn new(w: Prefixed, dim: usize, context: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: Linear::new(w.pp("to_q"), dim, dim, false)?,
            to_k: Linear::new(w.pp("to_k"), context, dim, false)?,
            to_v: Linear::new(w.pp("to_v"), context, dim, false)?,
            to_out: Linear::new(w.pp("to_out.0"), dim, dim, true)?,
            heads: heads as i64,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> TchResult<Tensor> {
        let q = split_heads(&self.to_q.forward(x)?, self.heads)?;
        let k = split_heads(&self.to_k.forward(context)?, self.heads)?;
        let v = split_heads(&self.to_v.forward(context)?, self.heads)?;
        self.to_out.forward(&attend(&q, &k, &v, None)?)
    }
}

/// `proj_in`/`proj_out`: linear on tokens (`use_linear_projection`, SD 2.x) or a 1×1 convolution
/// on the feature map (SD 1.x); the two differ in where the reshape to tokens happens.
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn new(w: Prefixed, c: usize, linear_projection: bool) -> Result<Self> {
        Ok(if linear_projection {
            Self::Linear(Linear::new(w, c, c, true)?)
        } else {
            Self::Conv(Conv2d::k1(w, c, c)?)
        })
    }
}

/// `[b, c, h, w]` → `[b, h·w, c]`.
fn to_tokens(x: &Tensor) -> TchResult<Tensor> {
    let (b, c, h, w) = x.size4()?;
    // Laid out token-major, as diffusers' `permute(0, 2, 3, 1).reshape(…)`: the projection and
    // the layer norms after it read it row by row.
    x.f_reshape([b, c, h * w])?.f_transpose(1, 2)?.f_contiguous()
}

/// `[b, h·w, c]` → `[b, c, h, w]`, contiguous as diffusers' `permute(…).contiguous()`: the
/// bare view has channels-last strides, and the residual add after it would hand that layout to
/// every later resnet (layout changes in group norm and convolution; 8 % of the UNet's time at
/// 512 px, measured).
fn to_map(x: &Tensor, h: i64, w: i64) -> TchResult<Tensor> {
    let (b, _, c) = x.size3()?;
    x.f_transpose(1, 2)?.f_reshape([b, c, h, w])?.f_contiguous()
}

/// `Transformer2DModel` with one `BasicTransformerBlock`. Attention runs in float32, so
/// `upcast_attention` (SD 2.1) changes nothing here.
struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
    proj_out: Projection,
    channels: i64,
}

impl SpatialTransformer {
    fn new(w: Prefixed, c: usize, heads: usize, cfg: &UnetConfig) -> Result<Self> {
        let b = w.pp("transformer_blocks.0");
        Ok(Self {
            norm: GroupNorm::new(w.pp("norm"), cfg.norm_num_groups, c, 1e-6)?,
            proj_in: Projection::new(w.pp("proj_in"), c, cfg.use_linear_projection)?,
            norm1: LayerNorm::new(b.pp("norm1"), c, 1e-5)?,
            attn1: Attention::new(b.pp("attn1"), c, c, heads)?,
            norm2: LayerNorm::new(b.pp("norm2"), c, 1e-5)?,
            attn2: Attention::new(b.pp("attn2"), c, cfg.cross_dim(), heads)?,
            norm3: LayerNorm::new(b.pp("norm3"), c, 1e-5)?,
            ff_in: Linear::new(b.pp("ff.net.0.proj"), c, 8 * c, true)?,
            ff_out: Linear::new(b.pp("ff.net.2"), 4 * c, c, true)?,
            proj_out: Projection::new(w.pp("proj_out"), c, cfg.use_linear_projection)?,
            channels: c as i64,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> TchResult<Tensor> {
        let (_, _, h, w) = x.size4()?;
        let hs = self.norm.forward(x)?;
        let hs = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(&hs)?)?,
            Projection::Conv(conv) => to_tokens(&conv.forward(&hs)?)?,
        };
        let n1 = self.norm1.forward(&hs)?;
        let hs = hs.f_add(&self.attn1.forward(&n1, &n1)?)?;
        let hs = hs.f_add(&self.attn2.forward(&self.norm2.forward(&hs)?, context)?)?;
        let g = self.ff_in.forward(&self.norm3.forward(&hs)?)?;
        let inner = 4 * self.channels;
        let (a, gate) = (g.f_narrow(-1, 0, inner)?, g.f_narrow(-1, inner, inner)?);
        let hs = hs.f_add(&self.ff_out.forward(&a.f_mul(&gate.f_gelu("none")?)?)?)?;
        let out = match &self.proj_out {
            Projection::Linear(l) => to_map(&l.forward(&hs)?, h, w)?,
            Projection::Conv(conv) => conv.forward(&to_map(&hs, h, w)?)?,
        };
        out.f_add(x)
    }
}

struct Layer {
    resnet: Resnet,
    attention: Option<SpatialTransformer>,
}

impl Layer {
    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor) -> TchResult<Tensor> {
        let x = self.resnet.forward(x, temb)?;
        match &self.attention {
            Some(a) => a.forward(&x, context),
            None => Ok(x),
        }
    }
}

struct Block {
    layers: Vec<Layer>,
    resample: Option<Conv2d>,
}

pub struct UNet {
    conv_in: Conv2d,
    linear_1: Linear,
    linear_2: Linear,
    down: Vec<Block>,
    mid: (Resnet, SpatialTransformer, Resnet),
    up: Vec<Block>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    config: UnetConfig,
}

impl UNet {
    pub fn new(w: &Weights, c: &UnetConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        // `DiffusionSpec::check_supported` has made sure of at least one block.
        let n = ch.len();
        let temb = ch[0] * 4;
        let cross = |t: &String| t.starts_with("CrossAttn");
        let layer = |w: &Prefixed, j: usize, cin: usize, cout: usize, attn: bool, heads: usize| -> Result<Layer> {
            Ok(Layer {
                resnet: Resnet::new(w.pp(format!("resnets.{j}")), cin, cout, temb, c)?,
                attention: attn
                    .then(|| SpatialTransformer::new(w.pp(format!("attentions.{j}")), cout, heads, c))
                    .transpose()?,
            })
        };
        let mut down = Vec::new();
        for i in 0..n {
            let wb = w.pp(format!("down_blocks.{i}"));
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let layers = (0..c.layers())
                .map(|j| {
                    layer(
                        &wb,
                        j,
                        if j == 0 { cin } else { ch[i] },
                        ch[i],
                        cross(&c.down_block_types[i]),
                        c.attention_head_dim.get(i),
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < n)
                .then(|| Conv2d::k3(wb.pp("downsamplers.0.conv"), ch[i], ch[i], 2))
                .transpose()?;
            down.push(Block { layers, resample });
        }
        let last = ch[n - 1];
        let heads_mid = c.attention_head_dim.get(n - 1);
        let mid = (
            Resnet::new(w.pp("mid_block.resnets.0"), last, last, temb, c)?,
            SpatialTransformer::new(w.pp("mid_block.attentions.0"), last, heads_mid, c)?,
            Resnet::new(w.pp("mid_block.resnets.1"), last, last, temb, c)?,
        );
        let mut up = Vec::new();
        for i in 0..n {
            let wb = w.pp(format!("up_blocks.{i}"));
            let out = ch[n - 1 - i];
            let prev = if i == 0 { last } else { ch[n - i] };
            let input = ch[n - 1 - (i + 1).min(n - 1)];
            let layers_n = c.layers() + 1;
            let layers = (0..layers_n)
                .map(|j| {
                    let skip = if j + 1 == layers_n { input } else { out };
                    let res_in = if j == 0 { prev } else { out };
                    layer(
                        &wb,
                        j,
                        res_in + skip,
                        out,
                        cross(&c.up_block_types[i]),
                        c.attention_head_dim.get(n - 1 - i),
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < n)
                .then(|| Conv2d::k3(wb.pp("upsamplers.0.conv"), out, out, 1))
                .transpose()?;
            up.push(Block { layers, resample });
        }
        Ok(Self {
            conv_in: Conv2d::k3(w.pp("conv_in"), c.in_channels, ch[0], 1)?,
            linear_1: Linear::new(w.pp("time_embedding.linear_1"), ch[0], temb, true)?,
            linear_2: Linear::new(w.pp("time_embedding.linear_2"), temb, temb, true)?,
            down,
            mid,
            up,
            conv_norm_out: GroupNorm::new(w.pp("conv_norm_out"), c.norm_num_groups, ch[0], c.norm_eps)?,
            conv_out: Conv2d::k3(w.pp("conv_out"), ch[0], c.out_channels, 1)?,
            config: c.clone(),
        })
    }

    /// diffusers' `get_timestep_embedding`, one timestep per sample.
    fn timestep_embedding(&self, timesteps: &[f64], device: tch::Device) -> TchResult<Tensor> {
        let data = layout::timestep_embedding(&self.config, timesteps);
        let width = (self.config.block_out_channels[0] / 2 * 2) as i64;
        Tensor::f_from_slice(&data)?
            .f_reshape([timesteps.len() as i64, width])?
            .f_to_device(device)
    }

    /// The prediction for latents `[N, C, h, w]` at per-sample `timesteps`, conditioned on `[N, T, D]`.
    pub fn forward(&self, x: &Tensor, timesteps: &[f64], context: &Tensor) -> TchResult<Tensor> {
        let temb = self.timestep_embedding(timesteps, x.device())?.f_to_kind(x.kind())?;
        let temb = self.linear_2.forward(&self.linear_1.forward(&temb)?.f_silu()?)?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down {
            for l in &block.layers {
                h = l.forward(&h, &temb, context)?;
                skips.push(h.shallow_clone());
            }
            if let Some(conv) = &block.resample {
                h = conv.forward(&h)?;
                skips.push(h.shallow_clone());
            }
        }
        h = self.mid.0.forward(&h, &temb)?;
        h = self.mid.1.forward(&h, context)?;
        h = self.mid.2.forward(&h, &temb)?;
        for block in &self.up {
            for l in &block.layers {
                let skip = skips
                    .pop()
                    .ok_or_else(|| tch::TchError::Shape("the UNet ran out of skip connections".into()))?;
                h = l.forward(&Tensor::f_cat(&[&h, &skip], 1)?, &temb, context)?;
            }
            if let Some(conv) = &block.resample {
                let (_, _, hh, ww) = h.size4()?;
                h = conv.forward(&h.f_upsample_nearest2d([hh * 2, ww * 2], None, None)?)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h)?.f_silu()?)
    }
}
