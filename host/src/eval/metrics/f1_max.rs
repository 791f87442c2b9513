//! Image-level F1-max, exact.
//!
//! The definition is anomalib's `F1Max`, which is built on the precision–recall curve of
//! scikit-learn's `precision_recall_curve` (torchmetrics follows the same rule):
//! - Anomalous images are the positives.
//! - Every distinct score `t` is a threshold, and an image is predicted anomalous when its
//!   score is `≥ t`. Equal scores are one threshold: they enter the positive set together.
//! - At each threshold, precision `P = tp / (tp + fp)` and recall `R = tp / n₊`. F1 is
//!   `2PR / (P + R)`, and 0 where `P + R = 0`.
//! - F1-max is the largest F1 over all thresholds.
//!
//! Here F1 is computed as `2·tp / (n₊ + tp + fp)`. This is the same quantity (multiply out
//! `2PR/(P+R)`) and avoids the `0/0` case. Thresholds are compared exactly, as fractions of
//! integers. When several thresholds reach the maximum, the **lowest** one is returned. That is
//! what `argmax` gives over scikit-learn's thresholds, which come in increasing order.
//! anomalib adds `1e-10` to the denominator, so its value can differ from ours by about 1e-10.
use super::count_labelled_scores;
use adp_api::Result;

/// The best F1 over all thresholds, and the threshold that reaches it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct F1Max {
    /// `max_t F1(t)`, in `[0, 1]`.
    pub f1: f64,
    /// The lowest score `t` such that the rule "anomalous ⇔ score ≥ t" reaches `f1`.
    pub threshold: f32,
}

/// Exact image F1-max of `scores` against `labels` (`true` = anomalous).
///
/// Sorts once (O(n log n)). An error, never a panic, when the lengths differ, when a score is
/// NaN (the message names its index), or when either class is missing. Infinite scores are
/// thresholds like any other. `-0.0` and `0.0` are one threshold, as they are for numpy.
pub fn f1_max(scores: &[f32], labels: &[bool]) -> Result<F1Max> {
    let (n_pos, _) = count_labelled_scores("F1-max input", scores, labels)?;

    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Highest score first.
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    // The best F1 so far as the fraction num/den = 2·tp / (n₊ + tp + fp). It starts at 0/1,
    // which every threshold matches or beats.
    let (mut best_num, mut best_den) = (0u64, 1u64);
    let mut best_threshold = scores[order[0]];
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut i = 0;
    while i < order.len() {
        let t = scores[order[i]];
        // total_cmp separates -0.0 from 0.0; == joins them, as numpy does.
        while i < order.len() && scores[order[i]] == t {
            if labels[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        let (num, den) = (2 * tp, n_pos + tp + fp);
        // num/den ≥ best_num/best_den, in integers (each side is below 2⁶⁴, so the product
        // fits in u128). With ≥, a later (lower) threshold wins ties.
        if num as u128 * best_den as u128 >= best_num as u128 * den as u128 {
            (best_num, best_den, best_threshold) = (num, den, t);
        }
    }
    Ok(F1Max {
        f1: best_num as f64 / best_den as f64,
        threshold: best_threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::testing::{random_labelled, F, T};

    #[test]
    fn f1_hand_computed_cases() {
        // Perfect separation: at t = 0.8 tp = 2, fp = 0 → F1 = 4/(2+2+0) = 1.
        let r = f1_max(&[0.1, 0.2, 0.8, 0.9], &[F, F, T, T]).unwrap();
        assert_eq!((r.f1, r.threshold), (1.0, 0.8));
        // Scores 0.9 T, 0.7 F, 0.6 T, 0.3 T, 0.2 F; n₊ = 3. Thresholds, with F1 = 2tp/(3+tp+fp):
        //   t=0.9: tp 1 fp 0 → 2/4 = 0.5
        //   t=0.7: tp 1 fp 1 → 2/5 = 0.4
        //   t=0.6: tp 2 fp 1 → 4/6 ≈ 0.667
        //   t=0.3: tp 3 fp 1 → 6/7 ≈ 0.857   ← max
        //   t=0.2: tp 3 fp 2 → 6/8 = 0.75
        // As precision/recall at 0.3: P = 3/4, R = 1, 2PR/(P+R) = 1.5/1.75 = 6/7.
        let r = f1_max(&[0.9, 0.7, 0.6, 0.3, 0.2], &[T, F, T, T, F]).unwrap();
        assert_eq!((r.f1, r.threshold), (6.0 / 7.0, 0.3));
        // Ties form one threshold. Scores 0.5 T, 0.5 F, 0.5 T, 0.1 F; n₊ = 2:
        //   t=0.5: tp 2 fp 1 → 4/5 = 0.8   ← max
        //   t=0.1: tp 2 fp 2 → 4/6
        // Splitting the tie (0.5 T alone) would have given 2/3 or 1.0, neither of which is
        // available.
        let r = f1_max(&[0.5, 0.5, 0.5, 0.1], &[T, F, T, F]).unwrap();
        assert_eq!((r.f1, r.threshold), (0.8, 0.5));
        // An exact tie in F1 between two thresholds: the lower one is reported.
        // Scores 0.9 T, 0.8 F, 0.7 F, 0.6 T, 0.5 T, 0.4 F ... n₊ = 3:
        //   t=0.9: tp 1 fp 0 → 2/4 = 0.5
        //   t=0.8: tp 1 fp 1 → 2/5
        //   t=0.7: tp 1 fp 2 → 2/6
        //   t=0.6: tp 2 fp 2 → 4/7
        //   t=0.5: tp 3 fp 2 → 6/8 = 0.75  ← max
        //   t=0.4: tp 3 fp 3 → 6/9
        // and with one more negative scored 0.95 on top, t=0.95 gives 0/4 and the rest shift
        // by one fp: 2/5, 2/6, 2/7, 4/8 = 0.5, 6/9, 6/10 → max 6/9 at 0.5.
        let r = f1_max(&[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], &[T, F, F, T, T, F]).unwrap();
        assert_eq!((r.f1, r.threshold), (0.75, 0.5));
        let r = f1_max(&[0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4], &[F, T, F, F, T, T, F]).unwrap();
        assert_eq!((r.f1, r.threshold), (6.0 / 9.0, 0.5));
        // Equal F1 at two thresholds: scores 0.9 T, 0.8 F, 0.7 F, 0.6 T, 0.5 F; n₊ = 2:
        //   t=0.9: tp 1 fp 0 → 2/3
        //   t=0.8: 2/4, t=0.7: 2/5
        //   t=0.6: tp 2 fp 2 → 4/6 = 2/3   (ties with t=0.9; the lower threshold wins)
        //   t=0.5: 4/7
        let r = f1_max(&[0.9, 0.8, 0.7, 0.6, 0.5], &[T, F, F, T, F]).unwrap();
        assert_eq!((r.f1, r.threshold), (2.0 / 3.0, 0.6));
        // Reversed ranking: the best is to call everything anomalous: tp 2 fp 2 → 4/6.
        let r = f1_max(&[0.9, 0.8, 0.2, 0.1], &[F, F, T, T]).unwrap();
        assert_eq!((r.f1, r.threshold), (4.0 / 6.0, 0.1));
        // -0.0 and 0.0 are one threshold; infinities are thresholds.
        let r = f1_max(&[-0.0, 0.0, f32::NEG_INFINITY], &[T, T, F]).unwrap();
        assert_eq!(r.f1, 1.0);
        let r = f1_max(&[f32::INFINITY, 1.0, f32::NEG_INFINITY], &[T, F, T]).unwrap();
        // t=inf: 2/3; t=1: 2/4; t=-inf: 4/5 ← max
        assert_eq!((r.f1, r.threshold), (0.8, f32::NEG_INFINITY));
    }

    #[test]
    fn f1_brute_force_agreement() {
        for (s, l) in random_labelled(5, 30, 40, 6, 0.5) {
            let n = s.len();
            // Every candidate threshold, floating-point F1 as scikit-learn computes it.
            let mut best = (0.0f64, f32::INFINITY);
            let mut ts = s.clone();
            ts.sort_by(f32::total_cmp);
            ts.dedup();
            for &t in &ts {
                let tp = (0..n).filter(|&i| l[i] && s[i] >= t).count() as f64;
                let fp = (0..n).filter(|&i| !l[i] && s[i] >= t).count() as f64;
                let p = tp / (tp + fp);
                let rc = tp / l.iter().filter(|&&x| x).count() as f64;
                let f1 = if p + rc > 0.0 { 2.0 * p * rc / (p + rc) } else { 0.0 };
                // Ascending thresholds, strict >: the first (lowest) maximum, like argmax.
                if f1 > best.0 + 1e-12 {
                    best = (f1, t);
                }
            }
            let got = f1_max(&s, &l).unwrap();
            assert!((got.f1 - best.0).abs() < 1e-12, "{got:?} vs {best:?}");
            assert_eq!(got.threshold, best.1, "{s:?} {l:?}");
        }
    }

    #[test]
    fn f1_errors() {
        let e = f1_max(&[0.1, 0.2], &[T]).unwrap_err().to_string();
        assert!(
            e.contains("F1-max") && e.contains("2 scores") && e.contains("1 labels"),
            "{e}"
        );
        let e = f1_max(&[0.1, 0.2], &[T, T]).unwrap_err().to_string();
        assert!(e.contains("0 normal"), "{e}");
        let e = f1_max(&[0.1, 0.2], &[F, F]).unwrap_err().to_string();
        assert!(e.contains("0 anomalous"), "{e}");
        assert!(f1_max(&[], &[]).is_err());
        let e = f1_max(&[0.1, f32::NAN, 0.3], &[T, F, F]).unwrap_err().to_string();
        assert!(e.contains("index 1") && e.contains("NaN"), "{e}");
    }
}
