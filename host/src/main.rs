//! `adp`: few-shot industrial anomaly detection (ADP) from the command line.
use adp_host::plugin;
use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "adp", version, about = "Few-shot anomaly detection via personalization")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every plugin found, with its version, ABI, devices and the traits it provides.
    Plugins {
        /// Folder to search (repeatable). Default: $ADP_PLUGIN_PATH, else the folder of `adp`.
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        /// One JSON object per plugin instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print image and text embeddings of a CLIP checkpoint as JSON, to check it against a
    /// reference.
    Embed {
        /// Plugin name (searched like `adp plugins` does) or path.
        #[arg(long)]
        plugin: String,
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        /// Folder with `open_clip_config.json` and `open_clip_model.safetensors`.
        #[arg(long)]
        clip: PathBuf,
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        #[arg(long = "text")]
        texts: Vec<String>,
        #[arg(long, default_value = "cpu")]
        device: adp_api::Device,
    },
    /// Fit a detector on a support set of normal images. With `--clip` (and `--sd`): ADP (SPEC
    /// §4–6); without: the `visual` method on the pretrained EfficientNet-Lite backbone.
    Fit {
        #[arg(long, default_value = "candle")]
        plugin: String,
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        /// open_clip checkpoint folder; needed by every method but `visual`.
        #[arg(long)]
        clip: Option<PathBuf>,
        /// EfficientNet-Lite safetensors for `visual` [default: the one scripts/setup-weights.sh
        /// provides, $ADP_WEIGHTS_DIR/efficientnet-lite0.safetensors]
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// Stable Diffusion folder (diffusers layout); not needed by `--method winclip`.
        #[arg(long)]
        sd: Option<PathBuf>,
        /// A folder of images, or image files.
        #[arg(long, num_args = 1.., required = true)]
        support: Vec<PathBuf>,
        #[arg(long)]
        label: Option<String>,
        /// [default: adp with --clip, else visual]
        #[arg(long, value_enum)]
        method: Option<adp_host::pipeline::Method>,
        #[arg(long, default_value = "cpu")]
        device: adp_api::Device,
        /// Optimisation steps per concept (SPEC: 3000).
        #[arg(long, default_value_t = 3000)]
        steps: u64,
        #[arg(long, default_value_t = 5e-4)]
        learning_rate: f32,
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        #[arg(long, default_value_t = 30)]
        ddim_steps: usize,
        #[arg(long, default_value_t = 20)]
        validation_pseudo: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Nothing on stderr but errors (no progress bars); stdout keeps its one JSON line.
        #[arg(long)]
        quiet: bool,
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
    /// Score images with a fitted detector: one JSON line per image.
    Score {
        #[arg(long)]
        detector: PathBuf,
        /// Defaults: the backend and CLIP folder the detector was fitted with.
        #[arg(long)]
        plugin: Option<String>,
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Default: the backbone file the detector was fitted with (`visual`).
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// Write each anomaly map as a grey-scale PNG here.
        #[arg(long)]
        maps: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        device: adp_api::Device,
        /// Nothing on stderr but errors (no progress bar); stdout keeps one JSON line per image.
        #[arg(long)]
        quiet: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Run the evaluation protocol (SPEC §8) and write report.json, report.md and overlays.
    Eval {
        #[arg(long, default_value = "candle")]
        plugin: String,
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        #[arg(long)]
        clip: Option<PathBuf>,
        /// EfficientNet-Lite safetensors for `visual` [default: as for `adp fit`]
        #[arg(long)]
        backbone: Option<PathBuf>,
        #[arg(long)]
        sd: Option<PathBuf>,
        /// Dataset root (MVTec-AD layout, or VisA with split_csv/1cls.csv).
        #[arg(long)]
        data: PathBuf,
        /// Categories (repeatable); all of the dataset's when absent.
        #[arg(long = "category")]
        categories: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
        shots: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
        seeds: Vec<u64>,
        /// Repeatable [default: adp with --clip, else visual]
        #[arg(long = "method", value_enum)]
        methods: Vec<adp_host::pipeline::Method>,
        #[arg(long)]
        label: Option<String>,
        #[arg(long, default_value = "cpu")]
        device: adp_api::Device,
        #[arg(long, default_value_t = 3000)]
        steps: u64,
        #[arg(long, default_value_t = 4)]
        batch_size: usize,
        #[arg(long, default_value_t = 30)]
        ddim_steps: usize,
        #[arg(long, default_value_t = 20)]
        validation_pseudo: usize,
        /// Only the first N good and N defective test images per category (smoke runs).
        #[arg(long)]
        limit: Option<usize>,
        /// Overlays written per category for good and for defective images.
        #[arg(long, default_value_t = 3)]
        overlays: usize,
        /// Nothing on stderr but errors (no progress bars, no table); stdout keeps one JSON line per run.
        #[arg(long)]
        quiet: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Time the `visual` method per image (backbone patch features, reference association) on one
    /// or more plugins in the same run; each row gives its ratio to the first plugin.
    Bench {
        /// Plugin to time (repeatable); the first is the peer the others are compared with.
        #[arg(long = "plugin", default_value = "candle")]
        plugins: Vec<String>,
        #[arg(long = "plugin-dir")]
        plugin_dirs: Vec<PathBuf>,
        /// EfficientNet-Lite safetensors [default: as for `adp fit`]
        #[arg(long)]
        backbone: Option<PathBuf>,
        /// The first N images are the support set, the others are scored.
        #[arg(long, default_value_t = 4)]
        shots: usize,
        /// Timed repetitions per plugin, after one warm-up; medians are reported.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        #[arg(long, default_value = "cpu")]
        device: adp_api::Device,
        /// No table on stderr; stdout keeps one JSON line per plugin.
        #[arg(long)]
        quiet: bool,
        /// Folders of images, or image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Write deterministic small checkpoints in the real layouts: an open_clip ViT (`clip/`) and
    /// diffusers folders (`sd-epsilon/`, `sd-v/`).
    Fixtures {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// `tiny`, or an open_clip preset (ViT-B-16, ViT-B-16-plus-240, ViT-L-14, ViT-H-14) for
        /// real-size random weights.
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// `tiny`, or `sd-2.1` for Stable Diffusion 2.1's real UNet and VAE with random weights.
        #[arg(long, default_value = "tiny")]
        diffusion: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Plugins { plugin_dirs, json } => list_plugins(&plugin::plugin_dirs(&plugin_dirs), json),
        Command::Embed { plugin: name, plugin_dirs, clip, images, texts, device } => {
            let backend = plugin::find(&name, &plugin::plugin_dirs(&plugin_dirs))?;
            let encoder = adp_api::Backend::text_image_encoder(&backend, &adp_api::ClipCheckpoint::from_dir(&clip)?, device)?;
            for path in &images {
                let batch = adp_api::ImageBatch::read_files(std::slice::from_ref(path))?;
                let e = encoder.image_embeddings(&batch)?;
                println!("{}", serde_json::json!({ "image": path, "embedding": e.data() }));
            }
            if !texts.is_empty() {
                let prompts: Vec<_> = texts.iter().map(adp_api::Prompt::plain).collect();
                let e = encoder.text_embeddings(&prompts)?;
                for (i, text) in texts.iter().enumerate() {
                    println!("{}", serde_json::json!({ "text": text, "embedding": e.row(i) }));
                }
            }
            Ok(())
        }
        Command::Fit { plugin: name, plugin_dirs, clip, backbone, sd, support, label, method, device, steps, learning_rate, batch_size, ddim_steps, validation_pseudo, seed, quiet, output } => {
            let backend = plugin::find(&name, &plugin::plugin_dirs(&plugin_dirs))?;
            let method = method.unwrap_or(if clip.is_some() { adp_host::pipeline::Method::Adp } else { adp_host::pipeline::Method::Visual });
            let files = adp_host::images::list(&support)?;
            let options = adp_host::pipeline::FitOptions { method, label, device, steps, learning_rate, batch_size, ddim_steps, validation_pseudo, seed, ..Default::default() };
            if !method.needs_clip() {
                let backbone = adp_api::BackboneCheckpoint::from_file(&backbone.unwrap_or_else(adp_host::visual::default_backbone))?;
                let model = adp_host::visual::VisualModel::open(&backend, &backbone, device)?;
                let support = adp_host::images::read_resized(&files, model.extractor.dims().image_size)?;
                let mut bars = adp_host::progress::StageBars::new(adp_host::progress::Output::detect(quiet));
                let detector = model.fit(&support, &options, &mut |stage| bars.observe(stage))?;
                bars.finish();
                detector.save(&output)?;
                println!("{}", serde_json::json!({ "detector": output, "method": detector.header.method, "support": files.len() }));
                return Ok(());
            }
            let clip = adp_api::ClipCheckpoint::from_dir(&clip.ok_or_else(|| anyhow::anyhow!("--method {} needs --clip DIR", method.name()))?)?;
            let sd = sd.map(|d| adp_api::DiffusionSpec::from_dir(&d)).transpose()?;
            let support = adp_host::images::read_resized(&files, clip.config.vision_cfg.image_size.max(sd.as_ref().map_or(0, |s| s.vae.sample_size.unwrap_or(0))))?;
            let fitter = adp_host::pipeline::Fitter { backend: &backend, clip: &clip, sd: sd.as_ref(), options };
            let mut bars = adp_host::progress::StageBars::new(adp_host::progress::Output::detect(quiet));
            let detector = fitter.fit(&support, &mut |stage| bars.observe(stage))?;
            bars.finish();
            detector.save(&output)?;
            println!("{}", serde_json::json!({ "detector": output, "method": detector.header.method, "support": files.len(), "weights": detector.header.weights }));
            Ok(())
        }
        Command::Score { detector: path, plugin: name, plugin_dirs, clip, backbone, maps, device, quiet, images } => {
            let detector = adp_host::detector::DetectorFile::load(&path)?;
            let backend = plugin::find(name.as_deref().unwrap_or(&detector.header.backend), &plugin::plugin_dirs(&plugin_dirs))?;
            let checkpoints = adp_host::service::checkpoints_for(&detector.header, clip.as_deref(), backbone.as_deref())?;
            let scoring = adp_host::pipeline::Scoring::open(&backend, &checkpoints, detector, device)?;
            if let Some(dir) = &maps {
                std::fs::create_dir_all(dir).map_err(|e| adp_api::Error::io(dir, e))?;
            }
            let files = adp_host::images::list(&images)?;
            let bar = adp_host::progress::item_bar(adp_host::progress::Output::detect(quiet), files.len() as u64, "scoring");
            for file in files {
                let batch = adp_api::ImageBatch::read_files(std::slice::from_ref(&file))?;
                let s = scoring.score(&[batch])?.remove(0);
                let map_file = match &maps {
                    Some(dir) => Some(adp_host::images::write_map(dir, &file, &s)?),
                    None => None,
                };
                bar.suspend(|| println!("{}", serde_json::json!({ "path": file, "score": s.score, "language": s.language, "association": s.association, "map": map_file })));
                bar.inc(1);
            }
            bar.finish_and_clear();
            Ok(())
        }
        Command::Eval { plugin: name, plugin_dirs, clip, backbone, sd, data, categories, shots, seeds, methods, label, device, steps, batch_size, ddim_steps, validation_pseudo, limit, overlays, quiet, out } => {
            let backend = plugin::find(&name, &plugin::plugin_dirs(&plugin_dirs))?;
            let methods = if methods.is_empty() { vec![if clip.is_some() { adp_host::pipeline::Method::Adp } else { adp_host::pipeline::Method::Visual }] } else { methods };
            let checkpoints = adp_host::pipeline::Checkpoints {
                clip: clip.as_deref().map(adp_api::ClipCheckpoint::from_dir).transpose()?,
                backbone: if methods.iter().any(|m| !m.needs_clip()) {
                    Some(adp_api::BackboneCheckpoint::from_file(&backbone.unwrap_or_else(adp_host::visual::default_backbone))?)
                } else {
                    None
                },
            };
            let sd = sd.map(|d| adp_api::DiffusionSpec::from_dir(&d)).transpose()?;
            let categories = if categories.is_empty() { adp_host::dataset::categories(&data)? } else { categories };
            let fit = adp_host::pipeline::FitOptions { label, device, steps, batch_size, ddim_steps, validation_pseudo, ..Default::default() };
            let options = adp_host::eval::EvalOptions { data, categories, shots, seeds, methods, fit, limit, overlays, out: out.clone() };
            let runs = options.categories.len() * options.methods.len() * options.shots.len() * options.seeds.len();
            let mut bars = adp_host::progress::StageBars::with_runs(adp_host::progress::Output::detect(quiet), runs);
            let report = adp_host::eval::run(&backend, &checkpoints, sd.as_ref(), &options, &mut |tag, stage| bars.observe_run(tag, stage))?;
            bars.finish();
            for r in &report.runs {
                println!("{}", serde_json::to_string(r)?);
            }
            if !quiet {
                eprintln!("{}", adp_host::eval::markdown(&report, &options));
                eprintln!("report: {}", out.join("report.md").display());
            }
            Ok(())
        }
        Command::Bench { plugins, plugin_dirs, backbone, shots, repeats, device, quiet, images } => {
            let dirs = plugin::plugin_dirs(&plugin_dirs);
            let loaded = plugins.iter().map(|p| Ok((p.clone(), plugin::find(p, &dirs)?))).collect::<Result<Vec<_>>>()?;
            let backends: Vec<(String, &dyn adp_api::Backend)> = loaded.iter().map(|(n, b)| (n.clone(), b as &dyn adp_api::Backend)).collect();
            let backbone = adp_api::BackboneCheckpoint::from_file(&backbone.unwrap_or_else(adp_host::visual::default_backbone))?;
            let files = adp_host::images::list(&images)?;
            if files.len() <= shots {
                anyhow::bail!("adp bench needs more images ({}) than --shots ({shots}): the first {shots} are the support set, the others are scored", files.len());
            }
            let size = backbone.config.image_size;
            let support = adp_host::images::read_resized(&files[..shots], size)?;
            let test = adp_host::images::read_resized(&files[shots..], size)?;
            let rows = adp_host::bench::visual(&backends, &backbone, &support, &test, adp_host::bench::BenchOptions { repeats, device })?;
            for r in &rows {
                println!("{}", serde_json::to_string(r)?);
            }
            if !quiet {
                eprint!("{}", adp_host::bench::markdown(&rows));
            }
            Ok(())
        }
        Command::Fixtures { out, seed, preset, diffusion } => {
            let diffusion = adp_host::fixtures::diffusers::DiffusionPreset::from_name(&diffusion)?;
            let paths = adp_host::fixtures::write_all_with(&out, seed, &preset, diffusion)?;
            println!("{}\n{}\n{}", paths.clip.display(), paths.sd_epsilon.display(), paths.sd_v.display());
            Ok(())
        }
    }
}

fn list_plugins(dirs: &[PathBuf], json: bool) -> Result<()> {
    let mut found = 0;
    for dir in dirs {
        for (path, loaded) in plugin::discover(dir)? {
            found += 1;
            let row = match &loaded {
                Ok(p) => {
                    let i = p.backend_info();
                    serde_json::json!({
                        "name": i.name, "version": p.crate_version(), "abi": p.abi_version(),
                        "runtime": i.runtime,
                        "devices": i.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                        "traits": i.provides.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                        "path": path,
                    })
                }
                Err(e) => serde_json::json!({ "path": path, "error": e.to_string() }),
            };
            if json {
                println!("{row}");
                continue;
            }
            match loaded {
                Ok(p) => {
                    let i = p.backend_info();
                    let list = |v: Vec<String>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
                    println!("{} {} (ABI {}, {})", i.name, p.crate_version(), p.abi_version(), i.runtime);
                    println!("  devices: {}", list(i.devices.iter().map(|d| d.to_string()).collect()));
                    println!("  traits:  {}", list(i.provides.iter().map(|c| c.to_string()).collect()));
                    println!("  path:    {}", path.display());
                }
                Err(e) => println!("(not loadable) {}\n  error:   {e}", path.display()),
            }
        }
    }
    if found == 0 && !json {
        println!("no plugins found in {dirs:?}");
    }
    Ok(())
}
