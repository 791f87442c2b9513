//! `FeatureExtractor` on EfficientNet-Lite: multi-scale patch features for reference association.
use crate::convert::{err, from_tch, to_tch};
use crate::efficientnet::EfficientNet;
use crate::open_clip::Weights;
use adp_api::config::efficientnet::FEATURE_GROUPS;
use adp_api::preprocess::backbone_input;
use adp_api::requests::{BackboneOutputs, FeatureDims};
use adp_api::{BackboneCheckpoint, EfficientNetConfig, Error, FeatureExtractor, ImageBatch, Result, Tensor};
use tch::TchError;

/// Images per forward pass: bounds the activations' memory whatever the batch.
const CHUNK: usize = 8;

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
        Ok(Self { model, dims: backbone.config.feature_dims(), config: backbone.config.clone(), device })
    }

    /// The normalised inputs on the device, in chunks of at most [`CHUNK`] images.
    fn inputs(&self, images: &ImageBatch) -> Result<Vec<tch::Tensor>> {
        if images.is_empty() {
            return Err(Error::invalid("image batch", "it is empty: there is no image to extract features from"));
        }
        let x = to_tch(&backbone_input(images, &self.config), self.device)?;
        let n = images.len() as i64;
        (0..n).step_by(CHUNK).map(|start| x.f_narrow(0, start, (CHUNK as i64).min(n - start)).map_err(err)).collect()
    }

    /// `[n, G², dim]` patch features of one chunk of normalised images: libtorch's own
    /// `avg_pool2d` (count_include_pad false) and bilinear upsampling (align_corners false), the
    /// reference's operations.
    fn patch_chunk(&self, x: &tch::Tensor) -> std::result::Result<tch::Tensor, TchError> {
        let (stages, _) = self.model.stages(x, *FEATURE_GROUPS.iter().max().expect("feature groups"))?;
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

fn cat(parts: &[tch::Tensor]) -> Result<Tensor> {
    from_tch(&tch::Tensor::f_cat(parts, 0).map_err(err)?)
}

impl FeatureExtractor for TchFeatures {
    fn dims(&self) -> FeatureDims {
        self.dims.clone()
    }

    fn patch_features(&self, images: &ImageBatch) -> Result<Tensor> {
        let inputs = self.inputs(images)?;
        tch::no_grad(|| {
            let parts = inputs.iter().map(|x| self.patch_chunk(x).map_err(err)).collect::<Result<Vec<_>>>()?;
            cat(&parts)
        })
    }

    fn backbone_outputs(&self, images: &ImageBatch) -> Result<BackboneOutputs> {
        let inputs = self.inputs(images)?;
        tch::no_grad(|| {
            let outs = inputs.iter().map(|x| self.model.forward(x).map_err(err)).collect::<Result<Vec<_>>>()?;
            let stages = (0..outs[0].stages.len())
                .map(|g| cat(&outs.iter().map(|o| o.stages[g].shallow_clone()).collect::<Vec<_>>()))
                .collect::<Result<_>>()?;
            let head = cat(&outs.iter().map(|o| o.head.shallow_clone()).collect::<Vec<_>>())?;
            let logits = cat(&outs.iter().map(|o| o.logits.shallow_clone()).collect::<Vec<_>>())?;
            Ok(BackboneOutputs { stages, head, logits })
        })
    }
}
