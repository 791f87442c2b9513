//! diffusers' `UNet2DConditionModel` (names as in its state dict), written here rather than taken
//! from candle-transformers because the concept's gradient must flow back through
//! cross-attention (candle-transformers uses a softmax without a backward pass there), and
//! because every sample of a batch needs its own timestep.
//!
//! Its layers keep for the backward pass only what the concept's gradient needs: frozen linear and
//! convolution layers give no weight gradients (`crate::frozen`), each norm is one node
//! (`crate::norm`), attention recomputes its probabilities (`crate::attention`), the
//! feed-forward's gate is one node keeping only its input (`crate::geglu`), and the
//! transformer blocks of the down and up blocks at the largest token counts are checkpointed
//! (`crate::checkpoint`).
use crate::activation::silu;
use crate::attention::{attention, attention_with_output};
use crate::checkpoint::{checkpoint, Checkpointable, Memo};
use crate::frozen::{conv2d, linear, linear_no_bias, FrozenConv2d as Conv2d, FrozenLinear as Linear};
use crate::frozen_add::add_frozen;
use crate::geglu::geglu;
use crate::norm::{group_norm, layer_norm, GroupNorm, LayerNorm};
use adp_api::config::diffusion::UnetConfig;
use adp_api::layout;
use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};
use std::sync::Arc;

fn conv3(vb: VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Conv2d> {
    conv2d(
        cin,
        cout,
        3,
        Conv2dConfig {
            padding: 1,
            stride,
            ..Default::default()
        },
        vb,
    )
}

struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(vb: VarBuilder, cin: usize, cout: usize, temb: usize, c: &UnetConfig) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(c.norm_num_groups, cin, c.norm_eps, vb.pp("norm1"))?,
            conv1: conv3(vb.pp("conv1"), cin, cout, 1)?,
            time_emb_proj: linear(temb, cout, vb.pp("time_emb_proj"))?,
            norm2: group_norm(c.norm_num_groups, cout, c.norm_eps, vb.pp("norm2"))?,
            conv2: conv3(vb.pp("conv2"), cout, cout, 1)?,
            shortcut: (cin != cout)
                .then(|| conv2d(cin, cout, 1, Default::default(), vb.pp("conv_shortcut")))
                .transpose()?,
        })
    }

    fn forward(&self, x: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&silu(&self.norm1.forward(x)?)?)?;
        let t = self.time_emb_proj.forward(&silu(temb)?)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = self.conv2.forward(&silu(&self.norm2.forward(&add_frozen(&h, &t)?)?)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        skip + h
    }
}

struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl Attention {
    fn new(vb: VarBuilder, dim: usize, context: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
        })
    }

    /// `memo`: inside a checkpointed block, where the attention's output is kept for the
    /// recomputation.
    fn forward(&self, x: &Tensor, context: &Tensor, memo: Option<&Memo>) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let d = w / self.heads;
        let heads = |y: Tensor| -> Result<Tensor> {
            let s = y.dim(1)?;
            y.reshape((b, s, self.heads, d))?.transpose(1, 2)?.contiguous()
        };
        let (q, k, v) = (
            heads(self.to_q.forward(x)?)?,
            heads(self.to_k.forward(context)?)?,
            heads(self.to_v.forward(context)?)?,
        );
        // Chunked, recomputing its probabilities for the backward pass: composed of tensor ops,
        // the [b, heads, t, t] scores' intermediates are kept for autograd (1.7 GB each at 768 px).
        // In a checkpointed block's recomputation, its output is read back, not computed again.
        let out = match memo {
            Some(memo) => memo.memoised(|| attention(&q, &k, &v), |o| attention_with_output(&q, &k, &v, o))?,
            None => attention(&q, &k, &v)?,
        };
        let out = out.transpose(1, 2)?.reshape((b, t, w))?;
        self.to_out.forward(&out)
    }
}

/// `proj_in`/`proj_out`: linear on tokens (`use_linear_projection`, SD 2.x) or a 1×1 convolution
/// on the feature map (SD 1.x); the two differ in where the reshape to tokens happens.
enum Projection {
    Linear(Linear),
    Conv(Conv2d),
}

impl Projection {
    fn new(vb: VarBuilder, c: usize, linear_projection: bool) -> Result<Self> {
        Ok(if linear_projection {
            Self::Linear(linear(c, c, vb)?)
        } else {
            Self::Conv(conv2d(c, c, 1, Default::default(), vb)?)
        })
    }
}

/// `[b, c, h, w]` → `[b, h·w, c]`. `.contiguous()`: candle's batched matmul mis-reads
/// non-contiguous left operands (batch > 1).
fn to_tokens(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// `[b, h·w, c]` → `[b, c, h, w]`.
fn to_map(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, c, h, w))
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
}

impl SpatialTransformer {
    fn new(vb: VarBuilder, c: usize, heads: usize, cfg: &UnetConfig) -> Result<Self> {
        let b = vb.pp("transformer_blocks.0");
        Ok(Self {
            norm: group_norm(cfg.norm_num_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(vb.pp("proj_in"), c, cfg.use_linear_projection)?,
            norm1: layer_norm(c, 1e-5, b.pp("norm1"))?,
            attn1: Attention::new(b.pp("attn1"), c, c, heads)?,
            norm2: layer_norm(c, 1e-5, b.pp("norm2"))?,
            attn2: Attention::new(b.pp("attn2"), c, cfg.cross_dim(), heads)?,
            norm3: layer_norm(c, 1e-5, b.pp("norm3"))?,
            ff_in: linear(c, 8 * c, b.pp("ff.net.0.proj"))?,
            ff_out: linear(4 * c, c, b.pp("ff.net.2"))?,
            proj_out: Projection::new(vb.pp("proj_out"), c, cfg.use_linear_projection)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor, memo: Option<&Memo>) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let hs = self.norm.forward(x)?;
        let hs = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(&hs)?)?,
            Projection::Conv(conv) => to_tokens(&conv.forward(&hs)?)?,
        };
        let n1 = self.norm1.forward(&hs)?;
        let hs = (&hs + self.attn1.forward(&n1, &n1, memo)?)?;
        let hs = (&hs + self.attn2.forward(&self.norm2.forward(&hs)?, context, memo)?)?;
        let gated = geglu(&self.ff_in.forward(&self.norm3.forward(&hs)?)?)?;
        let hs = (&hs + self.ff_out.forward(&gated)?)?;
        let out = match &self.proj_out {
            Projection::Linear(l) => to_map(&l.forward(&hs)?, h, w)?,
            Projection::Conv(conv) => conv.forward(&to_map(&hs, h, w)?)?,
        };
        out + x
    }
}

impl Checkpointable for SpatialTransformer {
    fn forward(&self, x: &Tensor, context: &Tensor, memo: Option<&Memo>) -> Result<Tensor> {
        SpatialTransformer::forward(self, x, context, memo)
    }
}

/// Batch × tokens above which a transformer block is checkpointed: more than SD 2.1's 96×96
/// latent at batch 1 (768 px), so a batch-1 step runs its five first-level blocks plainly, and
/// batch 2 at 768 px or batch 4 at 512 px, whose blocks keep two and four times as much, are
/// checkpointed. `adp bench --plugin candle --rows learn-step-1 --repeats 1` at 768 px, two
/// interleaved pairs: checkpointing those five blocks saved 1.46 GB (peak 10.70 → 9.24 GB;
/// PyTorch's step 9.85 GB) for 4.4 s of a 56 s step (CPU 104 → 111 s). (When candle still
/// gave frozen operands gradients, no checkpoints meant 16.3 GiB there.)
const CHECKPOINT_TOKENS: usize = 96 * 96;

/// Batch × tokens of a feature map `[B, C, H, W]`.
fn b_tokens(x: &Tensor) -> Result<usize> {
    let (b, _, h, w) = x.dims4()?;
    Ok(b * h * w)
}

struct Layer {
    resnet: Resnet,
    /// Shared with the checkpoint ops of a learning step's graph.
    attention: Option<Arc<SpatialTransformer>>,
}

impl Layer {
    /// `checkpoint_tokens`: [`CHECKPOINT_TOKENS`], or another threshold in tests.
    fn forward(&self, x: &Tensor, temb: &Tensor, context: &Tensor, checkpoint_tokens: usize) -> Result<Tensor> {
        let x = self.resnet.forward(x, temb)?;
        match &self.attention {
            // Checkpointed where a gradient flows (a learning step) and the block is large: a
            // transformer block holds most of the UNet's activations, ~0.5 GB each at 768 px, and
            // the recomputation costs one more forward of it, less its attention (`Memo`).
            Some(a) if b_tokens(&x)? > checkpoint_tokens => checkpoint(a, &x, context),
            Some(a) => a.forward(&x, context, None),
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
    checkpoint_tokens: usize,
}

impl UNet {
    pub fn new(vb: VarBuilder, c: &UnetConfig) -> Result<Self> {
        let ch = &c.block_out_channels;
        let n = ch.len();
        let temb = ch[0] * 4;
        let cross = |t: &String| t.starts_with("CrossAttn");
        let layer = |vb: &VarBuilder, j: usize, cin: usize, cout: usize, attn: bool, heads: usize| -> Result<Layer> {
            Ok(Layer {
                resnet: Resnet::new(vb.pp(format!("resnets.{j}")), cin, cout, temb, c)?,
                attention: attn
                    .then(|| SpatialTransformer::new(vb.pp(format!("attentions.{j}")), cout, heads, c).map(Arc::new))
                    .transpose()?,
            })
        };
        let mut down = Vec::new();
        for i in 0..n {
            let vb = vb.pp(format!("down_blocks.{i}"));
            let cin = if i == 0 { ch[0] } else { ch[i - 1] };
            let layers = (0..c.layers())
                .map(|j| {
                    layer(
                        &vb,
                        j,
                        if j == 0 { cin } else { ch[i] },
                        ch[i],
                        cross(&c.down_block_types[i]),
                        c.attention_head_dim.get(i),
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < n)
                .then(|| conv3(vb.pp("downsamplers.0.conv"), ch[i], ch[i], 2))
                .transpose()?;
            down.push(Block { layers, resample });
        }
        let last = ch[n - 1];
        let heads_mid = c.attention_head_dim.get(n - 1);
        let mid = (
            Resnet::new(vb.pp("mid_block.resnets.0"), last, last, temb, c)?,
            SpatialTransformer::new(vb.pp("mid_block.attentions.0"), last, heads_mid, c)?,
            Resnet::new(vb.pp("mid_block.resnets.1"), last, last, temb, c)?,
        );
        let mut up = Vec::new();
        for i in 0..n {
            let vb = vb.pp(format!("up_blocks.{i}"));
            let out = ch[n - 1 - i];
            let prev = if i == 0 { last } else { ch[n - i] };
            let input = ch[n - 1 - (i + 1).min(n - 1)];
            let layers_n = c.layers() + 1;
            let layers = (0..layers_n)
                .map(|j| {
                    let skip = if j + 1 == layers_n { input } else { out };
                    let res_in = if j == 0 { prev } else { out };
                    layer(
                        &vb,
                        j,
                        res_in + skip,
                        out,
                        cross(&c.up_block_types[i]),
                        c.attention_head_dim.get(n - 1 - i),
                    )
                })
                .collect::<Result<_>>()?;
            let resample = (i + 1 < n)
                .then(|| conv3(vb.pp("upsamplers.0.conv"), out, out, 1))
                .transpose()?;
            up.push(Block { layers, resample });
        }
        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), c.in_channels, ch[0], 1)?,
            linear_1: linear(ch[0], temb, vb.pp("time_embedding.linear_1"))?,
            linear_2: linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
            down,
            mid,
            up,
            conv_norm_out: group_norm(c.norm_num_groups, ch[0], c.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: conv3(vb.pp("conv_out"), ch[0], c.out_channels, 1)?,
            config: c.clone(),
            checkpoint_tokens: CHECKPOINT_TOKENS,
        })
    }

    /// diffusers' `get_timestep_embedding`, one timestep per sample.
    fn timestep_embedding(&self, timesteps: &[f64], device: &candle_core::Device) -> Result<Tensor> {
        let data = layout::timestep_embedding(&self.config, timesteps);
        Tensor::from_vec(
            data,
            (timesteps.len(), self.config.block_out_channels[0] / 2 * 2),
            device,
        )
    }

    /// The prediction for latents `[N, C, h, w]` at per-sample `timesteps`, conditioned on `[N, T, D]`.
    pub fn forward(&self, x: &Tensor, timesteps: &[f64], context: &Tensor) -> Result<Tensor> {
        let temb = self.timestep_embedding(timesteps, x.device())?.to_dtype(x.dtype())?;
        let temb = self.linear_2.forward(&silu(&self.linear_1.forward(&temb)?)?)?;
        let mut h = self.conv_in.forward(x)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for l in &block.layers {
                h = l.forward(&h, &temb, context, self.checkpoint_tokens)?;
                skips.push(h.clone());
            }
            if let Some(conv) = &block.resample {
                h = conv.forward(&h)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.0.forward(&h, &temb)?;
        h = self.mid.1.forward(&h, context, None)?;
        h = self.mid.2.forward(&h, &temb)?;
        for block in &self.up {
            for l in &block.layers {
                let skip = skips.pop().expect("one skip per up layer");
                h = l.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb, context, self.checkpoint_tokens)?;
            }
            if let Some(conv) = &block.resample {
                let (_, _, hh, ww) = h.dims4()?;
                h = conv.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        self.conv_out.forward(&silu(&self.conv_norm_out.forward(&h)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::max_diff;
    use candle_core::{DType, Device, Var};
    use candle_nn::VarMap;

    /// Two levels, cross-attention at the first, random (Kaiming) weights.
    fn tiny() -> (VarMap, UnetConfig) {
        let config = serde_json::from_str(
            r#"{"in_channels": 4, "out_channels": 4, "block_out_channels": [16, 32],
                "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
                "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
                "layers_per_block": 1, "cross_attention_dim": 12, "attention_head_dim": [2, 4],
                "norm_num_groups": 4, "use_linear_projection": true}"#,
        )
        .unwrap();
        (VarMap::new(), config)
    }

    /// The loss's value and its gradient in the conditioning, with every transformer block
    /// checkpointed (its attention memoised) and with none: the same up to float reordering.
    /// (A replay scaled by 1.1 made them differ by 17 % of their largest value; the memo, 3e-8.)
    #[test]
    fn checkpointed_blocks_give_the_plain_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let (map, config) = tiny();
        let mut unet = UNet::new(VarBuilder::from_varmap(&map, DType::F32, &dev), &config)?;
        // The builder's constant initialisations (layer norms' scale 0, every bias 0) would cut the
        // path through each block's attention: with its queries 0, the conditioning's gradient
        // would not depend on the attention's output. Noise around 1 on every constant tensor.
        for var in map.all_vars() {
            if var.flatten_all()?.min(0)?.to_scalar::<f32>()? == var.flatten_all()?.max(0)?.to_scalar::<f32>()? {
                var.set(&(Tensor::randn(0f32, 0.3, var.shape(), &dev)? + 1.0)?)?;
            }
        }
        let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev)?;
        let target = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev)?;
        let context = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 5, 12), &dev)?)?;
        let mut run = |threshold: usize| -> Result<(f32, Tensor)> {
            unet.checkpoint_tokens = threshold;
            let loss = (unet.forward(&x, &[500.0], context.as_tensor())? - &target)?
                .sqr()?
                .mean_all()?;
            let grads = loss.backward()?;
            Ok((loss.to_scalar()?, grads.get(context.as_tensor()).unwrap().clone()))
        };
        let (plain, plain_grad) = run(usize::MAX)?;
        let (ck, ck_grad) = run(0)?;
        assert!((plain - ck).abs() < 1e-6 * plain.abs().max(1.0), "{plain} vs {ck}");
        let scale = plain_grad.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(scale > 0.0);
        assert!(max_diff(&plain_grad, &ck_grad) < 1e-5 * scale.max(1.0));
        Ok(())
    }
}
