//! open_clip's `Transformer`: `resblocks.N.{ln_1, attn, ln_2, mlp}`, pre-norm, batch first.
use crate::frozen::{linear, FrozenLinear as Linear};
use crate::nn::{layer_norm, LayerNorm};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// `nn.MultiheadAttention` with its packed `in_proj_weight` / `in_proj_bias`.
pub struct Attention {
    in_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    pub fn new(vb: VarBuilder, width: usize, heads: usize) -> Result<Self> {
        Ok(Self {
            in_proj: Linear::new(
                vb.get((3 * width, width), "in_proj_weight")?,
                Some(vb.get(3 * width, "in_proj_bias")?),
            ),
            out_proj: linear(width, width, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `x`: `[B, T, W]`; `mask`: additive `[T, T]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let d = w / self.heads;
        let qkv = self.in_proj.forward(x)?;
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(D::Minus1, i * w, w)?
                .reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let out = match mask {
            // The image tower: the fused attention (on the CPU no score tensor at all).
            None => crate::attention::attention(&q, &k, &v)?,
            // The text tower's causal mask: the composed form, the scores a [B, H, 77, 77] tensor.
            Some(_) => {
                let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
                crate::nn::attention_softmax(&scores, mask)?.matmul(&v)?
            }
        };
        let out = out.transpose(1, 2)?.reshape((b, t, w))?;
        self.out_proj.forward(&out)
    }
}

pub struct ResidualAttentionBlock {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    c_fc: Linear,
    c_proj: Linear,
    quick_gelu: bool,
}

impl ResidualAttentionBlock {
    pub fn new(vb: VarBuilder, width: usize, heads: usize, mlp_ratio: f32, quick_gelu: bool) -> Result<Self> {
        let hidden = (width as f32 * mlp_ratio) as usize;
        Ok(Self {
            ln_1: layer_norm(width, 1e-5, vb.pp("ln_1"))?,
            attn: Attention::new(vb.pp("attn"), width, heads)?,
            ln_2: layer_norm(width, 1e-5, vb.pp("ln_2"))?,
            c_fc: linear(width, hidden, vb.pp("mlp.c_fc"))?,
            c_proj: linear(hidden, width, vb.pp("mlp.c_proj"))?,
            quick_gelu,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        let h = if self.quick_gelu {
            (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?
        } else {
            crate::activation::gelu_erf(&h)?
        };
        x + self.c_proj.forward(&h)?
    }
}

pub struct Transformer {
    pub resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    pub fn new(
        vb: VarBuilder,
        width: usize,
        layers: usize,
        heads: usize,
        mlp_ratio: f32,
        quick_gelu: bool,
    ) -> Result<Self> {
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(vb.pp(format!("resblocks.{i}")), width, heads, mlp_ratio, quick_gelu))
            .collect::<Result<_>>()?;
        Ok(Self { resblocks })
    }

    /// Runs the first `layers` blocks (all when `None`).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, layers: Option<usize>) -> Result<Tensor> {
        let n = layers.unwrap_or(self.resblocks.len());
        self.resblocks[..n]
            .iter()
            .try_fold(x.clone(), |x, b| b.forward(&x, mask))
    }
}
