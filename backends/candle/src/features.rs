//! `FeatureExtractor` on EfficientNet-Lite: multi-scale patch features for reference association.
use crate::convert::{err, from_candle, to_candle};
use crate::efficientnet::EfficientNet;
use adp_api::config::efficientnet::FEATURE_GROUPS;
use adp_api::layout::{chunks, BACKBONE_CHUNK};
use adp_api::preprocess::{backbone_input, bilinear_matrix};
use adp_api::requests::{BackboneOutputs, FeatureDims};
use adp_api::{checks, BackboneCheckpoint, EfficientNetConfig, Error, FeatureExtractor, ImageBatch, Result, Tensor};
use candle_core::DType;
use candle_nn::VarBuilder;
use rayon::prelude::*;
use std::collections::HashMap;

pub struct CandleFeatures {
    model: EfficientNet,
    config: EfficientNetConfig,
    dims: FeatureDims,
    device: candle_core::Device,
}

impl CandleFeatures {
    /// Checks that the file holds every tensor with its shape, then loads it with the batch norms
    /// folded into the convolutions.
    pub fn load(backbone: &BackboneCheckpoint, device: candle_core::Device) -> Result<Self> {
        backbone.check_weights()?;
        let tensors = adp_api::fold::efficientnet(backbone)?
            .into_iter()
            .map(|(name, t)| Ok((name, to_candle(&t, &device)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model =
            EfficientNet::new(vb, &backbone.config).map_err(|e| Error::config(&backbone.weights, e.to_string()))?;
        Ok(Self {
            model,
            dims: backbone.config.feature_dims(),
            config: backbone.config.clone(),
            device,
        })
    }

    /// The normalised inputs on the device, in chunks of at most [`BACKBONE_CHUNK`] images.
    fn inputs(&self, images: &ImageBatch) -> Result<Vec<candle_core::Tensor>> {
        checks::backbone_images(images)?;
        let x = to_candle(&backbone_input(images, &self.config), &self.device)?;
        chunks(images.len(), BACKBONE_CHUNK)
            .map(|(start, len)| x.narrow(0, start, len).map_err(err))
            .collect()
    }

    /// `f` on `x` split along the batch into [`crate::threads::per_thread_parts`]. Kernels run
    /// per image, so a photo's features do not depend on its part beyond rounding (the
    /// conformance suite's batch-against-alone case).
    fn per_thread<T: Send>(
        &self,
        x: &candle_core::Tensor,
        f: impl Fn(&candle_core::Tensor) -> candle_core::Result<T> + Sync,
    ) -> candle_core::Result<Vec<T>> {
        let parts = crate::threads::per_thread_parts(x.dim(0)?, &self.device);
        if parts.len() <= 1 {
            return Ok(vec![f(x)?]);
        }
        parts
            .into_par_iter()
            .map(|(start, len)| f(&x.narrow(0, start, len)?))
            .collect()
    }

    /// `[n, G², dim]` patch features of one chunk of normalised images.
    fn patch_chunk(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        let (stages, _) = self
            .model
            .stages(x, *FEATURE_GROUPS.iter().max().expect("feature groups"))?;
        let grid = self.dims.grid;
        let maps = FEATURE_GROUPS
            .iter()
            .map(|&g| {
                let s = local_mean(&stages[g])?;
                let (_, _, h, w) = s.dims4()?;
                if (h, w) == (grid, grid) {
                    return Ok(s);
                }
                let a_h = candle_core::Tensor::from_vec(bilinear_matrix(grid, h), (grid, h), x.device())?;
                let a_w_t = candle_core::Tensor::from_vec(bilinear_matrix(grid, w), (grid, w), x.device())?.t()?;
                a_h.broadcast_matmul(&s.contiguous()?.broadcast_matmul(&a_w_t)?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let f = candle_core::Tensor::cat(&maps, 1)?;
        let (n, c, _, _) = f.dims4()?;
        f.permute((0, 2, 3, 1))?.reshape((n, grid * grid, c))
    }
}

/// 3×3 mean at stride 1 over the valid neighbours only (zero padding 1, `count_include_pad =
/// False`): the padded 3×3 average times 9 / (valid neighbours).
fn local_mean(x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let valid = |i: usize, n: usize| (i.saturating_sub(1)..=(i + 1).min(n - 1)).count() as f32;
    let scale: Vec<f32> = (0..h * w).map(|p| 9.0 / (valid(p / w, h) * valid(p % w, w))).collect();
    let scale = candle_core::Tensor::from_vec(scale, (1, 1, h, w), x.device())?;
    x.pad_with_zeros(2, 1, 1)?
        .pad_with_zeros(3, 1, 1)?
        .avg_pool2d_with_stride(3, 1)?
        .broadcast_mul(&scale)
}

impl FeatureExtractor for CandleFeatures {
    fn dims(&self) -> FeatureDims {
        self.dims.clone()
    }

    fn patch_features(&self, images: &ImageBatch) -> Result<Tensor> {
        let mut parts = Vec::new();
        for x in self.inputs(images)? {
            for f in self.per_thread(&x, |x| self.patch_chunk(x)).map_err(err)? {
                parts.push(from_candle(&f)?);
            }
        }
        Tensor::concat(&parts)
    }

    fn backbone_outputs(&self, images: &ImageBatch) -> Result<BackboneOutputs> {
        let mut parts = Vec::new();
        for x in self.inputs(images)? {
            for o in self.per_thread(&x, |x| self.model.forward(x)).map_err(err)? {
                parts.push(BackboneOutputs {
                    stages: o.stages.iter().map(from_candle).collect::<Result<_>>()?,
                    head: from_candle(&o.head)?,
                    logits: from_candle(&o.logits)?,
                });
            }
        }
        BackboneOutputs::concat(&parts)
    }
}
