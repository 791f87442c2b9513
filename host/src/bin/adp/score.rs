//! `adp score`: one JSON line per photo from a fitted detector.
use crate::common::{PluginDirs, Run};
use crate::progress::{item_bar, Output};
use adp_api::{Error, ImageBatch};
use adp_host::detect::{DetectorFile, Scoring};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    detector: PathBuf,
    /// Defaults: the backend and CLIP folder the detector was fitted with.
    #[arg(long)]
    plugin: Option<String>,
    #[command(flatten)]
    plugins: PluginDirs,
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Default: the backbone file the detector was fitted with (`visual`).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Write each anomaly map as a grey-scale PNG here.
    #[arg(long)]
    maps: Option<PathBuf>,
    #[command(flatten)]
    run: Run,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let detector = DetectorFile::load(&a.detector)?;
    let backend = a.plugins.find(a.plugin.as_deref().unwrap_or(&detector.header.backend))?;
    let checkpoints = detector.header.checkpoints(a.clip.as_deref(), a.backbone.as_deref())?;
    let scoring = Scoring::open(&backend, &checkpoints, detector, a.run.device)?;
    if let Some(dir) = &a.maps {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let files = adp_host::images::list(&a.images)?;
    let bar = item_bar(Output::detect(a.run.quiet), files.len() as u64, "scoring");
    for file in files {
        let s = scoring.score(&[ImageBatch::read_files(std::slice::from_ref(&file))?])?.remove(0);
        let map = match &a.maps {
            Some(dir) => Some(adp_host::images::write_map(dir, &file, &s.map, s.height, s.width)?),
            None => None,
        };
        let line = serde_json::json!({
            "path": file, "score": s.score, "language": s.language, "association": s.association, "map": map,
        });
        bar.suspend(|| println!("{line}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
