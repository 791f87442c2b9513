//! A decision from normal photos alone (SPEC §7): the threshold a detector carries, chosen from its
//! support photos only, for a target false-alarm rate (docs/method.md, "The decision").
//!
//! Null scores are scores that normal photos get from a memory that does not hold them: each
//! support photo scored against the memory built from the other K − 1 (leave-one-out, its rows
//! removed; concepts and prototypes stay as fitted), topped up with views of each photo (moved by
//! one or two patches, zoomed by ±10 %) so that small support sets still give a usable sample.
//! With K = 1 there is no other photo: the views are scored against the whole memory. The threshold is `mean + z(1 − R)·std` of
//! the null scores, never below the largest of them.
use super::ImageScore;
use adp_api::requests::ReferenceMemory;
use adp_api::{Error, ImageBatch, Result, Tensor};
use serde::{Deserialize, Serialize};

/// Scores a batch of photos against the given reference memories (the detector's models, its
/// concepts and prototypes as fitted).
pub type ScoreAgainst<'a> = dyn Fn(&[ReferenceMemory], &ImageBatch) -> Result<Vec<ImageScore>> + 'a;

/// The rule's name as recorded in detectors (bumped whenever what it computes changes).
pub const RULE: &str = "loo-views-gaussian/1";
/// Shifted views top the null sample up towards this size (K = 4: 4 + 4·3).
const NULL_TARGET: usize = 16;
/// At most this many views per photo ([`views`]).
const MAX_SHIFTS: usize = 8;

/// The threshold a detector carries, how it was chosen and from what (stored in its header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// A photo whose image score is above it is anomalous.
    pub threshold: f32,
    /// The same rule over the null photos' map maxima: where a map crosses it (overlay contours,
    /// the middle of the overlay colour scale). Equal to `threshold` for `visual`, whose image
    /// score is its map's maximum; the CLIP methods' image score also holds the language score.
    pub map_threshold: f32,
    /// [`RULE`] when this build chose it.
    pub rule: String,
    /// The target rate R the threshold was chosen for.
    pub false_alarm_rate: f64,
    pub null_scores: Vec<f32>,
    pub null_map_maxima: Vec<f32>,
}

/// Refuses a target false-alarm rate outside (0, 1).
pub fn check_rate(rate: f64) -> Result<()> {
    if rate.is_finite() && rate > 0.0 && rate < 1.0 {
        Ok(())
    } else {
        Err(Error::invalid(
            "false_alarm_rate",
            format!("{rate} is not a rate strictly between 0 and 1 (e.g. 0.01)"),
        ))
    }
}

/// `Φ⁻¹(p)`, the standard normal quantile (Acklam's rational approximation, relative error below
/// 1.2e-9 over (0, 1)).
pub fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// `mean + z(1 − rate)·std` of `null` (sample std; 0 for one value), never below its maximum:
/// with few null scores the Gaussian tail is a guess, and a threshold that flags a support-like
/// photo already observed is certainly too low.
pub fn gaussian_threshold(null: &[f32], rate: f64) -> Result<f32> {
    check_rate(rate)?;
    if null.is_empty() {
        return Err(Error::invalid(
            "null scores",
            "none: nothing to choose a threshold from",
        ));
    }
    if let Some(i) = null.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid("null scores", format!("value {i} is {}", null[i])));
    }
    let n = null.len() as f64;
    let mean = null.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = match null.len() {
        1 => 0.0,
        _ => null.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0),
    };
    let max = null.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    Ok(((mean + normal_quantile(1.0 - rate) * var.sqrt()) as f32).max(max))
}

/// How far from the threshold a photo is, on a scale where the threshold is 0.5, the lowest null
/// score 0 and as far above the threshold 1 (clipped to [0, 1]), as anomalib's users know it.
pub fn normalise(score: f32, threshold: f32, spread: f32) -> f32 {
    (0.5 + (score - threshold) / (2.0 * spread)).clamp(0.0, 1.0)
}

impl Decision {
    /// The decision for null photos' scores (image scores and anomaly maps).
    pub fn from_null(null: &[ImageScore], rate: f64) -> Result<Self> {
        let null_scores: Vec<f32> = null.iter().map(|s| s.score).collect();
        let null_map_maxima: Vec<f32> = null
            .iter()
            .map(|s| s.map.iter().copied().fold(f32::NEG_INFINITY, f32::max))
            .collect();
        Ok(Self {
            threshold: gaussian_threshold(&null_scores, rate)?,
            map_threshold: gaussian_threshold(&null_map_maxima, rate)?,
            rule: RULE.into(),
            false_alarm_rate: rate,
            null_scores,
            null_map_maxima,
        })
    }

    /// Whether `score` is anomalous at `threshold` (strictly above it).
    pub fn anomalous(score: f32, threshold: f32) -> bool {
        score > threshold
    }

    /// The normalised scale's unit: from the lowest null score to the threshold (a small positive
    /// floor where all null scores are equal).
    pub fn spread(&self) -> f32 {
        let min = self.null_scores.iter().copied().fold(f32::INFINITY, f32::min);
        let s = self.threshold - min;
        if s.is_finite() && s > 1e-6 {
            s
        } else {
            self.threshold.abs().max(1e-6)
        }
    }
}

/// `memories` without the rows of photo `i` of `photos` (each memory holds its photos' rows in
/// order, the same number per photo).
pub fn leave_out(memories: &[ReferenceMemory], photos: usize, i: usize) -> Result<Vec<ReferenceMemory>> {
    memories
        .iter()
        .map(|m| {
            let (rows, d) = match m.features.shape() {
                [rows, d] => (*rows, *d),
                s => {
                    return Err(Error::invalid(
                        "reference memory",
                        format!("shape {s:?}, expected [rows, dim]"),
                    ))
                }
            };
            if photos < 2 || i >= photos || rows % photos != 0 {
                return Err(Error::invalid(
                    "reference memory",
                    format!("{rows} rows cannot leave out photo {i} of {photos}"),
                ));
            }
            let per = rows / photos;
            let data = m.features.data();
            let kept = [&data[..i * per * d], &data[(i + 1) * per * d..]].concat();
            Ok(ReferenceMemory {
                kind: m.kind,
                features: Tensor::new(vec![rows - per, d], kept)?,
            })
        })
        .collect()
}

/// Photo `i` of `batch` moved by `(dy, dx)` pixels, edges replicated.
pub fn shifted(batch: &ImageBatch, i: usize, dy: isize, dx: isize) -> Result<ImageBatch> {
    warped(batch, i, View::Shift(dy as f32, dx as f32))
}

/// A view of a support photo standing in for another photo of a good part: moved or zoomed a
/// little, as parts sit in a fixture with some play.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    /// By `(dy, dx)` pixels.
    Shift(f32, f32),
    /// By this factor about the centre.
    Zoom(f32),
}

/// Photo `i` of `batch` seen as `view` (bilinear, edges replicated).
pub fn warped(batch: &ImageBatch, i: usize, view: View) -> Result<ImageBatch> {
    let (h, w) = (batch.height(), batch.width());
    let src = batch.pixels().row(i);
    let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
    // Where output pixel (y, x) comes from in the photo.
    let source = |y: f32, x: f32| match view {
        View::Shift(dy, dx) => (y - dy, x - dx),
        View::Zoom(f) => (cy + (y - cy) / f, cx + (x - cx) / f),
    };
    let mut data = vec![0f32; 3 * h * w];
    for y in 0..h {
        for x in 0..w {
            let (sy, sx) = source(y as f32, x as f32);
            let (sy, sx) = (sy.clamp(0.0, (h - 1) as f32), sx.clamp(0.0, (w - 1) as f32));
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            for c in 0..3 {
                let at = |yy: usize, xx: usize| src[c * h * w + yy * w + xx];
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                data[c * h * w + y * w + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
    ImageBatch::new(Tensor::new(vec![1, 3, h, w], data)?)
}

/// How many views each of `k` photos adds: enough to bring the null sample towards
/// [`NULL_TARGET`], at most [`MAX_SHIFTS`] (K = 1: 8; 2: 7; 4: 3; 8: 1; 16: 0).
pub fn views_per_photo(k: usize) -> usize {
    let own = if k >= 2 { k } else { 0 };
    NULL_TARGET.saturating_sub(own).div_ceil(k.max(1)).min(MAX_SHIFTS)
}

/// The views of each photo, in the order they are taken: moved by one patch (`step` pixels) or
/// zoomed by ±10 % first, then moved the other ways and by two patches. No turns: about the
/// centre they barely change a round part, and no flips: a flipped part is a defect in some
/// categories (MVTec AD's metal nut).
fn views(step: usize) -> [View; MAX_SHIFTS] {
    let s = step.max(1) as f32;
    [
        View::Shift(0.0, s),
        View::Zoom(1.1),
        View::Shift(s, 0.0),
        View::Zoom(0.9),
        View::Shift(0.0, -s),
        View::Shift(-s, 0.0),
        View::Shift(s, 2.0 * s),
        View::Shift(-2.0 * s, -s),
    ]
}

/// The null photos' scores for the `support` photos (K of one size) whose rows `memories` hold:
/// `score` scores a batch against given memories. `step` is the shift in pixels (one patch of the
/// model; [`shift_step`]). Measured with `visual` on MVTec AD bottle at K = 1, views moved by half
/// a patch scored ~0.02 where good test photos score 0.02–0.07: they barely differ from the
/// photo in the memory; one and two patches and ±10 % zooms score 0.04–0.06.
pub fn null_scores(
    memories: &[ReferenceMemory],
    support: &ImageBatch,
    step: usize,
    score: &ScoreAgainst,
) -> Result<Vec<ImageScore>> {
    let k = support.len();
    if k == 0 {
        return Err(Error::EmptySupportSet);
    }
    let n_views = views_per_photo(k);
    let mut out = Vec::new();
    for i in 0..k {
        let mut batch: Vec<ImageBatch> = Vec::new();
        // With one photo, the photo itself is in the memory it would be scored against.
        if k >= 2 {
            batch.push(support.image(i));
        }
        for &view in &views(step)[..n_views] {
            batch.push(warped(support, i, view)?);
        }
        if batch.is_empty() {
            continue;
        }
        let data: Vec<f32> = batch.iter().flat_map(|b| b.pixels().data().to_vec()).collect();
        let batch = ImageBatch::new(Tensor::new(
            vec![batch.len(), 3, support.height(), support.width()],
            data,
        )?)?;
        let memory = if k >= 2 {
            leave_out(memories, k, i)?
        } else {
            memories.to_vec()
        };
        out.extend(score(&memory, &batch)?);
    }
    Ok(out)
}

/// The decision for a fitted detector: [`null_scores`], then [`Decision::from_null`].
pub fn decide(
    memories: &[ReferenceMemory],
    support: &ImageBatch,
    step: usize,
    rate: f64,
    score: &ScoreAgainst,
) -> Result<Decision> {
    check_rate(rate)?;
    Decision::from_null(&null_scores(memories, support, step, score)?, rate)
}

/// The shift of the null views for a model of `image_size` pixels and a `grid`×`grid` patch
/// grid: one patch.
pub fn shift_step(image_size: usize, grid: usize) -> usize {
    (image_size / grid.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use adp_api::requests::FeatureKind;

    #[test]
    fn quantiles_match_the_normal_table() {
        for (p, z) in [
            (0.99, 2.326_347_9),
            (0.95, 1.644_853_6),
            (0.5, 0.0),
            (0.001, -3.090_232_3),
        ] {
            assert!(
                (normal_quantile(p) - z).abs() < 1e-6,
                "Φ⁻¹({p}) = {}",
                normal_quantile(p)
            );
        }
    }

    #[test]
    fn the_threshold_is_the_gaussian_tail_floored_at_the_largest_null_score() {
        // mean 2, sample std 1 (values 1, 2, 3): 2 + 2.3263 at R = 1 %.
        let t = gaussian_threshold(&[1.0, 2.0, 3.0], 0.01).unwrap();
        assert!((t - 4.326_348).abs() < 1e-5, "{t}");
        // At R = 40 % the tail (2 + 0.2533) is below the largest null score: the floor wins.
        assert_eq!(gaussian_threshold(&[1.0, 2.0, 3.0], 0.4).unwrap(), 3.0);
        assert_eq!(gaussian_threshold(&[0.5], 0.01).unwrap(), 0.5);
        for bad in [0.0, 1.0, -0.1, f64::NAN] {
            assert!(gaussian_threshold(&[1.0], bad).is_err(), "rate {bad}");
        }
        assert!(gaussian_threshold(&[], 0.01).is_err());
        assert!(gaussian_threshold(&[1.0, f32::NAN], 0.01).is_err());
    }

    #[test]
    fn normalised_scores_put_the_threshold_at_one_half() {
        let d = Decision {
            threshold: 0.3,
            map_threshold: 0.3,
            rule: RULE.into(),
            false_alarm_rate: 0.01,
            null_scores: vec![0.1, 0.2],
            null_map_maxima: vec![0.1, 0.2],
        };
        let n = |s| normalise(s, d.threshold, d.spread());
        assert!((n(0.3) - 0.5).abs() < 1e-6);
        assert!(n(0.1).abs() < 1e-6 && (n(0.5) - 1.0).abs() < 1e-6);
        assert_eq!((n(-5.0), n(9.0)), (0.0, 1.0));
        assert!(Decision::anomalous(0.31, 0.3) && !Decision::anomalous(0.3, 0.3));
    }

    #[test]
    fn leaving_a_photo_out_removes_exactly_its_rows() {
        // 3 photos × 2 rows × dim 1: rows 0..6 hold their own index.
        let m = ReferenceMemory {
            kind: FeatureKind::PatchTokens,
            features: Tensor::new(vec![6, 1], (0..6).map(|v| v as f32).collect()).unwrap(),
        };
        let out = leave_out(std::slice::from_ref(&m), 3, 1).unwrap();
        assert_eq!(out[0].features.shape(), &[4, 1]);
        assert_eq!(out[0].features.data(), &[0.0, 1.0, 4.0, 5.0]);
        assert!(
            leave_out(std::slice::from_ref(&m), 4, 0).is_err(),
            "6 rows are not 4 photos"
        );
        assert!(leave_out(std::slice::from_ref(&m), 1, 0).is_err(), "nothing left");
    }

    #[test]
    fn views_move_or_zoom_the_pixels_and_replicate_the_edges() {
        // One 1×3 photo, every channel 0, 1, 2 along x.
        let b = ImageBatch::new(Tensor::new(vec![1, 3, 1, 3], [0.0, 0.5, 1.0].repeat(3)).unwrap()).unwrap();
        assert_eq!(
            shifted(&b, 0, 0, 1).unwrap().pixels().data(),
            &[0.0, 0.0, 0.5].repeat(3)
        );
        assert_eq!(
            shifted(&b, 0, 0, -1).unwrap().pixels().data(),
            &[0.5, 1.0, 1.0].repeat(3)
        );
        // Zoomed 2× about the centre (x = 2 of 0..5): x samples 2 + (x − 2)/2, values x/4.
        let ramp =
            ImageBatch::new(Tensor::new(vec![1, 3, 1, 5], [0.0, 0.25, 0.5, 0.75, 1.0].repeat(3)).unwrap()).unwrap();
        let zoomed = warped(&ramp, 0, View::Zoom(2.0)).unwrap();
        let want = [0.25, 0.375, 0.5, 0.625, 0.75];
        assert!(
            zoomed.pixels().data()[..5]
                .iter()
                .zip(want)
                .all(|(g, w)| (g - w).abs() < 1e-6),
            "{:?}",
            zoomed.pixels().data()
        );
        assert_eq!(
            [1, 2, 4, 8, 16].map(views_per_photo),
            [8, 7, 3, 1, 0],
            "the null sample is topped up towards {NULL_TARGET}"
        );
    }

    /// The null sample: with K = 3, each photo and its views, each against the memory of the
    /// other two; with K = 1, only the views, against the whole memory.
    #[test]
    fn null_photos_are_scored_against_memories_without_their_own_rows() {
        let photos = |k: usize| {
            let data: Vec<f32> = (0..k).flat_map(|i| vec![i as f32 / 10.0; 3 * 4]).collect();
            ImageBatch::new(Tensor::new(vec![k, 3, 2, 2], data).unwrap()).unwrap()
        };
        let memory = |k: usize| ReferenceMemory {
            kind: FeatureKind::PatchTokens,
            features: Tensor::new(vec![2 * k, 1], (0..2 * k).map(|r| (r / 2) as f32).collect()).unwrap(),
        };
        // The "score" of a photo: which photo rows its memory still holds, and its own pixel value.
        let calls = std::cell::RefCell::new(Vec::new());
        let score = |m: &[ReferenceMemory], b: &ImageBatch| {
            calls.borrow_mut().push((m[0].features.data().to_vec(), b.len()));
            Ok((0..b.len())
                .map(|i| ImageScore {
                    score: b.pixels().row(i)[0],
                    language: None,
                    association: 0.0,
                    map: vec![1.0; 4],
                    height: 2,
                    width: 2,
                })
                .collect())
        };
        let d = decide(&[memory(3)], &photos(3), 1, 0.01, &score).unwrap();
        let calls3 = calls.take();
        assert_eq!(
            calls3.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>(),
            vec![
                vec![1.0, 1.0, 2.0, 2.0],
                vec![0.0, 0.0, 2.0, 2.0],
                vec![0.0, 0.0, 1.0, 1.0]
            ],
            "each photo against the other two"
        );
        let per = 1 + views_per_photo(3);
        assert!(calls3.iter().all(|&(_, n)| n == per), "{calls3:?}");
        assert_eq!(d.null_scores.len(), 3 * per);
        assert_eq!((d.rule.as_str(), d.false_alarm_rate), (RULE, 0.01));
        assert!(
            d.threshold >= 0.2,
            "never below the largest null score: {}",
            d.threshold
        );
        assert_eq!(d.map_threshold, 1.0);
        decide(&[memory(1)], &photos(1), 1, 0.01, &score).unwrap();
        let calls1 = calls.take();
        assert_eq!(
            calls1,
            vec![(vec![0.0, 0.0], views_per_photo(1))],
            "K = 1: the whole memory"
        );
    }
}
