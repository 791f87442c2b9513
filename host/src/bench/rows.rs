//! The rows of `adp bench`: every part of the pipeline a user waits for, timed on one backend.
//! Each row runs in a process of its own (see `adp bench`), so the peak resident memory it
//! reports ([`peak_rss_mb`]) is that row's, libtorch's allocations included.
use crate::eval::bench::{self as visual_bench, median, BenchOptions};
use crate::score::prompts::{State, TEMPLATES};
use adp_api::requests::{DenoisingInput, DenoisingLossRequest, Img2ImgRequest, Prompt, UnetRequest};
use adp_api::{BackboneCheckpoint, Backend, ClipCheckpoint, Device, DiffusionSpec, Error, ImageBatch, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// What `adp bench --rows` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// Backbone patch features and their association (EfficientNet-Lite), per photo.
    Visual,
    /// CLIP image embeddings, per photo.
    ClipImage,
    /// CLIP penultimate patch tokens and WinCLIP 2×2 and 3×3 windows, per photo.
    ClipDense,
    /// CLIP text embeddings of the 54 state prompts of one class, per prompt.
    ClipText,
    /// One UNet forward pass, batch 1, per call.
    Unet,
    /// One concept-learning step (VAE encode, UNet forward and backward to the concept vector),
    /// batch B, per step.
    LearnStep(usize),
    /// One DDIM step of img2img with classifier-free guidance (2 steps minus 1 step), batch 1.
    Img2ImgStep,
}

impl Row {
    /// Whether the row runs the diffusion model (`--sd`).
    pub fn is_diffusion(self) -> bool {
        matches!(self, Row::Unet | Row::LearnStep(_) | Row::Img2ImgStep)
    }
}

impl std::str::FromStr for Row {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "visual" => Row::Visual,
            "clip-image" => Row::ClipImage,
            "clip-dense" => Row::ClipDense,
            "clip-text" => Row::ClipText,
            "unet" => Row::Unet,
            "learn-step-1" => Row::LearnStep(1),
            "learn-step-4" => Row::LearnStep(4),
            "img2img-step" => Row::Img2ImgStep,
            _ => {
                return Err(Error::invalid(
                    "bench row",
                    format!("`{s}`: one of visual, clip-image, clip-dense, clip-text, unet, learn-step-1, learn-step-4, img2img-step"),
                ))
            }
        })
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Row::Visual => f.write_str("visual"),
            Row::ClipImage => f.write_str("clip-image"),
            Row::ClipDense => f.write_str("clip-dense"),
            Row::ClipText => f.write_str("clip-text"),
            Row::Unet => f.write_str("unet"),
            Row::LearnStep(b) => write!(f, "learn-step-{b}"),
            Row::Img2ImgStep => f.write_str("img2img-step"),
        }
    }
}

/// The models and photos the rows run on; a row refuses to run without what it needs.
pub struct Inputs<'a> {
    pub backbone: Option<&'a BackboneCheckpoint>,
    pub clip: Option<&'a ClipCheckpoint>,
    pub sd: Option<&'a DiffusionSpec>,
    /// The photos, resized to the square a row needs: the support set first (`shots`), then the
    /// photos scored (the CLIP rows use those).
    pub photos: &'a dyn Fn(usize) -> Result<ImageBatch>,
    /// How many photos are the `visual` support set (the rest are scored).
    pub shots: usize,
    /// Diffusion rows: the side in pixels (multiple of the VAE's downsampling).
    pub size: Option<usize>,
    pub repeats: usize,
    pub device: Device,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RowTiming {
    pub row: String,
    pub plugin: String,
    pub runtime: String,
    /// What `ms` is per: photo, prompt, call or step.
    pub per: String,
    /// Items per timed repetition (photos scored, prompts, batch size).
    pub items: usize,
    pub repeats: usize,
    /// Median over the repetitions, per item.
    pub ms: f64,
    /// The row's own parts (`features`, `association` for `visual`), per item.
    pub parts: BTreeMap<String, f64>,
    /// The process's CPU time (user + system, every thread) per item over the same repetitions
    /// as `ms`, median; for rows timed as one call (CLIP and diffusion rows). Unlike wall time it
    /// does not count time a virtual machine's CPU was taken away (steal), and beside `ms` it
    /// tells work from waiting: `cpu_ms` under `threads × ms` is time threads sat idle.
    #[serde(default)]
    pub cpu_ms: Option<f64>,
    /// The whole process's peak resident memory when the row ended (models loaded included).
    pub peak_rss_mb: Option<f64>,
    /// Input side in pixels where it is a choice (diffusion rows).
    pub size: Option<usize>,
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB; `None` off Linux.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn need<'a, T>(what: Option<&'a T>, row: Row, flag: &str) -> Result<&'a T> {
    what.ok_or_else(|| Error::invalid("bench", format!("row {row} needs {flag}")))
}

/// This process's CPU time so far, user + system over every thread, in ms; `None` off Unix.
#[cfg(not(unix))]
fn process_cpu_ms() -> Option<f64> {
    None
}

/// This process's CPU time so far, user + system over every thread, in ms.
#[cfg(unix)]
fn process_cpu_ms() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one `rusage` into the buffer it is given and reads nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (and it was zeroed before).
    let u = unsafe { usage.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    Some(ms(u.ru_utime) + ms(u.ru_stime))
}

/// Medians of wall and CPU milliseconds over repetitions.
#[derive(Clone, Copy)]
struct Timed {
    ms: f64,
    cpu_ms: Option<f64>,
}

impl std::ops::Div<f64> for Timed {
    type Output = Timed;
    fn div(self, n: f64) -> Timed {
        Timed {
            ms: self.ms / n,
            cpu_ms: self.cpu_ms.map(|c| c / n),
        }
    }
}

/// Median wall and CPU milliseconds of `repeats` runs of `f`, after one untimed warm-up.
fn time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Timed> {
    f()?;
    let (mut ms, mut cpu) = (Vec::with_capacity(repeats), Vec::with_capacity(repeats));
    for _ in 0..repeats.max(1) {
        let c = process_cpu_ms();
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        cpu.extend(c.zip(process_cpu_ms()).map(|(a, b)| b - a));
    }
    let cpu_ms = (cpu.len() == ms.len()).then(|| median(cpu));
    Ok(Timed { ms: median(ms), cpu_ms })
}

/// Deterministic standard-normal values (latents, noise, a concept vector).
fn noise(shape: Vec<usize>, seed: u64) -> Tensor {
    let mut rng = adp_api::rng::SplitMix64(seed);
    Tensor::from_fn(shape, |_| rng.normal())
}

/// Times `row` on `backend` (named `plugin`).
pub fn run(row: Row, plugin: &str, backend: &dyn Backend, i: &Inputs) -> Result<RowTiming> {
    let mut out = RowTiming {
        row: row.to_string(),
        plugin: plugin.into(),
        runtime: backend.info().runtime,
        per: "photo".into(),
        items: 0,
        repeats: i.repeats,
        ms: 0.0,
        parts: BTreeMap::new(),
        cpu_ms: None,
        peak_rss_mb: None,
        size: None,
    };
    match row {
        Row::Visual => {
            let backbone = need(i.backbone, row, "a backbone")?;
            let all = (i.photos)(backbone.config.image_size)?;
            let (support, test) = split(&all, i.shots)?;
            let options = BenchOptions {
                repeats: i.repeats,
                device: i.device,
            };
            let r = visual_bench::visual(&[(plugin.into(), backend)], backbone, &support, &test, options)?;
            out.items = test.len();
            out.ms = r[0].ms_per_image;
            out.parts.insert("features".into(), r[0].features_ms_per_image);
            out.parts.insert("association".into(), r[0].association_ms_per_image);
        }
        Row::ClipImage | Row::ClipDense | Row::ClipText => {
            let clip = need(i.clip, row, "--clip")?;
            let encoder = backend.text_image_encoder(clip, i.device)?;
            // The photos `visual` scores: all but the support set.
            let (_, photos) = split(&(i.photos)(encoder.dims().image_size)?, i.shots)?;
            out.items = photos.len();
            let t = match row {
                Row::ClipImage => time(i.repeats, || encoder.image_embeddings(&photos).map(drop))?,
                Row::ClipDense => time(i.repeats, || encoder.dense_features(&photos, &[2, 3]).map(drop))?,
                _ => {
                    let prompts: Vec<Prompt> = [State::Normal, State::Anomalous]
                        .iter()
                        .flat_map(|s| TEMPLATES.iter().map(move |t| Prompt::plain(s.prompt(t, "bottle"))))
                        .collect();
                    out.per = "prompt".into();
                    out.items = prompts.len();
                    time(i.repeats, || encoder.text_embeddings(&prompts).map(drop))?
                }
            };
            let t = t / out.items as f64;
            (out.ms, out.cpu_ms) = (t.ms, t.cpu_ms);
        }
        Row::Unet | Row::LearnStep(_) | Row::Img2ImgStep => {
            let sd = need(i.sd, row, "--sd")?;
            let diffuser = backend.latent_diffuser(sd, i.device)?;
            let dims = diffuser.dims();
            let size = i.size.unwrap_or(dims.image_size);
            let factor = dims.vae_downsampling * dims.unet_downsampling.max(1);
            if size == 0 || !size.is_multiple_of(factor) {
                return Err(Error::invalid(
                    "bench --size",
                    format!(
                        "{size} is not a multiple of {factor} (the VAE's downsampling {} × the UNet's {})",
                        dims.vae_downsampling, dims.unet_downsampling
                    ),
                ));
            }
            // The learning step and img2img take photos at the model's own size only (the
            // diffuser's checks), so another size is refused here, before any work.
            if row != Row::Unet && size != dims.image_size {
                return Err(Error::invalid(
                    "bench --size",
                    format!(
                        "{size}: row {row} runs at the model's own size, {}; only `unet` takes another",
                        dims.image_size
                    ),
                ));
            }
            out.size = Some(size);
            let side = size / dims.vae_downsampling;
            let batch = match row {
                Row::LearnStep(b) => b,
                _ => 1,
            };
            out.items = batch;
            out.per = "step".into();
            let latent = |b: usize, seed| noise(vec![b, dims.latent_channels, side, side], seed);
            let t = (dims.train_timesteps / 2) as u32;
            let t = match row {
                Row::Unet => {
                    out.per = "call".into();
                    let request = UnetRequest {
                        latents: latent(1, 1),
                        timesteps: vec![t],
                        conditioning: diffuser.text_conditioning(&[Prompt::plain("a photo of a bottle")])?,
                    };
                    time(i.repeats, || diffuser.unet_prediction(&request).map(drop))?
                }
                Row::LearnStep(b) => {
                    let photos = (i.photos)(size)?;
                    let images = pick(&photos, &(0..b).map(|k| k % photos.len()).collect::<Vec<_>>())?;
                    let concept = noise(vec![dims.text_width], 7)
                        .data()
                        .iter()
                        .map(|v| v * 0.01)
                        .collect::<Vec<_>>();
                    let request = DenoisingLossRequest {
                        input: DenoisingInput::Images(images.clone()),
                        prompts: vec![Prompt::with_concept("a photo of a <c>", "<c>", &concept); b],
                        timesteps: vec![t; b],
                        noise: latent(b, 2),
                        gradient_of: Some("<c>".into()),
                    };
                    let step = time(i.repeats, || diffuser.denoising_loss(&request).map(drop))? / b as f64;
                    // Where a step's time goes, for the side-by-side table: the VAE encoding and a
                    // UNet forward without gradients on the same batch; the rest is the text
                    // encoder, the forward's bookkeeping for the gradient and the backward pass.
                    let vae = time(i.repeats, || diffuser.vae_encode(&images).map(drop))? / b as f64;
                    let forward = UnetRequest {
                        latents: request.noise.clone(),
                        timesteps: request.timesteps.clone(),
                        conditioning: diffuser.text_conditioning(&vec![Prompt::plain("a photo of a bottle"); b])?,
                    };
                    let unet = time(i.repeats, || diffuser.unet_prediction(&forward).map(drop))? / b as f64;
                    out.parts.insert("vae_encode".into(), vae.ms);
                    out.parts.insert("unet_forward".into(), unet.ms);
                    out.parts.insert("text_and_backward".into(), step.ms - vae.ms - unet.ms);
                    step
                }
                _ => {
                    let photos = (i.photos)(size)?;
                    let images = photos.image(0);
                    let request = |steps| Img2ImgRequest {
                        images: images.clone(),
                        prompt: Prompt::plain("a photo of a damaged bottle"),
                        negative_prompt: Prompt::plain(""),
                        strength: 1.0,
                        guidance: 7.5,
                        steps,
                        seed: 0,
                        noise: None,
                    };
                    let (one, two) = (request(1), request(2));
                    let t1 = time(i.repeats, || diffuser.img2img(&one).map(drop))?;
                    let t2 = time(i.repeats, || diffuser.img2img(&two).map(drop))?;
                    out.parts.insert("img2img_1_step".into(), t1.ms);
                    out.parts.insert("img2img_2_steps".into(), t2.ms);
                    Timed {
                        ms: t2.ms - t1.ms,
                        cpu_ms: t2.cpu_ms.zip(t1.cpu_ms).map(|(b, a)| b - a),
                    }
                }
            };
            (out.ms, out.cpu_ms) = (t.ms, t.cpu_ms);
        }
    }
    out.peak_rss_mb = peak_rss_mb();
    Ok(out)
}

/// The first `shots` photos and the rest.
fn split(all: &ImageBatch, shots: usize) -> Result<(ImageBatch, ImageBatch)> {
    if all.len() <= shots {
        return Err(Error::invalid(
            "bench",
            format!("needs more images ({}) than --shots ({shots})", all.len()),
        ));
    }
    let idx: Vec<usize> = (0..all.len()).collect();
    Ok((pick(all, &idx[..shots])?, pick(all, &idx[shots..])?))
}

/// The photos at `idx`, as one batch.
fn pick(all: &ImageBatch, idx: &[usize]) -> Result<ImageBatch> {
    let pixels: Vec<Tensor> = idx.iter().map(|&i| all.image(i).into_pixels()).collect();
    ImageBatch::new(Tensor::concat(&pixels)?)
}
