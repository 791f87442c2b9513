//! Heat-map overlays of anomaly maps on their photos, for `adp score --overlays` and `adp eval`.
//!
//! One colour scale per detector, fixed by its map threshold `t` (the decision's
//! `map_threshold`), so that a colour means the same on every photo: 0 is blue, `t` is yellow (the
//! middle of the scale), `2t` and above is red; the colour is laid over the photo more opaquely as
//! the value rises (15 % at 0, 70 % at the top), so normal regions stay readable. Where the map
//! crosses `t`, the pixels on both sides of the crossing are drawn in magenta (a 2-pixel contour),
//! a colour the scale never uses.
use adp_api::atomic::write_atomic;
use adp_api::{Error, ImageBatch, Result};
use std::path::{Path, PathBuf};

/// The contour's colour.
pub const CONTOUR: [u8; 3] = [255, 0, 255];

/// The colour scale's stops: blue, cyan, yellow (the threshold), orange, red.
const STOPS: [[f32; 3]; 5] = [
    [0.0, 0.0, 1.0],
    [0.0, 1.0, 1.0],
    [1.0, 1.0, 0.0],
    [1.0, 0.5, 0.0],
    [1.0, 0.0, 0.0],
];

/// The colour at position `s` ∈ [0, 1] of the scale (clamped), linear between stops.
pub fn colour(s: f32) -> [f32; 3] {
    let x = s.clamp(0.0, 1.0) * (STOPS.len() - 1) as f32;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f32;
    std::array::from_fn(|c| STOPS[i][c] * (1.0 - f) + STOPS[i + 1][c] * f)
}

/// The colour's opacity at position `s` of the scale.
fn opacity(s: f32) -> f32 {
    0.15 + 0.55 * s.clamp(0.0, 1.0)
}

/// The overlay of `map` (`height × width` of the photo, row-major) on the first photo of
/// `photo`, on the scale fixed by `threshold` (see the module's documentation).
pub fn render(photo: &ImageBatch, map: &[f32], threshold: f32) -> Result<image::RgbImage> {
    let (h, w) = (photo.height(), photo.width());
    if photo.is_empty() || map.len() != h * w {
        return Err(Error::invalid(
            "overlay",
            format!("a map of {} values for a {h}×{w} photo", map.len()),
        ));
    }
    if !threshold.is_finite() {
        return Err(Error::invalid("overlay", format!("threshold {threshold}")));
    }
    // A detector whose null maps are all 0 has threshold 0: any value above it is at the top.
    let unit = (2.0 * threshold).max(f32::MIN_POSITIVE);
    let px = photo.pixels().row(0);
    let above = |y: usize, x: usize| map[y * w + x] > threshold;
    let on_contour = |y: usize, x: usize| {
        let a = above(y, x);
        (y > 0 && above(y - 1, x) != a)
            || (y + 1 < h && above(y + 1, x) != a)
            || (x > 0 && above(y, x - 1) != a)
            || (x + 1 < w && above(y, x + 1) != a)
    };
    Ok(image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        if on_contour(y, x) {
            return image::Rgb(CONTOUR);
        }
        let s = map[y * w + x] / unit;
        let (c, a) = (colour(s), opacity(s));
        image::Rgb(std::array::from_fn(|k| {
            let p = px[k * h * w + y * w + x].clamp(0.0, 1.0);
            ((p * (1.0 - a) + c[k] * a) * 255.0).round() as u8
        }))
    }))
}

/// Writes `img` as a PNG at `path`, creating its folder, atomically; an existing file is refused
/// unless `overwrite`.
pub fn write_png(path: &Path, img: &image::RgbImage, overwrite: bool) -> Result<()> {
    crate::images::check_new(path, overwrite)?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::io(path, e))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    write_atomic(path, &bytes)
}

/// Each photo's overlay file below `dir`, mirroring the photos' paths as
/// [`crate::images::map_paths`] does (`a/good/000.png` → `DIR/a/good/000_overlay.png`).
pub fn overlay_paths(dir: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    crate::images::map_paths(dir, files)?
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let stem = name.strip_suffix("_map.png").unwrap_or(&name);
            Ok(p.with_file_name(format!("{stem}_overlay.png")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use adp_api::Tensor;

    fn grey(h: usize, w: usize) -> ImageBatch {
        ImageBatch::new(Tensor::new(vec![1, 3, h, w], vec![0.5; 3 * h * w]).unwrap()).unwrap()
    }

    fn close(got: [u8; 3], want: [f32; 3]) -> bool {
        got.iter().zip(want).all(|(&g, w)| (g as f32 - w).abs() <= 1.0)
    }

    /// On a grey (0.5) photo, threshold 0.2: by hand, 0 → blue at 15 %, 0.2 → yellow at 42.5 %,
    /// 0.4 and 0.9 → red at 70 %, 0.1 → cyan at 28.75 %.
    #[test]
    fn colours_at_known_map_values() {
        // One row; values far enough apart that no contour pixel falls on the sampled ones.
        let map = [0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.2, 0.2, 0.2, 0.4, 0.4, 0.9];
        // Crossings at 0.2 → 0.4 (columns 8, 9): the two sides are contour pixels.
        let img = render(&grey(1, 12), &map, 0.2).unwrap();
        let at = |x: u32| img.get_pixel(x, 0).0;
        let g = 0.5 * 255.0;
        assert!(
            close(at(0), [0.85 * g, 0.85 * g, 0.85 * g + 0.15 * 255.0]),
            "0: {:?}",
            at(0)
        );
        let a = 0.2875;
        assert!(
            close(
                at(4),
                [(1.0 - a) * g, (1.0 - a) * g + a * 255.0, (1.0 - a) * g + a * 255.0]
            ),
            "0.1: {:?}",
            at(4)
        );
        let a = 0.425;
        assert!(
            close(
                at(6),
                [(1.0 - a) * g + a * 255.0, (1.0 - a) * g + a * 255.0, (1.0 - a) * g]
            ),
            "t: {:?}",
            at(6)
        );
        let red = [0.3 * g + 0.7 * 255.0, 0.3 * g, 0.3 * g];
        assert!(
            close(at(10), red) && close(at(11), red),
            "2t and above: {:?} {:?}",
            at(10),
            at(11)
        );
        assert_eq!((at(8), at(9)), (CONTOUR, CONTOUR), "the crossing");
        assert!(
            (0..12).filter(|&x| at(x) == CONTOUR).eq([8, 9]),
            "contour only at the crossing"
        );
    }

    /// A bright square in a 12×12 map: the contour follows its border (both sides), nowhere else.
    #[test]
    fn the_contour_surrounds_the_region_above_the_threshold() {
        let (h, w) = (12, 12);
        let inside = |y: usize, x: usize| (4..8).contains(&y) && (4..8).contains(&x);
        let map: Vec<f32> = (0..h * w)
            .map(|i| if inside(i / w, i % w) { 1.0 } else { 0.05 })
            .collect();
        let img = render(&grey(h, w), &map, 0.3).unwrap();
        for y in 0..h {
            for x in 0..w {
                let border = |y: usize, x: usize| {
                    let n = [(y.wrapping_sub(1), x), (y + 1, x), (y, x.wrapping_sub(1)), (y, x + 1)];
                    n.iter()
                        .any(|&(yy, xx)| yy < h && xx < w && inside(yy, xx) != inside(y, x))
                };
                let contour = img.get_pixel(x as u32, y as u32).0 == CONTOUR;
                assert_eq!(contour, border(y, x), "pixel {y},{x}");
            }
        }
        // Scale fixed by the threshold, not by the photo: a map below it everywhere stays cool.
        let low = render(&grey(h, w), &vec![0.05; h * w], 0.3).unwrap();
        assert!(
            low.pixels().all(|p| p.0[2] > p.0[0]),
            "blue dominates below the threshold"
        );
    }

    #[test]
    fn mismatched_maps_are_refused() {
        assert!(render(&grey(2, 2), &[0.0; 3], 0.1).is_err());
        assert!(render(&grey(2, 2), &[0.0; 4], f32::NAN).is_err());
    }

    #[test]
    fn overlay_files_mirror_the_photos() {
        let dir = tempfile::tempdir().unwrap();
        let files = [dir.path().join("a/good/000.png"), dir.path().join("b/good/000.png")];
        for f in &files {
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, b"").unwrap();
        }
        let out = Path::new("/out");
        assert_eq!(
            overlay_paths(out, &files).unwrap(),
            [out.join("a/good/000_overlay.png"), out.join("b/good/000_overlay.png")]
        );
        let png = dir.path().join("o/x.png");
        let img = render(&grey(2, 2), &[0.0; 4], 0.1).unwrap();
        write_png(&png, &img, false).unwrap();
        assert!(write_png(&png, &img, false).is_err(), "not overwritten without asking");
        write_png(&png, &img, true).unwrap();
    }
}
