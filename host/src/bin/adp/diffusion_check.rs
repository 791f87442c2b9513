//! `adp diffusion-check`: a diffusers checkpoint's text encoder, UNet and VAE, run through a
//! plugin's `LatentDiffuser` on inputs the user gives in a safetensors file, with the outputs
//! written to another, to compare with diffusers (`tools/check_diffusion.py`), as `adp embed`
//! does for CLIP. Each part runs when its inputs are there:
//!
//! | inputs | outputs |
//! |---|---|
//! | metadata `prompts` (JSON list; tensor `concept` at metadata `placeholder`, default `<c>`) | `conditioning` [P, 77, W] |
//! | `images` [N, 3, S, S] in [0, 1] | `vae_latents` [N, C, s, s], `vae_decoded` [N, 3, S, S] |
//! | `latents` [N, C, s, s] | `latents_decoded` [N, 3, S, S] |
//! | `latents`, `timesteps` [N], N prompts | `unet_prediction` [N, C, s, s] |
//! | `images`, `noise` [N, C, s, s], `timesteps`, N prompts | `denoising_loss` [1] (and `denoising_loss_grad` [W] with a concept) |
use crate::common::PluginDirs;
use adp_api::config::st::read_f32;
use adp_api::requests::{DenoisingInput, DenoisingLossRequest, DiffuserDims, UnetRequest};
use adp_api::{Backend, Device, DiffusionSpec, Error, ImageBatch, LatentDiffuser, Prompt, Result, Tensor};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// Plugin name (searched like `adp plugins` does) or path.
    #[arg(long, default_value = "candle")]
    plugin: String,
    #[command(flatten)]
    plugins: PluginDirs,
    /// The diffusers folder (`model_index.json`, `text_encoder/`, `tokenizer/`, `unet/`, `vae/`,
    /// `scheduler/`).
    #[arg(long)]
    diffusion: PathBuf,
    /// safetensors with the inputs (see `adp diffusion-check --help` and the README).
    #[arg(long)]
    inputs: PathBuf,
    /// Where the outputs are written (safetensors, atomically).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value = "f32", help = crate::common::DTYPE_HELP)]
    dtype: adp_api::Dtype,
}

const KNOWN: [&str; 5] = ["images", "latents", "timesteps", "noise", "concept"];

/// The inputs of one check, each validated against the checkpoint's dimensions.
#[derive(Default)]
struct Inputs {
    prompts: Option<Vec<Prompt>>,
    concept: Option<(String, Vec<f32>)>,
    images: Option<Tensor>,
    latents: Option<Tensor>,
    timesteps: Option<Vec<u32>>,
    noise: Option<Tensor>,
}

/// An f32 tensor `name` of `shape` (`None`: any), finite.
fn float(st: &SafeTensors, path: &Path, name: &str, shape: &[Option<usize>]) -> Result<Option<Tensor>> {
    let Ok(view) = st.tensor(name) else { return Ok(None) };
    let bad = |m: String| Error::config(path, format!("tensor `{name}`: {m}"));
    if view.dtype() != Dtype::F32 {
        return Err(bad(format!("dtype {:?}, expected F32", view.dtype())));
    }
    let t = read_f32(st, name, path)?;
    let what = format!("{}: tensor `{name}`", path.display());
    t.expect_shape(&what, shape)?;
    t.check_finite(&what)?;
    if t.data().is_empty() {
        return Err(bad("empty".into()));
    }
    Ok(Some(t))
}

/// `timesteps`: I64 or I32, one dimension, each in `0..train`.
fn timesteps(st: &SafeTensors, path: &Path, train: usize) -> Result<Option<Vec<u32>>> {
    let Ok(view) = st.tensor("timesteps") else {
        return Ok(None);
    };
    let bad = |m: String| Error::config(path, format!("tensor `timesteps`: {m}"));
    if view.shape().len() != 1 || view.shape()[0] == 0 {
        return Err(bad(format!("shape {:?}, expected [N] with N ≥ 1", view.shape())));
    }
    let values: Vec<i64> = match view.dtype() {
        Dtype::I64 => view
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        Dtype::I32 => view
            .data()
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
            .collect(),
        other => return Err(bad(format!("dtype {other:?}, expected I64 or I32"))),
    };
    values
        .iter()
        .map(|&t| match u32::try_from(t) {
            Ok(t) if (t as usize) < train => Ok(t),
            _ => Err(bad(format!("{t} is outside 0..{train} (the scheduler's timesteps)"))),
        })
        .collect::<Result<_>>()
        .map(Some)
}

fn read_inputs(path: &Path, d: &DiffuserDims) -> Result<Inputs> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) =
        SafeTensors::read_metadata(&bytes).map_err(|e| Error::config(path, format!("not safetensors: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::config(path, e.to_string()))?;
    if let Some(name) = st.names().into_iter().find(|n| !KNOWN.contains(&&n[..])) {
        return Err(Error::config(
            path,
            format!("unknown tensor `{name}` (known: {})", KNOWN.join(", ")),
        ));
    }
    let meta = meta.metadata().clone().unwrap_or_default();
    let (s, c, l) = (d.image_size, d.latent_channels, d.image_size / d.vae_downsampling);
    let mut inputs = Inputs {
        images: float(&st, path, "images", &[None, Some(3), Some(s), Some(s)])?,
        latents: float(&st, path, "latents", &[None, Some(c), Some(l), Some(l)])?,
        noise: float(&st, path, "noise", &[None, Some(c), Some(l), Some(l)])?,
        timesteps: timesteps(&st, path, d.train_timesteps)?,
        ..Default::default()
    };
    if let Some(images) = &inputs.images {
        if let Some(v) = images.data().iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(Error::config(
                path,
                format!("tensor `images`: value {v} outside [0, 1]"),
            ));
        }
    }
    let placeholder = meta.get("placeholder").cloned().unwrap_or_else(|| "<c>".into());
    if let Some(concept) = float(&st, path, "concept", &[Some(d.text_width)])? {
        inputs.concept = Some((placeholder.clone(), concept.into_data()));
    }
    if let Some(text) = meta.get("prompts") {
        let texts: Vec<String> = serde_json::from_str(text)
            .map_err(|e| Error::config(path, format!("metadata `prompts`: not a JSON list of strings: {e}")))?;
        if texts.is_empty() {
            return Err(Error::config(path, "metadata `prompts`: empty list"));
        }
        let prompts = texts.iter().map(|t| match &inputs.concept {
            Some((ph, v)) if t.contains(ph.as_str()) => Prompt::with_concept(t.as_str(), ph, v),
            _ => Prompt::plain(t.as_str()),
        });
        inputs.prompts = Some(prompts.collect());
    }
    if inputs.concept.is_some() && !inputs.prompts.iter().flatten().any(|p| !p.concepts.is_empty()) {
        return Err(Error::config(
            path,
            format!("tensor `concept`: no prompt holds its placeholder {placeholder:?}"),
        ));
    }
    Ok(inputs)
}

/// `count` of tensor `a` equals that of `b`, or an error naming both.
fn same_count(path: &Path, (a, n): (&str, usize), (b, m): (&str, usize)) -> Result<()> {
    match n == m {
        true => Ok(()),
        false => Err(Error::config(path, format!("{n} {a} but {m} {b}: one each"))),
    }
}

/// Every output the inputs allow, by name.
fn run_parts(dif: &dyn LatentDiffuser, path: &Path, i: &Inputs) -> Result<Vec<(&'static str, Tensor)>> {
    let mut out = Vec::new();
    let conditioning = i.prompts.as_ref().map(|p| dif.text_conditioning(p)).transpose()?;
    if let Some(images) = &i.images {
        let latents = dif.vae_encode(&ImageBatch::new(images.clone())?)?;
        out.push(("vae_decoded", dif.vae_decode(&latents)?.pixels().clone()));
        out.push(("vae_latents", latents));
    }
    if let Some(latents) = &i.latents {
        out.push(("latents_decoded", dif.vae_decode(latents)?.pixels().clone()));
    }
    let n_prompts = i.prompts.as_ref().map_or(0, Vec::len);
    if let (Some(latents), Some(t), Some(cond)) = (&i.latents, &i.timesteps, &conditioning) {
        same_count(path, ("latents", latents.shape()[0]), ("timesteps", t.len()))?;
        same_count(path, ("latents", latents.shape()[0]), ("prompts", n_prompts))?;
        let request = UnetRequest {
            latents: latents.clone(),
            timesteps: t.clone(),
            conditioning: cond.clone(),
        };
        out.push(("unet_prediction", dif.unet_prediction(&request)?));
    }
    if let Some(noise) = &i.noise {
        let (Some(images), Some(t), Some(prompts)) = (&i.images, &i.timesteps, &i.prompts) else {
            return Err(Error::config(
                path,
                "tensor `noise` needs `images`, `timesteps` and `prompts`",
            ));
        };
        let n = images.shape()[0];
        same_count(path, ("images", n), ("noise", noise.shape()[0]))?;
        same_count(path, ("images", n), ("timesteps", t.len()))?;
        same_count(path, ("images", n), ("prompts", prompts.len()))?;
        let request = DenoisingLossRequest {
            input: DenoisingInput::Images(ImageBatch::new(images.clone())?),
            prompts: prompts.clone(),
            timesteps: t.clone(),
            noise: noise.clone(),
            gradient_of: i.concept.as_ref().map(|(ph, _)| ph.clone()),
        };
        let loss = dif.denoising_loss(&request)?;
        out.push(("denoising_loss", Tensor::new(vec![1], vec![loss.value])?));
        if let Some(grad) = loss.grad {
            out.push(("denoising_loss_grad", Tensor::new(vec![grad.len()], grad)?));
        }
    }
    if let Some(cond) = conditioning {
        out.push(("conditioning", cond));
    }
    if out.is_empty() {
        return Err(Error::config(
            path,
            "nothing to run: give metadata `prompts`, tensor `images` or tensor `latents`",
        ));
    }
    Ok(out)
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let backend = a.plugins.find(&a.plugin)?;
    let spec = DiffusionSpec::from_dir(&a.diffusion)?.with_dtype(a.dtype);
    let dif = backend.latent_diffuser(&spec, a.device)?;
    let inputs = read_inputs(&a.inputs, &dif.dims())?;
    let outputs = run_parts(&*dif, &a.inputs, &inputs)?;
    let bytes: Vec<Vec<u8>> = outputs
        .iter()
        .map(|(_, t)| t.data().iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = outputs
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| Ok((name.to_string(), TensorView::new(Dtype::F32, t.shape().to_vec(), b)?)))
        .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let info = backend.info();
    let about = serde_json::json!({
        "backend": info.name, "backend_version": info.version, "diffusion": a.diffusion,
        "device": a.device.to_string(), "dtype": a.dtype.to_string(), "dims": serde_json::to_value(dif.dims())?,
    });
    let meta = HashMap::from([("adp.diffusion_check".to_string(), about.to_string())]);
    adp_api::atomic::write_atomic(&a.out, &safetensors::serialize(views, Some(meta))?)?;
    let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
    println!("{}", serde_json::json!({ "out": a.out, "outputs": names }));
    Ok(())
}
