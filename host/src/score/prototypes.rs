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

/// `mean_T unit(g(T(S(c))))`: a concept's state embedding over the templates, **not** renormalised
/// (eq. 6 mixes these as they are; only the mix `p_s` is unit-normalised).
pub fn state_embedding(enc: &dyn TextImageEncoder, c: &ConceptToken, state: State) -> Result<Vec<f32>> {
    let prompts: Vec<Prompt> = TEMPLATES.iter().map(|t| c.prompt(t, state)).collect();
    let g = enc.text_embeddings(&prompts)?;
    let mut mean = vec![0f32; g.shape()[1]];
    for i in 0..prompts.len() {
        mean.iter_mut()
            .zip(unit(g.row(i)))
            .for_each(|(m, v)| *m += v / prompts.len() as f32);
    }
    Ok(mean)
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

/// A concept with its normal and anomalous state embeddings (template means, not unit length) and
/// its weight (eq. 5).
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
    // P_CLIP against the template-averaged text embedding: a cosine, so its direction.
    let (n, a) = (unit(&normal), unit(&anomalous));
    let on_support = support.iter().map(|f| two_way_probability(f, &n, &a)).sum::<f32>() / support.len() as f32;
    let on_pseudo = pseudo.iter().map(|f| two_way_probability(f, &a, &n)).sum::<f32>() / pseudo.len() as f32;
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

/// Eq. 6: `p_s = unit(Σ_c w(c) · mean_T unit(g(T(S_s(c)))) / Σ_c w(c))`, the weight-averaged state
/// embeddings of the concepts, each template mean as it is.
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
    use adp_api::requests::*;
    use adp_api::Tensor;

    /// Text embeddings by word, state and template: "wobbly" varies with the template's parity (so
    /// its template mean is shorter than 1), "steady" does not.
    fn g(word: &str, state: State, template: usize) -> [f32; 2] {
        let s = if template.is_multiple_of(2) { 1.0 } else { -1.0 };
        match (word, state) {
            ("wobbly", State::Normal) => [1.0, s],
            ("wobbly", State::Anomalous) => [s, 1.0],
            ("steady", State::Normal) => [0.0, 1.0],
            ("steady", State::Anomalous) => [1.0, 0.0],
            _ => unreachable!("{word}"),
        }
    }

    struct StubText;

    impl TextImageEncoder for StubText {
        fn dims(&self) -> EncoderDims {
            unimplemented!()
        }
        fn image_embeddings(&self, _: &ImageBatch) -> Result<Tensor> {
            unimplemented!()
        }
        fn dense_features(&self, _: &ImageBatch, _: &[usize]) -> Result<DenseFeatures> {
            unimplemented!()
        }
        fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
            let rows = prompts.iter().flat_map(|p| {
                let (k, word, state) = (0..TEMPLATES.len())
                    .flat_map(|k| {
                        ["wobbly", "steady"]
                            .into_iter()
                            .flat_map(move |w| [State::Normal, State::Anomalous].map(move |st| (k, w, st)))
                    })
                    .find(|&(k, w, st)| st.prompt(TEMPLATES[k], w) == p.text)
                    .expect("a known prompt");
                g(word, state, k)
            });
            Tensor::new(vec![prompts.len(), 2], rows.collect())
        }
        fn token_embedding(&self, _: &str) -> Result<Vec<f32>> {
            unimplemented!()
        }
        fn state_probability(&self, _: &StateProbabilityRequest) -> Result<StateProbability> {
            unimplemented!()
        }
    }

    fn word(w: &str) -> ConceptToken {
        ConceptToken::Word(w.into())
    }

    /// `mean_T unit(g(T(S(c))))`, by hand.
    fn template_mean(w: &str, state: State) -> Vec<f32> {
        let mut m = vec![0f32; 2];
        for k in 0..TEMPLATES.len() {
            let u = unit(&g(w, state, k));
            m.iter_mut().zip(u).for_each(|(m, u)| *m += u / TEMPLATES.len() as f32);
        }
        m
    }

    /// Eq. 6: `p_s = unit(Σ_c w(c) · mean_T unit(g(T(S_s(c)))) / Σ_c w(c))`, with no renormalisation
    /// of a concept's template mean before the mix.
    #[test]
    fn eq6_mixes_the_template_means_as_they_are() {
        let (wa, wb) = (3.0, 1.0);
        let mut a = unweighted(&StubText, &word("wobbly")).unwrap();
        let mut b = unweighted(&StubText, &word("steady")).unwrap();
        (a.weight, b.weight) = (wa, wb);
        let p = prototypes(&[a, b]).unwrap();
        for (state, got) in [(State::Normal, &p.normal), (State::Anomalous, &p.anomalous)] {
            let (ma, mb) = (template_mean("wobbly", state), template_mean("steady", state));
            let mix = |ma: &[f32]| unit(&[wa * ma[0] + wb * mb[0], wa * ma[1] + wb * mb[1]]);
            let (want, renormalised) = (mix(&ma), mix(&unit(&ma)));
            assert!(
                (want[0] - renormalised[0]).abs() > 1e-2,
                "the test cannot tell renormalisation apart"
            );
            assert!(
                got.iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5),
                "{state:?}: p_s {got:?} ≠ {want:?} by hand (renormalised per concept: {renormalised:?})"
            );
        }
    }

    /// Eq. 5: `w(c) = mean_i P(S_n(c) | x_i) + mean_j P(S_a(c) | x̃_j)`, neither state swapped.
    #[test]
    fn eq5_weighs_normal_on_support_and_anomalous_on_pseudo_anomalies() {
        let support = vec![unit(&[1.0, 1.01]), unit(&[1.0, 1.03])];
        let pseudo = vec![unit(&[1.02, 1.0])];
        let c = weigh(&StubText, &word("steady"), &support, &pseudo).unwrap();
        // "steady": S_n ↦ [0, 1], S_a ↦ [1, 0] under every template.
        let p = |f: &[f32], first: usize| 1.0 / (1.0 + (-(f[first] - f[1 - first]) / TAU).exp());
        let p_n = |f: &Vec<f32>| p(f, 1);
        let p_a = |f: &Vec<f32>| p(f, 0);
        let mean = |fs: &[Vec<f32>], q: &dyn Fn(&Vec<f32>) -> f32| fs.iter().map(q).sum::<f32>() / fs.len() as f32;
        let want = mean(&support, &p_n) + mean(&pseudo, &p_a);
        for wrong in [
            mean(&support, &p_a) + mean(&pseudo, &p_n),
            mean(&support, &p_n) + mean(&pseudo, &p_n),
            mean(&support, &p_a) + mean(&pseudo, &p_a),
        ] {
            assert!((want - wrong).abs() > 1e-2, "the test cannot tell {wrong} from {want}");
        }
        assert!((c.weight - want).abs() < 1e-5, "w(c) = {} ≠ {want} by hand", c.weight);
    }

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
