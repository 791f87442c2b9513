//! CLIP preprocessing (SPEC §2): resize the shorter side to the model's size with bicubic
//! interpolation, centre-crop, normalise with CLIP's mean and std.
//!
//! The resize reproduces Pillow's 8-bit bicubic (a = −0.5, antialiased when shrinking, 22-bit
//! fixed-point weights, horizontal pass then vertical, rounding to 8 bits after each pass), which
//! is what open_clip's torchvision transform runs on PIL images.
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

/// Resizes one 8-bit plane `[h][w]` to `[oh][ow]`.
fn resize_plane(src: &[u8], h: usize, w: usize, oh: usize, ow: usize) -> Vec<u8> {
    let round = 1i64 << (PRECISION_BITS - 1);
    let horizontal = if ow != w {
        let c = coefficients(w, ow);
        let mut out = vec![0u8; h * ow];
        for y in 0..h {
            for (x, (start, k)) in c.iter().enumerate() {
                let s: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, k)| src[y * w + start + i] as i64 * k)
                    .sum();
                out[y * ow + x] = clip8(round + s);
            }
        }
        out
    } else {
        src.to_vec()
    };
    if oh == h {
        return horizontal;
    }
    let c = coefficients(h, oh);
    let mut out = vec![0u8; oh * ow];
    for (y, (start, k)) in c.iter().enumerate() {
        for x in 0..ow {
            let s: i64 = k
                .iter()
                .enumerate()
                .map(|(i, k)| horizontal[(start + i) * ow + x] as i64 * k)
                .sum();
            out[y * ow + x] = clip8(round + s);
        }
    }
    out
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

/// `[N, 3, size, size]`, normalised, from images of any size.
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
}
