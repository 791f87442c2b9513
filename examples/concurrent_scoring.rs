//! A host application scoring images concurrently through the async API: it loads a backend
//! plugin, opens a fitted detector file as an [`adp_host::service::Detector`] (a bounded pool of
//! scoring threads behind a bounded queue), and scores the images from several tokio tasks,
//! printing one JSON line per image.
//!
//! ```sh
//! cargo run -p adp-examples --example concurrent_scoring -- PLUGIN DETECTOR IMAGE... [--tasks 4] [--workers 2] [--queue 4]
//! ```
//! `PLUGIN` is a plugin file (`target/debug/libadp_plugin_candle.so`) or a folder to search for
//! the backend the detector was fitted with (`target/debug`). The detector's own checkpoints are
//! used (the CLIP folder or image backbone recorded in it).
use adp_host::service::{AsyncScorer, Detector, ServiceError, ServiceOptions};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Args {
    plugin: PathBuf,
    detector: PathBuf,
    images: Vec<PathBuf>,
    tasks: usize,
    options: ServiceOptions,
}

fn parse() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let (mut tasks, mut options) = (
        4,
        ServiceOptions {
            workers: 2,
            queue: 4,
            threads: None,
        },
    );
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> anyhow::Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a number"))?
                .parse()
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--tasks" => tasks = number("--tasks")?,
            "--workers" => options.workers = number("--workers")?,
            "--queue" => options.queue = number("--queue")?,
            _ => positional.push(PathBuf::from(a)),
        }
    }
    if positional.len() < 3 {
        bail!("usage: concurrent_scoring PLUGIN DETECTOR IMAGE... [--tasks N] [--workers N] [--queue N]");
    }
    let (plugin, detector) = (positional.remove(0), positional.remove(0));
    Ok(Args {
        plugin,
        detector,
        images: positional,
        tasks: tasks.max(1),
        options,
    })
}

/// A plugin file, or the plugin in `dir` whose backend is `backend` (a name only, from the
/// detector: only its library is opened).
fn plugin(path: &Path, backend: &str) -> anyhow::Result<adp_host::Plugin> {
    if !path.is_dir() {
        return Ok(adp_host::load(path)?);
    }
    Ok(adp_host::plugin::find_named(backend, &[path.to_path_buf()])?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let header = adp_host::detect::DetectorFile::load(&args.detector)?.header;
    let backend = Arc::new(plugin(&args.plugin, &header.backend)?);
    let detector = Arc::new(Detector::open(
        backend,
        &args.detector,
        None,
        None,
        adp_api::Device::Cpu,
        args.options,
    )?);
    eprintln!(
        "{}: method {}, {} worker(s), queue {}, {} task(s)",
        args.detector.display(),
        header.method,
        args.options.workers,
        args.options.queue,
        args.tasks
    );

    // Task t scores images t, t + tasks, t + 2·tasks, …; `score().await` waits while the queue is full.
    let images = Arc::new(args.images);
    let mut handles = Vec::new();
    for t in 0..args.tasks {
        let (detector, images) = (detector.clone(), images.clone());
        handles.push(tokio::spawn(async move {
            let mut failed = 0;
            for path in images.iter().skip(t).step_by(args.tasks) {
                let result = match adp_api::ImageBatch::read_files(std::slice::from_ref(path)) {
                    Ok(batch) => AsyncScorer::score(&*detector, vec![batch]).await,
                    Err(e) => Err(ServiceError::Pipeline(e)),
                };
                let line = match result {
                    Ok(s) => serde_json::json!({ "task": t, "path": path, "score": s[0].score, "language": s[0].language, "association": s[0].association }),
                    Err(e) => {
                        failed += 1;
                        serde_json::json!({ "task": t, "path": path, "error": e.to_string() })
                    }
                };
                println!("{line}");
            }
            failed
        }));
    }
    let mut failed = 0;
    for h in handles {
        failed += h.await?;
    }
    detector.close().await;
    if failed > 0 {
        bail!("{failed} image(s) failed");
    }
    Ok(())
}
