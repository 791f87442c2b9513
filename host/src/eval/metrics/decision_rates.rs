//! How a stored threshold holds on a test set (SPEC §7): its false-alarm rate (the share of good
//! test photos it flags) and its miss rate (the share of defective ones it lets through). A photo
//! is flagged when its score is strictly above the threshold, as `adp score` decides.
use super::count_labelled_scores;
use adp_api::Result;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionRates {
    /// Good photos flagged / good photos.
    pub false_alarm_rate: f64,
    /// Defective photos not flagged / defective photos.
    pub miss_rate: f64,
}

/// The rates of `threshold` over image `scores` and `labels` (`true` = defective); an error when
/// the lengths differ, a score is NaN or either class is missing.
pub fn decision_rates(scores: &[f32], labels: &[bool], threshold: f32) -> Result<DecisionRates> {
    let (n_pos, n_neg) = count_labelled_scores("decision rates", scores, labels)?;
    let flagged = |want: bool| {
        scores
            .iter()
            .zip(labels)
            .filter(|&(&s, &l)| l == want && s > threshold)
            .count() as f64
    };
    Ok(DecisionRates {
        false_alarm_rate: flagged(false) / n_neg as f64,
        miss_rate: 1.0 - flagged(true) / n_pos as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: good 0.1, 0.2, 0.5, 0.3 (one above 0.4: 1/4 false alarms); defective 0.9, 0.4,
    /// 0.35 (0.4 is not above 0.4: 2 of 3 missed).
    #[test]
    fn rates_by_hand() {
        let scores = [0.1, 0.2, 0.5, 0.3, 0.9, 0.4, 0.35];
        let labels = [false, false, false, false, true, true, true];
        let r = decision_rates(&scores, &labels, 0.4).unwrap();
        assert!((r.false_alarm_rate - 0.25).abs() < 1e-12, "{r:?}");
        assert!((r.miss_rate - 2.0 / 3.0).abs() < 1e-12, "{r:?}");
        let r = decision_rates(&scores, &labels, 1.0).unwrap();
        assert_eq!((r.false_alarm_rate, r.miss_rate), (0.0, 1.0));
        let r = decision_rates(&scores, &labels, 0.0).unwrap();
        assert_eq!((r.false_alarm_rate, r.miss_rate), (1.0, 0.0));
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(decision_rates(&[0.1, 0.2], &[true], 0.5).is_err(), "lengths");
        assert!(decision_rates(&[0.1, f32::NAN], &[true, false], 0.5).is_err(), "NaN");
        assert!(decision_rates(&[0.1, 0.2], &[true, true], 0.5).is_err(), "one class");
    }
}
