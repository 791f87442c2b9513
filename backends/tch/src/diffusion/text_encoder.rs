//! transformers' `CLIPTextModel` (`text_model.*`), fed token embeddings so that a concept vector
//! can be substituted and differentiated. Returns `last_hidden_state` (final layer norm applied),
//! which Stable Diffusion's UNet cross-attends to. Mirrors the candle backend's text encoder.
use crate::convert::{err, to_tch};
use crate::nn::{attend, split_heads, substitute, LayerNorm, Linear, Prefixed, TchResult, Weights};
use adp_api::config::diffusion::TextEncoderConfig;
use adp_api::layout::{causal_mask, Substitution};
use adp_api::tokenizer::Tokens;
use adp_api::Result;
use tch::Tensor;

struct EncoderLayer {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm1: LayerNorm,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
    quick_gelu: bool,
}

impl EncoderLayer {
    fn new(w: Prefixed, c: &TextEncoderConfig) -> Result<Self> {
        let (width, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let a = w.pp("self_attn");
        Ok(Self {
            q_proj: Linear::new(a.pp("q_proj"), width, width, true)?,
            k_proj: Linear::new(a.pp("k_proj"), width, width, true)?,
            v_proj: Linear::new(a.pp("v_proj"), width, width, true)?,
            out_proj: Linear::new(a.pp("out_proj"), width, width, true)?,
            layer_norm1: LayerNorm::new(w.pp("layer_norm1"), width, eps)?,
            layer_norm2: LayerNorm::new(w.pp("layer_norm2"), width, eps)?,
            fc1: Linear::new(w.pp("mlp.fc1"), width, i, true)?,
            fc2: Linear::new(w.pp("mlp.fc2"), i, width, true)?,
            heads: c.num_attention_heads as i64,
            quick_gelu: c.hidden_act == "quick_gelu",
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> TchResult<Tensor> {
        let h = self.layer_norm1.forward(x)?;
        let split = |l: &Linear| -> TchResult<Tensor> { split_heads(&l.forward(&h)?, self.heads) };
        let (q, k, v) = (split(&self.q_proj)?, split(&self.k_proj)?, split(&self.v_proj)?);
        let attn = attend(&q, &k, &v, Some(mask))?;
        let x = x.f_add(&self.out_proj.forward(&attn)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = if self.quick_gelu {
            h.f_mul(&h.f_mul_scalar(1.702)?.f_sigmoid()?)?
        } else {
            h.f_gelu("none")?
        };
        x.f_add(&self.fc2.forward(&h)?)
    }
}

pub struct TextEncoder {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNorm,
    mask: Tensor,
    vocab: usize,
    positions: usize,
}

impl TextEncoder {
    pub fn new(weights: &Weights, c: &TextEncoderConfig) -> Result<Self> {
        let w = weights.pp("text_model");
        let n = c.max_position_embeddings;
        let token_embedding = w.get("embeddings.token_embedding.weight", &[c.vocab_size, c.hidden_size])?;
        let device = token_embedding.device();
        let mask = to_tch(&adp_api::Tensor::new(vec![n, n], causal_mask(n))?, device)?;
        Ok(Self {
            token_embedding,
            position_embedding: w.get("embeddings.position_embedding.weight", &[n, c.hidden_size])?,
            layers: (0..c.num_hidden_layers)
                .map(|i| EncoderLayer::new(w.pp(format!("encoder.layers.{i}")), c))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::new(w.pp("final_layer_norm"), c.hidden_size, c.layer_norm_eps)?,
            mask,
            vocab: c.vocab_size,
            positions: n,
        })
    }

    /// `[P, C, W]` hidden states; `slots[p][k]` is prompt p's concept k as a `[W]` tensor.
    pub fn forward(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let s = Substitution::new(tokens, self.vocab, self.positions)?;
        let x = substitute(&self.token_embedding, &s, slots)?;
        let (p, c) = (s.prompts as i64, s.context as i64);
        let run = || -> TchResult<Tensor> {
            let mut x = x
                .f_reshape([p, c, -1])?
                .f_add(&self.position_embedding.f_narrow(0, 0, c)?)?;
            let mask = self.mask.f_narrow(0, 0, c)?.f_narrow(1, 0, c)?;
            for layer in &self.layers {
                x = layer.forward(&x, &mask)?;
            }
            self.final_layer_norm.forward(&x)
        };
        run().map_err(err)
    }
}
