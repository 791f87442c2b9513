//! The `visual` method: few-shot reference association over a pretrained image backbone's patch
//! features (EfficientNet-Lite), with no CLIP and no diffusion model. The support set's patch
//! features are the reference memory; a test patch's score is its distance to the nearest one
//! (SPEC eq. 8 on backbone features); the image score is the maximum of the smoothed map, as
//! PatchCore does.
use super::file::{check_checkpoint, file_hash, DetectorFile, DetectorHeader, DETECTOR_FORMAT};
use super::{FitOptions, ImageScore, Stage};
use crate::score::association::{anomaly_map, resize_square};
use adp_api::requests::{FeatureKind, Flow, ReferenceMemory};
use adp_api::{BackboneCheckpoint, Backend, Device, Error, FeatureExtractor, ImageBatch, Result, Scorer, Tensor};
use std::collections::BTreeMap;

/// Smoothing of the patch map, in pixels at the backbone's input size (PatchCore: σ = 4 at 224).
pub const SIGMA: f32 = 4.0;

/// Opens the backbone (after checking its file names every tensor with its shape) and a scorer.
pub struct VisualModel {
    pub extractor: Box<dyn FeatureExtractor>,
    pub scorer: Box<dyn Scorer>,
    pub backbone: BackboneCheckpoint,
    /// The backend's name and version, recorded in the detector (boxed: the model is moved
    /// around in enums and stays small).
    backend: Box<(String, String)>,
}

impl VisualModel {
    pub fn open(backend: &dyn Backend, backbone: &BackboneCheckpoint, device: Device) -> Result<Self> {
        backbone.check_weights()?;
        Ok(Self {
            extractor: backend.feature_extractor(backbone, device)?,
            scorer: backend.scorer(device)?,
            backbone: backbone.clone(),
            backend: Box::new((backend.info().name, backend.info().version)),
        })
    }

    /// `[N, grid², dim]` patch features of images of any (common) size. The backbone's input is
    /// [`adp_api::preprocess::backbone_input`]: the whole photo resized once, straight from the
    /// pixels it is given, to the backbone's square (no crop). Support photos
    /// ([`crate::images::read_resized`] at the backbone's size, one resize from the file's pixels;
    /// then the identity here) and test photos (read as they are, resized here) thus follow the
    /// same geometry as the CLIP methods (SPEC §2), and maps are resized back over the whole photo.
    pub fn features(&self, images: &ImageBatch) -> Result<Tensor> {
        self.extractor.patch_features(images)
    }

    pub fn fit(
        &self,
        support: &ImageBatch,
        options: &FitOptions,
        observer: &mut dyn FnMut(&Stage) -> Flow,
    ) -> Result<DetectorFile> {
        if support.is_empty() {
            return Err(Error::EmptySupportSet);
        }
        if observer(&Stage::Memories) == Flow::Cancel {
            return Err(Error::Cancelled { step: 0 });
        }
        let views = options.support_views.apply(support)?;
        let memory = self
            .scorer
            .build_memory(FeatureKind::PatchTokens, &self.features(&views)?)?;
        let dims = self.extractor.dims();
        let header = DetectorHeader {
            format: DETECTOR_FORMAT.into(),
            method: "visual".into(),
            backend: self.backend.0.clone(),
            backend_version: self.backend.1.clone(),
            clip_dir: Default::default(),
            backbone: Some(self.backbone.weights.clone()),
            checkpoints: BTreeMap::from([("backbone".to_string(), file_hash(&self.backbone.weights)?)]),
            options: serde_json::to_value(options).expect("json"),
            seed: options.seed,
            grid: dims.grid,
            image_size: dims.image_size,
            concepts: Vec::new(),
            weights: Vec::new(),
            memory_kinds: vec![FeatureKind::PatchTokens],
            // Chosen by `fit::fit_visual`, which scores the null photos with this model.
            decision: None,
        };
        Ok(DetectorFile {
            header,
            prototypes: None,
            memories: vec![memory],
        })
    }

    /// Scores from precomputed features (`[N, grid², dim]`) of images of the given sizes.
    pub fn score_features(
        &self,
        memory: &ReferenceMemory,
        features: &Tensor,
        sizes: &[(usize, usize)],
    ) -> Result<Vec<ImageScore>> {
        let dims = self.extractor.dims();
        let patch = self.scorer.associate(memory, features)?;
        let (g, s) = (dims.grid, dims.image_size);
        Ok(sizes
            .iter()
            .enumerate()
            .map(|(i, &(height, width))| {
                let smooth = anomaly_map(patch.row(i), g, s, s, SIGMA);
                let score = smooth.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                ImageScore {
                    score,
                    language: None,
                    association: patch.row(i).iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    map: resize_square(&smooth, s, height, width),
                    height,
                    width,
                }
            })
            .collect())
    }

    /// Refuses a detector fitted with another backbone file (by SHA-256).
    pub fn check_identity(&self, detector: &DetectorFile) -> Result<()> {
        check_checkpoint(&detector.header, "backbone", &self.backbone.weights)
    }

    /// A detector's reference memory of backbone patch features.
    pub fn memory(detector: &DetectorFile) -> Result<&ReferenceMemory> {
        detector
            .memories
            .iter()
            .find(|m| m.kind == FeatureKind::PatchTokens)
            .ok_or_else(|| Error::invalid("detector", "no patch-feature memory"))
    }

    /// Scores against `memory` (see [`VisualModel::memory`]) of a detector already checked by
    /// [`VisualModel::check_identity`].
    pub fn score(&self, memory: &ReferenceMemory, images: &[ImageBatch]) -> Result<Vec<ImageScore>> {
        let mut out = Vec::new();
        for batch in images {
            let sizes = vec![(batch.height(), batch.width()); batch.len()];
            out.extend(self.score_features(memory, &self.features(batch)?, &sizes)?);
        }
        Ok(out)
    }
}
