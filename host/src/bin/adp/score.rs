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
    /// Plugin name or path. Default: the backend the detector was fitted with, by name, in the
    /// plugin folders (never a path from the file). The CLIP folder defaults likewise.
    #[arg(long)]
    plugin: Option<String>,
    #[command(flatten)]
    plugins: PluginDirs,
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Default: the backbone file the detector was fitted with (`visual`).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Write each anomaly map as a grey-scale PNG here, at the photo's path below the folder all
    /// the photos share (`a/good/000.png` and `b/good/000.png` → DIR/a/good/000_map.png and
    /// DIR/b/good/000_map.png; a single photo → DIR/000_map.png).
    #[arg(long)]
    maps: Option<PathBuf>,
    /// Replace map files that already exist (without it they are refused before scoring).
    #[arg(long, requires = "maps")]
    overwrite: bool,
    #[command(flatten)]
    run: Run,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let detector = DetectorFile::load(&a.detector)?;
    // A path is taken from the user's --plugin only; the detector's backend is a name.
    let backend = match &a.plugin {
        Some(p) => a.plugins.find(p)?,
        None => adp_host::plugin::find_named(&detector.header.backend, &a.plugins.dirs())?,
    };
    let checkpoints = detector.header.checkpoints(a.clip.as_deref(), a.backbone.as_deref())?;
    let scoring = Scoring::open(&backend, &checkpoints, detector, a.run.device)?;
    let files = adp_host::images::list(&a.images)?;
    // Every map's file is known, and checked, before the first photo is scored.
    let maps = match &a.maps {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let paths = adp_host::images::map_paths(dir, &files)?;
            for p in &paths {
                adp_host::images::check_new(p, a.overwrite)?;
            }
            paths.into_iter().map(Some).collect()
        }
        None => vec![None; files.len()],
    };
    let bar = item_bar(Output::detect(a.run.quiet), files.len() as u64, "scoring");
    for (file, map) in files.into_iter().zip(maps) {
        let s = scoring
            .score(&[ImageBatch::read_files(std::slice::from_ref(&file))?])?
            .remove(0);
        if let Some(out) = &map {
            adp_host::images::write_map(out, &s.map, s.height, s.width, a.overwrite)?;
        }
        let line = serde_json::json!({
            "path": file, "score": s.score, "language": s.language, "association": s.association, "map": map,
        });
        bar.suspend(|| println!("{line}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
