//! open_clip's `Transformer`: `resblocks.N.{ln_1, attn, ln_2, mlp}`, pre-norm, batch first.
use crate::nn::{attend, LayerNorm, Linear, Prefixed, TchResult};
use adp_api::Result;
use tch::Tensor;

/// `nn.MultiheadAttention` with its packed `in_proj_weight` / `in_proj_bias`.
pub struct Attention {
    in_proj: Linear,
    out_proj: Linear,
    heads: i64,
}

impl Attention {
    pub fn new(w: Prefixed, width: usize, heads: usize) -> Result<Self> {
        let in_proj = Linear::named(&w, "in_proj_weight", Some("in_proj_bias"), width, 3 * width)?;
        Ok(Self {
            in_proj,
            out_proj: Linear::new(w.pp("out_proj"), width, width, true)?,
            heads: heads as i64,
        })
    }

    /// `x`: `[B, T, W]`; `mask`: additive `[T, T]`.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> TchResult<Tensor> {
        let (b, t, w) = x.size3()?;
        let d = w / self.heads;
        let qkv = self.in_proj.forward(x)?;
        let split = |i: i64| -> TchResult<Tensor> {
            qkv.f_narrow(-1, i * w, w)?
                .f_reshape([b, t, self.heads, d])?
                .f_transpose(1, 2)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let out = attend(&q, &k, &v, mask)?;
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
    pub fn new(w: Prefixed, width: usize, heads: usize, mlp_ratio: f32, quick_gelu: bool) -> Result<Self> {
        let hidden = (width as f32 * mlp_ratio) as usize;
        Ok(Self {
            ln_1: LayerNorm::new(w.pp("ln_1"), width, 1e-5)?,
            attn: Attention::new(w.pp("attn"), width, heads)?,
            ln_2: LayerNorm::new(w.pp("ln_2"), width, 1e-5)?,
            c_fc: Linear::new(w.pp("mlp.c_fc"), width, hidden, true)?,
            c_proj: Linear::new(w.pp("mlp.c_proj"), hidden, width, true)?,
            quick_gelu,
        })
    }

    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> TchResult<Tensor> {
        let x = x.f_add(&self.attn.forward(&self.ln_1.forward(x)?, mask)?)?;
        let h = self.c_fc.forward(&self.ln_2.forward(&x)?)?;
        let h = if self.quick_gelu {
            h.f_mul(&h.f_mul_scalar(1.702)?.f_sigmoid()?)?
        } else {
            h.f_gelu("none")?
        };
        x.f_add(&self.c_proj.forward(&h)?)
    }
}

pub struct Transformer {
    pub resblocks: Vec<ResidualAttentionBlock>,
}

impl Transformer {
    pub fn new(
        w: Prefixed,
        width: usize,
        layers: usize,
        heads: usize,
        mlp_ratio: f32,
        quick_gelu: bool,
    ) -> Result<Self> {
        let resblocks = (0..layers)
            .map(|i| ResidualAttentionBlock::new(w.pp(format!("resblocks.{i}")), width, heads, mlp_ratio, quick_gelu))
            .collect::<Result<_>>()?;
        Ok(Self { resblocks })
    }

    /// Runs the first `layers` blocks (all when `None`).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, layers: Option<usize>) -> TchResult<Tensor> {
        let n = layers.unwrap_or(self.resblocks.len()).min(self.resblocks.len());
        self.resblocks[..n]
            .iter()
            .try_fold(x.shallow_clone(), |x, b| b.forward(&x, mask))
    }
}
