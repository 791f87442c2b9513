//! DDIM sampling (η = 0) and the forward noising of training, on the schedule's constants
//! (`adp_api::config::ddim`).
use adp_api::config::ddim::DdimSchedule;
use adp_api::requests::Prediction;
use candle_core::{Result, Tensor};

pub struct Schedule(pub DdimSchedule);

impl Schedule {
    /// `z_t = sqrt(ᾱ_t) z0 + sqrt(1 − ᾱ_t) ε`.
    pub fn add_noise(&self, z0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
        let (a, b) = self.0.at(t);
        (z0 * a)? + (noise * b)?
    }

    /// What the UNet is trained to output for `z0`, `ε` at `t`: ε, or v = sqrt(ᾱ) ε − sqrt(1−ᾱ) z0.
    pub fn target(&self, z0: &Tensor, noise: &Tensor, t: usize) -> Result<Tensor> {
        let (a, b) = self.0.at(t);
        match self.0.prediction {
            Prediction::Epsilon => Ok(noise.clone()),
            Prediction::VPrediction => (noise * a)? - (z0 * b)?,
        }
    }

    /// One deterministic DDIM step from `t` to `prev` (`None` past the end) given the model output.
    pub fn step(&self, output: &Tensor, t: usize, prev: Option<usize>, sample: &Tensor) -> Result<Tensor> {
        let ((a, b), (a_prev, b_prev)) = (self.0.at(t), self.0.at_prev(prev));
        let (x0, eps) = match self.0.prediction {
            Prediction::Epsilon => (((sample - (output * b)?)? / a)?, output.clone()),
            Prediction::VPrediction => (((sample * a)? - (output * b)?)?, ((output * a)? + (sample * b)?)?),
        };
        (x0 * a_prev)? + (eps * b_prev)?
    }
}
