//! Index tables and constants that both backends derive the same way from a config or a request
//! (window positions, causal masks, where concept vectors go, timestep embeddings, padding,
//! batch chunks), computed here on the host so that only the tensor operations differ.
use crate::config::diffusion::UnetConfig;
use crate::requests::{ConceptSlot, Prompt};
use crate::tokenizer::Tokens;
use crate::{Device, Error, Result};

/// Images per backbone forward pass: bounds the activations' memory whatever the batch.
pub const BACKBONE_CHUNK: usize = 8;

/// Test features per association product (`chunk × memory rows` similarities at a time). On
/// the CPU the block should stay in the caches until its row maxima are taken: 256 × 3136 rows
/// (4 shots at 224 px) is 3 MiB, and made association a fifth faster on both backends than 4096
/// (`adp bench`, 2 threads). A GPU wants large products.
pub fn association_chunk(device: Device) -> usize {
    match device {
        Device::Cpu => 256,
        Device::Cuda(_) => 4096,
    }
}

/// `(start, len)` of consecutive chunks of at most `size` (at least 1) covering `0..total`.
pub fn chunks(total: usize, size: usize) -> impl Iterator<Item = (usize, usize)> {
    let size = size.max(1);
    (0..total)
        .step_by(size)
        .map(move |start| (start, size.min(total - start)))
}

/// Patch positions of every `size`×`size` window at stride 1 on a `grid`×`grid` patch grid,
/// windows row-major, each window's patches row-major: `(grid − size + 1)² · size²` indices.
/// `size` must be in `1..=grid` ([`crate::checks::window_size`]).
pub fn window_positions(grid: usize, size: usize) -> Vec<usize> {
    let per_side = grid + 1 - size;
    let mut positions = Vec::with_capacity(per_side * per_side * size * size);
    for wy in 0..per_side {
        for wx in 0..per_side {
            for dy in 0..size {
                for dx in 0..size {
                    positions.push((wy + dy) * grid + wx + dx);
                }
            }
        }
    }
    positions
}

/// Additive causal mask `[n, n]`, row-major: −∞ above the diagonal, 0 elsewhere.
pub fn causal_mask(n: usize) -> Vec<f32> {
    (0..n * n)
        .map(|i| if i % n > i / n { f32::NEG_INFINITY } else { 0.0 })
        .collect()
}

/// How a batch of prompts' token embeddings are built: `ids` (placeholders, outside the
/// vocabulary, read row 0) scaled by `keep` (0 at placeholders), then concept vector
/// `slots[j] = (prompt, concept)` added at flat row `rows[j]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Substitution {
    pub prompts: usize,
    /// Tokens per prompt.
    pub context: usize,
    pub ids: Vec<u32>,
    pub keep: Vec<f32>,
    pub rows: Vec<u32>,
    pub slots: Vec<(usize, usize)>,
}

impl Substitution {
    /// Fails unless every prompt has the same number of tokens, at most `positions`.
    pub fn new(tokens: &[Tokens], vocab: usize, positions: usize) -> Result<Self> {
        let c = tokens.first().map_or(0, |t| t.ids.len());
        if c > positions || tokens.iter().any(|t| t.ids.len() != c) {
            return Err(Error::invalid(
                "tokens",
                format!("{c} tokens per prompt for {positions} positions"),
            ));
        }
        let ids = tokens
            .iter()
            .flat_map(|t| &t.ids)
            .map(|&i| if (i as usize) < vocab { i } else { 0 })
            .collect();
        let keep = tokens
            .iter()
            .flat_map(|t| &t.ids)
            .map(|&i| if (i as usize) < vocab { 1.0 } else { 0.0 })
            .collect();
        let (mut rows, mut slots) = (Vec::new(), Vec::new());
        for (i, t) in tokens.iter().enumerate() {
            for &(pos, k) in &t.concepts {
                rows.push((i * c + pos) as u32);
                slots.push((i, k));
            }
        }
        Ok(Self {
            prompts: tokens.len(),
            context: c,
            ids,
            keep,
            rows,
            slots,
        })
    }

    /// Flat rows of each prompt's first end token, where text features are pooled.
    pub fn ends(&self, tokens: &[Tokens]) -> Vec<u32> {
        tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (i * self.context + t.end) as u32)
            .collect()
    }
}

/// Every prompt's concept vectors as a backend's tensors (`slots[p][k]` for prompt p's concept
/// k), made by `make` once each has been checked against the text width.
pub fn concept_slots<T>(
    prompts: &[Prompt],
    width: usize,
    make: impl Fn(&ConceptSlot) -> Result<T>,
) -> Result<Vec<Vec<T>>> {
    crate::checks::concept_widths(prompts, width)?;
    prompts.iter().map(|p| p.concepts.iter().map(&make).collect()).collect()
}

/// diffusers' `get_timestep_embedding`, one timestep per sample: `[N, 2·⌊C/2⌋]` row-major, C the
/// first block's channels.
pub fn timestep_embedding(c: &UnetConfig, timesteps: &[f64]) -> Vec<f32> {
    let half = c.block_out_channels.first().copied().unwrap_or(0) / 2;
    let shift = c.freq_shift as f64;
    let mut data: Vec<f32> = Vec::with_capacity(timesteps.len() * 2 * half);
    for &t in timesteps {
        let args: Vec<f64> = (0..half)
            .map(|i| t * (-(10000f64.ln()) * i as f64 / (half as f64 - shift)).exp())
            .collect();
        let (sin, cos): (Vec<f32>, Vec<f32>) = args.iter().map(|a| (a.sin() as f32, a.cos() as f32)).unzip();
        if c.flip_sin_to_cos {
            data.extend(cos.iter().chain(&sin));
        } else {
            data.extend(sin.iter().chain(&cos));
        }
    }
    data
}

/// TensorFlow "SAME" padding of one axis, `(before, after)`: output side `ceil(input / stride)`,
/// the odd pixel after.
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out.max(1) - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_range() {
        assert_eq!(chunks(5, 2).collect::<Vec<_>>(), [(0, 2), (2, 2), (4, 1)]);
        assert_eq!(chunks(2, 0).collect::<Vec<_>>(), [(0, 1), (1, 1)]);
    }

    #[test]
    fn windows_and_masks() {
        assert_eq!(window_positions(3, 2), [0, 1, 3, 4, 1, 2, 4, 5, 3, 4, 6, 7, 4, 5, 7, 8]);
        assert_eq!(causal_mask(2), [0.0, f32::NEG_INFINITY, 0.0, 0.0]);
    }

    #[test]
    fn substitution_places_concepts_and_refuses_ragged_tokens() {
        let t = |ids: Vec<u32>, concepts| Tokens { ids, end: 2, concepts };
        let s = Substitution::new(&[t(vec![1, 9, 2], vec![]), t(vec![1, 10, 2], vec![(1, 0)])], 10, 3).unwrap();
        assert_eq!(
            (s.ids, s.rows, s.slots),
            (vec![1, 9, 2, 1, 0, 2], vec![4], vec![(1, 0)])
        );
        assert_eq!(s.keep, [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]);
        let e = Substitution::new(&[t(vec![1, 2], vec![]), t(vec![1], vec![])], 10, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid tokens: 2 tokens per prompt for 3 positions"), "{e}");
        let e = Substitution::new(&[t(vec![1, 2, 3, 4], vec![])], 10, 3)
            .unwrap_err()
            .to_string();
        assert!(e.contains("4 tokens per prompt for 3 positions"), "{e}");
    }

    #[test]
    fn same_padding_is_tensorflows() {
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(65, 5, 2), (2, 2));
        assert_eq!(same_padding(56, 5, 2), (1, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }
}
