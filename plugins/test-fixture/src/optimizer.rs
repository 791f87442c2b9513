use crate::{encoder::FixtureEncoder, WIDTH};
use adp_api::requests::*;
use adp_api::{
    atomic::write_atomic, Concept, ConceptOptimizer, Error, LossRecord, Provenance, Result, TextImageEncoder,
};
use serde::{Deserialize, Serialize};

pub struct FixtureOptimizer;

#[derive(Serialize, Deserialize)]
struct Checkpoint {
    step: u64,
    vector: Vec<f32>,
    history: Vec<LossRecord>,
}

/// Gradient descent on ‖v − mean colour of the support set‖², with the real loop's plumbing:
/// progress, cancellation, checkpoint and resume.
impl ConceptOptimizer for FixtureOptimizer {
    fn learn(&self, r: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept> {
        if r.support.is_empty() {
            return Err(Error::EmptySupportSet);
        }
        if r.init.len() != WIDTH {
            return Err(Error::shape(
                "initial concept vector",
                format!("[{WIDTH}]"),
                &[r.init.len()],
            ));
        }
        if matches!(r.objective, Objective::AnomalyAware { .. })
            && r.pseudo_anomalies.as_ref().is_none_or(|p| p.is_empty())
        {
            return Err(Error::invalid(
                "learn request",
                "the anomaly-aware objective needs pseudo-anomalies",
            ));
        }
        let f = FixtureEncoder.image_embeddings(&r.support)?;
        let target: Vec<f32> = (0..WIDTH)
            .map(|c| (0..r.support.len()).map(|n| f.row(n)[c]).sum::<f32>() / r.support.len() as f32)
            .collect();

        let mut state = Checkpoint {
            step: 0,
            vector: r.init.clone(),
            history: Vec::new(),
        };
        if let Some(cp) = r.checkpoint.as_ref().filter(|c| c.resume && c.path.exists()) {
            let text = std::fs::read_to_string(&cp.path).map_err(|e| Error::io(&cp.path, e))?;
            state = serde_json::from_str(&text).map_err(|e| Error::config(&cp.path, e.to_string()))?;
        }
        let lr = r.learning_rate * if r.scale_lr_by_batch { r.batch_size as f32 } else { 1.0 };
        while state.step < r.steps {
            let diff: Vec<f32> = state.vector.iter().zip(&target).map(|(v, t)| v - t).collect();
            state.vector.iter_mut().zip(&diff).for_each(|(v, d)| *v -= lr * 2.0 * d);
            state.step += 1;
            let loss = diff.iter().map(|d| d * d).sum();
            state.history.push(LossRecord {
                step: state.step,
                loss,
                diffusion_loss: loss,
                clip_normal: 0.0,
                clip_anomaly: 0.0,
            });
            let p = Progress {
                step: state.step,
                total_steps: r.steps,
                loss,
                diffusion_loss: loss,
                ..Default::default()
            };
            if let Some(cp) = r
                .checkpoint
                .as_ref()
                .filter(|c| c.every > 0 && state.step.is_multiple_of(c.every))
            {
                write_atomic(&cp.path, serde_json::to_string(&state).expect("json").as_bytes())?;
            }
            if progress(&p) == Flow::Cancel {
                return Err(Error::Cancelled { step: state.step });
            }
        }
        // The objective as it arrived, so that a test can see what crossed the boundary.
        let hyperparameters = [(
            "objective".to_string(),
            serde_json::to_value(r.objective).expect("json"),
        )]
        .into();
        let provenance = Provenance {
            hyperparameters,
            seed: r.seed,
            backend: crate::NAME.into(),
            steps: state.step,
            loss_history: state.history,
            ..Default::default()
        };
        Ok(Concept {
            name: r.name.clone(),
            placeholder: r.placeholder.clone(),
            vector: state.vector,
            provenance,
        })
    }
}
