//! open_clip's text tower (`token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`) with concept vectors substituted at placeholder positions.
use super::transformer::Transformer;
use adp_api::tokenizer::Tokens;
use adp_api::ClipConfig;
use candle_core::{Device, Module, Result, Tensor};
use crate::nn::{layer_norm, LayerNorm};
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

fn causal_mask(n: usize, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
    Tensor::from_vec(data, (n, n), device)
}

impl TextTransformer {
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let t = &cfg.text_cfg;
        Ok(Self {
            token_embedding: vb.get((t.vocab_size, t.width), "token_embedding.weight")?,
            positional_embedding: vb.get((t.context_length, t.width), "positional_embedding")?,
            transformer: Transformer::new(vb.pp("transformer"), t.width, t.layers, t.heads, t.mlp_ratio, cfg.quick_gelu)?,
            ln_final: layer_norm(t.width, 1e-5, vb.pp("ln_final"))?,
            text_projection: vb.get((t.width, cfg.embed_dim), "text_projection")?,
            causal_mask: causal_mask(t.context_length, vb.device())?,
            vocab: t.vocab_size,
        })
    }

    /// Token embeddings `[P, C, W]`; `slots[p][k]` is the vector `[W]` of prompt p's concept k.
    pub fn embed_tokens(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let device = self.token_embedding.device();
        let (p, c) = (tokens.len(), tokens[0].ids.len());
        let ids: Vec<u32> = tokens.iter().flat_map(|t| t.ids.iter().map(|&i| if (i as usize) < self.vocab { i } else { 0 })).collect();
        let keep: Vec<f32> = tokens.iter().flat_map(|t| t.ids.iter().map(|&i| if (i as usize) < self.vocab { 1.0 } else { 0.0 })).collect();
        let emb = self.token_embedding.index_select(&Tensor::new(ids, device)?, 0)?;
        let emb = emb.broadcast_mul(&Tensor::from_vec(keep, (p * c, 1), device)?)?;
        let mut rows = Vec::new();
        let mut vectors = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            for &(pos, k) in &t.concepts {
                rows.push((i * c + pos) as u32);
                vectors.push(slots[i][k].clone());
            }
        }
        let emb = if rows.is_empty() {
            emb
        } else {
            emb.index_add(&Tensor::new(rows, device)?, &Tensor::stack(&vectors, 0)?, 0)?
        };
        emb.reshape((p, c, ()))
    }

    /// `[P, embed_dim]`: final layer norm at each prompt's first end token, projected.
    pub fn encode(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let x = self.embed_tokens(tokens, slots)?.broadcast_add(&self.positional_embedding)?;
        let x = self.transformer.forward(&x, Some(&self.causal_mask), None)?;
        let c = tokens[0].ids.len();
        let ends: Vec<u32> = tokens.iter().enumerate().map(|(i, t)| (i * c + t.end) as u32).collect();
        let pooled = x.flatten_to(1)?.index_select(&Tensor::new(ends, x.device())?, 0)?;
        self.ln_final.forward(&pooled)?.matmul(&self.text_projection)
    }
}
