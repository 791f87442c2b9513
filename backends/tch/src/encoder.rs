//! `TextImageEncoder` on an OpenCLIP checkpoint.
use crate::convert::{concept_slots, err, from_tch, to_tch, to_vec, trainable_leaf};
use crate::nn::Weights;
use crate::open_clip::OpenClip;
use adp_api::preprocess::clip_preprocess;
use adp_api::requests::*;
use adp_api::tokenizer::{ClipTokenizer, Tokens};
use adp_api::{checks, ClipCheckpoint, Error, ImageBatch, Result, Tensor, TextImageEncoder};
use tch::{Kind, TchError};

pub struct TchEncoder {
    model: OpenClip,
    tokenizer: ClipTokenizer,
    dims: EncoderDims,
    device: tch::Device,
    kind: Kind,
}

impl TchEncoder {
    /// Checks the checkpoint against its config, then loads every weight once onto `device`.
    pub fn load(clip: &ClipCheckpoint, device: tch::Device) -> Result<Self> {
        clip.check_weights()?;
        let kind = crate::convert::kind(clip.dtype);
        let weights = Weights::load_as(&clip.weights, device, kind)?;
        let model = OpenClip::new(&weights, &clip.config)?;
        let dims = clip.config.encoder_dims();
        Ok(Self {
            model,
            tokenizer: ClipTokenizer::new(),
            dims,
            device,
            kind,
        })
    }

    fn pixels(&self, images: &ImageBatch) -> Result<tch::Tensor> {
        checks::images(images)?;
        to_tch(&clip_preprocess(images, self.dims.image_size), self.device)?
            .f_to_kind(self.kind)
            .map_err(err)
    }

    fn tokens(&self, prompts: &[Prompt]) -> Result<Vec<Tokens>> {
        self.tokenizer.encode_all(prompts, self.dims.context_length)
    }

    /// Unit-normalised image embeddings, without gradients.
    fn unit_image_embeddings(&self, images: &ImageBatch) -> Result<tch::Tensor> {
        let x = self.pixels(images)?;
        tch::no_grad(|| self.model.visual.embed(&x).and_then(|f| normalize(&f))).map_err(err)
    }
}

/// L2-normalised in f32, whatever the model's dtype (the CLIP probabilities leave the model here).
fn normalize(t: &tch::Tensor) -> std::result::Result<tch::Tensor, TchError> {
    let t = &t.f_to_kind(Kind::Float)?;
    t.f_div(&t.f_mul(t)?.f_sum_dim_intlist(-1, true, Kind::Float)?.f_sqrt()?)
}

impl TextImageEncoder for TchEncoder {
    fn dims(&self) -> EncoderDims {
        self.dims
    }

    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
        let x = self.pixels(images)?;
        tch::no_grad(|| from_tch(&self.model.visual.embed(&x).map_err(err)?))
    }

    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        let x = self.pixels(images)?;
        let visual = &self.model.visual;
        tch::no_grad(|| {
            DenseFeatures::gather(
                self.dims.grid,
                window_sizes,
                |size| from_tch(&visual.window_embeddings(&x, size)?),
                || from_tch(&visual.penultimate_tokens(&x).map_err(err)?),
            )
        })
    }

    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        let tokens = self.tokens(prompts)?;
        let slots = concept_slots(prompts, self.dims.text_width, None, self.device)?;
        tch::no_grad(|| from_tch(&self.model.text.encode(&tokens, &slots)?))
    }

    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        let id = self
            .tokenizer
            .single_token(word, self.model.text.token_embedding.size()[0] as usize)?;
        to_vec(&self.model.text.token_row(id)?)
    }

    fn state_probability(&self, r: &StateProbabilityRequest) -> Result<StateProbability> {
        checks::temperature(r.temperature)?;
        let f = self.unit_image_embeddings(&r.images)?;
        let prompts = [r.normal.clone(), r.anomalous.clone()];
        let leaf = trainable_leaf(&[&r.normal, &r.anomalous], r.gradient_of.as_ref(), self.device)?;
        let trainable = r.gradient_of.as_deref().zip(leaf.as_ref());
        let tokens = self.tokens(&prompts)?;
        let slots = concept_slots(&prompts, self.dims.text_width, trainable, self.device)?;
        // Gradients are tracked only when asked for, and then only back to the concept vector
        // (the weights never require them).
        let forward = || -> Result<tch::Tensor> {
            let g = self.model.text.encode(&tokens, &slots)?;
            let logits = f
                .f_matmul(&normalize(&g).and_then(|g| g.f_tr()).map_err(err)?)
                .and_then(|l| l.f_div_scalar(r.temperature as f64))
                .map_err(err)?;
            logits
                .f_softmax(-1, Kind::Float)
                .and_then(|p| p.f_select(1, 0))
                .map_err(err)
        };
        let p_normal = match &leaf {
            Some(_) => tch::with_grad(forward)?,
            None => tch::no_grad(forward)?,
        };
        let grad = match &leaf {
            Some(leaf) => {
                p_normal.f_mean(Kind::Float).and_then(|m| m.f_backward()).map_err(err)?;
                let g = leaf.f_grad().map_err(err)?;
                if !g.defined() {
                    return Err(Error::invalid("gradient", "the concept does not reach the output"));
                }
                Some(to_vec(&g)?)
            }
            None => None,
        };
        Ok(StateProbability {
            normal: to_vec(&p_normal)?,
            grad,
        })
    }
}
