//! `LatentDiffuser` on a diffusers folder.
use crate::convert::{concept_slots, dtype, err, from_candle, to_candle, trainable_var};
use crate::diffusion::{ddim::Schedule, text_encoder::TextEncoder, unet::UNet, vae::Vae};
use adp_api::requests::*;
use adp_api::tokenizer::ClipTokenizer;
use adp_api::{DiffusionSpec, Error, ImageBatch, LatentDiffuser, Result, Tensor};
use candle_core::{DType, Var};
use std::path::Path;

pub struct CandleDiffuser {
    text: TextEncoder,
    unet: UNet,
    vae: Vae,
    schedule: Schedule,
    spec: DiffusionSpec,
    dims: DiffuserDims,
    tokenizer: ClipTokenizer,
    device: candle_core::Device,
    /// The frozen models' dtype; latents, noise, the schedule and the loss stay f32.
    dtype: DType,
}

fn load_err(file: &Path) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| Error::config(file, e.to_string())
}

impl CandleDiffuser {
    pub fn load(spec: &DiffusionSpec, device: candle_core::Device) -> Result<Self> {
        spec.check_supported()?;
        crate::convert::check_dtype(spec.dtype, &device)?;
        let model_dtype = dtype(spec.dtype);
        let te_path = spec.weights("text_encoder")?;
        let vb = crate::weights::load(&te_path, model_dtype, &device)?;
        let text = TextEncoder::new(vb, &spec.text_encoder, &device).map_err(load_err(&te_path))?;

        let unet_path = spec.weights("unet")?;
        let vb = crate::weights::load(&unet_path, model_dtype, &device)?;
        let unet = UNet::new(vb, &spec.unet).map_err(load_err(&unet_path))?;

        let vae_path = spec.weights("vae")?;
        let vb = crate::weights::load(&vae_path, model_dtype, &device)?;
        let vae = Vae::new(vb, &spec.vae).map_err(load_err(&vae_path))?;

        let schedule = Schedule(spec.ddim_schedule()?);
        let dims = spec.dims();
        Ok(Self {
            text,
            unet,
            vae,
            schedule,
            spec: spec.clone(),
            dims,
            tokenizer: ClipTokenizer::new().with_pad(spec.pad_token_id),
            device,
            dtype: model_dtype,
        })
    }

    fn pixels(&self, images: &ImageBatch) -> Result<candle_core::Tensor> {
        self.dims.check_images(images)?;
        let x = to_candle(images.pixels(), &self.device)?;
        (x * 2.0)
            .and_then(|x| x - 1.0)
            .and_then(|x| x.to_dtype(self.dtype))
            .map_err(err)
    }

    fn latents(&self, images: &ImageBatch) -> Result<candle_core::Tensor> {
        let x = self.pixels(images)?;
        // One image at a time: the activations at full resolution stay those of one image.
        let z = (0..images.len())
            .map(|i| x.narrow(0, i, 1).and_then(|xi| self.vae.encode_mean(&xi)))
            .collect::<candle_core::Result<Vec<_>>>()
            .and_then(|zs| candle_core::Tensor::cat(&zs, 0))
            .and_then(|z| z.to_dtype(DType::F32))
            .map_err(err)?;
        (z * self.spec.vae.scaling_factor as f64).map_err(err)
    }

    /// Text-encoder states; the concept named by `trainable` uses the given `Var`.
    fn condition(&self, prompts: &[Prompt], trainable: Option<(&str, &Var)>) -> Result<candle_core::Tensor> {
        let tokens = self.tokenizer.encode_all(prompts, self.dims.context_length)?;
        let slots = concept_slots(prompts, self.dims.text_width, trainable, &self.device)?;
        self.text.forward(&tokens, &slots)
    }

    /// The UNet on f32 latents and any-dtype conditioning: run in the model's dtype, back as f32.
    fn unet(&self, z: &candle_core::Tensor, t: &[f64], c: &candle_core::Tensor) -> Result<candle_core::Tensor> {
        crate::op_times::mark("unet-start", z.dims());
        let _t = crate::op_times::part("unet-forward", z.dims());
        let (z, c) = (
            z.to_dtype(self.dtype).map_err(err)?,
            c.to_dtype(self.dtype).map_err(err)?,
        );
        self.unet
            .forward(&z, t, &c)
            .and_then(|e| e.to_dtype(DType::F32))
            .map_err(err)
    }
}

impl LatentDiffuser for CandleDiffuser {
    fn dims(&self) -> DiffuserDims {
        self.dims
    }

    fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor> {
        from_candle(&self.latents(images)?)
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch> {
        self.dims.check_latents(latents)?;
        let z = to_candle(latents, &self.device)?.to_dtype(self.dtype).map_err(err)?;
        let x = (z / self.spec.vae.scaling_factor as f64)
            .and_then(|z| {
                (0..z.dim(0)?)
                    .map(|i| self.vae.decode(&z.narrow(0, i, 1)?))
                    .collect::<candle_core::Result<Vec<_>>>()
            })
            .and_then(|xs| candle_core::Tensor::cat(&xs, 0)?.to_dtype(DType::F32))
            .and_then(|x| (x / 2.0)? + 0.5)
            .and_then(|x| x.clamp(0.0, 1.0))
            .map_err(err)?;
        ImageBatch::new(from_candle(&x)?)
    }

    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        from_candle(&self.condition(prompts, None)?)
    }

    fn unet_prediction(&self, r: &UnetRequest) -> Result<Tensor> {
        let t = self.dims.check_unet(r)?;
        let (z, c) = (
            to_candle(&r.latents, &self.device)?,
            to_candle(&r.conditioning, &self.device)?,
        );
        from_candle(&self.unet(&z, &t, &c)?)
    }

    fn denoising_loss(&self, r: &DenoisingLossRequest) -> Result<ValueAndGrad> {
        let n = r.input.len();
        let timesteps = self.dims.check_denoising_loss(r)?;
        let z0 = match &r.input {
            DenoisingInput::Images(images) => self.latents(images)?.detach(),
            DenoisingInput::Latents(latents) => to_candle(latents, &self.device)?,
        };
        let noise = to_candle(&r.noise, &self.device)?;
        let var = trainable_var(
            &r.prompts.iter().collect::<Vec<_>>(),
            r.gradient_of.as_ref(),
            &self.device,
        )?;
        let cond = self.condition(&r.prompts, r.gradient_of.as_deref().zip(var.as_ref()))?;
        let mut noisy = Vec::with_capacity(n);
        let mut targets = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        for (i, &t) in timesteps.iter().enumerate() {
            let (z, e) = (z0.narrow(0, i, 1).map_err(err)?, noise.narrow(0, i, 1).map_err(err)?);
            noisy.push(self.schedule.add_noise(&z, &e, t).map_err(err)?);
            targets.push(self.schedule.target(&z, &e, t).map_err(err)?);
            ts.push(t as f64);
        }
        let zt = candle_core::Tensor::cat(&noisy, 0).map_err(err)?;
        let pred = self.unet(&zt, &ts, &cond)?;
        let target = candle_core::Tensor::cat(&targets, 0).map_err(err)?;
        let loss = (pred - target)
            .and_then(|d| d.sqr())
            .and_then(|d| d.mean_all())
            .map_err(err)?;
        let value = loss.to_scalar::<f32>().map_err(err)?;
        let grad = match &var {
            Some(var) => {
                let timer = crate::op_times::backward("backward-pass", loss.dims());
                let grads = loss.backward().map_err(err)?;
                drop(timer);
                let g = grads
                    .get(var.as_tensor())
                    .ok_or_else(|| Error::invalid("gradient", "the concept does not reach the loss"))?
                    .to_vec1::<f32>()
                    .map_err(err)?;
                let _timer = crate::op_times::part("graph-release", loss.dims());
                drop((grads, loss));
                Some(g)
            }
            None => None,
        };
        Ok(ValueAndGrad { value, grad })
    }

    fn img2img(&self, r: &Img2ImgRequest) -> Result<ImageBatch> {
        let timesteps = self.dims.check_img2img(r, &self.spec.scheduler)?;
        let n = r.images.len();
        let z0 = self.latents(&r.images)?;
        let shape = self.dims.latent_shape(n);
        let noise = match &r.noise {
            Some(noise) => to_candle(noise, &self.device)?,
            None => to_candle(
                &Tensor::new(shape.clone(), adp_api::rng::normals(r.seed, shape.iter().product()))?,
                &self.device,
            )?,
        };
        let step = self.spec.scheduler.ddim_step(r.steps);
        let Some(&first) = timesteps.first() else {
            return self.vae_decode(&from_candle(&z0)?);
        };
        let mut latents = self.schedule.add_noise(&z0, &noise, first).map_err(err)?;
        let cond = self.condition(&r.guidance_prompts(n), None)?;
        for &t in &timesteps {
            let input = candle_core::Tensor::cat(&[&latents, &latents], 0).map_err(err)?;
            let out = self.unet(&input, &vec![t as f64; 2 * n], &cond)?;
            let (uncond, text) = (out.narrow(0, 0, n).map_err(err)?, out.narrow(0, n, n).map_err(err)?);
            let guided = ((&text - &uncond).and_then(|d| d * r.guidance as f64))
                .and_then(|d| &uncond + d)
                .map_err(err)?;
            latents = self
                .schedule
                .step(&guided, t, t.checked_sub(step), &latents)
                .map_err(err)?;
        }
        self.vae_decode(&from_candle(&latents)?)
    }
}
