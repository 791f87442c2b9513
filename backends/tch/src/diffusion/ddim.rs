//! DDIM sampling (η = 0) and the forward noising of training, on the schedule's constants
//! (`adp_api::config::ddim`).
use crate::nn::TchResult;
use adp_api::config::ddim::DdimSchedule;
use adp_api::requests::Prediction;
use tch::Tensor;

pub struct Schedule(pub DdimSchedule);

impl Schedule {
    /// `z_t = sqrt(ᾱ_t) z0 + sqrt(1 − ᾱ_t) ε`.
    pub fn add_noise(&self, z0: &Tensor, noise: &Tensor, t: usize) -> TchResult<Tensor> {
        let (a, b) = self.0.at(t);
        z0.f_mul_scalar(a)?.f_add(&noise.f_mul_scalar(b)?)
    }

    /// What the UNet is trained to output for `z0`, `ε` at `t`: ε, or v = sqrt(ᾱ) ε − sqrt(1−ᾱ) z0.
    pub fn target(&self, z0: &Tensor, noise: &Tensor, t: usize) -> TchResult<Tensor> {
        let (a, b) = self.0.at(t);
        match self.0.prediction {
            Prediction::Epsilon => Ok(noise.shallow_clone()),
            Prediction::VPrediction => noise.f_mul_scalar(a)?.f_sub(&z0.f_mul_scalar(b)?),
        }
    }

    /// One deterministic DDIM step from `t` to `prev` (`None` past the end) given the model output.
    pub fn step(&self, output: &Tensor, t: usize, prev: Option<usize>, sample: &Tensor) -> TchResult<Tensor> {
        let ((a, b), (a_prev, b_prev)) = (self.0.at(t), self.0.at_prev(prev));
        let (x0, eps) = match self.0.prediction {
            Prediction::Epsilon => (
                sample.f_sub(&output.f_mul_scalar(b)?)?.f_div_scalar(a)?,
                output.shallow_clone(),
            ),
            Prediction::VPrediction => (
                sample.f_mul_scalar(a)?.f_sub(&output.f_mul_scalar(b)?)?,
                output.f_mul_scalar(a)?.f_add(&sample.f_mul_scalar(b)?)?,
            ),
        };
        x0.f_mul_scalar(a_prev)?.f_add(&eps.f_mul_scalar(b_prev)?)
    }
}
