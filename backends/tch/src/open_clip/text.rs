//! open_clip's text tower (`token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`) with concept vectors substituted at placeholder positions.
use super::transformer::Transformer;
use crate::convert::{err, to_tch};
use crate::nn::{index, substitute, LayerNorm, Weights};
use adp_api::layout::{causal_mask, Substitution};
use adp_api::tokenizer::Tokens;
use adp_api::{ClipConfig, Result};
use tch::{Kind, Tensor};

pub struct TextTransformer {
    pub token_embedding: Tensor,
    positional_embedding: Tensor,
    transformer: Transformer,
    ln_final: LayerNorm,
    text_projection: Tensor,
    causal_mask: Tensor,
    vocab: usize,
    context: usize,
}

impl TextTransformer {
    /// `w` at the root of an open_clip state dict.
    pub fn new(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        let t = &cfg.text_cfg;
        let n = t.context_length;
        let token_embedding = w.get("token_embedding.weight", &[t.vocab_size, t.width])?;
        let device = token_embedding.device();
        Ok(Self {
            token_embedding,
            positional_embedding: w.get("positional_embedding", &[t.context_length, t.width])?,
            transformer: Transformer::new(
                w.pp("transformer"),
                t.width,
                t.layers,
                t.heads,
                t.mlp_ratio,
                cfg.quick_gelu,
            )?,
            ln_final: LayerNorm::new(w.pp("ln_final"), t.width, 1e-5)?,
            text_projection: w.get("text_projection", &[t.width, cfg.embed_dim])?,
            causal_mask: to_tch(&adp_api::Tensor::new(vec![n, n], causal_mask(n))?, device)?,
            vocab: t.vocab_size,
            context: n,
        })
    }

    /// `[P, embed_dim]`: final layer norm at each prompt's first end token, projected.
    pub fn encode(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let s = Substitution::new(tokens, self.vocab, self.context)?;
        let x = substitute(&self.token_embedding, &s, slots)?;
        let ends = index(&s.ends(tokens), x.device())?;
        let (p, c) = (s.prompts as i64, s.context as i64);
        let run = || -> std::result::Result<Tensor, tch::TchError> {
            let x = x.f_reshape([p, c, -1])?.f_add(&self.positional_embedding)?;
            let x = self.transformer.forward(&x, Some(&self.causal_mask), None)?;
            let pooled = x.f_flatten(0, 1)?.f_index_select(0, &ends)?;
            self.ln_final.forward(&pooled)?.f_matmul(&self.text_projection)
        };
        run().map_err(err)
    }

    /// Row `id` of the token embedding table.
    pub fn token_row(&self, id: usize) -> Result<Tensor> {
        self.token_embedding
            .f_get(id as i64)
            .and_then(|t| t.f_to_kind(Kind::Float))
            .map_err(err)
    }
}
