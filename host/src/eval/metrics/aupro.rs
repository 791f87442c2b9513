//! AUPRO, the area under the per-region-overlap curve, computed exactly as the MVTec AD
//! evaluation script defines it (`compute_pro` followed by `trapezoid(..., x_max=0.3) / 0.3`).
//!
//! # Definition
//! - **Regions.** The ground-truth regions are the 8-connected components of each image's
//!   anomalous mask. This is `scipy.ndimage.label` with a 3×3 all-ones structure, so pixels
//!   that touch only at a corner belong to the same region. Regions never cross images.
//! - **Anomaly-free pixels** are the pixels outside every mask, over all images, good images
//!   included.
//! - **One point per threshold.** Every distinct anomaly score `t` is a threshold, and a pixel
//!   is positive when its score is `≥ t`. At `t`:
//!   - `FPR(t)` = (anomaly-free pixels ≥ t) / (all anomaly-free pixels);
//!   - `PRO(t)` = the mean over all regions of all images of (the region's pixels ≥ t) / (its size).
//!
//!   Equal scores are one threshold. Like the reference, only the point after the whole run of
//!   equal scores is kept.
//! - **The curve** is `(0,0)`, then the points in decreasing threshold order (FPR and PRO both
//!   non-decreasing, each clipped at 1), then `(1,1)`.
//! - **The area** is taken by the trapezoid rule from FPR 0 to the limit (0.3). The PRO at
//!   exactly FPR 0.3 is interpolated linearly between the last point at or below 0.3 and the
//!   first point above it. The area is then divided by 0.3, so a perfect map scores 1.
//!
//! # Exact, not a histogram, and what it costs
//! All pixels are kept and sorted once in [`Aupro::finish`]. No histogram approximation is used,
//! for two reasons:
//! - **Where the metric lives.** AUPRO depends only on the part of the curve with FPR ≤ 0.3,
//!   i.e. the highest scores, and it is divided by 0.3, which amplifies any error by 3.3×.
//!   Each histogram bin replaces the curve inside its FPR×PRO cell by a chord, which can be off
//!   by up to half the cell's area. Anomaly maps often have a few extreme values, so bins
//!   spread evenly over `[min, max]` put most pixels into a few bins, and those cells are large.
//!   The error bound would be data-dependent and could be loose exactly where it matters.
//! - **Testing against the reference.** An exact computation can be compared with the official
//!   script at round-off level (`host/tests/metrics_golden.rs`, 1e-6).
//!
//! Memory is bounded by the input:
//! - one `u64` per pixel (the score's order key in the upper 32 bits, the pixel's region id in
//!   the lower 32, 0 = anomaly-free);
//! - one `u64` per region;
//! - while an image is added, one `u32` label per pixel of that image.
//!
//! The sort is in place (`sort_unstable`), and the curve is integrated while it is walked, so
//! its points are never stored. The largest MVTec AD category, screw, has 160 test images of
//! 1024×1024 (1.7·10⁸ pixels), so this needs 1.3 GB next to the 0.67 GB of f32 maps that the
//! evaluation holds anyway. The reference script needs about 20 bytes per pixel.
//!
//! # Numerics
//! - FPR is `fp / n_ok` in f64, from exact integer counts. The reference stores FPR in f32, so
//!   each of its FPR values is off by up to 2⁻²⁴ relative.
//! - PRO is a running f64 sum of `1/size` per pixel, as in the reference's `cumsum`. Within a
//!   run of tied scores the summation order may differ from the reference, which changes only
//!   the last bits.
use adp_api::{Error, Result};

/// The FPR integration limit of the MVTec AD protocol.
pub const AUPRO_FPR_LIMIT: f64 = 0.3;

const WHAT: &str = "AUPRO input";

/// AUPRO accumulated image by image; see the [module documentation](self) for the definition
/// and the memory it takes.
#[derive(Debug, Clone, Default)]
pub struct Aupro {
    /// Per pixel: `order_key(score) << 32 | region` (region 0 = anomaly-free, else 1-based
    /// into `region_sizes`).
    pixels: Vec<u64>,
    region_sizes: Vec<u64>,
    ok_pixels: u64,
}

/// Maps a non-NaN `f32` to a `u32` with the same order (`-0.0` and `0.0` to the same key, as
/// they are equal scores).
fn order_key(s: f32) -> u32 {
    let s = if s == 0.0 { 0.0 } else { s };
    let b = s.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

impl Aupro {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ground-truth regions (8-connected mask components) counted so far, over all images.
    pub fn regions(&self) -> usize {
        self.region_sizes.len()
    }

    /// Anomalous (mask) and anomaly-free pixels counted so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.pixels.len() as u64 - self.ok_pixels, self.ok_pixels)
    }

    /// Adds one image: its anomaly map `scores` and its mask (`true` = anomalous pixel), both
    /// `height × width` in row-major order. A good image has an all-`false` mask. Nothing is
    /// added if the input is rejected (sizes, NaN).
    pub fn add(&mut self, scores: &[f32], mask: &[bool], width: usize, height: usize) -> Result<()> {
        let n = width
            .checked_mul(height)
            .ok_or_else(|| Error::invalid(WHAT, format!("{width}×{height} overflows")))?;
        if scores.len() != n || mask.len() != n {
            return Err(Error::invalid(
                WHAT,
                format!(
                    "image of {width}×{height} = {n} pixels, but the anomaly map has {} and the mask {}",
                    scores.len(),
                    mask.len()
                ),
            ));
        }
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(Error::invalid(WHAT, format!("anomaly map value at index {i} is NaN")));
        }
        let (labels, sizes) = label_8_connected(mask, width, height);
        let base = self.region_sizes.len();
        if base + sizes.len() > u32::MAX as usize {
            return Err(Error::invalid(
                WHAT,
                format!("more than {} ground-truth regions", u32::MAX),
            ));
        }
        self.pixels.reserve(n);
        for (&s, &l) in scores.iter().zip(&labels) {
            let region = if l == 0 { 0 } else { base as u64 + l as u64 };
            self.pixels.push((order_key(s) as u64) << 32 | region);
        }
        self.ok_pixels += labels.iter().filter(|&&l| l == 0).count() as u64;
        self.region_sizes.extend(sizes);
        Ok(())
    }

    /// AUPRO up to FPR [`AUPRO_FPR_LIMIT`] (0.3), normalised to `[0, 1]`.
    pub fn finish(&mut self) -> Result<f64> {
        self.finish_at(AUPRO_FPR_LIMIT)
    }

    /// AUPRO up to FPR `limit` ∈ (0, 1], divided by `limit`. An error unless at least one
    /// region and one anomaly-free pixel were added. Sorts the pixels in place. More images may
    /// be added afterwards, and `finish` called again.
    pub fn finish_at(&mut self, limit: f64) -> Result<f64> {
        if !(limit > 0.0 && limit <= 1.0) {
            return Err(Error::invalid(
                "AUPRO FPR limit",
                format!("must be in (0, 1], got {limit}"),
            ));
        }
        if self.region_sizes.is_empty() || self.ok_pixels == 0 {
            return Err(Error::invalid(
                WHAT,
                format!(
                    "needs at least one anomalous region and one anomaly-free pixel; got {} regions and {} \
                     anomaly-free pixels",
                    self.region_sizes.len(),
                    self.ok_pixels
                ),
            ));
        }
        self.pixels.sort_unstable();
        let inv_size: Vec<f64> = self.region_sizes.iter().map(|&s| 1.0 / s as f64).collect();
        let (n_ok, n_regions) = (self.ok_pixels as f64, self.region_sizes.len() as f64);
        let mut curve = Integral::new(limit);
        let (mut fp, mut pro_sum) = (0u64, 0.0f64);
        // Highest score first: walk the ascending sort backwards, one run of equal keys at a time.
        let mut i = self.pixels.len();
        while i > 0 && !curve.done {
            let key = self.pixels[i - 1] >> 32;
            while i > 0 && self.pixels[i - 1] >> 32 == key {
                match (self.pixels[i - 1] & 0xffff_ffff) as usize {
                    0 => fp += 1,
                    r => pro_sum += inv_size[r - 1],
                }
                i -= 1;
            }
            curve.push((fp as f64 / n_ok).min(1.0), (pro_sum / n_regions).min(1.0));
        }
        curve.push(1.0, 1.0);
        Ok(curve.area / limit)
    }
}

/// The trapezoid rule over a stream of points with non-decreasing x, from the first point
/// (0, 0) up to `x = limit`, as the MVTec AD script's `trapezoid(x, y, x_max)`:
/// - every point with `x ≤ limit` is included;
/// - if no point lies exactly at `limit`, the segment up to it is added with `y` interpolated
///   linearly between the last point below the limit and the first point above it.
struct Integral {
    limit: f64,
    prev: (f64, f64),
    area: f64,
    done: bool,
}

impl Integral {
    fn new(limit: f64) -> Self {
        Self {
            limit,
            prev: (0.0, 0.0),
            area: 0.0,
            done: false,
        }
    }

    fn push(&mut self, x: f64, y: f64) {
        if self.done {
            return;
        }
        let (px, py) = self.prev;
        if x <= self.limit {
            self.area += 0.5 * (y + py) * (x - px);
            self.prev = (x, y);
        } else {
            if px < self.limit {
                let y_at = py + (y - py) * (self.limit - px) / (x - px);
                self.area += 0.5 * (y_at + py) * (self.limit - px);
            }
            self.done = true;
        }
    }
}

/// 8-connected components of `mask` (`height × width`, row-major): a label per pixel (0 =
/// background, else 1-based component id, numbered in raster order of each component's first
/// pixel) and each component's size.
fn label_8_connected(mask: &[bool], width: usize, height: usize) -> (Vec<u32>, Vec<u64>) {
    let mut labels = vec![0u32; mask.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        let id = sizes.len() as u32 + 1;
        labels[start] = id;
        stack.push(start);
        let mut size = 0u64;
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p / width, p % width);
            for ny in y.saturating_sub(1)..=(y + 1).min(height - 1) {
                for nx in x.saturating_sub(1)..=(x + 1).min(width - 1) {
                    let q = ny * width + nx;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = id;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::testing::{F, T};
    use adp_api::rng::SplitMix64;

    fn aupro(images: &[(&[f32], &[bool])], width: usize, limit: f64) -> Result<f64> {
        let mut a = Aupro::new();
        for (s, m) in images {
            a.add(s, m, width, s.len() / width)?;
        }
        a.finish_at(limit)
    }

    #[test]
    fn order_key_is_monotone() {
        let v = [
            f32::NEG_INFINITY,
            -1e30,
            -1.0,
            -f32::MIN_POSITIVE,
            0.0,
            1e-45,
            0.5,
            1.0,
            3e38,
            f32::INFINITY,
        ];
        for w in v.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{w:?}");
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
    }

    #[test]
    fn labels_are_8_connected() {
        // 4×3, diagonal-only neighbours join one region; a separate blob on the right.
        // T . . T
        // . T . T
        // . . . .
        let m = [T, F, F, T, F, T, F, T, F, F, F, F];
        let (l, s) = label_8_connected(&m, 4, 3);
        assert_eq!(l, [1, 0, 0, 2, 0, 1, 0, 2, 0, 0, 0, 0]);
        assert_eq!(s, [2, 2]);
        // An anti-diagonal line across the whole image is one region of 3.
        let (l, s) = label_8_connected(&[F, F, T, F, T, F, T, F, F], 3, 3);
        assert_eq!(l, [0, 0, 1, 0, 1, 0, 1, 0, 0]);
        assert_eq!(s, [3]);
        // 1-pixel-wide images.
        assert_eq!(label_8_connected(&[T, T, F, T], 1, 4).1, [2, 1]);
        assert_eq!(label_8_connected(&[T, F, T, T], 4, 1).1, [1, 2]);
        assert_eq!(label_8_connected(&[], 0, 0).1, Vec::<u64>::new());
    }

    #[test]
    fn aupro_hand_computed_cases() {
        // Perfect separation: every region pixel scores above every anomaly-free pixel. The first
        // point is (FPR 0, PRO 1), so the curve is 1 on the whole of [0, 0.3]: AUPRO = 1.
        let s = [0.9, 0.1, 0.2, 0.8];
        assert_eq!(aupro(&[(&s, &[T, F, F, T])], 2, 0.3).unwrap(), 1.0);

        // One 2×2 image, mask with one region of 2 pixels and 2 anomaly-free pixels:
        //   scores 0.9 0.4      mask T .
        //          0.6 0.3           . T     (diagonal: one region of 2 under 8-connectivity)
        // Descending thresholds:
        //   t=0.9: region pixel    → FPR 0,   PRO 1/2
        //   t=0.6: anomaly-free    → FPR 1/2, PRO 1/2
        //   t=0.4: anomaly-free    → FPR 1,   PRO 1/2
        //   t=0.3: region pixel    → FPR 1,   PRO 1
        // Curve (0,0) (0,½) (½,½) (1,½) (1,1) (1,1). Up to 0.3: PRO is ½ on (0, 0.3], and the
        // point at 0.3 is interpolated between (0,½) and (½,½) → ½. Area 0.15; / 0.3 = 0.5.
        let s = [0.9, 0.4, 0.6, 0.3];
        let m = [T, F, F, T];
        assert!((aupro(&[(&s, &m)], 2, 0.3).unwrap() - 0.5).abs() < 1e-15);
        // Up to FPR 1 the curve has area ½ (PRO ½ from 0 to 1, then a vertical jump).
        assert_eq!(aupro(&[(&s, &m)], 2, 1.0).unwrap(), 0.5);

        // 8- versus 4-connectivity changes the region sizes. 3×2 image:
        //   scores 0.9 0.5 0.4      mask T . .
        //          0.3 0.1 0.05          . T T
        // 8-connected: one region of 3 (the corner touches). 4-connected it would be {(0,0)} of
        // size 1 and {(1,1),(1,2)} of size 2.
        //   t=0.9: region pixel → (0, ⅓)   [4-connected: (0, (1+0)/2 = ½)]
        //   t=0.5: free         → (⅓, ⅓)
        //   ... the rest lies beyond FPR 0.3.
        // At 0.3 the curve is still ⅓ (flat segment): AUPRO = ⅓ (4-connected it would be ½).
        let s = [0.9, 0.5, 0.4, 0.3, 0.1, 0.05];
        let got = aupro(&[(&s, &[T, F, F, F, T, T])], 3, 0.3).unwrap();
        assert!((got - 1.0 / 3.0).abs() < 1e-15, "{got}");

        // Two images, a good one, and interpolation at 0.3 between two points.
        // Image A (3×1): scores 0.7 0.5 0.2, mask T T .  → one region of 2 (regions: 1).
        // Image B (3×1, good): scores 0.6 0.3 0.1, mask all . → 3 anomaly-free pixels.
        // Anomaly-free pixels: 0.2 (A), 0.6, 0.3, 0.1 (B) → 4 in all.
        //   t=0.7: region   → (0,   ½)
        //   t=0.6: free     → (¼,   ½)
        //   t=0.5: region   → (¼,   1)
        //   t=0.3: free     → (½,   1)
        //   t=0.2: free     → (¾,   1)
        //   t=0.1: free     → (1,   1)
        // Up to 0.3: [0, ¼] at ½ → 0.125; vertical jump at ¼; [¼, 0.3] interpolated between
        // (¼,1) and (½,1) → 1 → 0.05. Area 0.175; / 0.3 = 0.58333…
        let a: (&[f32], &[bool]) = (&[0.7, 0.5, 0.2], &[T, T, F]);
        let b: (&[f32], &[bool]) = (&[0.6, 0.3, 0.1], &[F, F, F]);
        let got = aupro(&[a, b], 3, 0.3).unwrap();
        assert!((got - 0.175 / 0.3).abs() < 1e-15, "{got}");

        // Interpolation with a slope. One 4×1 image, two regions (separated by a free pixel):
        //   scores 0.9 0.8 0.7 0.1   mask T . T .  → regions {0} and {2}, 2 free pixels.
        //   t=0.9: (0, ½); t=0.8: (½, ½); t=0.7: (½, 1); t=0.1: (1, 1).
        // Up to 0.3: the segment (0,½)→(½,½) is flat: 0.3·½ = 0.15 → 0.5.
        assert!((aupro(&[(&[0.9, 0.8, 0.7, 0.1], &[T, F, T, F])], 4, 0.3).unwrap() - 0.5).abs() < 1e-15);
        //   scores 0.9 0.8 0.7 0.1 with ties: 0.8 on the free pixel and the second region:
        //   scores 0.9 0.8 0.8 0.1 → t=0.9: (0, ½); t=0.8: (½, 1) (one threshold); t=0.1: (1,1).
        //   At 0.3 the line (0,½)→(½,1) gives ½ + ½·0.3/0.5 = 0.8; area = 0.3·(½+0.8)/2 = 0.195;
        //   / 0.3 = 0.65.
        let got = aupro(&[(&[0.9, 0.8, 0.8, 0.1], &[T, F, T, F])], 4, 0.3).unwrap();
        assert!((got - 0.65).abs() < 1e-15, "{got}");

        // An exact FPR of 0.3 (10 free pixels, 3 above the region): no interpolation needed.
        // 11×1: region pixel at score 0.0, free pixels at 1..=10. t=10..8: FPR 0.1..0.3, PRO 0.
        // The curve is 0 up to 0.3 → AUPRO 0.
        let s: Vec<f32> = (0..11).map(|i| i as f32).collect();
        let mut m = vec![F; 11];
        m[0] = T;
        assert_eq!(aupro(&[(&s, &m)], 11, 0.3).unwrap(), 0.0);
        // Region on top instead (score 11): PRO 1 from FPR 0 → 1.
        let mut s2 = s.clone();
        s2[0] = 11.0;
        assert!((aupro(&[(&s2, &m)], 11, 0.3).unwrap() - 1.0).abs() < 1e-15);

        // Infinite scores and -0.0/0.0 ties are accepted: -0.0 and 0.0 are one threshold.
        //   scores inf -0.0 0.0 -inf, mask T . T . → t=inf: (0, ½); t=0: (½, 1); t=-inf: (1, 1).
        let got = aupro(
            &[(&[f32::INFINITY, -0.0, 0.0, f32::NEG_INFINITY], &[T, F, T, F])],
            4,
            0.3,
        )
        .unwrap();
        assert!((got - 0.65).abs() < 1e-15, "{got}");
    }

    /// The reference algorithm written the slow way: for every distinct threshold, count.
    fn brute_force(maps: &[Vec<f32>], masks: &[Vec<bool>], width: usize, limit: f64) -> f64 {
        let mut regions: Vec<Vec<(usize, usize)>> = Vec::new();
        let mut ok = Vec::new();
        for (i, m) in masks.iter().enumerate() {
            let (l, s) = label_8_connected(m, width, m.len() / width);
            let base = regions.len();
            regions.extend(s.iter().map(|_| Vec::new()));
            for (p, &lab) in l.iter().enumerate() {
                if lab == 0 {
                    ok.push((i, p));
                } else {
                    regions[base + lab as usize - 1].push((i, p));
                }
            }
        }
        let mut ts: Vec<f32> = maps.iter().flatten().copied().collect();
        ts.sort_by(|a, b| b.total_cmp(a));
        ts.dedup();
        let mut pts = vec![(0.0, 0.0)];
        for t in ts {
            let fpr = ok.iter().filter(|&&(i, p)| maps[i][p] >= t).count() as f64 / ok.len() as f64;
            let pro = regions
                .iter()
                .map(|r| r.iter().filter(|&&(i, p)| maps[i][p] >= t).count() as f64 / r.len() as f64)
                .sum::<f64>()
                / regions.len() as f64;
            pts.push((fpr, pro));
        }
        pts.push((1.0, 1.0));
        let mut area = 0.0;
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x1 <= limit {
                area += 0.5 * (y0 + y1) * (x1 - x0);
            } else {
                if x0 < limit {
                    let y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0);
                    area += 0.5 * (y + y0) * (limit - x0);
                }
                break;
            }
        }
        area / limit
    }

    #[test]
    fn aupro_brute_force_agreement() {
        let mut r = SplitMix64(21);
        for case in 0..25 {
            let (w, h) = (2 + r.below(7) as usize, 2 + r.below(6) as usize);
            let n_img = 1 + r.below(4) as usize;
            let mut maps = Vec::new();
            let mut masks = Vec::new();
            for _ in 0..n_img {
                let m: Vec<bool> = (0..w * h).map(|_| r.below(4) == 0).collect();
                // Coarse scores (many ties), shifted up on the mask.
                let s: Vec<f32> = m
                    .iter()
                    .map(|&a| (r.below(6) + if a { 2 } else { 0 }) as f32 * 0.5)
                    .collect();
                maps.push(s);
                masks.push(m);
            }
            masks[0][0] = true;
            masks[n_img - 1][w * h - 1] = false;
            for limit in [0.3, 0.05, 1.0] {
                let mut a = Aupro::new();
                for (s, m) in maps.iter().zip(&masks) {
                    a.add(s, m, w, h).unwrap();
                }
                let got = a.finish_at(limit).unwrap();
                let want = brute_force(&maps, &masks, w, limit);
                assert!((got - want).abs() < 1e-12, "case {case} limit {limit}: {got} vs {want}");
            }
        }
    }

    #[test]
    fn aupro_errors() {
        let mut a = Aupro::new();
        let e = a.add(&[0.1, 0.2, 0.3], &[T, F], 2, 1).unwrap_err().to_string();
        assert!(
            e.contains("AUPRO") && e.contains("2 pixels") && e.contains("has 3") && e.contains("mask 2"),
            "{e}"
        );
        let e = a.add(&[0.1, 0.2], &[T, F], 3, 1).unwrap_err().to_string();
        assert!(e.contains("3 pixels"), "{e}");
        let e = a.add(&[0.1, f32::NAN], &[T, F], 2, 1).unwrap_err().to_string();
        assert!(e.contains("index 1") && e.contains("NaN"), "{e}");
        assert!(a.add(&[], &[], usize::MAX, 2).is_err());
        assert_eq!((a.counts(), a.regions()), ((0, 0), 0), "a rejected image adds nothing");
        let e = a.finish().unwrap_err().to_string();
        assert!(e.contains("0 regions"), "{e}");
        // Only anomaly-free pixels (a good image): no region.
        a.add(&[0.1, 0.2], &[F, F], 2, 1).unwrap();
        let e = a.finish().unwrap_err().to_string();
        assert!(e.contains("0 regions") && e.contains("2 anomaly-free"), "{e}");
        // Only anomalous pixels.
        let mut b = Aupro::new();
        b.add(&[0.1, 0.2], &[T, T], 2, 1).unwrap();
        let e = b.finish().unwrap_err().to_string();
        assert!(e.contains("1 regions") && e.contains("0 anomaly-free"), "{e}");
        // A bad limit.
        a.add(&[0.3], &[T], 1, 1).unwrap();
        for limit in [0.0, -0.1, 1.5, f64::NAN] {
            let e = a.finish_at(limit).unwrap_err().to_string();
            assert!(e.contains("(0, 1]"), "{e}");
        }
        assert_eq!(a.finish().unwrap(), 1.0);
        assert_eq!((a.counts(), a.regions()), ((1, 2), 1));
    }
}
