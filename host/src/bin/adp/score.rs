//! `adp score`: one JSON line per photo from a fitted detector, with its decision.
use crate::common::{PluginDirs, Run};
use crate::progress::{item_bar, Output};
use adp_api::{Error, ImageBatch};
use adp_host::detect::decision::normalise;
use adp_host::detect::{Decision, DetectorFile, Scoring};
use std::path::{Path, PathBuf};

/// The exit status when some photos could not be scored (the others were).
const SOME_FAILED: i32 = 2;

#[derive(clap::Args)]
#[command(
    after_help = "Each photo gets one JSON line on stdout: `path`, `anomalous` (score above the threshold), \
`score` (raw), `normalised` (the threshold at 0.5, clipped to [0, 1]), `threshold`, `language`, `association`, \
and `map`/`overlay` where written. A photo that cannot be read or scored gets `{\"path\": ..., \"error\": ...}` \
(also on stderr), the others are still scored, and adp exits with status 2."
)]
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
    #[arg(long, default_value = "f32", help = crate::common::DTYPE_HELP)]
    dtype: adp_api::Dtype,
    /// Default: the backbone file the detector was fitted with (`visual`).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// Decide with this image-score threshold instead of the one stored in the detector (needed
    /// for detectors fitted before thresholds were stored).
    #[arg(long)]
    threshold: Option<f32>,
    /// Write each anomaly map as a grey-scale PNG here, at the photo's path below the folder all
    /// the photos share (`a/good/000.png` and `b/good/000.png` → DIR/a/good/000_map.png and
    /// DIR/b/good/000_map.png; a single photo → DIR/000_map.png).
    #[arg(long)]
    maps: Option<PathBuf>,
    /// Write a coloured heat-map overlay of each photo here (named as --maps names maps, with
    /// `_overlay.png`): one colour scale per detector, blue at 0, yellow at its map threshold
    /// (--threshold for a detector that stores none), red at twice it and above, and a magenta
    /// contour where the map crosses the threshold.
    #[arg(long)]
    overlays: Option<PathBuf>,
    /// Replace map and overlay files that already exist (without it they are refused before
    /// scoring).
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    run: Run,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

/// Where each photo's outputs go, every file known and checked before the first photo is scored.
fn outputs(
    dir: Option<&Path>,
    files: &[PathBuf],
    overwrite: bool,
    paths: fn(&Path, &[PathBuf]) -> adp_api::Result<Vec<PathBuf>>,
) -> anyhow::Result<Vec<Option<PathBuf>>> {
    let Some(dir) = dir else {
        return Ok(vec![None; files.len()]);
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let paths = paths(dir, files)?;
    for p in &paths {
        adp_host::images::check_new(p, overwrite)?;
    }
    Ok(paths.into_iter().map(Some).collect())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let detector = DetectorFile::load(&a.detector)?;
    let decision: Option<Decision> = detector.header.decision.clone();
    if let Some(t) = a.threshold.filter(|t| !t.is_finite()) {
        anyhow::bail!("--threshold {t}: not a finite number");
    }
    let threshold = a.threshold.or(decision.as_ref().map(|d| d.threshold));
    // The overlay scale: the stored map threshold, else the given image threshold.
    let map_threshold = decision.as_ref().map(|d| d.map_threshold).or(a.threshold);
    if threshold.is_none() {
        eprintln!(
            "adp score: {} stores no threshold (fitted before decisions existed): `anomalous` is null; \
             refit it, or give --threshold",
            a.detector.display()
        );
        if a.overlays.is_some() {
            anyhow::bail!("--overlays needs a threshold to fix the colour scale: give --threshold");
        }
    }
    // A path is taken from the user's --plugin only; the detector's backend is a name.
    let backend = match &a.plugin {
        Some(p) => a.plugins.find(p)?,
        None => adp_host::plugin::find_named(&detector.header.backend, &a.plugins.dirs())?,
    };
    let mut checkpoints = detector.header.checkpoints(a.clip.as_deref(), a.backbone.as_deref())?;
    if let Some(clip) = checkpoints.clip.as_mut() {
        clip.dtype = a.dtype;
    }
    let scoring = Scoring::open(&backend, &checkpoints, detector, a.run.device)?;
    let files = adp_host::images::list(&a.images)?;
    let maps = outputs(a.maps.as_deref(), &files, a.overwrite, adp_host::images::map_paths)?;
    let overlays = outputs(
        a.overlays.as_deref(),
        &files,
        a.overwrite,
        adp_host::overlay::overlay_paths,
    )?;
    let bar = item_bar(Output::detect(a.run.quiet), files.len() as u64, "scoring");
    let mut failed = 0;
    for ((file, map), overlay) in files.iter().zip(maps).zip(overlays) {
        // One photo's failure is its own line; the photos after it are still scored.
        let line = (|| -> adp_api::Result<serde_json::Value> {
            let photo = ImageBatch::read_files(std::slice::from_ref(file))?;
            let s = (scoring.score(std::slice::from_ref(&photo))?.into_iter().next())
                .ok_or_else(|| Error::invalid("scoring", "no score for the photo"))?;
            if let Some(out) = &map {
                adp_host::images::write_map(out, &s.map, s.height, s.width, a.overwrite)?;
            }
            if let (Some(out), Some(t)) = (&overlay, map_threshold) {
                let img = adp_host::overlay::render(&photo, &s.map, t)?;
                adp_host::overlay::write_png(out, &img, a.overwrite)?;
            }
            let normalised = match (&decision, threshold) {
                (Some(d), Some(t)) => Some(normalise(s.score, t, d.spread())),
                _ => None,
            };
            Ok(serde_json::json!({
                "path": file,
                "anomalous": threshold.map(|t| Decision::anomalous(s.score, t)),
                "score": s.score,
                "normalised": normalised,
                "threshold": threshold,
                "language": s.language,
                "association": s.association,
                "map": map,
                "overlay": overlay,
            }))
        })()
        .unwrap_or_else(|e| {
            failed += 1;
            bar.suspend(|| eprintln!("adp score: {}: {e}", file.display()));
            serde_json::json!({ "path": file, "error": e.to_string() })
        });
        bar.suspend(|| println!("{line}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    if failed > 0 {
        eprintln!(
            "adp score: {failed} of {} photos failed (the others were scored)",
            files.len()
        );
        std::process::exit(SOME_FAILED);
    }
    Ok(())
}
