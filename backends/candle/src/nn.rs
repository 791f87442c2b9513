//! Layers the models share beyond candle-nn's. Layer norm is written with plain tensor ops:
//! candle-nn's fused kernel has no backward pass, and the concept's gradient must flow through
//! every layer norm of the text towers and the UNet.
use adp_api::layout::Substitution;
use candle_core::{Module, Result, Tensor, D};
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
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + self.eps)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Token embeddings `[P·C, W]` as `s` lays them out: rows of `table`, zeroed at placeholders,
/// plus concept vector `slots[p][k]` at its row (through `index_add`, so gradients reach it).
pub fn substitute(table: &Tensor, s: &Substitution, slots: &[Vec<Tensor>]) -> Result<Tensor> {
    let device = table.device();
    let emb = table.index_select(&Tensor::new(s.ids.as_slice(), device)?, 0)?;
    let emb = emb.broadcast_mul(&Tensor::from_slice(&s.keep, (s.keep.len(), 1), device)?)?;
    if s.rows.is_empty() {
        return Ok(emb);
    }
    let vectors: Vec<Tensor> = s.slots.iter().map(|&(i, k)| slots[i][k].clone()).collect();
    emb.index_add(
        &Tensor::new(s.rows.as_slice(), device)?,
        &Tensor::stack(&vectors, 0)?,
        0,
    )
}
