//! `adp bench`: every part of the pipeline a user waits for, timed per row on several plugins in
//! one run, each (row, plugin) in a child process of its own so that its peak memory is its own;
//! with `--service`, the async service's photos per second per configuration of workers and
//! threads.
use crate::common::{PluginDirs, Run};
use adp_api::{BackboneCheckpoint, Backend, ClipCheckpoint, DiffusionSpec, ImageBatch};
use adp_host::bench::rows::{self, Inputs, Row, RowTiming};
use adp_host::bench::service::{self as service_bench, Config};
use adp_host::detect::default_backbone;
use adp_host::eval::bench::median;
use adp_host::images::{list, read_resized};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Plugin to time (repeatable); the first is the one the others are compared with.
    #[arg(long = "plugin", default_value = "candle")]
    plugins: Vec<String>,
    #[command(flatten)]
    dirs: PluginDirs,
    /// Rows to time: visual, clip-image, clip-dense, clip-text, unet, learn-step-1,
    /// learn-step-4, img2img-step.
    #[arg(long, value_delimiter = ',', default_value = "visual")]
    rows: Vec<String>,
    /// EfficientNet-Lite safetensors [default: as for `adp fit`] (row visual).
    #[arg(long)]
    backbone: Option<PathBuf>,
    /// open_clip checkpoint folder (clip-* rows).
    #[arg(long)]
    clip: Option<PathBuf>,
    /// Stable Diffusion folder, diffusers layout (unet, learn-step-*, img2img-step rows).
    #[arg(long)]
    sd: Option<PathBuf>,
    /// Side in pixels of the `unet` row [default: the model's own; the other diffusion rows run only at it].
    #[arg(long)]
    size: Option<usize>,
    /// The first N images are the support set, the others are scored.
    #[arg(long, default_value_t = 4)]
    shots: usize,
    /// Timed repetitions per row and plugin, after one warm-up; medians are reported.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Rounds through every row and plugin (each a fresh process); medians over rounds.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Internal: time the rows here, for the one plugin given, and print them (no children).
    #[arg(long, hide = true)]
    child: bool,
    /// Time the async service (`adp_host::service::Detector`) scoring with this detector file,
    /// one-photo requests, instead of the rows; every image given is scored in turn.
    #[arg(long, value_name = "DETECTOR")]
    service: Option<PathBuf>,
    /// --service: the worker counts to time.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// --service: threads per worker to time, `auto` (the default sharing: cores / workers) or a
    /// number; each is timed with each worker count.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    threads: Vec<String>,
    /// --service: requests per configuration and round.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    #[command(flatten)]
    run: Run,
    /// Folders of images, or image files.
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.service.is_some() {
        return service(a);
    }
    let rows = a
        .rows
        .iter()
        .map(|r| r.parse::<Row>())
        .collect::<adp_api::Result<Vec<_>>>()?;
    if a.child {
        return child(&a, &rows);
    }
    let mut timings: Vec<(Row, String, Vec<RowTiming>, Option<String>)> = rows
        .iter()
        .flat_map(|&r| a.plugins.iter().map(move |p| (r, p.clone(), Vec::new(), None)))
        .collect();
    for _ in 0..a.rounds.max(1) {
        for (row, plugin, runs, failed) in &mut timings {
            if failed.is_some() {
                continue;
            }
            match in_child(&a, *row, plugin) {
                Ok(t) => runs.push(t),
                Err(e) => *failed = Some(format!("{e:#}")),
            }
        }
    }
    let mut out: Vec<serde_json::Value> = Vec::new();
    let mut first: std::collections::HashMap<String, f64> = Default::default();
    for (row, plugin, runs, failed) in timings {
        let Some(last) = runs.last().cloned() else {
            let error = failed.unwrap_or_default();
            eprintln!("adp bench: {row} on {plugin}: {error}");
            out.push(serde_json::json!({"row": row.to_string(), "plugin": plugin, "error": error}));
            continue;
        };
        let ms = median(runs.iter().map(|t| t.ms).collect());
        let peer = *first.entry(row.to_string()).or_insert(ms);
        let cpu: Vec<f64> = runs.iter().filter_map(|t| t.cpu_ms).collect();
        let mut v = serde_json::to_value(RowTiming {
            ms,
            cpu_ms: (cpu.len() == runs.len()).then(|| median(cpu)),
            peak_rss_mb: runs.iter().filter_map(|t| t.peak_rss_mb).reduce(f64::max),
            ..last
        })?;
        v["rounds"] = runs.len().into();
        v["ratio"] = (ms / peer).into();
        out.push(v);
    }
    for v in &out {
        println!("{v}");
    }
    if !a.run.quiet {
        eprint!("{}", markdown(&out));
    }
    let failed = out.iter().filter(|v| v.get("error").is_some()).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} row(s) failed (see above)", out.len());
    }
    Ok(())
}

/// One row on one plugin in a fresh `adp bench --child` process: its JSON line.
fn in_child(a: &Args, row: Row, plugin: &str) -> anyhow::Result<RowTiming> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args([
        "bench",
        "--child",
        "--quiet",
        "--rows",
        &row.to_string(),
        "--plugin",
        plugin,
    ]);
    for d in &a.dirs.plugin_dirs {
        cmd.arg("--plugin-dir").arg(d);
    }
    for (flag, path) in [("--backbone", &a.backbone), ("--clip", &a.clip), ("--sd", &a.sd)] {
        if let Some(p) = path {
            cmd.arg(flag).arg(p);
        }
    }
    if let Some(s) = a.size {
        cmd.args(["--size", &s.to_string()]);
    }
    cmd.args(["--shots", &a.shots.to_string(), "--repeats", &a.repeats.to_string()]);
    cmd.args(["--device", &a.run.device.to_string()]).args(&a.images);
    let out = cmd.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("the child process failed ({})", out.status);
    }
    let line = String::from_utf8_lossy(&out.stdout);
    Ok(serde_json::from_str(line.trim())?)
}

fn child(a: &Args, rows: &[Row]) -> anyhow::Result<()> {
    // As `adp fit` does for concept learning, whose parts these rows time.
    if rows.iter().any(|r| r.is_diffusion()) {
        crate::elementwise::share_for_one_caller();
    }
    let plugin = a.plugins.first().expect("clap gives a default plugin");
    let backend = a.dirs.find(plugin)?;
    let backbone = match rows.contains(&Row::Visual) {
        true => Some(BackboneCheckpoint::from_file(
            &a.backbone.clone().unwrap_or_else(default_backbone),
        )?),
        false => None,
    };
    let clip = a.clip.as_deref().map(ClipCheckpoint::from_dir).transpose()?;
    let sd = a.sd.as_deref().map(DiffusionSpec::from_dir).transpose()?;
    let files = list(&a.images)?;
    let photos = |size: usize| read_resized(&files, size);
    let inputs = Inputs {
        backbone: backbone.as_ref(),
        clip: clip.as_ref(),
        sd: sd.as_ref(),
        photos: &photos,
        shots: a.shots,
        size: a.size,
        repeats: a.repeats,
        device: a.run.device,
    };
    for &row in rows {
        println!(
            "{}",
            serde_json::to_string(&rows::run(row, plugin, &backend, &inputs)?)?
        );
    }
    Ok(())
}

fn markdown(rows: &[serde_json::Value]) -> String {
    let mut out = String::from(
        "| row | plugin | ms | per | ratio to first | CPU ms | peak MiB | parts (ms) |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        if let Some(e) = r.get("error") {
            out += &format!("| {} | {} | failed: {} | | | | | |\n", r["row"], r["plugin"], e);
            continue;
        }
        let parts = r["parts"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(k, v)| format!("{k} {:.1}", v.as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out += &format!(
            "| {}{} | {} | {:.1} | {} | {:.2} | {} | {:.0} | {} |\n",
            r["row"].as_str().unwrap_or("?"),
            r["size"].as_u64().map(|s| format!(" @{s}")).unwrap_or_default(),
            r["plugin"].as_str().unwrap_or("?"),
            r["ms"].as_f64().unwrap_or(f64::NAN),
            r["per"].as_str().unwrap_or("?"),
            r["ratio"].as_f64().unwrap_or(f64::NAN),
            r["cpu_ms"]
                .as_f64()
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
            r["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            parts
        );
    }
    out
}

fn service(a: Args) -> anyhow::Result<()> {
    let detector = a.service.clone().expect("--service given");
    let mut configs = Vec::new();
    for t in &a.threads {
        let threads = match t.as_str() {
            "auto" => None,
            n => Some(
                n.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| anyhow::anyhow!("--threads {n}: `auto` or a whole number above 0"))?,
            ),
        };
        configs.extend(a.workers.iter().map(|&workers| Config { workers, threads }));
    }
    let backends = a
        .plugins
        .iter()
        .map(|p| Ok((p.clone(), Arc::new(a.dirs.find(p)?) as Arc<dyn Backend>)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let photos = list(&a.images)?
        .iter()
        .map(|f| ImageBatch::read_files(std::slice::from_ref(f)))
        .collect::<adp_api::Result<Vec<_>>>()?;
    let rows = service_bench::throughput(
        &backends,
        &detector,
        a.run.device,
        &configs,
        &photos,
        a.requests,
        a.repeats,
    )?;
    for r in &rows {
        println!("{}", serde_json::to_string(r)?);
    }
    if !a.run.quiet {
        eprint!("{}", service_bench::markdown(&rows));
    }
    Ok(())
}
