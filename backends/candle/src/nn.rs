//! Layers the models share beyond candle-nn's. Layer norm is written with plain tensor ops:
//! candle-nn's fused kernel has no backward pass, and the concept's gradient must flow through
//! every layer norm of the text towers and the UNet. In half precision (`--dtype`) layer norms
//! and softmaxes compute in f32, as open_clip and diffusers do under autocast: their sums of
//! squares and exponentials are where 8 or 11 bits of mantissa lose the most.
use adp_api::layout::Substitution;
use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm {
        weight: vb.get(size, "weight")?,
        bias: vb.get(size, "bias")?,
        eps,
    })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight.to_dtype(DType::F32)?)?
            .broadcast_add(&self.bias.to_dtype(DType::F32)?)?
            .to_dtype(dtype)
    }
}

/// Softmax over the last axis of attention `scores` plus an optional additive f32 `mask`,
/// computed in f32 and returned in the scores' dtype.
pub fn attention_softmax(scores: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mut s = scores.to_dtype(DType::F32)?;
    if let Some(mask) = mask {
        s = crate::frozen_add::add_frozen(&s, mask)?;
    }
    candle_nn::ops::softmax(&s, D::Minus1)?.to_dtype(scores.dtype())
}

/// Token embeddings `[P·C, W]` as `s` lays them out: rows of `table`, zeroed at placeholders,
/// plus concept vector `slots[p][k]` at its row (through `index_add`, so gradients reach it).
pub fn substitute(table: &Tensor, s: &Substitution, slots: &[Vec<Tensor>]) -> Result<Tensor> {
    let device = table.device();
    let emb = table.index_select(&Tensor::new(s.ids.as_slice(), device)?, 0)?;
    let keep = Tensor::from_slice(&s.keep, (s.keep.len(), 1), device)?.to_dtype(table.dtype())?;
    let emb = emb.broadcast_mul(&keep)?;
    if s.rows.is_empty() {
        return Ok(emb);
    }
    // The f32 concept vectors enter the model's dtype here; the cast is differentiable, so their
    // gradient comes back as f32.
    let vectors = s
        .slots
        .iter()
        .map(|&(i, k)| slots[i][k].to_dtype(table.dtype()))
        .collect::<Result<Vec<_>>>()?;
    emb.index_add(
        &Tensor::new(s.rows.as_slice(), device)?,
        &Tensor::stack(&vectors, 0)?,
        0,
    )
}
