use crate::WIDTH;
use adp_api::requests::*;
use adp_api::{Error, ImageBatch, Result, Tensor, TextImageEncoder};

pub struct FixtureEncoder;

const CONTEXT: usize = 8;

/// Channel means of the image region `rows × cols`.
fn region_mean(images: &ImageBatch, n: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> [f32; 3] {
    let (h, w) = (images.height(), images.width());
    let img = images.pixels().row(n);
    let count = (rows.len() * cols.len()).max(1) as f32;
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        for y in rows.clone() {
            for x in cols.clone() {
                *o += img[c * h * w + y * w + x];
            }
        }
        *o /= count;
    }
    out
}

/// The fixture's "text tower": word count, character count / 10, plus every concept vector.
pub fn prompt_vector(prompt: &Prompt) -> Result<Vec<f32>> {
    if prompt.text == "panic!" {
        panic!("the test fixture panics on request");
    }
    let words = prompt.text.split_whitespace().count();
    if words > CONTEXT {
        return Err(Error::PromptTooLong {
            prompt: prompt.text.clone(),
            tokens: words,
            context: CONTEXT,
        });
    }
    let mut v = vec![words as f32, prompt.text.len() as f32 / 10.0, 1.0];
    for slot in &prompt.concepts {
        if !prompt.text.contains(&slot.placeholder) {
            return Err(Error::invalid(
                "prompt",
                format!("{:?} lacks placeholder {}", prompt.text, slot.placeholder),
            ));
        }
        if slot.vector.len() != WIDTH {
            return Err(Error::shape(
                format!("concept {}", slot.placeholder),
                format!("[{WIDTH}]"),
                &[slot.vector.len()],
            ));
        }
        v.iter_mut().zip(&slot.vector).for_each(|(a, b)| *a += b);
    }
    Ok(v)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl TextImageEncoder for FixtureEncoder {
    fn dims(&self) -> EncoderDims {
        EncoderDims {
            image_size: 4,
            grid: 2,
            embed_dim: WIDTH,
            vision_width: WIDTH,
            text_width: WIDTH,
            context_length: CONTEXT,
        }
    }

    fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
        let data = (0..images.len())
            .flat_map(|n| region_mean(images, n, 0..images.height(), 0..images.width()))
            .collect();
        Tensor::new(vec![images.len(), WIDTH], data)
    }

    fn dense_features(&self, images: &ImageBatch, window_sizes: &[usize]) -> Result<DenseFeatures> {
        images.expect_size("fixture encoder input", 4, 4)?;
        let cell = |n, gy: usize, gx: usize| region_mean(images, n, gy * 2..gy * 2 + 2, gx * 2..gx * 2 + 2);
        let tokens: Vec<f32> = (0..images.len())
            .flat_map(|n| (0..4).flat_map(move |g| cell(n, g / 2, g % 2)))
            .collect();
        let patch_tokens = Tensor::new(vec![images.len(), 4, WIDTH], tokens)?;
        let windows = window_sizes
            .iter()
            .map(|&s| {
                if s == 0 || s > 2 {
                    return Err(Error::invalid("window size", format!("{s} on a 2×2 grid")));
                }
                let per_side = 2 - s + 1;
                let mut data = Vec::new();
                for n in 0..images.len() {
                    for wy in 0..per_side {
                        for wx in 0..per_side {
                            data.extend(region_mean(images, n, wy * 2..(wy + s) * 2, wx * 2..(wx + s) * 2));
                        }
                    }
                }
                Ok(WindowFeatures {
                    size: s,
                    embeddings: Tensor::new(vec![images.len(), per_side * per_side, WIDTH], data)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(DenseFeatures {
            grid: 2,
            patch_tokens,
            windows,
        })
    }

    fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
        let data = prompts.iter().map(prompt_vector).collect::<Result<Vec<_>>>()?.concat();
        Tensor::new(vec![prompts.len(), WIDTH], data)
    }

    fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
        if word == crate::THREADS_PROBE {
            return Ok(vec![crate::THREADS.with(|t| t.get()) as f32, 0.0, 0.0]);
        }
        let first = word.bytes().next().ok_or_else(|| Error::invalid("word", "empty"))?;
        Ok(vec![word.len() as f32, first as f32 / 100.0, 1.0])
    }

    /// P_i = σ(⟨f(x_i), g(n) − g(a)⟩ / τ); g is affine in every concept, so the gradient is exact.
    fn state_probability(&self, r: &StateProbabilityRequest) -> Result<StateProbability> {
        if r.images.is_empty() {
            return Err(Error::EmptySupportSet);
        }
        let f = self.image_embeddings(&r.images)?;
        let (gn, ga) = (prompt_vector(&r.normal)?, prompt_vector(&r.anomalous)?);
        let sign = |p: &Prompt, name: &str| p.concepts.iter().filter(|c| c.placeholder == name).count() as f32;
        let mut normal = Vec::new();
        let mut grad = vec![0.0; WIDTH];
        for i in 0..r.images.len() {
            let fi = f.row(i);
            let z: f32 = fi
                .iter()
                .zip(gn.iter().zip(&ga))
                .map(|(x, (n, a))| x * (n - a))
                .sum::<f32>()
                / r.temperature;
            let p = sigmoid(z);
            normal.push(p);
            if let Some(name) = &r.gradient_of {
                let k = (sign(&r.normal, name) - sign(&r.anomalous, name)) / r.temperature;
                grad.iter_mut()
                    .zip(fi)
                    .for_each(|(g, x)| *g += p * (1.0 - p) * k * x / r.images.len() as f32);
            }
        }
        Ok(StateProbability {
            normal,
            grad: r.gradient_of.as_ref().map(|_| grad),
        })
    }
}
