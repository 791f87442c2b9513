//! What a `LatentDiffuser` checks of its requests, from the shapes it works at.
use crate::config::diffusion::SchedulerConfig;
use crate::requests::{DenoisingInput, DenoisingLossRequest, DiffuserDims, Img2ImgRequest, UnetRequest};
use crate::{Error, ImageBatch, Result, Tensor};

impl DiffuserDims {
    /// `[n, latent_channels, side, side]`, side = image side / VAE downsampling.
    pub fn latent_shape(&self, n: usize) -> Vec<usize> {
        let side = self.image_size / self.vae_downsampling;
        vec![n, self.latent_channels, side, side]
    }

    /// A training timestep of the schedule.
    pub fn check_timestep(&self, t: u32) -> Result<usize> {
        let t = t as usize;
        if t >= self.train_timesteps {
            return Err(Error::invalid(
                "timestep",
                format!("{t} (the schedule has {})", self.train_timesteps),
            ));
        }
        Ok(t)
    }

    /// Images to encode: at least one, at the diffuser's size.
    pub fn check_images(&self, images: &ImageBatch) -> Result<()> {
        super::images(images)?;
        let s = self.image_size;
        images.expect_size(&format!("diffusion input (N, 3, {s}, {s})"), s, s)
    }

    /// Latents to decode: `[N ≥ 1, c, h, w]`, finite.
    pub fn check_latents(&self, latents: &Tensor) -> Result<()> {
        let shape = self.latent_shape(latents.shape().first().copied().unwrap_or(0));
        let expected: Vec<_> = shape.iter().enumerate().map(|(i, &d)| (i > 0).then_some(d)).collect();
        latents.expect_shape("latents", &expected)?;
        latents.check_finite("latents")?;
        if latents.shape()[0] == 0 {
            return Err(Error::EmptySupportSet);
        }
        Ok(())
    }

    /// A UNet request's shapes and timesteps, the latter as the UNet takes them.
    /// The latents may have any sides the UNet can halve and double back (multiples of
    /// `unet_downsampling`): it is fully convolutional, and `adp bench --size` times it so.
    pub fn check_unet(&self, r: &UnetRequest) -> Result<Vec<f64>> {
        let n = r.timesteps.len();
        r.latents
            .expect_shape("latents", &[Some(n), Some(self.latent_channels), None, None])?;
        let (h, w, f) = (
            r.latents.shape()[2],
            r.latents.shape()[3],
            self.unet_downsampling.max(1),
        );
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(Error::invalid(
                "latents",
                format!("{h}×{w}: the UNet takes sides that are positive multiples of {f}"),
            ));
        }
        r.conditioning.expect_shape(
            "conditioning",
            &[Some(n), Some(self.context_length), Some(self.text_width)],
        )?;
        if n == 0 {
            return Err(Error::invalid("timesteps", "no sample given"));
        }
        r.timesteps
            .iter()
            .map(|&t| self.check_timestep(t).map(|t| t as f64))
            .collect()
    }

    /// One prompt, timestep and noise per image; returns the timesteps.
    pub fn check_denoising_loss(&self, r: &DenoisingLossRequest) -> Result<Vec<usize>> {
        let n = r.input.len();
        if let DenoisingInput::Latents(latents) = &r.input {
            latents.expect_shape("latents", &exactly(&self.latent_shape(n)))?;
            latents.check_finite("latents")?;
        }
        if r.prompts.len() != n || r.timesteps.len() != n {
            let (p, t) = (r.prompts.len(), r.timesteps.len());
            let message = format!("{n} images need as many prompts and timesteps (got {p} and {t})");
            return Err(Error::invalid("denoising loss", message));
        }
        r.noise.expect_shape("noise", &exactly(&self.latent_shape(n)))?;
        r.noise.check_finite("noise")?;
        r.timesteps.iter().map(|&t| self.check_timestep(t)).collect()
    }

    /// Guidance, the fixed noise if any, and the timesteps img2img runs at (descending).
    pub fn check_img2img(&self, r: &Img2ImgRequest, scheduler: &SchedulerConfig) -> Result<Vec<usize>> {
        if !(r.guidance.is_finite() && r.guidance >= 0.0) {
            return Err(Error::invalid("guidance", format!("{}", r.guidance)));
        }
        if let Some(noise) = &r.noise {
            noise.expect_shape("img2img noise", &exactly(&self.latent_shape(r.images.len())))?;
            noise.check_finite("img2img noise")?;
        }
        let timesteps = scheduler.img2img_timesteps(r.steps, r.strength)?;
        for &t in &timesteps {
            self.check_timestep(u32::try_from(t).unwrap_or(u32::MAX))?;
        }
        Ok(timesteps)
    }
}

fn exactly(shape: &[usize]) -> Vec<Option<usize>> {
    shape.iter().map(|&d| Some(d)).collect()
}

#[cfg(test)]
mod tests {
    use crate::requests::*;
    use crate::{ImageBatch, Tensor};

    const DIMS: DiffuserDims = DiffuserDims {
        image_size: 16,
        latent_channels: 4,
        vae_downsampling: 2,
        unet_downsampling: 4,
        text_width: 8,
        context_length: 5,
        train_timesteps: 10,
        prediction: Prediction::Epsilon,
    };

    fn fails<T: std::fmt::Debug>(r: crate::Result<T>, fragment: &str) {
        let e = r.expect_err("accepted").to_string();
        assert!(e.contains(fragment), "{e:?} does not contain {fragment:?}");
    }

    fn images(n: usize, side: usize) -> ImageBatch {
        ImageBatch::new(Tensor::zeros(vec![n, 3, side, side])).unwrap()
    }

    #[test]
    fn diffuser_requests_are_checked() {
        assert_eq!(DIMS.latent_shape(2), [2, 4, 8, 8]);
        fails(DIMS.check_timestep(10), "timestep: 10 (the schedule has 10)");
        fails(DIMS.check_images(&images(0, 16)), "empty support set");
        fails(DIMS.check_images(&images(1, 15)), "diffusion input (N, 3, 16, 16)");
        fails(
            DIMS.check_latents(&Tensor::zeros(vec![1, 3, 8, 8])),
            "latents: expected shape [_, 4, 8, 8]",
        );
        fails(
            DIMS.check_latents(&Tensor::zeros(vec![0, 4, 8, 8])),
            "empty support set",
        );
        let unet = |n: usize, timesteps: Vec<u32>| UnetRequest {
            latents: Tensor::zeros(DIMS.latent_shape(n)),
            timesteps,
            conditioning: Tensor::zeros(vec![n, 5, 8]),
        };
        fails(DIMS.check_unet(&unet(0, vec![])), "timesteps: no sample given");
        fails(
            DIMS.check_unet(&unet(2, vec![1])),
            "latents: expected shape [1, 4, _, _]",
        );
        assert_eq!(DIMS.check_unet(&unet(1, vec![3])).unwrap(), [3.0]);
        let at = |h: usize, w: usize| UnetRequest {
            latents: Tensor::zeros(vec![1, 4, h, w]),
            ..unet(1, vec![3])
        };
        assert_eq!(DIMS.check_unet(&at(12, 4)).unwrap(), [3.0]);
        fails(
            DIMS.check_unet(&at(6, 8)),
            "latents: 6×8: the UNet takes sides that are positive multiples of 4",
        );
        fails(DIMS.check_unet(&at(0, 8)), "positive multiples of 4");
        let loss = |timesteps: Vec<u32>, noise: Tensor| DenoisingLossRequest {
            input: DenoisingInput::Images(images(1, 16)),
            prompts: vec![Prompt::plain("a")],
            timesteps,
            noise,
            gradient_of: None,
        };
        fails(
            DIMS.check_denoising_loss(&loss(vec![], Tensor::zeros(DIMS.latent_shape(1)))),
            "1 images need as many",
        );
        fails(
            DIMS.check_denoising_loss(&loss(vec![1], Tensor::zeros(vec![1]))),
            "noise: expected shape",
        );
        let nan = Tensor::from_fn(DIMS.latent_shape(1), |_| f32::NAN);
        fails(
            DIMS.check_denoising_loss(&loss(vec![1], nan.clone())),
            "noise: non-finite",
        );
        // Latents instead of photos: their count is N, and they are checked like the noise.
        let from_latents = |latents: Tensor| DenoisingLossRequest {
            input: DenoisingInput::Latents(latents),
            ..loss(vec![1], Tensor::zeros(DIMS.latent_shape(1)))
        };
        assert_eq!(
            DIMS.check_denoising_loss(&from_latents(Tensor::zeros(DIMS.latent_shape(1))))
                .unwrap(),
            [1]
        );
        fails(
            DIMS.check_denoising_loss(&from_latents(Tensor::zeros(vec![1, 4, 8]))),
            "latents: expected shape",
        );
        fails(DIMS.check_denoising_loss(&from_latents(nan)), "latents: non-finite");
        fails(
            DIMS.check_denoising_loss(&from_latents(Tensor::zeros(DIMS.latent_shape(2)))),
            "2 images need as many",
        );
        let scheduler: crate::config::diffusion::SchedulerConfig =
            serde_json::from_str(r#"{"num_train_timesteps": 10, "steps_offset": 2}"#).unwrap();
        let mut r = Img2ImgRequest::spec_defaults(images(1, 16), Prompt::plain("a"), 0);
        r.steps = 5;
        assert_eq!(DIMS.check_img2img(&r, &scheduler).unwrap(), [4, 2]);
        r.guidance = f32::NAN;
        fails(DIMS.check_img2img(&r, &scheduler), "invalid guidance: NaN");
        r.guidance = 1.0;
        r.noise = Some(Tensor::zeros(vec![1, 4, 8]));
        fails(
            DIMS.check_img2img(&r, &scheduler),
            "img2img noise: expected shape [1, 4, 8, 8]",
        );
        r.noise = None;
        r.strength = 1.0;
        fails(DIMS.check_img2img(&r, &scheduler), "timestep: 10 (the schedule has 10)");
    }
}
