//! Self-tuning and the language score (SPEC §6, eqs. 5–7 and 10): each concept's weight from the
//! pseudo-validation set, the weighted normal and anomalous prototypes over the 27 templates, and
//! the probability of the anomalous prototype.
use super::prompts::{State, TEMPLATES};
use adp_api::requests::Prompt;
use adp_api::{Concept, Error, ImageBatch, Result, TextImageEncoder};

/// CLIP's temperature (logit scale 100).
pub const TAU: f32 = 0.01;

/// What fills `[c]`: a learned concept, or a plain word (the class label of ADP_ℓ).
#[derive(Debug, Clone)]
pub enum ConceptToken {
    Learned(Concept),
    Word(String),
}

impl ConceptToken {
    fn prompt(&self, template: &str, state: State) -> Prompt {
        match self {
            ConceptToken::Learned(c) => {
                Prompt::with_concept(state.prompt(template, &c.placeholder), &c.placeholder, &c.vector)
            }
            ConceptToken::Word(w) => Prompt::plain(state.prompt(template, w)),
        }
    }
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `mean_T unit(g(T(S(c))))`, renormalised: a concept's state embedding over the templates.
pub fn state_embedding(enc: &dyn TextImageEncoder, c: &ConceptToken, state: State) -> Result<Vec<f32>> {
    let prompts: Vec<Prompt> = TEMPLATES.iter().map(|t| c.prompt(t, state)).collect();
    let g = enc.text_embeddings(&prompts)?;
    let mut mean = vec![0f32; g.shape()[1]];
    for i in 0..prompts.len() {
        mean.iter_mut()
            .zip(unit(g.row(i)))
            .for_each(|(m, v)| *m += v / prompts.len() as f32);
    }
    Ok(unit(&mean))
}

/// `P(first | x)` for unit image embeddings against two unit text embeddings at `TAU`.
pub fn two_way_probability(f: &[f32], first: &[f32], second: &[f32]) -> f32 {
    let (a, b) = (dot(f, first) / TAU, dot(f, second) / TAU);
    1.0 / (1.0 + (b - a).exp())
}

/// Unit image embeddings, one row per image.
pub fn image_features(enc: &dyn TextImageEncoder, images: &ImageBatch) -> Result<Vec<Vec<f32>>> {
    let f = enc.image_embeddings(images)?;
    Ok((0..images.len()).map(|i| unit(f.row(i))).collect())
}

/// A concept with its normal and anomalous state embeddings and its weight (eq. 5).
#[derive(Debug, Clone)]
pub struct WeightedConcept {
    pub normal: Vec<f32>,
    pub anomalous: Vec<f32>,
    pub weight: f32,
}

/// A concept's state embeddings with weight 1: for a single concept, or without a
/// pseudo-validation set.
pub fn unweighted(enc: &dyn TextImageEncoder, c: &ConceptToken) -> Result<WeightedConcept> {
    Ok(WeightedConcept {
        normal: state_embedding(enc, c, State::Normal)?,
        anomalous: state_embedding(enc, c, State::Anomalous)?,
        weight: 1.0,
    })
}

/// Eq. 5: `w(c) = mean_i P(S_n(c) | x_i) + mean_j P(S_a(c) | x̃_j)` on the support images and the
/// pseudo-anomalies (given as unit image features).
pub fn weigh(
    enc: &dyn TextImageEncoder,
    c: &ConceptToken,
    support: &[Vec<f32>],
    pseudo: &[Vec<f32>],
) -> Result<WeightedConcept> {
    if support.is_empty() {
        return Err(Error::EmptySupportSet);
    }
    if pseudo.is_empty() {
        return Err(Error::invalid("pseudo-validation set", "no pseudo-anomalies"));
    }
    let normal = state_embedding(enc, c, State::Normal)?;
    let anomalous = state_embedding(enc, c, State::Anomalous)?;
    let on_support = support
        .iter()
        .map(|f| two_way_probability(f, &normal, &anomalous))
        .sum::<f32>()
        / support.len() as f32;
    let on_pseudo = pseudo
        .iter()
        .map(|f| two_way_probability(f, &anomalous, &normal))
        .sum::<f32>()
        / pseudo.len() as f32;
    Ok(WeightedConcept {
        normal,
        anomalous,
        weight: on_support + on_pseudo,
    })
}

/// The normal and anomalous prototypes `p_n`, `p_a` (eq. 6), unit length.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Prototypes {
    pub normal: Vec<f32>,
    pub anomalous: Vec<f32>,
}

/// Eq. 6: the weight-averaged state embeddings of the concepts.
pub fn prototypes(concepts: &[WeightedConcept]) -> Result<Prototypes> {
    let total: f32 = concepts.iter().map(|c| c.weight).sum();
    if concepts.is_empty() || total.is_nan() || total <= 0.0 {
        return Err(Error::invalid(
            "concept weights",
            format!("their sum {total} must be positive"),
        ));
    }
    let mix = |pick: fn(&WeightedConcept) -> &Vec<f32>| {
        let mut out = vec![0f32; pick(&concepts[0]).len()];
        for c in concepts {
            out.iter_mut()
                .zip(pick(c))
                .for_each(|(o, v)| *o += c.weight * v / total);
        }
        unit(&out)
    };
    Ok(Prototypes {
        normal: mix(|c| &c.normal),
        anomalous: mix(|c| &c.anomalous),
    })
}

/// Eq. 7 (with `p_a` in the numerator, SPEC §6): the probability of the anomalous prototype.
pub fn language_score(f: &[f32], p: &Prototypes) -> f32 {
    two_way_probability(f, &p.anomalous, &p.normal)
}

/// Eq. 10: `½(ADP(x) + max_ij M^W_ij)`.
pub fn final_score(language: f32, patch_map: &[f32]) -> f32 {
    0.5 * (language + patch_map.iter().copied().fold(f32::NEG_INFINITY, f32::max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_is_a_two_way_softmax_at_tau() {
        let f = [1.0, 0.0];
        assert!((two_way_probability(&f, &[1.0, 0.0], &[1.0, 0.0]) - 0.5).abs() < 1e-6);
        // cos 1 vs cos 0.99 at τ = 0.01: logits differ by 1.
        let p = two_way_probability(&f, &[1.0, 0.0], &[0.99, (1.0f32 - 0.99 * 0.99).sqrt()]);
        assert!((p - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-4, "{p}");
    }

    #[test]
    fn prototypes_weigh_concepts_and_scores_rise_with_anomaly() {
        let a = WeightedConcept {
            normal: vec![1.0, 0.0],
            anomalous: vec![0.0, 1.0],
            weight: 3.0,
        };
        let b = WeightedConcept {
            normal: vec![0.0, 1.0],
            anomalous: vec![1.0, 0.0],
            weight: 1.0,
        };
        let p = prototypes(&[a, b]).unwrap();
        let s = 1.0 / 10f32.sqrt();
        assert!((p.normal[0] - 3.0 * s).abs() < 1e-6 && (p.normal[1] - s).abs() < 1e-6);
        // An image near the anomalous prototype scores above one near the normal prototype.
        assert!(language_score(&p.anomalous, &p) > 0.5 && language_score(&p.normal, &p) < 0.5);
        assert_eq!(final_score(0.2, &[0.1, 0.6, 0.3]), 0.4);
        let zero = WeightedConcept {
            normal: vec![1.0],
            anomalous: vec![1.0],
            weight: 0.0,
        };
        assert!(prototypes(&[zero]).is_err());
    }
}
