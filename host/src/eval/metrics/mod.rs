//! Evaluation metrics (SPEC §8): image-level AUROC, exact, and pixel-level AUROC from a bounded
//! histogram.
//!
//! Both compute the area under the ROC curve in its rank form: the probability that a randomly
//! chosen anomalous sample scores above a randomly chosen normal one, ties counting one half
//! (the Mann–Whitney U statistic divided by the number of pairs).
pub mod image_auroc;
pub mod pixel_auroc;

pub use image_auroc::image_auroc;
pub use pixel_auroc::PixelAuroc;

use adp_api::{Error, Result};

pub(crate) fn check_classes(n_pos: u64, n_neg: u64) -> Result<()> {
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::invalid(
            "AUROC input",
            format!("needs both classes; got {n_pos} anomalous and {n_neg} normal samples"),
        ));
    }
    Ok(())
}
