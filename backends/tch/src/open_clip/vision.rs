//! open_clip's `VisionTransformer` (`visual.*`), with the dense features WinCLIP needs.
use super::transformer::Transformer;
use crate::convert::err;
use crate::nn::{index, LayerNorm, Prefixed};
use adp_api::layout::window_positions;
use adp_api::{ClipConfig, Result};
use tch::{TchError, Tensor};

type TchResult<T> = std::result::Result<T, TchError>;

pub struct VisionTransformer {
    conv1: Tensor,
    class_embedding: Tensor,
    positional_embedding: Tensor,
    ln_pre: LayerNorm,
    transformer: Transformer,
    ln_post: LayerNorm,
    proj: Tensor,
    grid: usize,
    patch: i64,
}

impl VisionTransformer {
    pub fn new(w: Prefixed, cfg: &ClipConfig) -> Result<Self> {
        let v = &cfg.vision_cfg;
        let grid = cfg.grid();
        Ok(Self {
            conv1: w.get("conv1.weight", &[v.width, 3, v.patch_size, v.patch_size])?,
            class_embedding: w.get("class_embedding", &[v.width])?,
            positional_embedding: w.get("positional_embedding", &[grid * grid + 1, v.width])?,
            ln_pre: LayerNorm::new(w.pp("ln_pre"), v.width, 1e-5)?,
            transformer: Transformer::new(
                w.pp("transformer"),
                v.width,
                v.layers,
                cfg.vision_heads(),
                v.mlp_ratio,
                cfg.quick_gelu,
            )?,
            ln_post: LayerNorm::new(w.pp("ln_post"), v.width, 1e-5)?,
            proj: w.get("proj", &[v.width, cfg.embed_dim])?,
            grid,
            patch: v.patch_size as i64,
        })
    }

    /// Patch embeddings with their positional embeddings: `[N, G², W]`.
    fn patches(&self, images: &Tensor) -> TchResult<Tensor> {
        let p = self.patch;
        let x = images
            .f_conv2d(&self.conv1, None::<&Tensor>, [p, p], [0, 0], [1, 1], 1)?
            .f_flatten(2, -1)?
            .f_transpose(1, 2)?;
        let g2 = (self.grid * self.grid) as i64;
        x.f_add(&self.positional_embedding.f_narrow(0, 1, g2)?)
    }

    /// The class token with its positional embedding: `[W]`.
    fn class_token(&self) -> TchResult<Tensor> {
        self.class_embedding.f_add(&self.positional_embedding.f_get(0)?)
    }

    /// Runs `[class token, tokens…]` through the tower; returns the hidden states after `layers`
    /// blocks, or the projected class token when `layers` is `None`.
    fn run(&self, tokens: &Tensor, layers: Option<usize>) -> TchResult<Tensor> {
        let (n, _, w) = tokens.size3()?;
        let cls = self.class_token()?.f_reshape([1, 1, w])?.f_expand([n, 1, w], false)?;
        let x = self.ln_pre.forward(&Tensor::f_cat(&[&cls, tokens], 1)?)?;
        let x = self.transformer.forward(&x, None, layers)?;
        match layers {
            Some(_) => Ok(x),
            None => self.ln_post.forward(&x.f_select(1, 0)?)?.f_matmul(&self.proj),
        }
    }

    /// `[N, embed_dim]` from normalised images.
    pub fn embed(&self, images: &Tensor) -> TchResult<Tensor> {
        self.run(&self.patches(images)?, None)
    }

    /// The penultimate block's patch tokens: `[N, G², W]`.
    pub fn penultimate_tokens(&self, images: &Tensor) -> TchResult<Tensor> {
        let depth = self.transformer.resblocks.len();
        let x = self.run(&self.patches(images)?, Some(depth.saturating_sub(1)))?;
        x.f_narrow(1, 1, (self.grid * self.grid) as i64)
    }

    /// WinCLIP window embeddings for `size`×`size` windows at stride 1, row-major: every window
    /// of every image goes through the tower in one batch of `[N·windows, 1 + size², W]`.
    /// `size` must be in `1..=grid` (the encoder checks).
    pub fn window_embeddings(&self, images: &Tensor, size: usize) -> Result<Tensor> {
        let per_side = self.grid + 1 - size;
        let positions: Vec<u32> = window_positions(self.grid, size)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        let patches = self.patches(images).map_err(err)?;
        let positions = index(&positions, patches.device())?;
        let windows = (per_side * per_side) as i64;
        let run = || -> TchResult<Tensor> {
            let (n, _, w) = patches.size3()?;
            let batch = patches
                .f_index_select(1, &positions)?
                .f_reshape([n * windows, (size * size) as i64, w])?;
            let e = self.run(&batch, None)?;
            let d = e.size().last().copied().unwrap_or(0);
            e.f_reshape([n, windows, d])
        };
        run().map_err(err)
    }
}
