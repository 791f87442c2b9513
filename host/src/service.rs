//! The async API for host applications: a [`Detector`] handle that owns a fitted detector, its
//! backend and checkpoints, and scores images for many tasks at once.
//!
//! The plugin calls behind scoring are blocking, so requests run on a **bounded pool** of
//! `workers` OS threads; requests wait in a **bounded queue** of `queue` slots. When the queue is
//! full, [`Detector::score`] waits for a slot (back-pressure: the caller slows down instead of
//! memory growing without limit) and [`Detector::try_score`] fails at once with
//! [`ServiceError::Busy`]. Pipeline errors come back unchanged as [`ServiceError::Pipeline`]; a
//! panic inside scoring comes back as [`ServiceError::WorkerPanic`] and the worker lives on.
//! [`Detector::close`] (or dropping the handle) stops taking requests, lets the workers finish
//! what is queued, and joins them.
//!
//! The handle does not need a tokio runtime to be built or dropped; awaiting its futures works
//! on any executor.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use adp_host::service::{AsyncScorer, Detector, ServiceOptions};
//! use std::sync::Arc;
//! let backend = Arc::new(adp_host::load(std::path::Path::new("target/debug/libadp_plugin_candle.so"))?);
//! let detector = Arc::new(Detector::open(backend, "bottle.adp".as_ref(), None, None, adp_api::Device::Cpu, ServiceOptions::default())?);
//! let image = adp_api::ImageBatch::read_files(&["test/000.png"])?;
//! let scores = detector.score(vec![image]).await?;
//! println!("{}", scores[0].score);
//! detector.close().await;
//! # Ok(()) }
//! ```
use crate::detect::{Checkpoints, DetectorFile, DetectorHeader, ImageScore, Scoring};
use adp_api::{Backend, Device, ImageBatch};
use async_trait::async_trait;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// What a worker runs for one request: images in, one score per image out, in order.
pub type ScoreFn = Arc<dyn Fn(&[ImageBatch]) -> adp_api::Result<Vec<ImageScore>> + Send + Sync>;

/// Why a scoring request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// `try_score` found every worker busy and the queue full.
    #[error("detector busy: {workers} worker(s) scoring and the queue of {queue} request(s) is full; retry later, or await `score` to wait for a slot")]
    Busy { workers: usize, queue: usize },
    /// The handle was closed before the request was queued.
    #[error("detector closed: it accepts no more scoring requests")]
    Closed,
    /// Scoring panicked; the worker caught it and goes on serving.
    #[error("scoring worker panicked: {0}")]
    WorkerPanic(String),
    /// The pipeline's own error, unchanged.
    #[error(transparent)]
    Pipeline(#[from] adp_api::Error),
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Anything that scores images asynchronously; [`Detector`] is one.
#[async_trait]
pub trait AsyncScorer: Send + Sync {
    /// One [`ImageScore`] per image, in the order of `images` (a batch of N images gives N).
    async fn score(&self, images: Vec<ImageBatch>) -> Result<Vec<ImageScore>>;
}

/// Pool and queue sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Worker threads, i.e. requests scored at the same time (≥ 1).
    pub workers: usize,
    /// Requests that may wait for a worker (≥ 1); beyond that `score` waits and `try_score`
    /// reports [`ServiceError::Busy`].
    pub queue: usize,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self { workers: 2, queue: 16 }
    }
}

struct Job {
    images: Vec<ImageBatch>,
    reply: oneshot::Sender<Result<Vec<ImageScore>>>,
}

struct Worker {
    thread: std::thread::JoinHandle<()>,
    /// Resolves (with an error: its sender is dropped) when the thread's loop has ended.
    exited: oneshot::Receiver<()>,
}

/// A fitted detector ready to score for many tasks; share it as `Arc<Detector>`.
pub struct Detector {
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    workers: Mutex<Vec<Worker>>,
    options: ServiceOptions,
    header: Option<DetectorHeader>,
}

/// A queued request: await it for its scores.
pub struct Ticket(oneshot::Receiver<Result<Vec<ImageScore>>>);

impl Future for Ticket {
    type Output = Result<Vec<ImageScore>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(ServiceError::WorkerPanic("the worker ended without answering".into()))))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

/// The one place the async API calls the pipeline: `detector`'s models opened once on `backend`
/// (checkpoint identity checked here, not per request), shared by every worker.
pub fn pipeline_scorer(
    backend: Arc<dyn Backend>,
    checkpoints: &Checkpoints,
    detector: DetectorFile,
    device: Device,
) -> adp_api::Result<ScoreFn> {
    let scoring = Scoring::open(&*backend, checkpoints, detector, device)?;
    // The models live in the backend's library: it stays loaded as long as they do.
    Ok(Arc::new(move |images: &[ImageBatch]| {
        let _backend = &backend;
        scoring.score(images)
    }))
}

impl Detector {
    /// A detector scoring with `scorer` (any function: the pipeline through
    /// [`pipeline_scorer`], or a stand-in in tests) on `options.workers` threads.
    pub fn with_scorer(scorer: ScoreFn, options: ServiceOptions) -> adp_api::Result<Self> {
        if options.workers == 0 || options.queue == 0 {
            return Err(adp_api::Error::invalid(
                "service options",
                format!(
                    "workers ({}) and queue ({}) must be at least 1",
                    options.workers, options.queue
                ),
            ));
        }
        let (sender, receiver) = mpsc::channel::<Job>(options.queue);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::with_capacity(options.workers);
        for i in 0..options.workers {
            let (exit_tx, exited) = oneshot::channel::<()>();
            let (receiver, scorer) = (receiver.clone(), scorer.clone());
            let thread = std::thread::Builder::new()
                .name(format!("adp-score-{i}"))
                .spawn(move || {
                    let _exit = exit_tx;
                    loop {
                        // One idle worker waits on the queue; the others wait for the lock.
                        let Some(job) = lock(&receiver).blocking_recv() else {
                            break;
                        };
                        if job.reply.is_closed() {
                            continue; // the caller gave up waiting
                        }
                        let out = match std::panic::catch_unwind(AssertUnwindSafe(|| scorer(&job.images))) {
                            Ok(r) => r.map_err(ServiceError::from),
                            Err(p) => Err(ServiceError::WorkerPanic(panic_message(&*p))),
                        };
                        let _ = job.reply.send(out);
                    }
                })
                .map_err(|e| adp_api::Error::invalid("scoring worker", format!("cannot start thread {i}: {e}")))?;
            workers.push(Worker { thread, exited });
        }
        Ok(Self {
            sender: Mutex::new(Some(sender)),
            workers: Mutex::new(workers),
            options,
            header: None,
        })
    }

    /// A detector scoring `detector` on `backend` with `checkpoints`.
    pub fn new(
        backend: Arc<dyn Backend>,
        checkpoints: Checkpoints,
        detector: DetectorFile,
        device: Device,
        options: ServiceOptions,
    ) -> adp_api::Result<Self> {
        let header = detector.header.clone();
        let mut d = Self::with_scorer(pipeline_scorer(backend, &checkpoints, detector, device)?, options)?;
        d.header = Some(header);
        Ok(d)
    }

    /// Loads a detector file and its checkpoints (the given ones, else those it records; see
    /// [`checkpoints_for`]) for `backend`.
    pub fn open(
        backend: Arc<dyn Backend>,
        detector: &Path,
        clip: Option<&Path>,
        backbone: Option<&Path>,
        device: Device,
        options: ServiceOptions,
    ) -> adp_api::Result<Self> {
        let file = DetectorFile::load(detector)?;
        let checkpoints = file.header.checkpoints(clip, backbone)?;
        Self::new(backend, checkpoints, file, device, options)
    }

    /// The loaded detector's header (method, weights, checkpoints…); `None` for
    /// [`Detector::with_scorer`].
    pub fn header(&self) -> Option<&DetectorHeader> {
        self.header.as_ref()
    }

    pub fn options(&self) -> ServiceOptions {
        self.options
    }

    fn sender(&self) -> Result<mpsc::Sender<Job>> {
        lock(&self.sender).clone().ok_or(ServiceError::Closed)
    }

    /// Scores `images` (one score per image, in order), waiting for a queue slot while the
    /// queue is full.
    pub async fn score(&self, images: Vec<ImageBatch>) -> Result<Vec<ImageScore>> {
        let sender = self.sender()?;
        let (reply, rx) = oneshot::channel();
        sender
            .send(Job { images, reply })
            .await
            .map_err(|_| ServiceError::Closed)?;
        drop(sender);
        Ticket(rx).await
    }

    /// Queues `images` without waiting: [`ServiceError::Busy`] at once when the queue is full,
    /// else a [`Ticket`] to await for the scores.
    pub fn try_score(&self, images: Vec<ImageBatch>) -> Result<Ticket> {
        let sender = self.sender()?;
        let (reply, rx) = oneshot::channel();
        sender.try_send(Job { images, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ServiceError::Busy {
                workers: self.options.workers,
                queue: self.options.queue,
            },
            mpsc::error::TrySendError::Closed(_) => ServiceError::Closed,
        })?;
        Ok(Ticket(rx))
    }

    /// Stops accepting requests, lets the workers score everything already queued, and joins
    /// them. Later requests fail with [`ServiceError::Closed`].
    pub async fn close(&self) {
        drop(lock(&self.sender).take());
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            let _ = w.exited.await;
            let _ = w.thread.join();
        }
    }
}

#[async_trait]
impl AsyncScorer for Detector {
    async fn score(&self, images: Vec<ImageBatch>) -> Result<Vec<ImageScore>> {
        Detector::score(self, images).await
    }
}

impl Drop for Detector {
    /// Like [`Detector::close`], blocking: queued requests are still scored before the workers
    /// are joined.
    fn drop(&mut self) {
        drop(lock(&self.sender).take());
        for w in std::mem::take(&mut *lock(&self.workers)) {
            let _ = w.thread.join();
        }
    }
}
