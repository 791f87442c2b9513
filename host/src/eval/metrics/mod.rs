//! Evaluation metrics (SPEC §8), one per file:
//! - image-level AUROC, exact;
//! - pixel-level AUROC from a bounded histogram;
//! - image-level F1-max, exact;
//! - AUPRO (area under the per-region-overlap curve up to FPR 0.3), exact;
//! - a stored threshold's false-alarm and miss rates, exact.
//!
//! The two AUROCs compute the area under the ROC curve in its rank form: the probability that a
//! randomly chosen anomalous sample scores above a randomly chosen normal one, ties counting one
//! half (the Mann–Whitney U statistic divided by the number of pairs).
pub mod aupro;
pub mod decision_rates;
pub mod f1_max;
pub mod image_auroc;
pub mod pixel_auroc;

pub use aupro::{Aupro, AUPRO_FPR_LIMIT};
pub use decision_rates::{decision_rates, DecisionRates};
pub use f1_max::{f1_max, F1Max};
pub use image_auroc::image_auroc;
pub use pixel_auroc::PixelAuroc;

use adp_api::{Error, Result};

/// An error naming `what` unless `values` and `labels` have one length (`mismatch` words the
/// error from the two lengths) and no value is NaN (`"{value} at index {i} is NaN"`).
pub(crate) fn check_input(
    what: &str,
    values: &[f32],
    labels: &[bool],
    mismatch: impl FnOnce(usize, usize) -> String,
    value: &str,
) -> Result<()> {
    if values.len() != labels.len() {
        return Err(Error::invalid(what, mismatch(values.len(), labels.len())));
    }
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return Err(Error::invalid(what, format!("{value} at index {i} is NaN")));
    }
    Ok(())
}

/// Image-level `scores` against `labels` (`true` = anomalous): an error naming `what` when the
/// lengths differ, when a score is NaN (naming its index) or when either class is missing;
/// otherwise the anomalous and normal counts.
pub(crate) fn count_labelled_scores(what: &str, scores: &[f32], labels: &[bool]) -> Result<(u64, u64)> {
    check_input(
        what,
        scores,
        labels,
        |s, l| format!("{s} scores but {l} labels"),
        "score",
    )?;
    let n_pos = labels.iter().filter(|&&l| l).count() as u64;
    let n_neg = labels.len() as u64 - n_pos;
    require_both_classes(what, n_pos, n_neg)?;
    Ok((n_pos, n_neg))
}

pub(crate) fn check_classes(n_pos: u64, n_neg: u64) -> Result<()> {
    require_both_classes("AUROC input", n_pos, n_neg)
}

/// An error naming `what` unless both classes are present.
pub(crate) fn require_both_classes(what: &str, n_pos: u64, n_neg: u64) -> Result<()> {
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::invalid(
            what,
            format!("needs both classes; got {n_pos} anomalous and {n_neg} normal samples"),
        ));
    }
    Ok(())
}

/// Test shorthands: `F` a normal label, `T` an anomalous one, and random labelled scores.
#[cfg(test)]
pub(crate) mod testing {
    use adp_api::rng::SplitMix64;

    pub const F: bool = false;
    pub const T: bool = true;

    /// `cases` random inputs drawn from seed `seed`, each from 2 to `max_n + 1` scores (each
    /// `step` times a whole number below `levels`: coarse, so that ties are frequent) with random
    /// labels, of which the first is anomalous and the second normal.
    pub fn random_labelled(seed: u64, cases: usize, max_n: u64, levels: u64, step: f32) -> Vec<(Vec<f32>, Vec<bool>)> {
        let mut r = SplitMix64(seed);
        (0..cases)
            .map(|_| {
                let n = 2 + r.below(max_n) as usize;
                let s: Vec<f32> = (0..n).map(|_| r.below(levels) as f32 * step).collect();
                let mut l: Vec<bool> = (0..n).map(|_| r.below(2) == 1).collect();
                l[0] = true;
                l[1] = false;
                (s, l)
            })
            .collect()
    }
}
