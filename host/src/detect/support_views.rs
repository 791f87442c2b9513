//! Which views of each support photo `visual`'s reference memory holds (`--support-views`).
//!
//! A textured surface photographed at any orientation (magnetic tile: its photos come in both
//! orientations, its streaks and pores run every way) is matched better against the support
//! photos turned by quarter turns: with 4 shots, the turns took tile image AUROC from 84.1 to
//! 87.0 in the prototype (`tools/experiments`), the bottle and the metal plate unchanged. The
//! price is 4× the memory, so 4× the association per photo; hence an option, not the default.
use adp_api::{Error, ImageBatch, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupportViews {
    /// The photos as they are.
    #[default]
    None,
    /// Each photo and its 90°, 180° and 270° turns.
    Rotations,
}

impl SupportViews {
    pub fn name(self) -> &'static str {
        match self {
            SupportViews::None => "none",
            SupportViews::Rotations => "rotations",
        }
    }

    /// Views per photo.
    pub fn count(self) -> usize {
        match self {
            SupportViews::None => 1,
            SupportViews::Rotations => 4,
        }
    }

    /// The views of every photo of `support`, photo by photo (a photo's views are consecutive,
    /// so that the memory's rows of one photo stay one block: `decision::leave_out` relies on
    /// it). Turns need square photos, which the support set is at the backbone's input.
    pub fn apply(self, support: &ImageBatch) -> Result<Cow<'_, ImageBatch>> {
        if self == SupportViews::None {
            return Ok(Cow::Borrowed(support));
        }
        let (h, w) = (support.height(), support.width());
        if h != w {
            return Err(Error::invalid(
                "support views",
                format!("{} needs square photos, got {h}×{w}", self.name()),
            ));
        }
        let plane = 3 * h * w;
        let mut data = Vec::with_capacity(support.len() * self.count() * plane);
        for photo in support.pixels().data().chunks_exact(plane) {
            let mut view = photo.to_vec();
            data.extend_from_slice(&view);
            for _ in 1..self.count() {
                view = quarter_turn(&view, h);
                data.extend_from_slice(&view);
            }
        }
        let views = ImageBatch::new(Tensor::new(vec![support.len() * self.count(), 3, h, w], data)?)?;
        Ok(Cow::Owned(views))
    }
}

impl std::str::FromStr for SupportViews {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [SupportViews::None, SupportViews::Rotations]
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| Error::invalid("support views", format!("unknown {s:?} (one of: none, rotations)")))
    }
}

/// A CHW photo of side `s` turned a quarter counter-clockwise: out(y, x) = in(x, s − 1 − y).
fn quarter_turn(chw: &[f32], s: usize) -> Vec<f32> {
    let mut out = vec![0.0; chw.len()];
    for (src, dst) in chw.chunks_exact(s * s).zip(out.chunks_exact_mut(s * s)) {
        for y in 0..s {
            for x in 0..s {
                dst[y * s + x] = src[x * s + (s - 1 - y)];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, s: usize) -> ImageBatch {
        let len = n * 3 * s * s;
        ImageBatch::new(Tensor::from_fn(vec![n, 3, s, s], |i| i as f32 / len as f32)).unwrap()
    }

    #[test]
    fn rotations_are_the_photo_and_its_three_quarter_turns_photo_by_photo() {
        let (n, s) = (2, 3);
        let support = batch(n, s);
        let views = SupportViews::Rotations.apply(&support).unwrap();
        assert_eq!(views.pixels().shape(), &[n * 4, 3, s, s]);
        let at =
            |b: &ImageBatch, i: usize, c: usize, y: usize, x: usize| b.pixels().data()[((i * 3 + c) * s + y) * s + x];
        for p in 0..n {
            for c in 0..3 {
                for y in 0..s {
                    for x in 0..s {
                        let v = at(&support, p, c, y, x);
                        assert_eq!(at(&views, 4 * p, c, y, x), v);
                        // Counter-clockwise: the top-right corner goes to the top-left.
                        assert_eq!(at(&views, 4 * p + 1, c, s - 1 - x, y), v);
                        assert_eq!(at(&views, 4 * p + 2, c, s - 1 - y, s - 1 - x), v);
                        assert_eq!(at(&views, 4 * p + 3, c, x, s - 1 - y), v);
                    }
                }
            }
        }
    }

    #[test]
    fn none_is_the_support_set_and_turns_refuse_non_square_photos() {
        let support = batch(2, 4);
        assert!(matches!(SupportViews::None.apply(&support).unwrap(), Cow::Borrowed(b) if *b == support));
        let wide = ImageBatch::new(Tensor::zeros(vec![1, 3, 2, 5])).unwrap();
        let e = SupportViews::Rotations.apply(&wide).unwrap_err().to_string();
        assert!(e.contains("square") && e.contains("2×5"), "{e}");
        assert!("flips".parse::<SupportViews>().is_err());
        assert_eq!("rotations".parse::<SupportViews>().unwrap(), SupportViews::Rotations);
        // Detector headers written before the option read as `none`.
        let mut stored = serde_json::to_value(crate::detect::FitOptions::default()).unwrap();
        stored.as_object_mut().unwrap().remove("support_views").unwrap();
        let old: crate::detect::FitOptions = serde_json::from_value(stored).unwrap();
        assert_eq!(old.support_views, SupportViews::None);
    }
}
