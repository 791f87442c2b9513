//! The fuzz targets: each writes a mutated input where the CLI would find it and calls the entry
//! point the CLI calls on it. Seeds are made by the code itself, so no fixture files are needed.
use crate::detector;
use crate::formats;
use crate::mutate;
use crate::rng::Rng;
use adp_api::{ClipCheckpoint, ClipConfig, DiffusionSpec, TextConfig, VisionConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub const NAMES: [&str; 6] = ["detector", "safetensors", "clip-config", "diffusers", "png", "jpeg"];

/// A clean error is `Err(message)`; a panic unwinds out of `case`.
pub trait Target {
    fn case(&mut self, rng: &mut Rng) -> Result<(), String>;
}

pub fn make(name: &str, dir: &Path) -> Result<Box<dyn Target>, String> {
    let e = |e: adp_api::Error| e.to_string();
    Ok(match name {
        "detector" => Box::new(Detector::new(dir).map_err(e)?),
        "safetensors" => Box::new(Weights::new(dir).map_err(e)?),
        "clip-config" => Box::new(ClipFolder::new(dir).map_err(e)?),
        "diffusers" => Box::new(Diffusers::new(dir).map_err(e)?),
        "png" => Box::new(Photo::new(dir, image::ImageFormat::Png)),
        "jpeg" => Box::new(Photo::new(dir, image::ImageFormat::Jpeg)),
        other => return Err(format!("no target {other:?} (targets: {})", NAMES.join(", "))),
    })
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("harness: writing {}: {e}", path.display()));
}

/// A CLIP config small enough that its weights file is rewritten cheaply on every case.
pub fn small_clip() -> ClipConfig {
    ClipConfig {
        embed_dim: 8,
        quick_gelu: false,
        vision_cfg: VisionConfig {
            image_size: 16,
            layers: 1,
            width: 16,
            patch_size: 8,
            head_width: 8,
            mlp_ratio: 2.0,
        },
        text_cfg: TextConfig {
            context_length: 8,
            vocab_size: 64,
            width: 16,
            heads: 2,
            // The diffusers text encoder takes all but the last layer: at least one must remain.
            layers: 2,
            mlp_ratio: 2.0,
        },
    }
}

/// `adp score --detector FILE`: `DetectorFile::load`.
struct Detector {
    path: PathBuf,
    seed: Vec<u8>,
    parts: detector::Parts,
}

impl Detector {
    fn new(dir: &Path) -> adp_api::Result<Self> {
        let path = dir.join("d.adp");
        detector::seed().save(&path)?;
        let seed = std::fs::read(&path).map_err(|e| adp_api::Error::io(&path, e))?;
        let parts = detector::Parts::parse(&seed).expect("the seed detector parses");
        Ok(Self { path, seed, parts })
    }
}

impl Target for Detector {
    fn case(&mut self, rng: &mut Rng) -> Result<(), String> {
        let bytes = match rng.below(5) {
            0 => {
                let mut b = self.seed.clone();
                mutate::bytes(&mut b, rng);
                b
            }
            1 => formats::safetensors(&self.seed, rng),
            // Re-signed: past the content hash, into the header's bounds and the tensor checks.
            2 | 3 => self.parts.with_header(rng).build(),
            _ => self.parts.with_tensors(rng).build(),
        };
        write(&self.path, &bytes);
        let d = adp_host::detect::DetectorFile::load(&self.path).map_err(|e| e.to_string())?;
        // What scoring reads next from the header (no checkpoint is opened).
        let _ = (d.header.grid * d.header.grid, d.memories.len(), d.prototypes.is_some());
        Ok(())
    }
}

/// A CLIP folder's weights header: `ClipCheckpoint::check_weights` (what `fit` and `score` check
/// before loading), then the bounded read the host does of a safetensors file.
struct Weights {
    ckpt: ClipCheckpoint,
    seed: Vec<u8>,
}

impl Weights {
    fn new(dir: &Path) -> adp_api::Result<Self> {
        let dir = dir.join("clip");
        adp_host::fixtures::open_clip::write(&dir, &small_clip(), 0)?;
        let ckpt = ClipCheckpoint::from_dir(&dir)?;
        let seed = std::fs::read(&ckpt.weights).map_err(|e| adp_api::Error::io(&ckpt.weights, e))?;
        Ok(Self { ckpt, seed })
    }
}

impl Target for Weights {
    fn case(&mut self, rng: &mut Rng) -> Result<(), String> {
        let bytes = if rng.one_in(4) {
            let mut b = self.seed.clone();
            mutate::bytes(&mut b, rng);
            b
        } else {
            formats::safetensors(&self.seed, rng)
        };
        write(&self.ckpt.weights, &bytes);
        let e = |e: adp_api::Error| e.to_string();
        self.ckpt.check_weights().map_err(e)?;
        adp_api::config::st::read_metadata(&self.ckpt.weights).map_err(e)?;
        let bytes = adp_api::config::read_bounded(&self.ckpt.weights, 1 << 30).map_err(e)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
        adp_api::config::st::read_f32(&st, "visual.proj", &self.ckpt.weights).map_err(e)?;
        Ok(())
    }
}

/// `--clip DIR`: `ClipCheckpoint::from_dir` (config parsing, limits, validation) and what the
/// backends derive from the config before loading weights.
struct ClipFolder {
    dir: PathBuf,
    config: Value,
}

impl ClipFolder {
    fn new(dir: &Path) -> adp_api::Result<Self> {
        let dir = dir.join("clip");
        adp_host::fixtures::open_clip::write(&dir, &small_clip(), 0)?;
        let path = dir.join("open_clip_config.json");
        let text = std::fs::read(&path).map_err(|e| adp_api::Error::io(&path, e))?;
        let config = serde_json::from_slice(&text).expect("the fixture config parses");
        Ok(Self { dir, config })
    }
}

impl Target for ClipFolder {
    fn case(&mut self, rng: &mut Rng) -> Result<(), String> {
        write(
            &self.dir.join("open_clip_config.json"),
            &mutate::json_bytes(&self.config, rng),
        );
        let e = |e: adp_api::Error| e.to_string();
        let ckpt = ClipCheckpoint::from_dir(&self.dir).map_err(e)?;
        let shapes = ckpt.config.tensor_shapes().map_err(e)?;
        let _ = (shapes.len(), ckpt.config.encoder_dims(), ckpt.config.grid());
        let _ = ckpt.config.vision_heads();
        ckpt.check_weights().map_err(e)
    }
}

/// `--sd DIR`: `DiffusionSpec::from_dir` and the schedule and sizes derived from it.
struct Diffusers {
    dir: PathBuf,
    configs: Vec<(&'static str, Value)>,
    last: usize,
}

const DIFFUSERS_CONFIGS: [&str; 5] = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "unet/config.json",
    "vae/config.json",
];

impl Diffusers {
    fn new(dir: &Path) -> adp_api::Result<Self> {
        use adp_host::fixtures::diffusers::{write, DiffusionPreset, Variant};
        let clip = dir.join("clip");
        adp_host::fixtures::open_clip::write(&clip, &small_clip(), 0)?;
        let sd = dir.join("sd");
        let weights = clip.join("open_clip_model.safetensors");
        write(&sd, &small_clip(), &weights, Variant::Epsilon, DiffusionPreset::Tiny, 0)?;
        DiffusionSpec::from_dir(&sd)?;
        let configs = DIFFUSERS_CONFIGS
            .iter()
            .map(|n| {
                let text = std::fs::read(sd.join(n)).expect("fixture config");
                (*n, serde_json::from_slice(&text).expect("fixture json"))
            })
            .collect();
        Ok(Self {
            dir: sd,
            configs,
            last: 0,
        })
    }
}

impl Target for Diffusers {
    fn case(&mut self, rng: &mut Rng) -> Result<(), String> {
        let (name, doc) = &self.configs[self.last];
        write(&self.dir.join(name), doc.to_string().as_bytes());
        self.last = rng.below(self.configs.len());
        let (name, doc) = &self.configs[self.last];
        write(&self.dir.join(name), &mutate::json_bytes(doc, rng));
        let e = |e: adp_api::Error| e.to_string();
        let spec = DiffusionSpec::from_dir(&self.dir).map_err(e)?;
        spec.check_supported().map_err(e)?;
        let _ = (spec.dims(), spec.image_size(), spec.vae_downsampling());
        let s = &spec.scheduler;
        s.alphas_cumprod().map_err(e)?;
        s.ddim_timesteps(1 + rng.below(50)).map_err(e)?;
        s.img2img_timesteps(1 + rng.below(50), 0.5).map_err(e)?;
        let _ = s.ddim_step(25);
        spec.weights("unet").map_err(e)?;
        Ok(())
    }
}

/// `adp fit`/`adp score` photos: `images::read_resized` (decode within the photo limits, resize).
struct Photo {
    path: PathBuf,
    seed: Vec<u8>,
    format: image::ImageFormat,
}

impl Photo {
    fn new(dir: &Path, format: image::ImageFormat) -> Self {
        let img = image::RgbImage::from_fn(24, 20, |x, y| {
            image::Rgb([(x * 10) as u8, (y * 12) as u8, (x * y) as u8])
        });
        let mut seed = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut seed), format)
            .expect("encoding the seed photo");
        let ext = format.extensions_str()[0];
        Self {
            path: dir.join(format!("photo.{ext}")),
            seed,
            format,
        }
    }
}

impl Target for Photo {
    fn case(&mut self, rng: &mut Rng) -> Result<(), String> {
        let bytes = match (self.format, rng.below(3)) {
            (_, 0) => {
                let mut b = self.seed.clone();
                mutate::bytes(&mut b, rng);
                b
            }
            (image::ImageFormat::Png, _) => formats::png(&self.seed, rng),
            _ => formats::jpeg(&self.seed, rng),
        };
        write(&self.path, &bytes);
        let batch = adp_host::images::read_resized(std::slice::from_ref(&self.path), 16).map_err(|e| e.to_string())?;
        let _ = batch.len();
        Ok(())
    }
}
