//! `adp bench`: the `visual` method timed per image on several plugins in one run.
use crate::common::{PluginDirs, Run};
use adp_api::{BackboneCheckpoint, Backend};
use adp_host::detect::default_backbone;
use adp_host::eval::bench::{self, BenchOptions};
use adp_host::images::{list, read_resized};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plugin to time (repeatable); the first is the peer the others are compared with.
    #[arg(long = "plugin", default_value = "candle")]
    plugins: Vec<String>,
    #[command(flatten)]
    dirs: PluginDirs,
    /// EfficientNet-Lite safetensors [default: as for `adp fit`]
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// The first N images are the support set, the others are scored.
    #[arg(long, default_value_t = 4)]
    shots: usize,
    /// Timed repetitions per plugin, after one warm-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    #[command(flatten)]
    run: Run,
    /// Folders of images, or image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let loaded = a
        .plugins
        .iter()
        .map(|p| Ok((p.clone(), a.dirs.find(p)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let backends: Vec<(String, &dyn Backend)> = loaded.iter().map(|(n, b)| (n.clone(), b as &dyn Backend)).collect();
    let backbone = BackboneCheckpoint::from_file(&a.backbone.unwrap_or_else(default_backbone))?;
    let files = list(&a.images)?;
    let shots = a.shots;
    if files.len() <= shots {
        anyhow::bail!(
            "adp bench needs more images ({}) than --shots ({shots}): the first {shots} are the support set, the others are scored",
            files.len()
        );
    }
    let size = backbone.config.image_size;
    let (support, test) = (
        read_resized(&files[..shots], size)?,
        read_resized(&files[shots..], size)?,
    );
    let rows = bench::visual(
        &backends,
        &backbone,
        &support,
        &test,
        BenchOptions {
            repeats: a.repeats,
            device: a.run.device,
        },
    )?;
    for r in &rows {
        println!("{}", serde_json::to_string(r)?);
    }
    if !a.run.quiet {
        eprint!("{}", bench::markdown(&rows));
    }
    Ok(())
}
