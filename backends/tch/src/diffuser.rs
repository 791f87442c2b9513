//! `LatentDiffuser` on a diffusers folder, read directly (transformers / diffusers tensor names),
//! mirroring the candle backend's diffuser step for step.
use crate::convert::{concept_slots, err, from_tch, to_tch, to_vec, trainable_leaf};
use crate::diffusion::{ddim::Schedule, text_encoder::TextEncoder, unet::UNet, vae::Vae};
use crate::nn::Weights;
use adp_api::requests::*;
use adp_api::tokenizer::ClipTokenizer;
use adp_api::{DiffusionSpec, Error, ImageBatch, LatentDiffuser, Result, Tensor};
use tch::Kind;

pub struct TchDiffuser {
    text: TextEncoder,
    unet: UNet,
    vae: Vae,
    schedule: Schedule,
    spec: DiffusionSpec,
    dims: DiffuserDims,
    tokenizer: ClipTokenizer,
    device: tch::Device,
    /// The frozen models' kind; latents, noise, the schedule and the loss stay f32.
    kind: Kind,
}

// SAFETY: as for `OpenClip`: the weights are loaded once, only ever read, never require
// gradients, and every call builds fresh tensors; concurrent read-only use is thread-safe in
// libtorch. The only leaf with gradients (the concept in `denoising_loss`) is local to the call.
unsafe impl Sync for TchDiffuser {}

fn same<T>(r: std::result::Result<T, tch::TchError>) -> Result<T> {
    r.map_err(err)
}

impl TchDiffuser {
    pub fn load(spec: &DiffusionSpec, device: tch::Device) -> Result<Self> {
        spec.check_supported()?;
        let kind = crate::convert::kind(spec.dtype);
        let load = |part: &str| Weights::load_as(&spec.weights(part)?, device, kind);
        let text = TextEncoder::new(&load("text_encoder")?, &spec.text_encoder)?;
        let unet = UNet::new(&load("unet")?, &spec.unet)?;
        let vae = Vae::new(&load("vae")?, &spec.vae)?;

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
            kind,
        })
    }

    fn pixels(&self, images: &ImageBatch) -> Result<tch::Tensor> {
        self.dims.check_images(images)?;
        let x = to_tch(images.pixels(), self.device)?;
        same(
            x.f_mul_scalar(2.0)
                .and_then(|x| x.f_sub_scalar(1.0)?.f_to_kind(self.kind)),
        )
    }

    /// Scaled posterior means, without gradients.
    fn latents(&self, images: &ImageBatch) -> Result<tch::Tensor> {
        let x = self.pixels(images)?;
        tch::no_grad(|| {
            same(self.vae.encode_mean(&x).and_then(|z| {
                z.f_to_kind(Kind::Float)?
                    .f_mul_scalar(self.spec.vae.scaling_factor as f64)
            }))
        })
    }

    /// Text-encoder states; the concept named by `trainable` is that leaf tensor. Runs under the
    /// caller's gradient mode.
    fn condition(&self, prompts: &[Prompt], trainable: Option<(&str, &tch::Tensor)>) -> Result<tch::Tensor> {
        let tokens = self.tokenizer.encode_all(prompts, self.dims.context_length)?;
        let slots = concept_slots(prompts, self.dims.text_width, trainable, self.device)?;
        self.text.forward(&tokens, &slots)
    }

    /// The UNet on f32 latents and any-kind conditioning: run in the model's kind, back as f32.
    fn unet(&self, z: &tch::Tensor, t: &[f64], c: &tch::Tensor) -> std::result::Result<tch::Tensor, tch::TchError> {
        self.unet
            .forward(&z.f_to_kind(self.kind)?, t, &c.f_to_kind(self.kind)?)?
            .f_to_kind(Kind::Float)
    }

    /// Images in [0, 1] from scaled latents, without gradients.
    fn decode(&self, z: &tch::Tensor) -> Result<ImageBatch> {
        let x = tch::no_grad(|| {
            same(
                z.f_div_scalar(self.spec.vae.scaling_factor as f64)
                    .and_then(|z| self.vae.decode(&z.f_to_kind(self.kind)?)?.f_to_kind(Kind::Float))
                    .and_then(|x| x.f_div_scalar(2.0))
                    .and_then(|x| x.f_add_scalar(0.5))
                    .and_then(|x| x.f_clamp(0.0, 1.0)),
            )
        })?;
        ImageBatch::new(from_tch(&x)?)
    }
}

impl LatentDiffuser for TchDiffuser {
    fn dims(&self) -> DiffuserDims {
        self.dims
    }

    fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor> {
        from_tch(&self.latents(images)?)
    }

    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch> {
        self.dims.check_latents(latents)?;
        self.decode(&to_tch(latents, self.device)?)
    }

    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        tch::no_grad(|| from_tch(&self.condition(prompts, None)?))
    }

    fn unet_prediction(&self, r: &UnetRequest) -> Result<Tensor> {
        let t = self.dims.check_unet(r)?;
        let (z, c) = (to_tch(&r.latents, self.device)?, to_tch(&r.conditioning, self.device)?);
        tch::no_grad(|| from_tch(&same(self.unet(&z, &t, &c))?))
    }

    fn denoising_loss(&self, r: &DenoisingLossRequest) -> Result<ValueAndGrad> {
        let n = r.input.len();
        let ts = self.dims.check_denoising_loss(r)?;
        let z0 = match &r.input {
            DenoisingInput::Images(images) => self.latents(images)?,
            DenoisingInput::Latents(latents) => to_tch(latents, self.device)?,
        };
        let noise = to_tch(&r.noise, self.device)?;
        let leaf = trainable_leaf(
            &r.prompts.iter().collect::<Vec<_>>(),
            r.gradient_of.as_ref(),
            self.device,
        )?;
        let trainable = r.gradient_of.as_deref().zip(leaf.as_ref());
        // The noisy latents and targets carry no gradient; only the conditioning does.
        let (zt, target) = tch::no_grad(|| -> Result<_> {
            let mut noisy = Vec::with_capacity(n);
            let mut targets = Vec::with_capacity(n);
            for (i, &t) in ts.iter().enumerate() {
                let (z, e) = (
                    same(z0.f_narrow(0, i as i64, 1))?,
                    same(noise.f_narrow(0, i as i64, 1))?,
                );
                noisy.push(same(self.schedule.add_noise(&z, &e, t))?);
                targets.push(same(self.schedule.target(&z, &e, t))?);
            }
            Ok((
                same(tch::Tensor::f_cat(&noisy, 0))?,
                same(tch::Tensor::f_cat(&targets, 0))?,
            ))
        })?;
        let t64: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
        let forward = || -> Result<tch::Tensor> {
            let cond = self.condition(&r.prompts, trainable)?;
            let pred = same(self.unet(&zt, &t64, &cond))?;
            same(
                pred.f_sub(&target)
                    .and_then(|d| d.f_square())
                    .and_then(|d| d.f_mean(Kind::Float)),
            )
        };
        let loss = match &leaf {
            Some(_) => tch::with_grad(forward)?,
            None => tch::no_grad(forward)?,
        };
        let grad = match &leaf {
            Some(leaf) => {
                same(loss.f_backward())?;
                let g = same(leaf.f_grad())?;
                if !g.defined() {
                    return Err(Error::invalid("gradient", "the concept does not reach the loss"));
                }
                Some(to_vec(&g)?)
            }
            None => None,
        };
        let value = to_vec(&loss)?
            .first()
            .copied()
            .ok_or_else(|| Error::invalid("loss", "empty"))?;
        Ok(ValueAndGrad { value, grad })
    }

    fn img2img(&self, r: &Img2ImgRequest) -> Result<ImageBatch> {
        let timesteps = self.dims.check_img2img(r, &self.spec.scheduler)?;
        let n = r.images.len();
        let z0 = self.latents(&r.images)?;
        let shape = self.dims.latent_shape(n);
        let noise = match &r.noise {
            Some(noise) => to_tch(noise, self.device)?,
            None => to_tch(
                &Tensor::new(shape.clone(), adp_api::rng::normals(r.seed, shape.iter().product()))?,
                self.device,
            )?,
        };
        let step = self.spec.scheduler.ddim_step(r.steps);
        let Some(&first) = timesteps.first() else {
            return self.decode(&z0);
        };
        let n64 = n as i64;
        let latents = tch::no_grad(|| -> Result<tch::Tensor> {
            let cond = self.condition(&r.guidance_prompts(n), None)?;
            let mut latents = same(self.schedule.add_noise(&z0, &noise, first))?;
            for &t in &timesteps {
                let run = || -> std::result::Result<tch::Tensor, tch::TchError> {
                    let input = tch::Tensor::f_cat(&[&latents, &latents], 0)?;
                    let out = self.unet(&input, &vec![t as f64; 2 * n], &cond)?;
                    let (uncond, text) = (out.f_narrow(0, 0, n64)?, out.f_narrow(0, n64, n64)?);
                    let guided = uncond.f_add(&text.f_sub(&uncond)?.f_mul_scalar(r.guidance as f64)?)?;
                    self.schedule.step(&guided, t, t.checked_sub(step), &latents)
                };
                latents = same(run())?;
            }
            Ok(latents)
        })?;
        self.decode(&latents)
    }
}
