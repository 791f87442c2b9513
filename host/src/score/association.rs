//! Reference association (SPEC eq. 8–9) and anomaly maps (SPEC §7): nearest-neighbour distances
//! to the support set's memories, window maps spread back onto the patch grid, their mean, and the
//! map upsampled to the image and smoothed.
use adp_api::requests::{DenseFeatures, FeatureKind, ReferenceMemory};
use adp_api::{Error, Result, Scorer, Tensor};

/// One memory per feature kind, built from the support set's dense features.
pub struct ReferenceMemories {
    pub grid: usize,
    pub memories: Vec<ReferenceMemory>,
}

impl ReferenceMemories {
    pub fn build(scorer: &dyn Scorer, support: &DenseFeatures) -> Result<Self> {
        let mut memories = vec![scorer.build_memory(FeatureKind::PatchTokens, &support.patch_tokens)?];
        for w in &support.windows {
            memories.push(scorer.build_memory(FeatureKind::Window(w.size), &w.embeddings)?);
        }
        Ok(Self {
            grid: support.grid,
            memories,
        })
    }

    /// `M^W` per image, `[N, grid²]`: the mean over feature kinds of the patch-grid maps.
    pub fn patch_maps(&self, scorer: &dyn Scorer, test: &DenseFeatures) -> Result<Tensor> {
        if test.grid != self.grid {
            return Err(Error::invalid(
                "test features",
                format!("patch grid {} but the memories were built on {}", test.grid, self.grid),
            ));
        }
        let g = self.grid;
        let n = test.patch_tokens.shape()[0];
        let mut total = vec![0f32; n * g * g];
        for memory in &self.memories {
            let map = match memory.kind {
                FeatureKind::PatchTokens => scorer.associate(memory, &test.patch_tokens)?,
                FeatureKind::Window(size) => {
                    let w = test.windows.iter().find(|w| w.size == size).ok_or_else(|| {
                        Error::invalid(
                            "test features",
                            format!("no {size}×{size} window embeddings, but the memory has them"),
                        )
                    })?;
                    spread_windows(&scorer.associate(memory, &w.embeddings)?, g, size)?
                }
            };
            total.iter_mut().zip(map.data()).for_each(|(t, m)| *t += m);
        }
        let kinds = self.memories.len() as f32;
        Tensor::new(vec![n, g * g], total.into_iter().map(|t| t / kinds).collect())
    }
}

/// Window scores `[N, windows]` (stride 1, row-major) onto the patch grid `[N, grid²]`: each patch
/// gets the mean of the windows covering it.
pub fn spread_windows(scores: &Tensor, grid: usize, size: usize) -> Result<Tensor> {
    let per_side = grid + 1 - size;
    scores.expect_shape(
        &format!("{size}×{size} window scores"),
        &[None, Some(per_side * per_side)],
    )?;
    let n = scores.shape()[0];
    let mut out = vec![0f32; n * grid * grid];
    let mut count = vec![0f32; grid * grid];
    for wy in 0..per_side {
        for wx in 0..per_side {
            for y in wy..wy + size {
                for x in wx..wx + size {
                    count[y * grid + x] += 1.0;
                }
            }
        }
    }
    for i in 0..n {
        let s = scores.row(i);
        for wy in 0..per_side {
            for wx in 0..per_side {
                let v = s[wy * per_side + wx];
                for y in wy..wy + size {
                    for x in wx..wx + size {
                        out[i * grid * grid + y * grid + x] += v;
                    }
                }
            }
        }
        for (o, c) in out[i * grid * grid..(i + 1) * grid * grid].iter_mut().zip(&count) {
            *o /= c;
        }
    }
    Tensor::new(vec![n, grid * grid], out)
}

/// A `grid`×`grid` map upsampled bilinearly (align_corners = false) to `height`×`width`, then
/// smoothed by a Gaussian of `sigma` pixels (SPEC §7: σ = 4).
pub fn anomaly_map(patch_map: &[f32], grid: usize, height: usize, width: usize, sigma: f32) -> Vec<f32> {
    let sample = |v: f32, n: usize| {
        let p = ((v + 0.5) * grid as f32 / n as f32 - 0.5).clamp(0.0, (grid - 1) as f32);
        let i = (p.floor() as usize).min(grid - 1);
        (i, (i + 1).min(grid - 1), p - i as f32)
    };
    let mut up = vec![0f32; height * width];
    for y in 0..height {
        let (y0, y1, fy) = sample(y as f32, height);
        for x in 0..width {
            let (x0, x1, fx) = sample(x as f32, width);
            let at = |yy: usize, xx: usize| patch_map[yy * grid + xx];
            let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
            let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
            up[y * width + x] = top * (1.0 - fy) + bottom * fy;
        }
    }
    gaussian_blur(&up, height, width, sigma)
}

/// A map computed on the model's `side`×`side` input (the whole photo resized straight to the
/// square, SPEC §2) resized back bilinearly (align_corners = false, no further smoothing) over the
/// whole photo, `height`×`width`: the one way every method's map returns to the photo.
pub fn resize_square(map: &[f32], side: usize, height: usize, width: usize) -> Vec<f32> {
    debug_assert_eq!(map.len(), side * side);
    if (height, width) == (side, side) {
        return map.to_vec();
    }
    anomaly_map(map, side, height, width, 0.0)
}

/// The anomaly map of a photo of `height`×`width` from its `grid`×`grid` patch map computed on
/// the `side`×`side` input: upsampled and smoothed (σ pixels) at the input resolution, then
/// resized back over the whole photo ([`resize_square`]).
pub fn photo_map(patch_map: &[f32], grid: usize, side: usize, height: usize, width: usize, sigma: f32) -> Vec<f32> {
    resize_square(&anomaly_map(patch_map, grid, side, side, sigma), side, height, width)
}

/// Separable Gaussian blur, truncated at 4σ, edges replicated.
pub fn gaussian_blur(img: &[f32], height: usize, width: usize, sigma: f32) -> Vec<f32> {
    if sigma <= 0.0 {
        return img.to_vec();
    }
    let r = (4.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / sum).collect();
    let pass = |src: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        for y in 0..height {
            for x in 0..width {
                out[y * width + x] = (-r..=r)
                    .map(|d| {
                        let (yy, xx) = if horizontal {
                            (y as isize, x as isize + d)
                        } else {
                            (y as isize + d, x as isize)
                        };
                        let (yy, xx) = (
                            yy.clamp(0, height as isize - 1) as usize,
                            xx.clamp(0, width as isize - 1) as usize,
                        );
                        src[yy * width + xx] * k[(d + r) as usize]
                    })
                    .sum();
            }
        }
        out
    };
    pass(&pass(img, true), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_averaged_onto_the_patches_they_cover() {
        // 3×3 grid, 2×2 windows: 4 windows with scores 1, 2, 3, 4.
        let s = Tensor::new(vec![1, 4], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let m = spread_windows(&s, 3, 2).unwrap();
        assert_eq!(m.data(), &[1.0, 1.5, 2.0, 2.0, 2.5, 3.0, 3.0, 3.5, 4.0]);
        assert!(spread_windows(&s, 4, 2).is_err(), "9 windows expected on a 4×4 grid");
    }

    #[test]
    fn maps_keep_constants_and_peaks_stay_put() {
        let flat = anomaly_map(&[0.25; 16], 4, 32, 32, 4.0);
        assert!(flat.iter().all(|v| (v - 0.25).abs() < 1e-6));
        let mut peak = vec![0f32; 16];
        peak[5] = 1.0; // row 1, column 1
        let m = anomaly_map(&peak, 4, 32, 32, 2.0);
        let argmax = m.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
        let (y, x) = (argmax / 32, argmax % 32);
        assert!((8..16).contains(&y) && (8..16).contains(&x), "peak at {y},{x}");
    }

    /// One hot patch in the bottom-right corner of the grid lands in the bottom-right corner of a
    /// non-square photo's map: the map covers the whole photo, not a centre crop of it.
    #[test]
    fn a_corner_patch_lands_in_the_same_corner_of_a_non_square_photo() {
        let mut patch = vec![0f32; 16];
        patch[15] = 1.0; // row 3, column 3 of a 4×4 grid
        for (h, w) in [(24, 60), (60, 24)] {
            let m = photo_map(&patch, 4, 32, h, w, 2.0);
            assert_eq!(m.len(), h * w);
            let argmax = m.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
            let (y, x) = (argmax / w, argmax % w);
            assert!(y >= h * 3 / 4 && x >= w * 3 / 4, "{h}×{w}: peak at {y},{x}");
            // The opposite corner stays cold, and the square map is the same one resized.
            assert!(m[0] < 1e-3, "{h}×{w}: {}", m[0]);
            let square = anomaly_map(&patch, 4, 32, 32, 2.0);
            assert_eq!(m, resize_square(&square, 32, h, w));
        }
        assert_eq!(
            photo_map(&patch, 4, 32, 32, 32, 2.0),
            anomaly_map(&patch, 4, 32, 32, 2.0)
        );
    }
}
