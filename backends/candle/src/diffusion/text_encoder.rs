//! transformers' `CLIPTextModel` (`text_model.*`), fed token embeddings so that a concept vector
//! can be substituted and differentiated. Returns `last_hidden_state` (final layer norm applied),
//! which Stable Diffusion's UNet cross-attends to.
use crate::convert::err;
use crate::frozen::{linear, FrozenLinear as Linear};
use crate::frozen_add::add_frozen;
use crate::nn::{layer_norm, substitute, LayerNorm};
use adp_api::config::diffusion::TextEncoderConfig;
use adp_api::layout::{causal_mask, Substitution};
use adp_api::tokenizer::Tokens;
use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

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
        let split = |l: &Linear| -> Result<Tensor> {
            l.forward(&h)?
                .reshape((b, t, self.heads, d))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(&self.q_proj)?, split(&self.k_proj)?, split(&self.v_proj)?);
        let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
        let attn = crate::nn::attention_softmax(&scores, Some(mask))?
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, w))?;
        let x = (x + self.out_proj.forward(&attn)?)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let h = if self.quick_gelu {
            (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?
        } else {
            crate::activation::gelu_erf(&h)?
        };
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
        Ok(Self {
            token_embedding: vb.get((c.vocab_size, c.hidden_size), "embeddings.token_embedding.weight")?,
            position_embedding: vb.get((n, c.hidden_size), "embeddings.position_embedding.weight")?,
            layers: (0..c.num_hidden_layers)
                .map(|i| EncoderLayer::new(vb.pp(format!("encoder.layers.{i}")), c))
                .collect::<Result<_>>()?,
            final_layer_norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("final_layer_norm"))?,
            mask: Tensor::from_vec(causal_mask(n), (n, n), device)?,
            vocab: c.vocab_size,
        })
    }

    /// `[P, C, W]` hidden states; `slots[p][k]` is prompt p's concept k as a `[W]` tensor.
    pub fn forward(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> adp_api::Result<Tensor> {
        let s = Substitution::new(tokens, self.vocab, self.position_embedding.dim(0).map_err(err)?)?;
        self.run(&s, slots).map_err(err)
    }

    fn run(&self, s: &Substitution, slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let (p, c) = (s.prompts, s.context);
        let x = substitute(&self.token_embedding, s, slots)?.reshape((p, c, ()))?;
        let mut x = add_frozen(&x, &self.position_embedding.narrow(0, 0, c)?)?;
        let mask = self.mask.narrow(0, 0, c)?.narrow(D::Minus1, 0, c)?;
        for layer in &self.layers {
            x = layer.forward(&x, &mask)?;
        }
        self.final_layer_norm.forward(&x)
    }
}
