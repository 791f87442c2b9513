//! Scoring with a fitted detector: its models opened and its checkpoints checked once, then any
//! number of images scored (SPEC §7: language score, reference association, final score, map).
use super::file::{check_checkpoint, DetectorFile};
use super::visual::VisualModel;
use super::{Checkpoints, ImageScore, Method};
use crate::score::association::{photo_map, ReferenceMemories};
use crate::score::prototypes::{final_score, image_features, language_score, Prototypes};
use adp_api::preprocess::resize;
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::{Backend, Device, Error, ImageBatch, Result};

/// Scores `images` with `detector`, opening its models for this one call; to score many images,
/// open a [`Scoring`] once.
pub fn score(
    backend: &dyn Backend,
    checkpoints: &Checkpoints,
    detector: &DetectorFile,
    images: &[ImageBatch],
    device: Device,
) -> Result<Vec<ImageScore>> {
    Scoring::open(backend, checkpoints, detector.clone(), device)?.score(images)
}

/// A detector's models opened and its checkpoints' identity checked once, with what scoring
/// needs taken out of the detector file, ready to score any number of images (`Send + Sync`: a
/// pool of workers shares one).
pub enum Scoring {
    Visual {
        model: VisualModel,
        memory: ReferenceMemory,
    },
    Clip {
        encoder: Box<dyn adp_api::TextImageEncoder>,
        scorer: Box<dyn adp_api::Scorer>,
        memories: ReferenceMemories,
        windows: Vec<usize>,
        prototypes: Prototypes,
    },
}

impl Scoring {
    pub fn open(
        backend: &dyn Backend,
        checkpoints: &Checkpoints,
        detector: DetectorFile,
        device: Device,
    ) -> Result<Self> {
        if detector.header.method == Method::Visual.name() {
            let backbone = checkpoints
                .backbone
                .as_ref()
                .ok_or_else(|| Error::invalid("checkpoints", "a visual detector needs its image backbone"))?;
            let model = VisualModel::open(backend, backbone, device)?;
            model.check_identity(&detector)?;
            let memory = VisualModel::memory(&detector)?.clone();
            return Ok(Scoring::Visual { model, memory });
        }
        let clip = checkpoints.clip.as_ref().ok_or_else(|| {
            Error::invalid(
                "checkpoints",
                format!("a {} detector needs a CLIP checkpoint", detector.header.method),
            )
        })?;
        check_checkpoint(&detector.header, "clip", &clip.weights)?;
        let prototypes = detector
            .prototypes
            .ok_or_else(|| Error::invalid("detector", "no prototypes"))?;
        let windows = detector
            .memories
            .iter()
            .filter_map(|m| {
                if let FeatureKind::Window(s) = m.kind {
                    Some(s)
                } else {
                    None
                }
            })
            .collect();
        let memories = ReferenceMemories {
            grid: detector.header.grid,
            memories: detector.memories,
        };
        Ok(Scoring::Clip {
            encoder: backend.text_image_encoder(clip, device)?,
            scorer: backend.scorer(device)?,
            memories,
            windows,
            prototypes,
        })
    }

    /// Scores photos of any size (each batch one size), in the detection geometry of SPEC §2:
    /// the whole photo resized once, straight from its pixels, to the model's square input (no
    /// crop: no part of a non-square photo is left unseen), the map computed there and resized
    /// back over the whole photo (`height × width` of the photo).
    pub fn score(&self, images: &[ImageBatch]) -> Result<Vec<ImageScore>> {
        match self {
            Scoring::Visual { model, memory } => model.score(memory, images),
            Scoring::Clip { memories, .. } => self.score_clip(memories, images),
        }
    }

    /// The detector's reference memories, in the order of its header's `memory_kinds`.
    pub fn memories(&self) -> &[ReferenceMemory] {
        match self {
            Scoring::Visual { memory, .. } => std::slice::from_ref(memory),
            Scoring::Clip { memories, .. } => &memories.memories,
        }
    }

    /// [`Scoring::score`] against other reference memories of the same kinds (the decision's
    /// leave-one-out memories); concepts and prototypes stay the detector's.
    pub fn score_against(&self, memories: &[ReferenceMemory], images: &[ImageBatch]) -> Result<Vec<ImageScore>> {
        match self {
            Scoring::Visual { model, .. } => {
                let memory = memories
                    .iter()
                    .find(|m| m.kind == FeatureKind::PatchTokens)
                    .ok_or_else(|| Error::invalid("detector", "no patch-feature memory"))?;
                model.score(memory, images)
            }
            Scoring::Clip { memories: own, .. } => {
                let memories = ReferenceMemories {
                    grid: own.grid,
                    memories: memories.to_vec(),
                };
                self.score_clip(&memories, images)
            }
        }
    }

    fn score_clip(&self, memories: &ReferenceMemories, images: &[ImageBatch]) -> Result<Vec<ImageScore>> {
        let Scoring::Clip {
            encoder,
            scorer,
            windows,
            prototypes: protos,
            ..
        } = self
        else {
            return Err(Error::invalid("detector", "not a CLIP detector"));
        };
        images
            .iter()
            .map(|img| {
                // On an s×s input the encoder's own shorter-side resize and centre crop are the
                // identity (no second resampling).
                let s = encoder.dims().image_size;
                let square = resize(img, s, s);
                let f = image_features(&**encoder, &square)?;
                let maps = memories.patch_maps(&**scorer, &encoder.dense_features(&square, windows)?)?;
                let g = memories.grid;
                Ok((0..img.len())
                    .map(|i| {
                        let language = language_score(&f[i], protos);
                        let patch = maps.row(i);
                        ImageScore {
                            score: final_score(language, patch),
                            language: Some(language),
                            association: patch.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                            map: photo_map(patch, g, s, img.height(), img.width(), 4.0),
                            height: img.height(),
                            width: img.width(),
                        }
                    })
                    .collect::<Vec<_>>())
            })
            .collect::<Result<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect())
    }
}
