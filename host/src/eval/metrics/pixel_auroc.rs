//! Pixel-level AUROC in bounded memory.
use super::{check_classes, check_input};
use adp_api::{Error, Result};

/// Pixel-level AUROC accumulated image by image in bounded memory.
///
/// Scores go into `bins` equal-width bins over `[lo, hi]` (values outside the range are clamped
/// into the first or last bin), and each bin counts anomalous (mask `true`) and normal pixels.
/// The memory is two `u64` counters per bin, fixed at construction: it does not grow with the
/// number of pixels or images added.
///
/// [`finish`](Self::finish) computes the AUC from the histogram, pairs in different bins ordered
/// by bin and pairs in the same bin counted one half. The histogram's resolution is the only
/// approximation: a pair in different bins is ordered exactly as its scores are (bins are
/// monotone in the score), so only same-bin pairs can be misjudged, each by at most one half.
/// Hence `|finish − exact AUROC| ≤ ½ · Σ_b pos_b·neg_b / (P·N)`, at most the fraction of
/// anomalous/normal pairs falling in the same bin ([`error_bound`](Self::error_bound) reports
/// the tighter half-fraction). With more bins that fraction shrinks, and for scores inside the
/// range the result converges to the exact AUROC.
#[derive(Debug, Clone)]
pub struct PixelAuroc {
    lo: f64,
    hi: f64,
    pos: Vec<u64>,
    neg: Vec<u64>,
}

impl PixelAuroc {
    /// A histogram of `bins` bins over `[lo, hi]`; `lo < hi`, both finite, `bins ≥ 1`.
    pub fn new(lo: f32, hi: f32, bins: usize) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::invalid(
                "pixel AUROC range",
                format!("need finite lo < hi, got [{lo}, {hi}]"),
            ));
        }
        if bins == 0 {
            return Err(Error::invalid("pixel AUROC bins", "need at least one bin, got 0"));
        }
        Ok(Self {
            lo: lo as f64,
            hi: hi as f64,
            pos: vec![0; bins],
            neg: vec![0; bins],
        })
    }

    /// Number of bins.
    pub fn bins(&self) -> usize {
        self.pos.len()
    }

    /// Anomalous and normal pixels counted so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.pos.iter().sum(), self.neg.iter().sum())
    }

    fn bin(&self, s: f32) -> usize {
        let last = self.pos.len() - 1;
        let t = (s as f64 - self.lo) / (self.hi - self.lo) * self.pos.len() as f64;
        if t <= 0.0 {
            0
        } else if t >= last as f64 {
            // also catches +inf; floor(t) ≥ last means the last bin
            last
        } else {
            t.floor() as usize
        }
    }

    /// Adds one image: its anomaly map `scores` and its mask (`true` = anomalous pixel), same
    /// length, same pixel order. Nothing is added if the input is rejected (NaN, length).
    pub fn add(&mut self, scores: &[f32], mask: &[bool]) -> Result<()> {
        let mismatch = |s: usize, m: usize| format!("anomaly map has {s} pixels but mask has {m}");
        check_input("pixel AUROC input", scores, mask, mismatch, "anomaly map value")?;
        for (&s, &m) in scores.iter().zip(mask) {
            let b = self.bin(s);
            if m {
                self.pos[b] += 1;
            } else {
                self.neg[b] += 1;
            }
        }
        Ok(())
    }

    /// The AUROC of everything added; an error unless both classes were seen.
    pub fn finish(&self) -> Result<f64> {
        let (p, n) = self.counts();
        check_classes(p, n)?;
        // Doubled so that the half-counted ties stay integers: Σ pos_b · (2·neg_below + neg_b).
        let mut num2: u128 = 0;
        let mut neg_below: u128 = 0;
        for (&pb, &nb) in self.pos.iter().zip(&self.neg) {
            num2 += pb as u128 * (2 * neg_below + nb as u128);
            neg_below += nb as u128;
        }
        Ok(num2 as f64 / (2.0 * p as f64 * n as f64))
    }

    /// Upper bound on `|finish() − exact AUROC|`: half the fraction of anomalous/normal pairs
    /// that share a bin. An error unless both classes were seen.
    pub fn error_bound(&self) -> Result<f64> {
        let (p, n) = self.counts();
        check_classes(p, n)?;
        let same: u128 = self
            .pos
            .iter()
            .zip(&self.neg)
            .map(|(&a, &b)| a as u128 * b as u128)
            .sum();
        Ok(same as f64 / (2.0 * p as f64 * n as f64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::image_auroc;
    use crate::eval::metrics::testing::{F, T};
    use adp_api::rng::SplitMix64;

    /// `bins` bins over [0, 1] with `images` (anomaly map, mask) added in turn.
    fn over_unit(bins: usize, images: &[(&[f32], &[bool])]) -> PixelAuroc {
        let mut p = PixelAuroc::new(0.0, 1.0, bins).unwrap();
        for (scores, mask) in images {
            p.add(scores, mask).unwrap();
        }
        p
    }

    #[test]
    fn pixel_hand_cases() {
        let p = over_unit(100, &[(&[0.1, 0.2], &[F, F]), (&[0.8, 0.9], &[T, T])]);
        assert_eq!(p.finish().unwrap(), 1.0);
        assert_eq!(p.error_bound().unwrap(), 0.0);
        let p = over_unit(100, &[(&[0.1, 0.2, 0.8, 0.9], &[T, T, F, F])]);
        assert_eq!(p.finish().unwrap(), 0.0);
        // Everything in one bin: all pairs tied.
        let p = over_unit(1, &[(&[0.1, 0.9, 0.3], &[T, F, T])]);
        assert_eq!(p.finish().unwrap(), 0.5);
        assert_eq!(p.error_bound().unwrap(), 0.5);
        // The hand case above, resolved by the bins: 0.75.
        let p = over_unit(20, &[(&[0.1, 0.4, 0.35, 0.8], &[F, F, T, T])]);
        assert_eq!(p.finish().unwrap(), 0.75);
        // Out-of-range values are clamped into the end bins (and ±inf too).
        let p = over_unit(
            10,
            &[(&[-5.0, f32::NEG_INFINITY, 7.0, f32::INFINITY, 1.0], &[F, F, T, T, T])],
        );
        assert_eq!(p.finish().unwrap(), 1.0);
        assert_eq!(p.counts(), (3, 2));
    }

    #[test]
    fn pixel_agrees_with_exact() {
        let mut r = SplitMix64(11);
        let mut all_s = Vec::new();
        let mut all_m = Vec::new();
        let mut p = PixelAuroc::new(-4.0, 6.0, 4096).unwrap();
        for _ in 0..8 {
            // One "image" of 1000 pixels; anomalous pixels shifted up by 1.
            let m: Vec<bool> = (0..1000).map(|_| r.below(10) == 0).collect();
            let s: Vec<f32> = m.iter().map(|&a| r.normal() + if a { 1.0 } else { 0.0 }).collect();
            p.add(&s, &m).unwrap();
            all_s.extend_from_slice(&s);
            all_m.extend_from_slice(&m);
        }
        let exact = image_auroc(&all_s, &all_m).unwrap();
        let approx = p.finish().unwrap();
        let bound = p.error_bound().unwrap();
        assert!((exact - approx).abs() <= bound + 1e-12, "{exact} {approx} {bound}");
        assert!((exact - approx).abs() < 1e-3, "{exact} vs {approx}");
        assert!(exact > 0.6 && exact < 0.9, "{exact}");
    }

    #[test]
    fn pixel_memory_is_bounded() {
        let mut p = PixelAuroc::new(0.0, 1.0, 256).unwrap();
        let before = (std::mem::size_of_val(&p), p.pos.capacity(), p.neg.capacity());
        let mut r = SplitMix64(3);
        for _ in 0..50 {
            let s: Vec<f32> = (0..10_000).map(|_| r.symmetric().abs()).collect();
            let m: Vec<bool> = (0..10_000).map(|_| r.below(2) == 0).collect();
            p.add(&s, &m).unwrap();
        }
        // 500 000 pixels later the heap footprint is still 2 × 256 counters.
        let after = (std::mem::size_of_val(&p), p.pos.capacity(), p.neg.capacity());
        assert_eq!(before, after);
        assert_eq!(p.counts().0 + p.counts().1, 500_000);
    }

    #[test]
    fn pixel_errors() {
        assert!(PixelAuroc::new(1.0, 0.0, 10).is_err());
        assert!(PixelAuroc::new(0.0, f32::NAN, 10).is_err());
        assert!(PixelAuroc::new(0.0, 1.0, 0).is_err());
        let mut p = PixelAuroc::new(0.0, 1.0, 10).unwrap();
        let e = p.add(&[0.1, 0.2], &[T]).unwrap_err().to_string();
        assert!(e.contains("2 pixels") && e.contains("has 1"), "{e}");
        let e = p.add(&[0.1, f32::NAN], &[T, F]).unwrap_err().to_string();
        assert!(e.contains("index 1"), "{e}");
        assert_eq!(p.counts(), (0, 0), "a rejected image adds nothing");
        assert!(p.finish().is_err());
        p.add(&[0.1], &[T]).unwrap();
        assert!(p.finish().is_err());
        p.add(&[0.1], &[F]).unwrap();
        assert_eq!(p.finish().unwrap(), 0.5);
    }
}
