//! `adp bench --service`: photos per second of the async service ([`crate::service::Detector`])
//! for each configuration of workers and threads per worker, one-photo requests, on one or more
//! plugins. Rounds go through every configuration in turn, so a slow spell of the machine costs
//! them alike; the median round is reported.
use crate::detect::DetectorFile;
use crate::service::{cores, Detector, ServiceOptions};
use adp_api::{Backend, Device, Error, ImageBatch, Result};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// One service configuration: `threads` per worker, `None` for the default sharing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub workers: usize,
    pub threads: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceRow {
    pub plugin: String,
    pub workers: usize,
    /// `auto` (the default: the cores shared out) or the budget given.
    pub threads: String,
    /// The budget each worker's calls ran under.
    pub threads_per_worker: usize,
    pub cores: usize,
    pub requests: usize,
    pub rounds: usize,
    /// Median over the rounds.
    pub photos_per_s: f64,
    /// `photos_per_s` over the best row of the same plugin: 1 is the best configuration.
    pub of_best: f64,
}

/// Times `requests` one-photo requests (cycling through `photos`) on a service per configuration
/// and plugin; each service is opened once and warmed up with one request per worker first.
pub fn throughput(
    backends: &[(String, Arc<dyn Backend>)],
    detector: &Path,
    device: Device,
    configs: &[Config],
    photos: &[ImageBatch],
    requests: usize,
    rounds: usize,
) -> Result<Vec<ServiceRow>> {
    if backends.is_empty() || configs.is_empty() || photos.is_empty() || requests == 0 || rounds == 0 {
        return Err(Error::invalid(
            "bench --service",
            "needs a plugin, a configuration, a photo, a request and a round",
        ));
    }
    let file = DetectorFile::load(detector)?;
    let checkpoints = file.header.checkpoints(None, None)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::invalid("bench --service", format!("no async runtime: {e}")))?;
    let mut services = Vec::new();
    for (name, backend) in backends {
        for c in configs {
            let options = ServiceOptions {
                workers: c.workers,
                queue: 2 * c.workers,
                threads: c.threads,
            };
            let d = Arc::new(Detector::new(
                backend.clone(),
                checkpoints.clone(),
                file.clone(),
                device,
                options,
            )?);
            runtime.block_on(run(&d, photos, c.workers))?;
            services.push((name.clone(), *c, options.threads_per_worker(), d, Vec::new()));
        }
    }
    for _ in 0..rounds {
        for (_, _, _, d, rates) in &mut services {
            let t = Instant::now();
            runtime.block_on(run(d, photos, requests))?;
            rates.push(requests as f64 / t.elapsed().as_secs_f64());
        }
    }
    let mut rows: Vec<ServiceRow> = services
        .into_iter()
        .map(|(plugin, c, per_worker, d, rates)| {
            drop(d);
            ServiceRow {
                plugin,
                workers: c.workers,
                threads: c.threads.map_or("auto".into(), |t| t.to_string()),
                threads_per_worker: per_worker,
                cores: cores(),
                requests,
                rounds,
                photos_per_s: crate::eval::bench::median(rates),
                of_best: 1.0,
            }
        })
        .collect();
    for i in 0..rows.len() {
        let best = rows
            .iter()
            .filter(|r| r.plugin == rows[i].plugin)
            .map(|r| r.photos_per_s)
            .fold(0.0, f64::max);
        rows[i].of_best = rows[i].photos_per_s / best;
    }
    Ok(rows)
}

/// `n` one-photo requests from as many tasks, all in flight at once (the queue pushes back).
async fn run(detector: &Arc<Detector>, photos: &[ImageBatch], n: usize) -> Result<()> {
    let requests = (0..n).map(|i| {
        let (d, photo) = (detector.clone(), photos[i % photos.len()].clone());
        async move { d.score(vec![photo]).await }
    });
    for r in join_all(requests).await {
        r.map_err(|e| Error::invalid("bench --service", e.to_string()))?;
    }
    Ok(())
}

/// Polls every future until all are done (no `futures` crate needed for one use).
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut out: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, result) in pending.iter_mut().zip(&mut out) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        *result = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|v| v.expect("every future finished")).collect()
}

/// The rows as a markdown table.
pub fn markdown(rows: &[ServiceRow]) -> String {
    let mut out =
        String::from("| plugin | workers | threads per worker | photos/s | of the best |\n|---|---|---|---|---|\n");
    for r in rows {
        let threads = match r.threads.as_str() {
            "auto" => format!("{} (auto)", r.threads_per_worker),
            t => t.to_string(),
        };
        out += &format!(
            "| {} | {} | {} | {:.1} | {:.2} |\n",
            r.plugin, r.workers, threads, r.photos_per_s, r.of_best
        );
    }
    out
}
