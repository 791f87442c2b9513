//! transformers' `CLIPTextModel` (`text_model.*`), fed token embeddings so that a concept vector
//! can be substituted and differentiated. Returns `last_hidden_state` (final layer norm applied),
//! which Stable Diffusion's UNet cross-attends to.
use adp_api::config::diffusion::TextEncoderConfig;
use adp_api::tokenizer::Tokens;
use candle_core::{Device, Module, Result, Tensor, D};
use crate::nn::{layer_norm, LayerNorm};
use candle_nn::{linear, Linear, VarBuilder};

struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    quick_gelu: bool,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, c: &TextEncoderConfig) -> Result<Self> {
        let (w, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let a = vb.pp("self_attn");
        Ok(Self {
            q_proj: linear(w, w, a.pp("q_proj"))?,
            k_proj: linear(w, w, a.pp("k_proj"))?,
            v_proj: linear(w, w, a.pp("v_proj"))?,
            out_proj: linear(w, w, a.pp("out_proj"))?,
            layer_norm1: layer_norm(w, eps, vb.pp("layer_norm1"))?,
            layer_norm2: layer_norm(w, eps, vb.pp("layer_norm2"))?,
            fc1: linear(w, i, vb.pp("mlp.fc1"))?,
            fc2: linear(i, w, vb.pp("mlp.fc2"))?,
            heads: c.num_attention_heads,
            quick_gelu: c.hidden_act == "quick_gelu",
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, t, w) = x.dims3()?;
        let d = w / self.heads;
        let h = self.layer_norm1.forward(x)?;
        let split = |l: &Linear| -> Result<Tensor> { l.forward(&h)?.reshape((b, t, self.heads, d))?.transpose(1, 2)?.contiguous() };
        let (q, k, v) = (split(&self.q_proj)?, split(&self.k_proj)?, split(&self.v_proj)?);
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?.broadcast_add(mask)?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&v)?.transpose(1, 2)?.reshape((b, t, w))?;
        let x = (x + self.out_proj.forward(&attn)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = if self.quick_gelu { (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)? } else { h.gelu_erf()? };
        x + self.fc2.forward(&h)?
    }
}

pub struct TextEncoder {
    pub token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    mask: Tensor,
    vocab: usize,
}

impl TextEncoder {
    pub fn new(vb: VarBuilder, c: &TextEncoderConfig, device: &Device) -> Result<Self> {
        let vb = vb.pp("text_model");
        let n = c.max_position_embeddings;
        let mask: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
        Ok(Self {
            token_embedding: vb.get((c.vocab_size, c.hidden_size), "embeddings.token_embedding.weight")?,
            position_embedding: vb.get((n, c.hidden_size), "embeddings.position_embedding.weight")?,
            layers: (0..c.num_hidden_layers).map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), c)).collect::<Result<_>>()?,
            final_layer_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
            mask: Tensor::from_vec(mask, (n, n), device)?,
            vocab: c.vocab_size,
        })
    }

    /// `[P, C, W]` hidden states; `slots[p][k]` is prompt p's concept k as a `[W]` tensor.
    pub fn forward(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let device = self.token_embedding.device();
        let (p, c) = (tokens.len(), tokens[0].ids.len());
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.ids.iter().map(|&i| if (i as usize) < self.vocab { i } else { 0 })).collect();
        let keep: Vec<f32> = tokens.iter().flat_map(|t| t.ids.iter().map(|&i| if (i as usize) < self.vocab { 1.0 } else { 0.0 })).collect();
        let mut x = self.token_embedding.index_select(&Tensor::new(ids, device)?, 0)?.broadcast_mul(&Tensor::from_vec(keep, (p * c, 1), device)?)?;
        let (mut rows, mut vectors) = (Vec::new(), Vec::new());
        for (i, t) in tokens.iter().enumerate() {
            for &(pos, k) in &t.concepts {
                rows.push((i * c + pos) as u32);
                vectors.push(slots[i][k].clone());
            }
        }
        if !rows.is_empty() {
            x = x.index_add(&Tensor::new(rows, device)?, &Tensor::stack(&vectors, 0)?, 0)?;
        }
        let mut x = x.reshape((p, c, ()))?.broadcast_add(&self.position_embedding.narrow(0, 0, c)?)?;
        let mask = self.mask.narrow(0, 0, c)?.narrow(D::Minus1, 0, c)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        self.final_layer_norm.forward(&x)
    }
}
