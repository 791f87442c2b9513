//! Image preprocessing (SPEC §2), built on an exact reproduction of Pillow 13's 8-bit bicubic
//! `Image.resize((W, H), Image.BICUBIC)` (no box, no `reducing_gap`):
//!
//! - weights: a = −0.5, support widened by the scale when shrinking (antialiased), normalised per
//!   output pixel, then 22-bit fixed point rounded half away from zero (`precompute_coeffs` +
//!   `normalize_coeffs_8bpc`);
//! - two separable passes, each rounding to 8 bits (`clip8(2^21 + Σ p·k)`); a pass whose size is
//!   unchanged is skipped;
//! - pass order: vertical first iff the height shrinks and loses more than twice as many pixels as
//!   the width, `h > H && h − H > 2 (w − W)` (Pillow ≥ 13, python-pillow/Pillow#9549), otherwise
//!   horizontal first. The rounding between passes makes the order matter (1–2 grey levels);
//!   e.g. most magnetic tile photos taller than wide, 256×291 (W×H) to 224×224, go vertical first.
//!
//! `tools/golden/check_pillow_resize.py` checks this against Pillow bit for bit on ~4000 sizes,
//! every magnetic tile / MPDD photo size included. The entry points: [`resize`] (values in [0, 1]),
//! [`clip_detection_input`] (the detection methods' CLIP input: the whole photo resized straight to
//! the square input, CLIP mean/std), [`clip_preprocess`] (open_clip's own shorter side + centre
//! crop, for `adp embed`) and [`backbone_input`] (EfficientNet-Lite, whole photo, `(x·255−127)/128`).
use crate::{ImageBatch, Tensor};

pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
// open_clip's constants as published (the f32 they round to is what counts).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

const PRECISION_BITS: u32 = 22;

fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` for one axis: per output pixel, the first input index and the
/// fixed-point weights.
fn coefficients(input: usize, output: usize) -> Vec<(usize, Vec<i64>)> {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..output)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(input as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let total: f64 = w.iter().sum();
            let fixed = w
                .iter()
                .map(|k| {
                    let k = if total != 0.0 { k / total } else { *k };
                    let v = k * (1u64 << PRECISION_BITS) as f64;
                    (if v < 0.0 { v - 0.5 } else { v + 0.5 }) as i64
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One pass of Pillow's `ImagingResampleHorizontal_8bpc` / `ImagingResampleVertical_8bpc` on a
/// `[h][w]` plane: `horizontal` resizes the rows to `out` columns, otherwise the columns to `out`
/// rows. Each output is `clip8(2^21 + Σ pixel · weight)`, i.e. rounded to 8 bits.
fn resample_pass(src: &[u8], h: usize, w: usize, out: usize, horizontal: bool) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    if horizontal {
        let c = coefficients(w, out);
        let mut dst = vec![0u8; h * out];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for (x, (start, k)) in c.iter().enumerate() {
                let s: i64 = k.iter().zip(&row[*start..]).map(|(k, &p)| p as i64 * k).sum();
                dst[y * out + x] = clip8(round + s);
            }
        }
        dst
    } else {
        let c = coefficients(h, out);
        let mut dst = vec![0u8; out * w];
        for (y, (start, k)) in c.iter().enumerate() {
            for x in 0..w {
                let s: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, k)| src[(start + i) * w + x] as i64 * k)
                    .sum();
                dst[y * w + x] = clip8(round + s);
            }
        }
        dst
    }
}

/// Pillow 13's choice of pass order (`ImagingResampleInner`, python-pillow/Pillow#9549): the
/// vertical pass runs first when the height shrinks and loses more than twice as many pixels as
/// the width does, `h > oh && h − oh > 2 (w − ow)`; otherwise horizontal first. Only matters when
/// both passes run (each pass rounds to 8 bits, so the order changes pixels by a grey level or two).
fn vertical_first(h: usize, w: usize, oh: usize, ow: usize) -> bool {
    oh < h && (h - oh) as i64 > 2 * (w as i64 - ow as i64)
}

/// Resizes one 8-bit plane `[h][w]` to `[oh][ow]` exactly as Pillow 13's
/// `Image.resize((ow, oh), Image.BICUBIC)` does (no box, no `reducing_gap`): a pass is skipped when
/// its size is unchanged, and the two passes run in [`vertical_first`]'s order.
fn resize_plane(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    match (ow != w, oh != h) {
        (false, false) => src.to_vec(),
        (true, false) => resample_pass(src, h, w, ow, true),
        (false, true) => resample_pass(src, h, w, oh, false),
        (true, true) if vertical_first(h, w, oh, ow) => {
            resample_pass(&resample_pass(src, h, w, oh, false), oh, w, ow, true)
        }
        (true, true) => resample_pass(&resample_pass(src, h, w, ow, true), h, ow, oh, false),
    }
}

/// Every image resized to `height`×`width` (Pillow's bicubic, no crop), values in [0, 1]: how
/// support images reach a diffusion model's fixed input size.
pub fn resize(images: &ImageBatch, height: usize, width: usize) -> ImageBatch {
    let (n, h, w) = (images.len(), images.height(), images.width());
    if (h, w) == (height, width) {
        return images.clone();
    }
    let px = images.pixels().data();
    let mut out = Vec::with_capacity(n * 3 * height * width);
    for plane in px.chunks(h * w) {
        let bytes: Vec<u8> = plane
            .iter()
            .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
            .collect();
        out.extend(
            resize_plane(&bytes, h, w, height, width)
                .into_iter()
                .map(|b| b as f32 / 255.0),
        );
    }
    ImageBatch::new(Tensor::new(vec![n, 3, height, width], out).expect("resized size")).expect("finite pixels")
}

/// `[N, 3, size, size]`: the CLIP input of the detection methods (SPEC §2): the whole image resized
/// straight to `size`×`size` with Pillow's bicubic (no crop, so the aspect ratio is not kept and
/// nothing at the border is lost), then `(x − CLIP_MEAN) / CLIP_STD` per channel. Images already at
/// `size`×`size` are only normalised.
pub fn clip_detection_input(images: &ImageBatch, size: usize) -> Tensor {
    let resized = resize(images, size, size);
    let plane = size * size;
    let data = resized.pixels().data().iter().enumerate().map(|(i, v)| {
        let c = (i / plane) % 3;
        (v - CLIP_MEAN[c]) / CLIP_STD[c]
    });
    Tensor::new(vec![images.len(), 3, size, size], data.collect()).expect("preprocessed size")
}

/// `[N, 3, size, size]`, normalised, from images of any size: open_clip's own preprocessing
/// (shorter side to `size` with Pillow's bicubic, centre crop, CLIP mean/std), what `adp embed`
/// uses. The detection methods use [`clip_detection_input`].
pub fn clip_preprocess(images: &ImageBatch, size: usize) -> Tensor {
    let (n, h, w) = (images.len(), images.height(), images.width());
    let (oh, ow) = if h == size && w == size {
        (h, w)
    } else if h <= w {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    } else {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    };
    let (top, left) = (
        ((oh - size) as f64 / 2.0).round() as usize,
        ((ow - size) as f64 / 2.0).round() as usize,
    );
    let px = images.pixels().data();
    let mut out = Vec::with_capacity(n * 3 * size * size);
    for i in 0..n {
        for c in 0..3 {
            let plane = &px[(i * 3 + c) * h * w..(i * 3 + c + 1) * h * w];
            let resized: Vec<f32> = if (oh, ow) == (h, w) {
                plane.to_vec()
            } else {
                let bytes: Vec<u8> = plane
                    .iter()
                    .map(|v| (v * 255.0).round().clamp(0.0, 255.0) as u8)
                    .collect();
                resize_plane(&bytes, h, w, oh, ow)
                    .into_iter()
                    .map(|b| b as f32 / 255.0)
                    .collect()
            };
            for y in top..top + size {
                out.extend(
                    resized[y * ow + left..y * ow + left + size]
                        .iter()
                        .map(|v| (v - CLIP_MEAN[c]) / CLIP_STD[c]),
                );
            }
        }
    }
    Tensor::new(vec![n, 3, size, size], out).expect("preprocessed size")
}

/// `[N, 3, size, size]` for an image backbone: Pillow's bicubic resize of the whole image (no
/// crop, so a defect at the border stays in view), then `(x − mean) / std` per channel.
pub fn backbone_input(images: &ImageBatch, config: &crate::EfficientNetConfig) -> Tensor {
    let size = config.image_size;
    let resized = resize(images, size, size);
    let plane = size * size;
    let data = resized.pixels().data().iter().enumerate().map(|(i, v)| {
        let c = (i / plane) % 3;
        (v - config.mean[c]) / config.std[c]
    });
    Tensor::new(vec![images.len(), 3, size, size], data.collect()).expect("preprocessed size")
}

/// `[out, in]` weights of PyTorch's bilinear interpolation with `align_corners=False`, one axis:
/// `y = A · x`. Both backends upsample the deeper feature stages with it.
pub fn bilinear_matrix(out: usize, input: usize) -> Vec<f32> {
    let scale = input as f64 / out as f64;
    let mut m = vec![0f32; out * input];
    for o in 0..out {
        let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let l1 = (src - i0 as f64) as f32;
        m[o * input + i0] += 1.0 - l1;
        m[o * input + i1] += l1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_is_kept() {
        for (i, o) in [(48, 32), (32, 48), (40, 32)] {
            for (_, k) in coefficients(i, o) {
                let s: i64 = k.iter().sum();
                assert!((s - (1 << PRECISION_BITS)).abs() <= k.len() as i64, "{i}->{o}: {s}");
            }
        }
        let flat = vec![77u8; 6 * 5];
        assert!(resize_plane(&flat, 6, 5, 3, 4).iter().all(|&v| v == 77));
    }

    #[test]
    fn bilinear_matches_torch_on_a_doubling() {
        // torch: F.interpolate(arange(3)[None,None,None], size=(1,6), mode="bilinear")
        let m = bilinear_matrix(6, 3);
        let y: Vec<f32> = (0..6).map(|o| (0..3).map(|i| m[o * 3 + i] * i as f32).sum()).collect();
        assert_eq!(y, vec![0.0, 0.25, 0.75, 1.25, 1.75, 2.0]);
    }

    #[test]
    fn shorter_side_then_centre_crop() {
        let t = Tensor::from_fn(vec![1, 3, 40, 48], |i| (i % 48) as f32 / 47.0);
        let out = clip_preprocess(&ImageBatch::new(t).unwrap(), 32);
        assert_eq!(out.shape(), &[1, 3, 32, 32]);
    }

    /// Inputs of the Pillow vectors: a 64-bit LCG, one byte (`state >> 56`) per step.
    fn lcg_bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 56) as u8
            })
            .collect()
    }

    fn fnv1a(bytes: &[u8]) -> u64 {
        bytes
            .iter()
            .fold(0xcbf29ce484222325, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
    }

    /// `(h, w, oh, ow, seed, Pillow's bytes)`.
    type Vector = (usize, usize, usize, usize, u64, &'static [u8]);

    /// Pillow 13.0.0's `Image.fromarray(a).resize((ow, oh), Image.BICUBIC)` bytes, from
    /// `tools/golden/check_pillow_resize.py --emit-rust`. Both pass orders; in every case but the
    /// 1×N / N×1 ones the other order gives different bytes.
    #[test]
    fn pillow_bicubic_small_non_square() {
        #[rustfmt::skip]
        let cases: [Vector; 7] = [
            (9, 4, 5, 3, 1, &[145, 146, 85, 171, 98, 140, 158, 143, 117, 187, 186, 92, 163, 145, 100]), // V first
            (4, 9, 3, 5, 2, &[227, 167, 93, 85, 103, 175, 120, 90, 70, 32, 167, 68, 84, 176, 117]), // H first
            (7, 3, 3, 5, 3, &[70, 90, 121, 133, 138, 133, 156, 192, 201, 203, 149, 145, 141, 148, 154]), // V, upscales w
            (1, 6, 1, 4, 4, &[141, 195, 61, 51]),
            (6, 1, 4, 1, 5, &[139, 138, 105, 83]),
            (3, 8, 6, 3, 6, &[120, 150, 165, 133, 138, 165, 160, 113, 163, 176, 102, 167, 179, 108, 175, 181, 111,
                              179]), // H first, upscales h
            (11, 2, 4, 3, 7, &[150, 130, 109, 149, 135, 120, 91, 96, 101, 146, 137, 128]), // V first
        ];
        for (h, w, oh, ow, seed, want) in cases {
            let got = resize_plane(&lcg_bytes(seed, h * w), h, w, oh, ow);
            assert_eq!(got, want, "{h}x{w} -> {oh}x{ow}");
        }
    }

    /// Real photo sizes (h×w) to 224×224; FNV-1a 64 of Pillow 13.0.0's bytes. The other pass order
    /// differs from Pillow on ~14 000 of the 50 176 pixels of each.
    #[test]
    fn pillow_bicubic_photo_sizes_to_224() {
        let cases = [
            (289, 240, 100, 0x571169f7f4c8d6b0u64), // V first
            (291, 256, 101, 0xc74c87f66a7e1a44),    // V first (magnetic tile 256×291 W×H)
            (349, 256, 102, 0x7fedd2ecb6c29577),    // V first
            (256, 350, 103, 0x78156908dfa1fc65),    // H first
            (257, 256, 104, 0x55c8bc8d7e36540b),    // H first: 33 > 2·32 fails
            (240, 289, 105, 0x58eb21b91128f7eb),    // H first
        ];
        for (h, w, seed, want) in cases {
            let got = resize_plane(&lcg_bytes(seed, h * w), h, w, 224, 224);
            assert_eq!(fnv1a(&got), want, "{h}x{w} -> 224x224");
        }
    }

    #[test]
    fn pass_order_rule() {
        assert!(vertical_first(289, 256, 224, 224)); // 65 > 2·32
        assert!(!vertical_first(288, 256, 224, 224)); // 64 = 2·32: not strictly more
        assert!(!vertical_first(224, 256, 160, 224)); // 64 = 2·32 again
        assert!(vertical_first(6, 1, 4, 1));
        assert!(vertical_first(7, 3, 3, 5)); // width upscaled
        assert!(!vertical_first(3, 8, 6, 3)); // height upscaled
    }

    #[test]
    fn detection_input_is_a_straight_resize() {
        let t = Tensor::from_fn(vec![1, 3, 40, 48], |i| (i % 48) as f32 / 47.0);
        let images = ImageBatch::new(t).unwrap();
        let out = clip_detection_input(&images, 32);
        assert_eq!(out.shape(), &[1, 3, 32, 32]);
        let r = resize(&images, 32, 32);
        let want = (r.pixels().data()[32 * 32 + 5] - CLIP_MEAN[1]) / CLIP_STD[1];
        assert_eq!(out.data()[32 * 32 + 5], want);
    }
}
