//! Image-level AUROC, exact.
use super::count_labelled_scores;
use adp_api::Result;

/// Exact ROC AUC of `scores` against `labels` (`true` = anomalous), ties counting one half.
///
/// Mann–Whitney U with midranks: sort once (O(n log n)), give each run of equal scores the mean
/// of its ranks, and `AUC = (R₊ − n₊(n₊+1)/2) / (n₊·n₋)` where `R₊` is the rank sum of the
/// anomalous samples. Infinite scores are ranked like any other; NaN is an error naming its index.
pub fn image_auroc(scores: &[f32], labels: &[bool]) -> Result<f64> {
    let (n_pos, n_neg) = count_labelled_scores("AUROC input", scores, labels)?;

    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of midranks of the positives, doubled so that it stays an integer:
    // a run occupying ranks i+1..=j (1-based) has midrank (i+1+j)/2.
    let mut rank_sum2: u128 = 0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        // total_cmp separates -0.0 from 0.0; compare with == so they tie, as numbers do.
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            j += 1;
        }
        let pos_in_run = order[i..j].iter().filter(|&&k| labels[k]).count() as u128;
        rank_sum2 += pos_in_run * (i as u128 + 1 + j as u128);
        i = j;
    }
    let (p, n) = (n_pos as u128, n_neg as u128);
    // 2U = 2R₊ − n₊(n₊+1)
    let u2 = rank_sum2 - p * (p + 1);
    Ok(u2 as f64 / (2.0 * p as f64 * n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::testing::{random_labelled, F, T};

    #[test]
    fn perfect_reversed_and_tied() {
        assert_eq!(image_auroc(&[0.1, 0.2, 0.8, 0.9], &[F, F, T, T]).unwrap(), 1.0);
        assert_eq!(image_auroc(&[0.9, 0.8, 0.2, 0.1], &[F, F, T, T]).unwrap(), 0.0);
        assert_eq!(image_auroc(&[0.5; 5], &[F, T, F, T, T]).unwrap(), 0.5);
        // -0.0 and 0.0 are equal scores: a tie, not an ordering.
        assert_eq!(image_auroc(&[-0.0, 0.0], &[T, F]).unwrap(), 0.5);
        assert_eq!(image_auroc(&[f32::NEG_INFINITY, f32::INFINITY], &[F, T]).unwrap(), 1.0);
    }

    #[test]
    fn hand_computed_cases() {
        // Positives 0.35 and 0.8, negatives 0.1 and 0.4. Pairs (pos, neg):
        // (0.35,0.1) win, (0.35,0.4) loss, (0.8,0.1) win, (0.8,0.4) win → 3/4.
        // Midranks: 0.1→1, 0.35→2, 0.4→3, 0.8→4; R₊ = 6; U = 6 − 3 = 3; 3/(2·2) = 0.75.
        assert_eq!(image_auroc(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T]).unwrap(), 0.75);
        // With a tie. Positives 0.5 and 0.9, negatives 0.2 and 0.5. Pairs:
        // (0.5,0.2) win 1, (0.5,0.5) tie ½, (0.9,0.2) win 1, (0.9,0.5) win 1 → 3.5/4 = 0.875.
        // Midranks: 0.2→1, the two 0.5→2.5 each, 0.9→4; R₊ = 6.5; U = 6.5 − 3 = 3.5.
        assert_eq!(image_auroc(&[0.2, 0.5, 0.5, 0.9], &[F, T, F, T]).unwrap(), 0.875);
        // Three-way tie across classes: pos {1,1,3}, neg {1,2}.
        // (1,1) ½ (1,2) 0 | (1,1) ½ (1,2) 0 | (3,1) 1 (3,2) 1 → 3/6 = 0.5.
        assert_eq!(image_auroc(&[1.0, 1.0, 3.0, 1.0, 2.0], &[T, T, T, F, F]).unwrap(), 0.5);
    }

    #[test]
    fn brute_force_agreement() {
        // Coarse scores so that ties are frequent.
        for (s, l) in random_labelled(7, 20, 60, 8, 0.25) {
            let n = s.len();
            let mut wins = 0.0;
            let mut pairs = 0.0;
            for i in 0..n {
                for j in 0..n {
                    if l[i] && !l[j] {
                        pairs += 1.0;
                        wins += if s[i] > s[j] {
                            1.0
                        } else if s[i] == s[j] {
                            0.5
                        } else {
                            0.0
                        };
                    }
                }
            }
            let got = image_auroc(&s, &l).unwrap();
            assert!((got - wins / pairs).abs() < 1e-12, "{got} vs {}", wins / pairs);
        }
    }

    #[test]
    fn image_auroc_errors() {
        let e = image_auroc(&[0.1, 0.2], &[T]).unwrap_err().to_string();
        assert!(e.contains("2 scores") && e.contains("1 labels"), "{e}");
        let e = image_auroc(&[0.1, 0.2], &[T, T]).unwrap_err().to_string();
        assert!(e.contains("0 normal"), "{e}");
        let e = image_auroc(&[0.1, 0.2], &[F, F]).unwrap_err().to_string();
        assert!(e.contains("0 anomalous"), "{e}");
        assert!(image_auroc(&[], &[]).is_err());
        let e = image_auroc(&[0.1, 0.2, f32::NAN], &[T, F, F]).unwrap_err().to_string();
        assert!(e.contains("index 2") && e.contains("NaN"), "{e}");
    }
}
