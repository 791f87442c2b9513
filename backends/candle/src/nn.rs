//! Layer norm written with plain tensor ops: candle-nn's fused kernel has no backward pass, and
//! the concept's gradient must flow through every layer norm of the text towers and the UNet.
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    Ok(LayerNorm { weight: vb.get(size, "weight")?, bias: vb.get(size, "bias")?, eps })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred.broadcast_div(&(var + self.eps)?.sqrt()?)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}
