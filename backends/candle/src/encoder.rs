//! `TextImageEncoder` on an OpenCLIP checkpoint.
use crate::convert::{concept_slots, dtype, err, from_candle, to_candle, trainable_var};
use crate::open_clip::OpenClip;
use adp_api::preprocess::clip_preprocess;
use adp_api::requests::*;
use adp_api::tokenizer::{ClipTokenizer, Tokens};
use adp_api::{checks, ClipCheckpoint, Error, ImageBatch, Result, Tensor, TextImageEncoder};
use candle_core::{DType, D};
use rayon::prelude::*;

pub struct CandleEncoder {
    model: OpenClip,
    tokenizer: ClipTokenizer,
    dims: EncoderDims,
    device: candle_core::Device,
    dtype: DType,
}

impl CandleEncoder {
    pub fn load(clip: &ClipCheckpoint, device: candle_core::Device) -> Result<Self> {
        crate::convert::check_dtype(clip.dtype, &device)?;
        clip.check_weights()?;
        let vb = crate::weights::load(&clip.weights, dtype(clip.dtype), &device)?;
        let model = OpenClip::new(vb, &clip.config).map_err(|e| Error::config(&clip.weights, e.to_string()))?;
        let dims = clip.config.encoder_dims();
        Ok(Self {
            model,
            tokenizer: ClipTokenizer::new(),
            dims,
            device,
            dtype: dtype(clip.dtype),
        })
    }

    fn pixels(&self, images: &ImageBatch) -> Result<candle_core::Tensor> {
        checks::images(images)?;
        to_candle(&clip_preprocess(images, self.dims.image_size), &self.device)?
            .to_dtype(self.dtype)
            .map_err(err)
    }

    fn tokens(&self, prompts: &[Prompt]) -> Result<Vec<Tokens>> {
        self.tokenizer.encode_all(prompts, self.dims.context_length)
    }

    /// The text embeddings of `prompts`, none of them trainable.
    fn text_part(&self, prompts: &[Prompt]) -> Result<candle_core::Tensor> {
        let tokens = self.tokens(prompts)?;
        let slots = concept_slots(prompts, self.dims.text_width, None, &self.device)?;
        self.model.text.encode(&tokens, &slots)
    }
}

/// L2-normalised in f32, whatever the model's dtype (the CLIP probabilities leave the model here).
fn normalize(t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    let t = t.to_dtype(DType::F32)?;
    t.broadcast_div(&t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

impl TextImageEncoder for CandleEncoder {
    fn dims(&self) -> EncoderDims {
        self.dims
    }

    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
        from_candle(&self.model.visual.embed(&self.pixels(images)?).map_err(err)?)
    }

    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        let x = self.pixels(images)?;
        let visual = &self.model.visual;
        DenseFeatures::gather(
            self.dims.grid,
            window_sizes,
            |size| from_candle(&visual.window_embeddings(&x, size).map_err(err)?),
            || from_candle(&visual.penultimate_tokens(&x).map_err(err)?),
        )
    }

    /// The prompts split into [`crate::threads::per_thread_parts`]. Each prompt is encoded on
    /// its own rows, so its embedding does not depend on its part beyond rounding (the
    /// conformance suite's prompt-alone-against-batch case).
    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        let parts = crate::threads::per_thread_parts(prompts.len(), &self.device);
        if parts.len() <= 1 {
            return from_candle(&self.text_part(prompts)?);
        }
        let embeddings = parts
            .into_par_iter()
            .map(|(start, len)| self.text_part(&prompts[start..start + len]))
            .collect::<Result<Vec<_>>>()?;
        from_candle(&candle_core::Tensor::cat(&embeddings, 0).map_err(err)?)
    }

    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        let id = self
            .tokenizer
            .single_token(word, self.model.text.token_embedding.dim(0).map_err(err)?)?;
        let row = self.model.text.token_embedding.get(id).map_err(err)?;
        row.to_dtype(DType::F32).and_then(|r| r.to_vec1::<f32>()).map_err(err)
    }

    fn state_probability(&self, r: &StateProbabilityRequest) -> Result<StateProbability> {
        checks::temperature(r.temperature)?;
        let f = normalize(&self.model.visual.embed(&self.pixels(&r.images)?).map_err(err)?).map_err(err)?;
        let prompts = [r.normal.clone(), r.anomalous.clone()];
        let var = trainable_var(&[&r.normal, &r.anomalous], r.gradient_of.as_ref(), &self.device)?;
        let trainable = r.gradient_of.as_deref().zip(var.as_ref());
        let tokens = self.tokens(&prompts)?;
        let slots = concept_slots(&prompts, self.dims.text_width, trainable, &self.device)?;
        let g = normalize(&self.model.text.encode(&tokens, &slots)?).map_err(err)?;
        let logits = (f.matmul(&g.t().map_err(err)?).map_err(err)? / r.temperature as f64).map_err(err)?;
        let p_normal = candle_nn::ops::softmax(&logits, D::Minus1)
            .and_then(|p| p.narrow(1, 0, 1)?.squeeze(1))
            .map_err(err)?;
        let grad = match &var {
            Some(var) => {
                let grads = p_normal.mean_all().and_then(|m| m.backward()).map_err(err)?;
                let g = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| Error::invalid("gradient", "the concept does not reach the output"))?;
                Some(g.to_vec1::<f32>().map_err(err)?)
            }
            None => None,
        };
        Ok(StateProbability {
            normal: p_normal.to_vec1::<f32>().map_err(err)?,
            grad,
        })
    }
}
