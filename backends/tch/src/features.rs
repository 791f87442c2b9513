//! `FeatureExtractor` on EfficientNet-Lite: multi-scale patch features for reference association.
use crate::convert::{err, from_tch, to_tch};
use crate::efficientnet::EfficientNet;
use crate::nn::Weights;
use adp_api::config::efficientnet::FEATURE_GROUPS;
use adp_api::layout::{chunks, BACKBONE_CHUNK};
use adp_api::preprocess::backbone_input;
use adp_api::requests::{BackboneOutputs, FeatureDims};
use adp_api::{checks, BackboneCheckpoint, EfficientNetConfig, FeatureExtractor, ImageBatch, Result, Tensor};
use tch::TchError;

pub struct TchFeatures {
    model: EfficientNet,
    config: EfficientNetConfig,
    dims: FeatureDims,
    device: tch::Device,
}

impl TchFeatures {
    /// Checks that the file holds every tensor with its shape, then loads it with the batch norms
    /// folded into the convolutions.
    pub fn load(backbone: &BackboneCheckpoint, device: tch::Device) -> Result<Self> {
        backbone.check_weights()?;
        let tensors = adp_api::fold::efficientnet(backbone)?
            .into_iter()
            .map(|(name, t)| Ok((name, to_tch(&t, device)?)))
            .collect::<Result<_>>()?;
        let model = EfficientNet::new(&Weights::from_tensors(&backbone.weights, tensors), &backbone.config)?;
        Ok(Self {
            model,
            dims: backbone.config.feature_dims(),
            config: backbone.config.clone(),
            device,
        })
    }

    /// The normalised inputs on the device, in chunks of at most [`BACKBONE_CHUNK`] images.
    fn inputs(&self, images: &ImageBatch) -> Result<Vec<tch::Tensor>> {
        checks::backbone_images(images)?;
        let x = to_tch(&backbone_input(images, &self.config), self.device)?;
        let chunk = |(start, len): (usize, usize)| x.f_narrow(0, start as i64, len as i64).map_err(err);
        chunks(images.len(), BACKBONE_CHUNK).map(chunk).collect()
    }

    /// `[n, G², dim]` patch features of one chunk of normalised images: libtorch's own
    /// `avg_pool2d` (count_include_pad false) and bilinear upsampling (align_corners false), the
    /// reference's operations.
    fn patch_chunk(&self, x: &tch::Tensor) -> std::result::Result<tch::Tensor, TchError> {
        let (stages, _) = self
            .model
            .stages(x, *FEATURE_GROUPS.iter().max().expect("feature groups"))?;
        let grid = self.dims.grid as i64;
        let maps = FEATURE_GROUPS
            .iter()
            .map(|&g| {
                let s = stages[g].f_avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None)?;
                let (_, _, h, w) = s.size4()?;
                if (h, w) == (grid, grid) {
                    Ok(s)
                } else {
                    s.f_upsample_bilinear2d([grid, grid], false, None, None)
                }
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let f = tch::Tensor::f_cat(&maps, 1)?;
        let (n, c, _, _) = f.size4()?;
        f.f_permute([0, 2, 3, 1])?.f_reshape([n, grid * grid, c])
    }
}

impl FeatureExtractor for TchFeatures {
    fn dims(&self) -> FeatureDims {
        self.dims.clone()
    }

    fn patch_features(&self, images: &ImageBatch) -> Result<Tensor> {
        let inputs = self.inputs(images)?;
        tch::no_grad(|| {
            let chunk = |x: &tch::Tensor| from_tch(&self.patch_chunk(x).map_err(err)?);
            let parts = inputs.iter().map(chunk).collect::<Result<Vec<_>>>()?;
            Tensor::concat(&parts)
        })
    }

    fn backbone_outputs(&self, images: &ImageBatch) -> Result<BackboneOutputs> {
        let inputs = self.inputs(images)?;
        tch::no_grad(|| {
            let chunk = |x: &tch::Tensor| -> Result<BackboneOutputs> {
                let o = self.model.forward(x).map_err(err)?;
                let stages = o.stages.iter().map(from_tch).collect::<Result<_>>()?;
                Ok(BackboneOutputs {
                    stages,
                    head: from_tch(&o.head)?,
                    logits: from_tch(&o.logits)?,
                })
            };
            BackboneOutputs::concat(&inputs.iter().map(chunk).collect::<Result<Vec<_>>>()?)
        })
    }
}
