//! open_clip's text tower (`token_embedding`, `positional_embedding`, `transformer`,
//! `ln_final`, `text_projection`) with concept vectors substituted at placeholder positions.
use super::transformer::{LayerNorm, Transformer};
use super::Weights;
use crate::convert::{err, index};
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
}

/// Additive causal mask `[n, n]`: −∞ above the diagonal.
fn causal_mask(n: usize, device: tch::Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..n * n).map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 }).collect();
    Tensor::f_from_slice(&data).and_then(|t| t.f_reshape([n as i64, n as i64])).and_then(|t| t.f_to_device(device)).map_err(err)
}

impl TextTransformer {
    /// `w` at the root of an open_clip state dict.
    pub fn new(w: &Weights, cfg: &ClipConfig) -> Result<Self> {
        let t = &cfg.text_cfg;
        let token_embedding = w.get("token_embedding.weight", &[t.vocab_size, t.width])?;
        let device = token_embedding.device();
        Ok(Self {
            token_embedding,
            positional_embedding: w.get("positional_embedding", &[t.context_length, t.width])?,
            transformer: Transformer::new(w.pp("transformer"), t.width, t.layers, t.heads, t.mlp_ratio, cfg.quick_gelu)?,
            ln_final: LayerNorm::new(w.pp("ln_final"), t.width)?,
            text_projection: w.get("text_projection", &[t.width, cfg.embed_dim])?,
            causal_mask: causal_mask(t.context_length, device)?,
            vocab: t.vocab_size,
        })
    }

    /// Token embeddings `[P, C, W]`; `slots[p][k]` is the vector `[W]` of prompt p's concept k.
    /// Ids outside the vocabulary (the placeholders) embed to zero before their concept is added.
    pub fn embed_tokens(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let device = self.token_embedding.device();
        let (p, c) = (tokens.len() as i64, tokens.first().map_or(0, |t| t.ids.len()) as i64);
        let ids: Vec<usize> = tokens.iter().flat_map(|t| t.ids.iter().map(|&i| if (i as usize) < self.vocab { i as usize } else { 0 })).collect();
        let keep: Vec<f32> = tokens.iter().flat_map(|t| t.ids.iter().map(|&i| if (i as usize) < self.vocab { 1.0 } else { 0.0 })).collect();
        let mut rows = Vec::new();
        let mut vectors = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            for &(pos, k) in &t.concepts {
                rows.push(i * c as usize + pos);
                vectors.push(&slots[i][k]);
            }
        }
        let ids = index(&ids, device)?;
        let rows = index(&rows, device)?;
        let embed = || -> std::result::Result<Tensor, tch::TchError> {
            let keep = Tensor::f_from_slice(&keep)?.f_reshape([p * c, 1])?.f_to_device(device)?;
            let emb = self.token_embedding.f_index_select(0, &ids)?.f_mul(&keep)?;
            let emb = if vectors.is_empty() { emb } else { emb.f_index_add(0, &rows, &Tensor::f_stack(&vectors, 0)?)? };
            emb.f_reshape([p, c, -1])
        };
        embed().map_err(err)
    }

    /// `[P, embed_dim]`: final layer norm at each prompt's first end token, projected.
    pub fn encode(&self, tokens: &[Tokens], slots: &[Vec<Tensor>]) -> Result<Tensor> {
        let x = self.embed_tokens(tokens, slots)?;
        let c = tokens.first().map_or(0, |t| t.ids.len());
        let ends: Vec<usize> = tokens.iter().enumerate().map(|(i, t)| i * c + t.end).collect();
        let ends = index(&ends, x.device())?;
        let run = || -> std::result::Result<Tensor, tch::TchError> {
            let x = x.f_add(&self.positional_embedding)?;
            let x = self.transformer.forward(&x, Some(&self.causal_mask), None)?;
            let pooled = x.f_flatten(0, 1)?.f_index_select(0, &ends)?;
            self.ln_final.forward(&pooled)?.f_matmul(&self.text_projection)
        };
        run().map_err(err)
    }

    /// Row `id` of the token embedding table.
    pub fn token_row(&self, id: usize) -> Result<Tensor> {
        if id >= self.vocab {
            return Err(adp_api::Error::invalid("token", format!("id {id} is outside the vocabulary of {}", self.vocab)));
        }
        self.token_embedding.f_get(id as i64).and_then(|t| t.f_to_kind(Kind::Float)).map_err(err)
    }
}
