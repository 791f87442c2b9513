//! 3×3 stride-1 convolutions on the CPU by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of outputs
//! (a tile) from the 4×4 input patch under it, with 16 products per channel pair where the
//! direct convolution makes 36. The products become 16 matrix products per band of tiles,
//! `M_ξ = U_ξ · V_ξ` (`U_ξ`: `[O, C]`, the transformed weight; `V_ξ`: `[C, tiles]`, the
//! transformed input), each `C` deep where the im2col product of `conv_cpu` is `9·C` deep.
//!
//! Why: the VAE encoder and the UNet's resnets are 3×3 convolutions, and `gemm`'s kernel runs
//! them 5–20 % below oneDNN's on CPUs without AVX-512 (`examples/conv_rate.rs`). 2.25× fewer
//! multiplications more than make up for the transforms, which are additions: 1.4–1.9× the
//! im2col path's rate on those shapes, above PyTorch's (docs/speed.md). The transforms' coefficients are 0, ±1 and ±½, so F(2×2, 3×3) rounds like
//! the direct sum (the larger tiles, F(4×4, 3×3), lose digits and are not used).
//!
//! Every thread of the pool takes whole bands (rows of tiles of one image): it transforms the
//! band's input, multiplies, and adds the transformed-back outputs onto its own output rows.
use rayon::prelude::*;

use crate::gemm_view::{self, Mat, SharedOut, Threads};

/// Tiles (2×2 outputs each) per band, about: whole rows of tiles. `examples/conv_rate.rs` on
/// the VAE's and the UNet's shapes: 128, 256 and 512 within a few per cent of each other, 256
/// the best on the VAE's 128-channel levels.
const BAND_TILES: usize = 256;

/// Output positions a plane needs for this path (more than 32×32). On the UNet's 32×32
/// 640-channel convolution it ran at 116–126 GFLOP/s against 139 for the im2col product, on its
/// 24×24 1280-channel one at 87–90 against 145 (`examples/conv_rate.rs`): with few tiles per
/// band, each of the 16 products packs its `[O, C]` factor for little work.
const MIN_POSITIONS: usize = 2048;

/// Input and output channels this path needs: the products are `C` deep and `O` tall, and the
/// models' first and last convolutions (3 or 4 channels on one side) stay with im2col.
const MIN_CHANNELS: usize = 32;

/// Transform components per tile (4×4).
const XI: usize = 16;

/// One 3×3 stride-1 convolution's sizes: `c` input channels of `h × w`, `o` output channels,
/// zero `padding` on every side.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub h: usize,
    pub w: usize,
    pub padding: usize,
}

impl Shape {
    fn out(&self) -> (usize, usize) {
        (self.h + 2 * self.padding - 2, self.w + 2 * self.padding - 2)
    }

    /// Whether [`run`] takes this convolution (the caller has checked the kernel is 3×3, stride 1,
    /// and that the padded input holds it).
    pub fn applies(&self) -> bool {
        let (oh, ow) = self.out();
        self.c >= MIN_CHANNELS && self.o >= MIN_CHANNELS && oh * ow >= MIN_POSITIONS
    }

    /// Rows of tiles, tiles per row, and rows of tiles per band: about [`BAND_TILES`] tiles,
    /// in a number of bands that the pool's threads share evenly.
    fn tiles(&self) -> (usize, usize, usize) {
        let (oh, ow) = self.out();
        let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
        let threads = rayon::current_num_threads().max(1);
        let bands = (self.n * th * tw)
            .div_ceil(BAND_TILES)
            .max(threads)
            .next_multiple_of(threads);
        (th, tw, (self.n * th).div_ceil(bands).clamp(1, th.max(1)))
    }
}

/// `out` (`[N, O, oh, ow]`) plus the convolution of `x` (`[N, C, h, w]`) with `weight`
/// (`[O, C, 3, 3]`). The caller has checked [`Shape::applies`] and the slices' lengths.
pub fn run(s: Shape, x: &[f32], weight: &[f32], out: &mut [f32]) {
    let (oh, ow) = s.out();
    assert!(x.len() >= s.n * s.c * s.h * s.w && weight.len() >= s.o * s.c * 9);
    assert!(out.len() >= s.n * s.o * oh * ow);
    let u = transform_weight(weight, s.o, s.c);
    let (th, tw, rows) = s.tiles();
    let bands = th.div_ceil(rows);
    let dst = SharedOut::new(out);
    // A few jobs per thread, each allocating its buffers once (up to tens of MB on the VAE).
    let per_job = (s.n * bands / (4 * rayon::current_num_threads())).max(1);
    (0..s.n * bands).into_par_iter().with_min_len(per_job).for_each_init(
        || Scratch::new(s, rows, tw),
        |scratch, i| {
            let (b, ty0) = (i / bands, i % bands * rows);
            let ty1 = (ty0 + rows).min(th);
            let plane = &x[b * s.c * s.h * s.w..][..s.c * s.h * s.w];
            let t = (ty1 - ty0) * tw;
            scratch.transform_input(s, plane, ty0..ty1, tw);
            let (v, m) = (&scratch.v[..XI * s.c * t], &mut scratch.m[..XI * s.o * t]);
            for xi in 0..XI {
                let (lhs, rhs) = (Mat::rows(&u[xi * s.o * s.c..], s.c), Mat::rows(&v[xi * s.c * t..], t));
                let dst = &mut m[xi * s.o * t..][..s.o * t];
                gemm_view::product(dst, t, false, lhs, rhs, (s.o, t, s.c), 1.0, Threads::Caller);
            }
            // SAFETY: band (b, ty0..ty1) writes output rows 2·ty0..2·ty1 of batch b's planes
            // only, inside `out` (asserted above): no other band's.
            unsafe { scratch.add_outputs(s, dst, b, ty0..ty1, tw) }
        },
    );
}

/// `U_ξ = G·g·Gᵀ` of every kernel `g`, as 16 matrices `[O, C]`, with
/// `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weight(weight: &[f32], o: usize, c: usize) -> Vec<f32> {
    let row = |a: f32, b: f32, c: f32| [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
    let mut per_kernel = vec![0f32; o * c * XI];
    per_kernel
        .par_chunks_mut(XI)
        .zip(weight.par_chunks(9))
        .for_each(|(u, g)| {
            // Columns first (G·g: rows of 3), then each of the four rows (·Gᵀ).
            let cols: [[f32; 4]; 3] = std::array::from_fn(|j| row(g[j], g[3 + j], g[6 + j]));
            for i in 0..4 {
                u[4 * i..4 * i + 4].copy_from_slice(&row(cols[0][i], cols[1][i], cols[2][i]));
            }
        });
    let mut u = vec![0f32; XI * o * c];
    u.par_chunks_mut((o * c).max(1)).enumerate().for_each(|(xi, dst)| {
        dst.iter_mut()
            .zip(per_kernel.chunks_exact(XI))
            .for_each(|(d, k)| *d = k[xi])
    });
    u
}

/// One thread's buffers: the band's transformed input `[16, C, tiles]`, its products
/// `[16, O, tiles]`, and the even and odd columns of a tile row's four input rows and of their
/// combinations.
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
}

impl Scratch {
    /// For bands of `rows` rows of `tw` tiles.
    fn new(s: Shape, rows: usize, tw: usize) -> Self {
        let tiles = rows * tw;
        Scratch {
            v: vec![0f32; XI * s.c * tiles],
            m: vec![0f32; XI * s.o * tiles],
            rows: vec![0f32; 16 * (tw + 1)],
        }
    }

    /// `V = Bᵀ·d·B` of every tile's 4×4 input patch `d`, with
    /// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`. Tile `(ty, tx)` reads
    /// input rows `2·ty − p ..` and columns `2·tx − p ..`; split into even and odd columns, its
    /// four columns are `e[tx], o[tx], e[tx + 1], o[tx + 1]`, so every step below is a pass over
    /// contiguous rows of tiles.
    fn transform_input(&mut self, s: Shape, plane: &[f32], tys: std::ops::Range<usize>, tw: usize) {
        let t = tys.len() * tw;
        let k = tw + 1;
        for ci in 0..s.c {
            let channel = &plane[ci * s.h * s.w..][..s.h * s.w];
            for (r, ty) in tys.clone().enumerate() {
                // Arrays 0..8: the four input rows' even and odd columns (zero in the padding);
                // 8..16: the same of the four rows of Bᵀ·d.
                let (input, combined) = self.rows.split_at_mut(8 * k);
                for (i, eo) in input.chunks_exact_mut(2 * k).enumerate() {
                    let (e, o) = eo.split_at_mut(k);
                    let row = (2 * ty + i).checked_sub(s.padding).filter(|&y| y < s.h);
                    split_row(
                        row.map_or(&[][..], |y| &channel[y * s.w..(y + 1) * s.w]),
                        s.padding,
                        e,
                        o,
                    );
                }
                let row = |i: usize| &input[i * 2 * k..(i + 1) * 2 * k];
                let bt = [(0, 2, -1.0), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)];
                for (dst, (a, b, sign)) in combined.chunks_exact_mut(2 * k).zip(bt) {
                    let (a, b) = (row(a), row(b));
                    for (d, (&a, &b)) in dst.iter_mut().zip(a.iter().zip(b)) {
                        *d = a + sign * b;
                    }
                }
                for (i, eo) in combined.chunks_exact(2 * k).enumerate() {
                    let (e, o) = eo.split_at(k);
                    let (e0, e1, o0, o1) = (&e[..tw], &e[1..], &o[..tw], &o[1..]);
                    let at = |j: usize| (4 * i + j) * s.c * t + ci * t + r * tw;
                    cols(&mut self.v[at(0)..][..tw], e0, e1, |a, b| a - b);
                    cols(&mut self.v[at(1)..][..tw], o0, e1, |a, b| a + b);
                    cols(&mut self.v[at(2)..][..tw], e1, o0, |a, b| a - b);
                    cols(&mut self.v[at(3)..][..tw], o0, o1, |a, b| a - b);
                }
            }
        }
    }

    /// Adds `Aᵀ·m·A` of every tile's 16 products (`self.m`, after the band's products) onto its 2×2 outputs, with
    /// `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`; outputs past the plane's edge are dropped.
    ///
    /// # Safety
    /// `out` holds `[N, O, oh, ow]`, and no other thread touches rows `2·ty0..2·ty1` of batch `b`.
    unsafe fn add_outputs(&mut self, s: Shape, out: SharedOut, b: usize, tys: std::ops::Range<usize>, tw: usize) {
        let (oh, ow) = s.out();
        let t = tys.len() * tw;
        // The four output rows of a tile row go where the input's rows were split.
        let (m, pair) = (&self.m[..XI * s.o * t], &mut self.rows[..4 * tw]);
        for oc in 0..s.o {
            for (r, ty) in tys.clone().enumerate() {
                let at = |xi: usize| &m[xi * s.o * t + oc * t + r * tw..][..tw];
                let (y0, rest) = pair.split_at_mut(tw);
                let (y1, rest) = rest.split_at_mut(tw);
                let (y2, y3) = rest.split_at_mut(tw);
                // Per column j: s_j (rows 0 + 1 + 2) and d_j (rows 1 − 2 − 3); then the same along j.
                let (m0, m1, m2, m3) = (at(0), at(1), at(2), at(3));
                let (m4, m5, m6, m7) = (at(4), at(5), at(6), at(7));
                let (m8, m9, m10, m11) = (at(8), at(9), at(10), at(11));
                let (m12, m13, m14, m15) = (at(12), at(13), at(14), at(15));
                for tx in 0..tw {
                    let s0 = m0[tx] + m4[tx] + m8[tx];
                    let s1 = m1[tx] + m5[tx] + m9[tx];
                    let s2 = m2[tx] + m6[tx] + m10[tx];
                    let s3 = m3[tx] + m7[tx] + m11[tx];
                    let d0 = m4[tx] - m8[tx] - m12[tx];
                    let d1 = m5[tx] - m9[tx] - m13[tx];
                    let d2 = m6[tx] - m10[tx] - m14[tx];
                    let d3 = m7[tx] - m11[tx] - m15[tx];
                    y0[tx] = s0 + s1 + s2;
                    y1[tx] = s1 - s2 - s3;
                    y2[tx] = d0 + d1 + d2;
                    y3[tx] = d1 - d2 - d3;
                }
                for (dy, (even, odd)) in [(&*y0, &*y1), (&*y2, &*y3)].into_iter().enumerate() {
                    let oy = 2 * ty + dy;
                    if oy >= oh {
                        continue;
                    }
                    // SAFETY: row oy of plane (b, oc) lies inside `out` and belongs to this band.
                    let row = std::slice::from_raw_parts_mut(out.at(((b * s.o + oc) * oh + oy) * ow), ow);
                    for (pair, (&e, &o)) in row.chunks_mut(2).zip(even.iter().zip(odd)) {
                        pair[0] += e;
                        if let Some(v) = pair.get_mut(1) {
                            *v += o;
                        }
                    }
                }
            }
        }
    }
}

/// `dst[x] = f(a[x], b[x])`.
#[inline(always)]
fn cols(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for (d, (&a, &b)) in dst.iter_mut().zip(a.iter().zip(b)) {
        *d = f(a, b);
    }
}

/// One input row split into the even (`e[k]` = column `2k − p` of the row) and odd (`o[k]` =
/// column `2k + 1 − p`) columns of the padded row, zero outside the row; an empty `src` is a
/// row of padding.
fn split_row(src: &[f32], p: usize, e: &mut [f32], o: &mut [f32]) {
    e.fill(0.0);
    o.fill(0.0);
    // Column x of the row is column x + p of the padded one: src[2j] and src[2j + 1] land at
    // (e[j + p/2], o[j + p/2]) for an even p, at (o[j + ⌊p/2⌋], e[j + ⌈p/2⌉]) for an odd one.
    let (to_even, at_even, to_odd, at_odd) = if p.is_multiple_of(2) {
        (e, p / 2, o, p / 2)
    } else {
        (o, p / 2, e, p.div_ceil(2))
    };
    let (evens, odds) = (src.iter().step_by(2), src.iter().skip(1).step_by(2));
    to_even.iter_mut().skip(at_even).zip(evens).for_each(|(d, &v)| *d = v);
    to_odd.iter_mut().skip(at_odd).zip(odds).for_each(|(d, &v)| *d = v);
}
