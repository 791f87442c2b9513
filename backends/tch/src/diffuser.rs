//! `LatentDiffuser` on a diffusers folder, read directly (transformers / diffusers tensor names),
//! mirroring the candle backend's diffuser step for step.
use crate::convert::{concept_slots, err, vector, from_tch, to_tch, to_vec};
use crate::diffusion::{ddim::Schedule, text_encoder::TextEncoder, unet::UNet, vae::Vae};
use crate::open_clip::Weights;
use adp_api::config::diffusion::PerBlock;
use adp_api::requests::*;
use adp_api::tokenizer::{ClipTokenizer, Tokens};
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
}

// SAFETY: as for `OpenClip`: the weights are loaded once, only ever read, never require
// gradients, and every call builds fresh tensors; concurrent read-only use is thread-safe in
// libtorch. The only leaf with gradients (the concept in `denoising_loss`) is local to the call.
unsafe impl Sync for TchDiffuser {}

/// The block layouts this UNet supports: one transformer layer per attention, up blocks
/// mirroring the down blocks' cross-attention, the last down block without one.
fn check_unet_layout(spec: &DiffusionSpec) -> Result<()> {
    let u = &spec.unet;
    let n = u.block_out_channels.len();
    let cross = |t: &str| t.starts_with("CrossAttn");
    let known = |t: &str| matches!(t, "CrossAttnDownBlock2D" | "DownBlock2D" | "CrossAttnUpBlock2D" | "UpBlock2D");
    let bad = |m: String| Err(Error::config(spec.root.join("unet/config.json"), m));
    if let Some(t) = u.down_block_types.iter().chain(&u.up_block_types).find(|t| !known(t)) {
        return bad(format!("unsupported block type {t:?}"));
    }
    if n == 0 || u.down_block_types.len() != n || u.up_block_types.len() != n {
        return bad(format!("{} down and {} up block types for {n} block_out_channels", u.down_block_types.len(), u.up_block_types.len()));
    }
    if matches!(&u.attention_head_dim, PerBlock::Each(v) if v.is_empty()) {
        return bad("empty attention_head_dim".into());
    }
    for i in 0..n {
        if cross(&u.down_block_types[i]) != cross(&u.up_block_types[n - 1 - i]) {
            return bad("up blocks do not mirror the down blocks' cross-attention".into());
        }
    }
    if spec.vae.block_out_channels.is_empty() {
        return Err(Error::config(spec.root.join("vae/config.json"), "empty block_out_channels"));
    }
    Ok(())
}

fn same<T>(r: std::result::Result<T, tch::TchError>) -> Result<T> {
    r.map_err(err)
}

impl TchDiffuser {
    pub fn load(spec: &DiffusionSpec, device: tch::Device) -> Result<Self> {
        check_unet_layout(spec)?;
        let text = TextEncoder::new(&Weights::load(&spec.weights("text_encoder")?, device)?, &spec.text_encoder)?;
        let unet = UNet::new(&Weights::load(&spec.weights("unet")?, device)?, &spec.unet)?;
        let vae = Vae::new(&Weights::load(&spec.weights("vae")?, device)?, &spec.vae)?;

        let s = &spec.scheduler;
        let alphas_cumprod = s.alphas_cumprod()?;
        if alphas_cumprod.is_empty() {
            return Err(Error::config(spec.root.join("scheduler"), "num_train_timesteps is 0"));
        }
        let schedule = Schedule {
            final_alpha_cumprod: if s.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] },
            alphas_cumprod,
            prediction: spec.prediction,
        };
        let dims = spec.dims();
        Ok(Self { text, unet, vae, schedule, spec: spec.clone(), dims, tokenizer: ClipTokenizer::new(), device })
    }

    fn pixels(&self, images: &ImageBatch) -> Result<tch::Tensor> {
        if images.is_empty() {
            return Err(Error::EmptySupportSet);
        }
        let s = self.dims.image_size;
        images.expect_size(&format!("diffusion input (N, 3, {s}, {s})"), s, s)?;
        let x = to_tch(images.pixels(), self.device)?;
        same(x.f_mul_scalar(2.0).and_then(|x| x.f_sub_scalar(1.0)))
    }

    /// Scaled posterior means, without gradients.
    fn latents(&self, images: &ImageBatch) -> Result<tch::Tensor> {
        let x = self.pixels(images)?;
        tch::no_grad(|| same(self.vae.encode_mean(&x).and_then(|z| z.f_mul_scalar(self.spec.vae.scaling_factor as f64))))
    }

    fn tokens(&self, prompts: &[Prompt]) -> Result<Vec<Tokens>> {
        if prompts.is_empty() {
            return Err(Error::invalid("prompts", "no prompt given"));
        }
        prompts.iter().map(|p| self.tokenizer.encode(p, self.dims.context_length)).collect()
    }

    /// Text-encoder states; the concept named by `trainable` is that leaf tensor. Runs under the
    /// caller's gradient mode.
    fn condition(&self, prompts: &[Prompt], trainable: Option<(&str, &tch::Tensor)>) -> Result<tch::Tensor> {
        let tokens = self.tokens(prompts)?;
        let slots = concept_slots(prompts, self.dims.text_width, trainable, self.device)?;
        self.text.forward(&tokens, &slots)
    }

    fn check_timestep(&self, t: u32) -> Result<usize> {
        let t = t as usize;
        if t >= self.dims.train_timesteps {
            return Err(Error::invalid("timestep", format!("{t} (the schedule has {})", self.dims.train_timesteps)));
        }
        Ok(t)
    }

    fn latent_shape(&self, n: usize) -> Vec<usize> {
        let side = self.dims.image_size / self.dims.vae_downsampling;
        vec![n, self.dims.latent_channels, side, side]
    }

    /// Images in [0, 1] from scaled latents, without gradients.
    fn decode(&self, z: &tch::Tensor) -> Result<ImageBatch> {
        let x = tch::no_grad(|| {
            same(
                z.f_div_scalar(self.spec.vae.scaling_factor as f64)
                    .and_then(|z| self.vae.decode(&z))
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
        let shape = self.latent_shape(latents.shape().first().copied().unwrap_or(0));
        latents.expect_shape("latents", &shape.iter().enumerate().map(|(i, &d)| (i > 0).then_some(d)).collect::<Vec<_>>())?;
        latents.check_finite("latents")?;
        if latents.shape()[0] == 0 {
            return Err(Error::EmptySupportSet);
        }
        self.decode(&to_tch(latents, self.device)?)
    }

    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        tch::no_grad(|| from_tch(&self.condition(prompts, None)?))
    }

    fn unet_prediction(&self, r: &UnetRequest) -> Result<Tensor> {
        let n = r.timesteps.len();
        let shape = self.latent_shape(n);
        r.latents.expect_shape("latents", &shape.iter().map(|&d| Some(d)).collect::<Vec<_>>())?;
        r.conditioning.expect_shape("conditioning", &[Some(n), Some(self.dims.context_length), Some(self.dims.text_width)])?;
        if n == 0 {
            return Err(Error::invalid("timesteps", "no sample given"));
        }
        let t = r.timesteps.iter().map(|&t| self.check_timestep(t).map(|t| t as f64)).collect::<Result<Vec<_>>>()?;
        let (z, c) = (to_tch(&r.latents, self.device)?, to_tch(&r.conditioning, self.device)?);
        tch::no_grad(|| from_tch(&same(self.unet.forward(&z, &t, &c))?))
    }

    fn denoising_loss(&self, r: &DenoisingLossRequest) -> Result<ValueAndGrad> {
        let n = r.images.len();
        if r.prompts.len() != n || r.timesteps.len() != n {
            return Err(Error::invalid("denoising loss", format!("{n} images need as many prompts and timesteps (got {} and {})", r.prompts.len(), r.timesteps.len())));
        }
        let shape = self.latent_shape(n);
        r.noise.expect_shape("noise", &shape.iter().map(|&d| Some(d)).collect::<Vec<_>>())?;
        r.noise.check_finite("noise")?;
        let ts = r.timesteps.iter().map(|&t| self.check_timestep(t)).collect::<Result<Vec<_>>>()?;
        let z0 = self.latents(&r.images)?;
        let noise = to_tch(&r.noise, self.device)?;
        let start = r.prompts.iter().flat_map(|p| &p.concepts).find(|c| Some(&c.placeholder) == r.gradient_of.as_ref());
        let leaf = match (&r.gradient_of, start) {
            (Some(name), None) => return Err(Error::invalid("gradient_of", format!("no prompt uses the concept {name:?}"))),
            (_, Some(c)) if c.vector.len() != self.dims.text_width => {
                return Err(Error::shape(format!("concept {}", c.placeholder), format!("[{}]", self.dims.text_width), &[c.vector.len()]))
            }
            (Some(_), Some(c)) => Some(same(vector(&c.vector, self.device)?.f_set_requires_grad(true))?),
            (None, _) => None,
        };
        let trainable = r.gradient_of.as_deref().zip(leaf.as_ref());
        // The noisy latents and targets carry no gradient; only the conditioning does.
        let (zt, target) = tch::no_grad(|| -> Result<_> {
            let mut noisy = Vec::with_capacity(n);
            let mut targets = Vec::with_capacity(n);
            for (i, &t) in ts.iter().enumerate() {
                let (z, e) = (same(z0.f_narrow(0, i as i64, 1))?, same(noise.f_narrow(0, i as i64, 1))?);
                noisy.push(same(self.schedule.add_noise(&z, &e, t))?);
                targets.push(same(self.schedule.target(&z, &e, t))?);
            }
            Ok((same(tch::Tensor::f_cat(&noisy, 0))?, same(tch::Tensor::f_cat(&targets, 0))?))
        })?;
        let t64: Vec<f64> = ts.iter().map(|&t| t as f64).collect();
        let forward = || -> Result<tch::Tensor> {
            let cond = self.condition(&r.prompts, trainable)?;
            let pred = same(self.unet.forward(&zt, &t64, &cond))?;
            same(pred.f_sub(&target).and_then(|d| d.f_square()).and_then(|d| d.f_mean(Kind::Float)))
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
        let value = to_vec(&loss)?.first().copied().ok_or_else(|| Error::invalid("loss", "empty"))?;
        Ok(ValueAndGrad { value, grad })
    }

    fn img2img(&self, r: &Img2ImgRequest) -> Result<ImageBatch> {
        if !(r.guidance.is_finite() && r.guidance >= 0.0) {
            return Err(Error::invalid("guidance", format!("{}", r.guidance)));
        }
        let n = r.images.len();
        let z0 = self.latents(&r.images)?;
        let shape = self.latent_shape(n);
        let noise = match &r.noise {
            Some(noise) => {
                noise.expect_shape("img2img noise", &shape.iter().map(|&d| Some(d)).collect::<Vec<_>>())?;
                noise.check_finite("img2img noise")?;
                to_tch(noise, self.device)?
            }
            None => to_tch(&Tensor::new(shape.clone(), adp_api::rng::normals(r.seed, shape.iter().product()))?, self.device)?,
        };
        let timesteps = self.spec.scheduler.img2img_timesteps(r.steps, r.strength)?;
        for &t in &timesteps {
            self.check_timestep(u32::try_from(t).unwrap_or(u32::MAX))?;
        }
        let step = self.spec.scheduler.ddim_step(r.steps);
        let Some(&first) = timesteps.first() else {
            return self.decode(&z0);
        };
        let prompts: Vec<Prompt> = std::iter::repeat_n(r.negative_prompt.clone(), n).chain(std::iter::repeat_n(r.prompt.clone(), n)).collect();
        let n64 = n as i64;
        let latents = tch::no_grad(|| -> Result<tch::Tensor> {
            let cond = self.condition(&prompts, None)?;
            let mut latents = same(self.schedule.add_noise(&z0, &noise, first))?;
            for &t in &timesteps {
                let run = || -> std::result::Result<tch::Tensor, tch::TchError> {
                    let input = tch::Tensor::f_cat(&[&latents, &latents], 0)?;
                    let out = self.unet.forward(&input, &vec![t as f64; 2 * n], &cond)?;
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
