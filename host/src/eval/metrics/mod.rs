//! Evaluation metrics (SPEC §8), one per file:
//! - image-level AUROC, exact;
//! - pixel-level AUROC from a bounded histogram;
//! - image-level F1-max, exact;
//! - AUPRO (area under the per-region-overlap curve up to FPR 0.3), exact.
//!
//! The two AUROCs compute the area under the ROC curve in its rank form: the probability that a
//! randomly chosen anomalous sample scores above a randomly chosen normal one, ties counting one
//! half (the Mann–Whitney U statistic divided by the number of pairs).
pub mod aupro;
pub mod f1_max;
pub mod image_auroc;
pub mod pixel_auroc;

pub use aupro::{Aupro, AUPRO_FPR_LIMIT};
pub use f1_max::{f1_max, F1Max};
pub use image_auroc::image_auroc;
pub use pixel_auroc::PixelAuroc;

use adp_api::{Error, Result};

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
