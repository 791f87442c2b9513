//! DDIM sampling (η = 0) and the forward noising of training, on ᾱ from the scheduler config.
use super::TchResult;
use adp_api::requests::Prediction;
use tch::Tensor;

pub struct Schedule {
    pub alphas_cumprod: Vec<f64>,
    pub prediction: Prediction,
    /// ᾱ used past the first timestep: 1 with `set_alpha_to_one`, else ᾱ_0.
    pub final_alpha_cumprod: f64,
}

impl Schedule {
    /// `z_t = sqrt(ᾱ_t) z0 + sqrt(1 − ᾱ_t) ε`.
    pub fn add_noise(&self, z0: &Tensor, noise: &Tensor, t: usize) -> TchResult<Tensor> {
        let a = self.alphas_cumprod[t];
        z0.f_mul_scalar(a.sqrt())?.f_add(&noise.f_mul_scalar((1.0 - a).sqrt())?)
    }

    /// What the UNet is trained to output for `z0`, `ε` at `t`: ε, or v = sqrt(ᾱ) ε − sqrt(1−ᾱ) z0.
    pub fn target(&self, z0: &Tensor, noise: &Tensor, t: usize) -> TchResult<Tensor> {
        match self.prediction {
            Prediction::Epsilon => Ok(noise.shallow_clone()),
            Prediction::VPrediction => {
                let a = self.alphas_cumprod[t];
                noise.f_mul_scalar(a.sqrt())?.f_sub(&z0.f_mul_scalar((1.0 - a).sqrt())?)
            }
        }
    }

    /// One deterministic DDIM step from `t` to `prev` (`None` past the end) given the model output.
    pub fn step(&self, output: &Tensor, t: usize, prev: Option<usize>, sample: &Tensor) -> TchResult<Tensor> {
        let a = self.alphas_cumprod[t];
        let a_prev = prev.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let (x0, eps) = match self.prediction {
            Prediction::Epsilon => (sample.f_sub(&output.f_mul_scalar((1.0 - a).sqrt())?)?.f_div_scalar(a.sqrt())?, output.shallow_clone()),
            Prediction::VPrediction => (
                sample.f_mul_scalar(a.sqrt())?.f_sub(&output.f_mul_scalar((1.0 - a).sqrt())?)?,
                output.f_mul_scalar(a.sqrt())?.f_add(&sample.f_mul_scalar((1.0 - a).sqrt())?)?,
            ),
        };
        x0.f_mul_scalar(a_prev.sqrt())?.f_add(&eps.f_mul_scalar((1.0 - a_prev).sqrt())?)
    }
}
