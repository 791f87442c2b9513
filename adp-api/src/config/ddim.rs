//! The DDIM schedule's constants (ᾱ per timestep, what the UNet predicts, the ᾱ past the last
//! step), taken from a diffusers scheduler config; the backends apply them to their tensors.
use super::diffusion::DiffusionSpec;
use crate::requests::Prediction;
use crate::Result;

#[derive(Debug, Clone, PartialEq)]
pub struct DdimSchedule {
    pub alphas_cumprod: Vec<f64>,
    pub prediction: Prediction,
    /// ᾱ used past the first timestep: 1 with `set_alpha_to_one`, else ᾱ_0.
    pub final_alpha_cumprod: f64,
}

impl DdimSchedule {
    /// `(sqrt(ᾱ_t), sqrt(1 − ᾱ_t))`.
    pub fn at(&self, t: usize) -> (f64, f64) {
        let a = self.alphas_cumprod[t];
        (a.sqrt(), (1.0 - a).sqrt())
    }

    /// [`Self::at`] the step's target: `prev`, or past the end for `None`.
    pub fn at_prev(&self, prev: Option<usize>) -> (f64, f64) {
        let a = prev.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        (a.sqrt(), (1.0 - a).sqrt())
    }
}

impl DiffusionSpec {
    /// The DDIM schedule of this checkpoint's scheduler config.
    pub fn ddim_schedule(&self) -> Result<DdimSchedule> {
        let s = &self.scheduler;
        let alphas_cumprod = s.alphas_cumprod()?;
        let final_alpha_cumprod = match (s.set_alpha_to_one, alphas_cumprod.first()) {
            (false, Some(&a0)) => a0,
            _ => 1.0,
        };
        Ok(DdimSchedule {
            alphas_cumprod,
            prediction: self.prediction,
            final_alpha_cumprod,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coefficients_are_square_roots_of_alpha_bar() {
        let (alphas_cumprod, prediction) = (vec![0.64, 0.36], Prediction::Epsilon);
        let s = DdimSchedule {
            alphas_cumprod,
            prediction,
            final_alpha_cumprod: 1.0,
        };
        assert_eq!(s.at(1), (0.6, 0.8));
        assert_eq!(s.at_prev(Some(0)), (0.8, 0.6));
        assert_eq!(s.at_prev(None), (1.0, 0.0));
    }
}
