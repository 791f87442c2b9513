//! The async API for host applications: a [`Detector`] handle that owns a fitted detector, its
//! backend and checkpoints, and scores images for many tasks at once.
//!
//! The plugin calls behind scoring are blocking, so requests run on a **bounded pool** of
//! `workers` OS threads; requests wait in a **bounded queue** of `queue` slots. A request holds
//! one of `workers + queue` admission slots from the moment it is accepted until its scores are
//! sent: while one is free, [`Detector::try_score`] accepts (an idle worker takes the request at
//! once: workers wait on the queue itself, not on each other); when none is,
//! [`Detector::score`] waits for a slot (back-pressure: the caller slows down instead of memory
//! growing without limit) and `try_score` fails at once with [`ServiceError::Busy`]. Pipeline
//! errors come back unchanged as [`ServiceError::Pipeline`]; a panic inside scoring comes back as
//! [`ServiceError::WorkerPanic`] and the worker lives on. [`Detector::close`] stops admitting at
//! once (callers still waiting for a slot get [`ServiceError::Closed`]), lets the workers finish
//! what was accepted, and waits for them without blocking the thread; dropping the handle does
//! the same without waiting (the workers finish and end on their own).
//!
//! The handle does not need a tokio runtime to be built or dropped; awaiting its futures works
//! on any executor, and nothing it does blocks an executor's thread.
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
use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore, TryAcquireError};

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

/// Pool, queue and thread sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceOptions {
    /// Worker threads, i.e. requests scored at the same time (≥ 1).
    pub workers: usize,
    /// Requests that may wait for a worker (≥ 1); beyond that `score` waits and `try_score`
    /// reports [`ServiceError::Busy`].
    pub queue: usize,
    /// The most threads one worker's backend calls spread over (≥ 1); `None`: the cores shared
    /// out, [`ServiceOptions::threads_per_worker`].
    pub threads: Option<usize>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            workers: 2,
            queue: 16,
            threads: None,
        }
    }
}

/// The cores this process may use (its affinity mask, cgroup quota aside), at least 1.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl ServiceOptions {
    /// `threads`, else the cores shared out between the workers (at least 1 each), so that
    /// workers × threads fits the machine instead of every worker's calls spreading over every
    /// core and the pools fighting for them.
    pub fn threads_per_worker(&self) -> usize {
        self.threads.unwrap_or_else(|| cores() / self.workers.max(1)).max(1)
    }
}

/// The most workers, and queue slots, a detector takes (far beyond any machine's use).
const MAX_WORKERS: usize = 1024;
const MAX_QUEUE: usize = 1 << 20;

struct Job {
    images: Vec<ImageBatch>,
    reply: oneshot::Sender<Result<Vec<ImageScore>>>,
    /// The admission slot, given back when the job is answered (or dropped).
    slot: OwnedSemaphorePermit,
}

/// The accepted jobs; idle workers wait on `ready` (not on a lock held by another worker), so
/// any idle worker takes the next job.
#[derive(Default)]
struct Queue {
    state: Mutex<(VecDeque<Job>, bool)>,
    ready: Condvar,
}

impl Queue {
    /// The next job, waiting while there is none; `None` once closed and drained.
    fn next(&self) -> Option<Job> {
        let mut s = lock(&self.state);
        loop {
            if let Some(job) = s.0.pop_front() {
                return Some(job);
            }
            if s.1 {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }
    fn push(&self, job: Job) -> Result<()> {
        let mut s = lock(&self.state);
        if s.1 {
            return Err(ServiceError::Closed);
        }
        s.0.push_back(job);
        self.ready.notify_one();
        Ok(())
    }
    fn close(&self) {
        lock(&self.state).1 = true;
        self.ready.notify_all();
    }
}

struct Worker {
    thread: std::thread::JoinHandle<()>,
    /// Resolves (with an error: its sender is dropped) when the thread's loop has ended.
    exited: oneshot::Receiver<()>,
}

/// A fitted detector ready to score for many tasks; share it as `Arc<Detector>`.
pub struct Detector {
    /// `workers + queue` admission slots; closed by `close` and `Drop`.
    slots: Arc<Semaphore>,
    queue: Arc<Queue>,
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
/// (checkpoint identity checked here, not per request), shared by every worker. With `threads`,
/// each request's backend calls spread over at most that many threads
/// ([`Backend::with_threads`], across the plugin boundary too).
pub fn pipeline_scorer(
    backend: Arc<dyn Backend>,
    checkpoints: &Checkpoints,
    detector: DetectorFile,
    device: Device,
    threads: Option<usize>,
) -> adp_api::Result<ScoreFn> {
    let scoring = Scoring::open(&*backend, checkpoints, detector, device)?;
    // The models live in the backend's library: it stays loaded as long as they do.
    Ok(Arc::new(move |images: &[ImageBatch]| match threads {
        Some(threads) => {
            let mut out = None;
            backend.with_threads(threads, &mut || out = Some(scoring.score(images)));
            out.unwrap_or_else(|| {
                Err(adp_api::Error::invalid(
                    "scoring",
                    "the backend did not run the request",
                ))
            })
        }
        None => scoring.score(images),
    }))
}

impl Detector {
    /// A detector scoring with `scorer` (any function: the pipeline through
    /// [`pipeline_scorer`], or a stand-in in tests) on `options.workers` threads.
    pub fn with_scorer(scorer: ScoreFn, options: ServiceOptions) -> adp_api::Result<Self> {
        if !(1..=MAX_WORKERS).contains(&options.workers)
            || !(1..=MAX_QUEUE).contains(&options.queue)
            || options.threads.is_some_and(|t| !(1..=MAX_WORKERS).contains(&t))
        {
            return Err(adp_api::Error::invalid(
                "service options",
                format!(
                    "workers ({}) must be in 1..={MAX_WORKERS}, queue ({}) in 1..={MAX_QUEUE} and threads ({:?}) in 1..={MAX_WORKERS}",
                    options.workers, options.queue, options.threads
                ),
            ));
        }
        let queue = Arc::new(Queue::default());
        let mut workers = Vec::with_capacity(options.workers);
        for i in 0..options.workers {
            let (exit_tx, exited) = oneshot::channel::<()>();
            let (queue, scorer) = (queue.clone(), scorer.clone());
            let thread = std::thread::Builder::new()
                .name(format!("adp-score-{i}"))
                .spawn(move || {
                    while let Some(Job { images, reply, slot }) = queue.next() {
                        if reply.is_closed() {
                            continue; // the caller gave up waiting
                        }
                        let out = match std::panic::catch_unwind(AssertUnwindSafe(|| scorer(&images))) {
                            Ok(r) => r.map_err(ServiceError::from),
                            Err(p) => Err(ServiceError::WorkerPanic(panic_message(&*p))),
                        };
                        // The slot is free by the time the caller has its answer.
                        drop(slot);
                        let _ = reply.send(out);
                    }
                    // The models are released here, before `close` hears that this worker ended,
                    // so joining it afterwards does not wait on their teardown.
                    drop((scorer, queue));
                    drop(exit_tx);
                })
                .map_err(|e| adp_api::Error::invalid("scoring worker", format!("cannot start thread {i}: {e}")))?;
            workers.push(Worker { thread, exited });
        }
        Ok(Self {
            slots: Arc::new(Semaphore::new(options.workers + options.queue)),
            queue,
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
        let threads = Some(options.threads_per_worker());
        let mut d = Self::with_scorer(
            pipeline_scorer(backend, &checkpoints, detector, device, threads)?,
            options,
        )?;
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

    fn submit(&self, images: Vec<ImageBatch>, slot: OwnedSemaphorePermit) -> Result<Ticket> {
        let (reply, rx) = oneshot::channel();
        self.queue.push(Job { images, reply, slot })?;
        Ok(Ticket(rx))
    }

    /// Scores `images` (one score per image, in order), waiting for an admission slot while
    /// every worker and queue slot is taken; [`ServiceError::Closed`] if the handle is closed
    /// before one frees up.
    pub async fn score(&self, images: Vec<ImageBatch>) -> Result<Vec<ImageScore>> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ServiceError::Closed)?;
        self.submit(images, slot)?.await
    }

    /// Accepts `images` without waiting when a worker or a queue slot is free, giving a
    /// [`Ticket`] to await for the scores; else [`ServiceError::Busy`] at once.
    pub fn try_score(&self, images: Vec<ImageBatch>) -> Result<Ticket> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|e| match e {
            TryAcquireError::NoPermits => ServiceError::Busy {
                workers: self.options.workers,
                queue: self.options.queue,
            },
            TryAcquireError::Closed => ServiceError::Closed,
        })?;
        self.submit(images, slot)
    }

    /// Stops admitting at once, lets the workers score everything already accepted, and waits
    /// (asynchronously) until they have ended. Later requests, and callers still waiting in
    /// [`Detector::score`], get [`ServiceError::Closed`].
    pub async fn close(&self) {
        self.slots.close();
        self.queue.close();
        let workers = std::mem::take(&mut *lock(&self.workers));
        for w in workers {
            let _ = w.exited.await;
            // Its loop is over and its models released: the join does not wait on work.
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
    /// Like [`Detector::close`] without waiting: admission stops, and the workers score what was
    /// accepted and end on their own (detached), so dropping never blocks the thread, even one
    /// of a single-threaded runtime.
    fn drop(&mut self) {
        self.slots.close();
        self.queue.close();
        lock(&self.workers).clear();
    }
}
