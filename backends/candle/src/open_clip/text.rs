//! open_clip's text tower (`token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`) with concept vectors substituted at placeholder positions.
use super::transformer::Transformer;
use crate::convert::err;
use crate::frozen_add::add_frozen;
use crate::nn::{layer_norm, substitute, LayerNorm};
use adp_api::layout::{causal_mask, Substitution};
use adp_api::tokenizer::Tokens;
use adp_api::ClipConfig;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub struct TextTransformer {
    pub token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
    causal_mask: Tensor,
    vocab: usize,
}

impl TextTransformer {
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let t = &cfg.text_cfg;
        let n = t.context_length;
        Ok(Self {
            token_embedding: vb.get((t.vocab_size, t.width), "token_embedding.weight")?,
            positional_embedding: vb.get((t.context_length, t.width), "positional_embedding")?,
            transformer: Transformer::new(
                vb.pp("transformer"),
                t.width,
                t.layers,
                t.heads,
                t.mlp_ratio,
                cfg.quick_gelu,
            )?,
            ln_final: layer_norm(t.width, 1e-5, vb.pp("ln_final"))?,
            text_projection: vb.get((t.width, cfg.embed_dim), "text_projection")?,
            causal_mask: Tensor::from_vec(causal_mask(n), (n, n), vb.device())?,
            vocab: t.vocab_size,
        })
    }

    /// Token embeddings `[P, C, W]`; `slots[p][k]` is the vector `[W]` of prompt p's concept k.
    pub fn embed_tokens(&self, s: &Substitution, slots: &[Vec<Tensor>]) -> Result<Tensor> {
        substitute(&self.token_embedding, s, slots)?.reshape((s.prompts, s.context, ()))
    }

    /// `[P, embed_dim]`: final layer norm at each prompt's first end token, projected.
    pub fn encode(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> adp_api::Result<Tensor> {
        let s = Substitution::new(tokens, self.vocab, self.positional_embedding.dim(0).map_err(err)?)?;
        self.run(&s, &s.ends(tokens), slots).map_err(err)
    }

    fn run(&self, s: &Substitution, ends: &[u32], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let x = add_frozen(&self.embed_tokens(s, slots)?, &self.positional_embedding)?;
        let x = self.transformer.forward(&x, Some(&self.causal_mask), None)?;
        let pooled = x.flatten_to(1)?.index_select(&Tensor::new(ends, x.device())?, 0)?;
        self.ln_final.forward(&pooled)?.matmul(&self.text_projection)
    }
}
