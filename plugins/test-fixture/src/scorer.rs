use adp_api::requests::*;
use adp_api::{Error, Result, Scorer, Tensor};

pub struct FixtureScorer;

fn unit(v: &[f32]) -> impl Iterator<Item = f32> + '_ {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(move |x| x / norm)
}

/// Brute-force nearest neighbours: the definition itself, for checking the wire, not for speed.
impl Scorer for FixtureScorer {
    fn build_memory(&self, kind: FeatureKind, support: &Tensor) -> Result<ReferenceMemory> {
        let d = *support.shape().last().unwrap_or(&0);
        if support.is_empty() || d == 0 || !(2..=3).contains(&support.shape().len()) {
            return Err(Error::shape(
                "support features",
                "[K, P, D] or [M, D], non-empty",
                support.shape(),
            ));
        }
        support.check_finite("support features")?;
        let rows = support.len() / d;
        let data = support.data().chunks(d).flat_map(unit).collect();
        Ok(ReferenceMemory {
            kind,
            features: Tensor::new(vec![rows, d], data)?,
        })
    }

    fn associate(&self, memory: &ReferenceMemory, test: &Tensor) -> Result<Tensor> {
        let d = memory.features.shape()[1];
        test.expect_shape("test features", &[None, None, Some(d)])?;
        test.check_finite("test features")?;
        let scores = test
            .data()
            .chunks(d)
            .map(|q| {
                let q: Vec<f32> = unit(q).collect();
                memory
                    .features
                    .data()
                    .chunks(d)
                    .map(|r| 0.5 * (1.0 - r.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>()))
                    .fold(f32::INFINITY, f32::min)
            })
            .collect();
        Tensor::new(test.shape()[..2].to_vec(), scores)
    }
}
