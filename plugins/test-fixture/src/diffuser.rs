use crate::{encoder::prompt_vector, WIDTH};
use adp_api::requests::*;
use adp_api::{Error, ImageBatch, LatentDiffuser, Result, Tensor};

pub struct FixtureDiffuser;

/// A splitmix64 stream mapped to [0, 1): the fixture's noise.
fn uniform(seed: u64, i: u64) -> f32 {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

fn alpha_bar(t: u32) -> Result<f32> {
    if t >= 1000 {
        return Err(Error::invalid("timestep", format!("{t} (train timesteps: 1000)")));
    }
    Ok((0..=t)
        .map(|s| 1.0 - (1e-4 + (0.02 - 1e-4) * s as f32 / 999.0))
        .product())
}

impl FixtureDiffuser {
    fn predict(&self, latents: &Tensor, timesteps: &[u32], cond: &[Vec<f32>]) -> Result<Tensor> {
        latents.expect_shape("latents", &[Some(cond.len()), Some(WIDTH), None, None])?;
        if timesteps.len() != cond.len() {
            return Err(Error::shape(
                "timesteps",
                format!("[{}]", cond.len()),
                &[timesteps.len()],
            ));
        }
        let plane = latents.shape()[2] * latents.shape()[3];
        let mut out = latents.clone();
        for (i, v) in out.data_mut().iter_mut().enumerate() {
            let (n, c) = (i / (WIDTH * plane), (i / plane) % WIDTH);
            *v = 0.5 * *v + cond[n][c] + timesteps[n] as f32 / 1000.0;
        }
        Ok(out)
    }
}

impl LatentDiffuser for FixtureDiffuser {
    fn dims(&self) -> DiffuserDims {
        DiffuserDims {
            image_size: 4,
            latent_channels: WIDTH,
            vae_downsampling: 2,
            unet_downsampling: 1,
            text_width: WIDTH,
            context_length: 8,
            train_timesteps: 1000,
            prediction: Prediction::Epsilon,
        }
    }

    /// 2×2 average pooling, halved.
    fn vae_encode(&self, images: &ImageBatch) -> Result<Tensor> {
        images.expect_size("fixture VAE input", 4, 4)?;
        let px = images.pixels().data();
        Ok(Tensor::from_fn(vec![images.len(), 3, 2, 2], |i| {
            let (nc, y, x) = (i / 4, (i / 2) % 2, i % 2);
            let at = |dy, dx| px[nc * 16 + (2 * y + dy) * 4 + 2 * x + dx];
            (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 8.0
        }))
    }

    /// Nearest-neighbour upsampling, doubled, clamped to [0, 1].
    fn vae_decode(&self, latents: &Tensor) -> Result<ImageBatch> {
        latents.expect_shape("latents", &[None, Some(WIDTH), None, None])?;
        let s = latents.shape();
        let (h, w) = (s[2] * 2, s[3] * 2);
        let z = latents.data();
        let px = Tensor::from_fn(vec![s[0], 3, h, w], |i| {
            let (nc, y, x) = (i / (h * w), (i / w) % h, i % w);
            (2.0 * z[nc * s[2] * s[3] + (y / 2) * s[3] + x / 2]).clamp(0.0, 1.0)
        });
        ImageBatch::new(px)
    }

    fn text_conditioning(&self, prompts: &[Prompt]) -> Result<Tensor> {
        let rows = prompts.iter().map(prompt_vector).collect::<Result<Vec<_>>>()?;
        let data = rows.iter().flat_map(|r| r.repeat(8)).collect();
        Tensor::new(vec![prompts.len(), 8, WIDTH], data)
    }

    fn unet_prediction(&self, r: &UnetRequest) -> Result<Tensor> {
        r.conditioning
            .expect_shape("conditioning", &[None, Some(8), Some(WIDTH)])?;
        let cond: Vec<Vec<f32>> = (0..r.conditioning.shape()[0])
            .map(|n| r.conditioning.row(n)[..WIDTH].to_vec())
            .collect();
        self.predict(&r.latents, &r.timesteps, &cond)
    }

    /// MSE(0.5·z_t + g(prompt) + t/1000, ε); g is affine in the concept, so the gradient is exact.
    fn denoising_loss(&self, r: &DenoisingLossRequest) -> Result<ValueAndGrad> {
        if r.input.is_empty() {
            return Err(Error::EmptySupportSet);
        }
        let z0 = match &r.input {
            DenoisingInput::Images(images) => self.vae_encode(images)?,
            DenoisingInput::Latents(latents) => latents.clone(),
        };
        if r.noise.shape() != z0.shape() {
            return Err(Error::shape("noise", format!("{:?}", z0.shape()), r.noise.shape()));
        }
        if r.prompts.len() != r.input.len() {
            return Err(Error::shape(
                "prompts",
                format!("[{}]", r.input.len()),
                &[r.prompts.len()],
            ));
        }
        let cond = r.prompts.iter().map(prompt_vector).collect::<Result<Vec<_>>>()?;
        let plane = 4;
        let mut zt = z0.clone();
        for (i, v) in zt.data_mut().iter_mut().enumerate() {
            let ab = alpha_bar(
                *r.timesteps
                    .get(i / (WIDTH * plane))
                    .ok_or_else(|| Error::shape("timesteps", "one per image", &[r.timesteps.len()]))?,
            )?;
            *v = ab.sqrt() * *v + (1.0 - ab).sqrt() * r.noise.data()[i];
        }
        let pred = self.predict(&zt, &r.timesteps, &cond)?;
        let count = pred.len() as f32;
        let residual: Vec<f32> = pred.data().iter().zip(r.noise.data()).map(|(p, e)| p - e).collect();
        let value = residual.iter().map(|d| d * d).sum::<f32>() / count;
        let grad = r.gradient_of.as_ref().map(|name| {
            let mut g = vec![0.0; WIDTH];
            for (i, d) in residual.iter().enumerate() {
                let n = i / (WIDTH * plane);
                let uses = r.prompts[n].concepts.iter().filter(|c| &c.placeholder == name).count() as f32;
                g[(i / plane) % WIDTH] += 2.0 * d * uses / count;
            }
            g
        });
        Ok(ValueAndGrad { value, grad })
    }

    /// Blends each pixel towards seeded noise by `strength`, nudged by the prompt and guidance.
    fn img2img(&self, r: &Img2ImgRequest) -> Result<ImageBatch> {
        let p = prompt_vector(&r.prompt)?;
        if !(0.0..=1.0).contains(&r.strength) {
            return Err(Error::invalid("strength", format!("{} is outside [0, 1]", r.strength)));
        }
        let px = r.images.pixels();
        if let Some(noise) = &r.noise {
            if noise.shape() != px.shape() {
                return Err(Error::shape(
                    "img2img noise",
                    format!("{:?}", px.shape()),
                    noise.shape(),
                ));
            }
        }
        let nudge = r.guidance * p[0] / 1000.0;
        let out = Tensor::from_fn(px.shape().to_vec(), |i| {
            let u = r
                .noise
                .as_ref()
                .map_or_else(|| uniform(r.seed, i as u64), |n| n.data()[i]);
            ((1.0 - r.strength) * px.data()[i] + r.strength * u + nudge).clamp(0.0, 1.0)
        });
        ImageBatch::new(out)
    }
}
