//! open_clip's `VisionTransformer` (`visual.*`), with the dense features WinCLIP needs.
use super::transformer::Transformer;
use crate::nn::{layer_norm, LayerNorm};
use adp_api::layout::window_positions;
use adp_api::ClipConfig;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{conv2d_no_bias, Conv2d, Conv2dConfig, VarBuilder};

pub struct VisionTransformer {
    conv1: Conv2d,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
    grid: usize,
}

impl VisionTransformer {
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> Result<Self> {
        let v = &cfg.vision_cfg;
        let conv = Conv2dConfig {
            stride: v.patch_size,
            ..Default::default()
        };
        let grid = cfg.grid();
        Ok(Self {
            conv1: conv2d_no_bias(3, v.width, v.patch_size, conv, vb.pp("conv1"))?,
            class_embedding: vb.get(v.width, "class_embedding")?,
            positional_embedding: vb.get((grid * grid + 1, v.width), "positional_embedding")?,
            ln_pre: layer_norm(v.width, 1e-5, vb.pp("ln_pre"))?,
            transformer: Transformer::new(
                vb.pp("transformer"),
                v.width,
                v.layers,
                cfg.vision_heads(),
                v.mlp_ratio,
                cfg.quick_gelu,
            )?,
            ln_post: layer_norm(v.width, 1e-5, vb.pp("ln_post"))?,
            proj: vb.get((v.width, cfg.embed_dim), "proj")?,
            grid,
        })
    }

    /// Patch embeddings with their positional embeddings: `[N, G², W]`.
    fn patches(&self, images: &Tensor) -> Result<Tensor> {
        let x = self.conv1.forward(images)?.flatten_from(2)?.transpose(1, 2)?;
        x.broadcast_add(&self.positional_embedding.narrow(0, 1, self.grid * self.grid)?)
    }

    /// The class token with its positional embedding: `[W]`.
    fn class_token(&self) -> Result<Tensor> {
        &self.class_embedding + self.positional_embedding.get(0)?
    }

    /// Runs `[class token, tokens…]` through the tower; returns the hidden states after `layers`
    /// blocks, or the projected class token when `layers` is `None`.
    fn run(&self, tokens: &Tensor, layers: Option<usize>) -> Result<Tensor> {
        let (n, _, w) = tokens.dims3()?;
        let cls = self.class_token()?.reshape((1, 1, w))?.broadcast_as((n, 1, w))?;
        let x = self.ln_pre.forward(&Tensor::cat(&[&cls, tokens], 1)?)?;
        let x = self.transformer.forward(&x, None, layers)?;
        match layers {
            Some(_) => Ok(x),
            None => self
                .ln_post
                .forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?
                .matmul(&self.proj),
        }
    }

    /// `[N, embed_dim]` from normalised images.
    pub fn embed(&self, images: &Tensor) -> Result<Tensor> {
        self.run(&self.patches(images)?, None)
    }

    /// The penultimate block's patch tokens: `[N, G², W]`.
    pub fn penultimate_tokens(&self, images: &Tensor) -> Result<Tensor> {
        let depth = self.transformer.resblocks.len();
        let x = self.run(&self.patches(images)?, Some(depth.saturating_sub(1)))?;
        x.narrow(1, 1, self.grid * self.grid)
    }

    /// WinCLIP window embeddings for `size`×`size` windows at stride 1, row-major: every window
    /// of every image goes through the tower in one batch of `[N·windows, 1 + size², W]`.
    pub fn window_embeddings(&self, images: &Tensor, size: usize) -> Result<Tensor> {
        let per_side = self.grid + 1 - size;
        let index: Vec<u32> = window_positions(self.grid, size)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let patches = self.patches(images)?;
        let (n, _, w) = patches.dims3()?;
        let index = Tensor::new(index, patches.device())?;
        let windows = patches
            .index_select(&index, 1)?
            .reshape((n * per_side * per_side, size * size, w))?;
        let e = self.run(&windows, None)?;
        e.reshape((n, per_side * per_side, e.dim(D::Minus1)?))
    }
}
