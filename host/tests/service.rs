//! The async `Detector` handle with stand-in scoring functions: the worker pool's bound, the
//! queue's back-pressure, errors and panics coming back as errors, per-request order, shutdown.
//! No assertion depends on timing: workers are held at barriers and gates the test opens.
use adp_api::{Error, ImageBatch, Tensor};
use adp_host::detect::ImageScore;
use adp_host::service::{AsyncScorer, Detector, ScoreFn, ServiceError, ServiceOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};

/// Pixel values are in [0, 1]: a value `v` travels as `v / SCALE` (exact for the integers used).
const SCALE: f32 = 4096.0;

/// `n` images of 2×2 pixels, image `i` standing for `first + i`.
/// Service options with `workers` and `queue`, threads shared out by default.
fn options(workers: usize, queue: usize) -> ServiceOptions {
    ServiceOptions {
        workers,
        queue,
        threads: None,
    }
}

fn batch(first: f32, n: usize) -> ImageBatch {
    let data = (0..n)
        .flat_map(|i| std::iter::repeat_n((first + i as f32) / SCALE, 12))
        .collect();
    ImageBatch::new(Tensor::new(vec![n, 3, 2, 2], data).unwrap()).unwrap()
}

/// One score per image: the value its first pixel stands for.
fn echo(images: &[ImageBatch]) -> adp_api::Result<Vec<ImageScore>> {
    Ok(images
        .iter()
        .flat_map(|b| (0..b.len()).map(move |i| b.pixels().row(i)[0] * SCALE))
        .map(|v| ImageScore {
            score: v,
            language: Some(v),
            association: v,
            map: vec![v; 4],
            height: 2,
            width: 2,
        })
        .collect())
}

fn scores(v: &[ImageScore]) -> Vec<f32> {
    v.iter().map(|s| s.score).collect()
}

/// A gate that workers wait at until the test opens it; counts who arrived.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, usize)>,
    cv: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 += 1;
        self.cv.notify_all();
        while !s.0 {
            s = self.cv.wait(s).unwrap();
        }
    }
    fn wait_for_arrivals(&self, n: usize) {
        let mut s = self.state.lock().unwrap();
        while s.1 < n {
            s = self.cv.wait(s).unwrap();
        }
    }
    fn open(&self) {
        self.state.lock().unwrap().0 = true;
        self.cv.notify_all();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_more_requests_run_at_once_than_there_are_workers() {
    const WORKERS: usize = 3;
    let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    // Every request waits until WORKERS of them run together: with fewer workers this would hang,
    // with an unbounded pool more than WORKERS would be seen running.
    let barrier = Arc::new(Barrier::new(WORKERS));
    let scorer: ScoreFn = {
        let (running, most, barrier) = (running.clone(), most.clone(), barrier.clone());
        Arc::new(move |images: &[ImageBatch]| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            barrier.wait();
            running.fetch_sub(1, Ordering::SeqCst);
            echo(images)
        })
    };
    let detector = Arc::new(Detector::with_scorer(scorer, options(WORKERS, 4)).unwrap());
    let tasks: Vec<_> = (0..7 * WORKERS)
        .map(|k| {
            let d = detector.clone();
            tokio::spawn(async move { d.score(vec![batch(k as f32, 1)]).await })
        })
        .collect();
    for (k, t) in tasks.into_iter().enumerate() {
        assert_eq!(scores(&t.await.unwrap().unwrap()), vec![k as f32]);
    }
    assert_eq!(most.load(Ordering::SeqCst), WORKERS, "requests running at once");
    detector.close().await;
}

#[tokio::test]
async fn a_full_queue_pushes_back() {
    let gate = Arc::new(Gate::default());
    let scorer: ScoreFn = {
        let gate = gate.clone();
        Arc::new(move |images: &[ImageBatch]| {
            gate.wait();
            echo(images)
        })
    };
    let detector = Arc::new(Detector::with_scorer(scorer, options(1, 2)).unwrap());
    let first = detector.try_score(vec![batch(0.0, 1)]).unwrap();
    gate.wait_for_arrivals(1); // the worker holds the first request
    let queued = [
        detector.try_score(vec![batch(1.0, 1)]).unwrap(),
        detector.try_score(vec![batch(2.0, 1)]).unwrap(),
    ];
    let err = detector
        .try_score(vec![batch(3.0, 1)])
        .err()
        .expect("a full queue refuses");
    assert_eq!(err, ServiceError::Busy { workers: 1, queue: 2 });
    assert!(err.to_string().contains("busy"), "{err}");

    // `score` waits for a slot instead of failing or queueing beyond the bound.
    let waiting = tokio::spawn({
        let d = detector.clone();
        async move { d.score(vec![batch(3.0, 1)]).await }
    });
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert!(
        !waiting.is_finished(),
        "score returned while the queue was full and the worker held"
    );

    gate.open();
    assert_eq!(scores(&first.await.unwrap()), vec![0.0]);
    for (k, t) in queued.into_iter().enumerate() {
        assert_eq!(scores(&t.await.unwrap()), vec![k as f32 + 1.0]);
    }
    assert_eq!(scores(&waiting.await.unwrap().unwrap()), vec![3.0]);
    assert_eq!(
        scores(&detector.try_score(vec![batch(4.0, 1)]).unwrap().await.unwrap()),
        vec![4.0]
    );
}

#[tokio::test]
async fn pipeline_errors_come_back_unchanged() {
    let scorer: ScoreFn = Arc::new(|_: &[ImageBatch]| {
        Err(Error::MissingTensor {
            file: "clip/open_clip_model.safetensors".into(),
            tensor: "visual.proj".into(),
        })
    });
    let detector = Detector::with_scorer(scorer, ServiceOptions::default()).unwrap();
    let err = detector.score(vec![batch(0.0, 1)]).await.unwrap_err();
    assert_eq!(
        err,
        ServiceError::Pipeline(Error::MissingTensor {
            file: "clip/open_clip_model.safetensors".into(),
            tensor: "visual.proj".into()
        })
    );
    assert!(err.to_string().contains("visual.proj"), "{err}");
    // anyhow keeps the message for applications that use it.
    let any: anyhow::Error = err.into();
    assert!(any.to_string().contains("open_clip_model.safetensors"));
}

#[tokio::test]
async fn a_panic_in_scoring_is_an_error_and_the_worker_goes_on() {
    let scorer: ScoreFn = Arc::new(|images: &[ImageBatch]| {
        if images[0].pixels().data()[0] == 0.0 {
            panic!("boom on a black pixel");
        }
        echo(images)
    });
    let detector = Detector::with_scorer(scorer, options(1, 1)).unwrap();
    let err = detector.score(vec![batch(0.0, 1)]).await.unwrap_err();
    assert!(
        matches!(&err, ServiceError::WorkerPanic(m) if m.contains("boom on a black pixel")),
        "{err:?}"
    );
    assert_eq!(
        scores(&detector.score(vec![batch(5.0, 2)]).await.unwrap()),
        vec![5.0, 6.0],
        "the only worker survived"
    );
    let via_trait: &dyn AsyncScorer = &detector;
    assert_eq!(scores(&via_trait.score(vec![batch(7.0, 1)]).await.unwrap()), vec![7.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_request_gets_its_own_scores_in_order() {
    let detector = Arc::new(Detector::with_scorer(Arc::new(echo), options(3, 2)).unwrap());
    let tasks: Vec<_> = (0..24)
        .map(|k| {
            let d = detector.clone();
            tokio::spawn(async move {
                let base = 100.0 * k as f32;
                // Mixed batches: 3 images, then 1, then 2.
                let got = d
                    .score(vec![batch(base, 3), batch(base + 10.0, 1), batch(base + 20.0, 2)])
                    .await
                    .unwrap();
                (base, scores(&got))
            })
        })
        .collect();
    for t in tasks {
        let (b, got) = t.await.unwrap();
        assert_eq!(got, vec![b, b + 1.0, b + 2.0, b + 10.0, b + 20.0, b + 21.0]);
    }
}

#[tokio::test]
async fn close_scores_what_is_queued_then_refuses() {
    let gate = Arc::new(Gate::default());
    let done = Arc::new(AtomicUsize::new(0));
    let scorer: ScoreFn = {
        let (gate, done) = (gate.clone(), done.clone());
        Arc::new(move |images: &[ImageBatch]| {
            gate.wait();
            done.fetch_add(1, Ordering::SeqCst);
            echo(images)
        })
    };
    let detector = Arc::new(Detector::with_scorer(scorer, options(2, 8)).unwrap());
    let tickets: Vec<_> = (0..5)
        .map(|k| detector.try_score(vec![batch(k as f32, 1)]).unwrap())
        .collect();
    gate.wait_for_arrivals(2);
    let closing = tokio::spawn({
        let d = detector.clone();
        async move { d.close().await }
    });
    gate.open();
    closing.await.unwrap();
    assert_eq!(
        done.load(Ordering::SeqCst),
        5,
        "close returned before the queue was drained"
    );
    for (k, t) in tickets.into_iter().enumerate() {
        assert_eq!(scores(&t.await.unwrap()), vec![k as f32]);
    }
    assert_eq!(
        detector.score(vec![batch(0.0, 1)]).await.unwrap_err(),
        ServiceError::Closed
    );
    assert_eq!(
        detector.try_score(vec![batch(0.0, 1)]).err(),
        Some(ServiceError::Closed)
    );
}

#[test]
fn dropping_the_handle_still_answers_what_was_accepted_without_a_runtime() {
    let done = Arc::new(AtomicUsize::new(0));
    let scorer: ScoreFn = {
        let done = done.clone();
        Arc::new(move |images: &[ImageBatch]| {
            done.fetch_add(1, Ordering::SeqCst);
            echo(images)
        })
    };
    let detector = Detector::with_scorer(scorer, options(2, 8)).unwrap();
    let tickets: Vec<_> = (0..6)
        .map(|k| detector.try_score(vec![batch(k as f32, 1)]).unwrap())
        .collect();
    drop(detector);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    for (k, t) in tickets.into_iter().enumerate() {
        assert_eq!(scores(&rt.block_on(t).unwrap()), vec![k as f32]);
    }
    assert_eq!(done.load(Ordering::SeqCst), 6);
}

/// A gate scorer, and a thread that opens the gate after a while in case the test's thread is
/// blocked (so a blocking call shows as a failed assertion, not a hang).
fn gated_with_watchdog() -> (Arc<Gate>, ScoreFn) {
    let gate = Arc::new(Gate::default());
    let watchdog = gate.clone();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(5));
        watchdog.open();
    });
    let scorer: ScoreFn = {
        let gate = gate.clone();
        Arc::new(move |images: &[ImageBatch]| {
            gate.wait();
            echo(images)
        })
    };
    (gate, scorer)
}

fn is_open(gate: &Gate) -> bool {
    gate.state.lock().unwrap().0
}

#[tokio::test]
async fn after_close_callers_waiting_for_a_slot_get_closed() {
    let (gate, scorer) = gated_with_watchdog();
    let detector = Arc::new(Detector::with_scorer(scorer, options(1, 1)).unwrap());
    let accepted = [
        detector.try_score(vec![batch(0.0, 1)]).unwrap(),
        detector.try_score(vec![batch(1.0, 1)]).unwrap(),
    ];
    let waiting: Vec<_> = (0..16)
        .map(|k| {
            let d = detector.clone();
            tokio::spawn(async move { d.score(vec![batch(2.0 + k as f32, 1)]).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let closing = tokio::spawn({
        let d = detector.clone();
        async move { d.close().await }
    });
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap_err(), ServiceError::Closed);
    }
    assert!(
        !is_open(&gate),
        "the waiters were answered only after the worker was released"
    );
    gate.open();
    closing.await.unwrap();
    for (k, t) in accepted.into_iter().enumerate() {
        assert_eq!(scores(&t.await.unwrap()), vec![k as f32]);
    }
}

#[tokio::test]
async fn try_score_accepts_while_a_worker_or_a_queue_slot_is_free() {
    let (gate, scorer) = gated_with_watchdog();
    let detector = Detector::with_scorer(scorer, options(4, 1)).unwrap();
    // Back to back on an idle detector: 4 workers + 1 queue slot.
    let tickets: Vec<_> = (0..5)
        .map(|k| detector.try_score(vec![batch(k as f32, 1)]).expect("a free slot"))
        .collect();
    assert!(matches!(
        detector.try_score(vec![batch(9.0, 1)]).err(),
        Some(ServiceError::Busy { workers: 4, queue: 1 })
    ));
    gate.wait_for_arrivals(4); // every idle worker took a request
    gate.open();
    for (k, t) in tickets.into_iter().enumerate() {
        assert_eq!(scores(&t.await.unwrap()), vec![k as f32]);
    }
    detector.close().await;
}

#[tokio::test(flavor = "current_thread")]
async fn close_and_drop_never_block_the_runtime_thread() {
    let (gate, scorer) = gated_with_watchdog();
    let detector = Arc::new(Detector::with_scorer(scorer, options(1, 1)).unwrap());
    let held = detector.try_score(vec![batch(1.0, 1)]).unwrap();
    gate.wait_for_arrivals(1);
    let closing = tokio::spawn({
        let d = detector.clone();
        async move { d.close().await }
    });
    // The closing task waits for the held worker; this task (same thread) still runs.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(
        !closing.is_finished() && !is_open(&gate),
        "close blocked the runtime's thread"
    );

    let (gate2, scorer2) = gated_with_watchdog();
    let other = Detector::with_scorer(scorer2, options(1, 1)).unwrap();
    let pending = other.try_score(vec![batch(2.0, 1)]).unwrap();
    gate2.wait_for_arrivals(1);
    drop(other);
    assert!(!is_open(&gate2), "dropping waited for the busy worker");
    gate2.open();
    assert_eq!(scores(&pending.await.unwrap()), vec![2.0]);

    gate.open();
    closing.await.unwrap();
    assert_eq!(scores(&held.await.unwrap()), vec![1.0]);
}

#[test]
fn zero_workers_or_queue_is_refused() {
    for (workers, queue, threads) in [(0, 1, None), (1, 0, None), (1, 1, Some(0))] {
        let err = Detector::with_scorer(
            Arc::new(echo),
            ServiceOptions {
                workers,
                queue,
                threads,
            },
        )
        .err()
        .expect("refused");
        assert!(err.to_string().contains("workers"), "{err}");
    }
}

#[test]
fn workers_share_the_cores_out() {
    let cores = adp_host::service::cores();
    let per = |workers, threads| {
        ServiceOptions {
            workers,
            queue: 1,
            threads,
        }
        .threads_per_worker()
    };
    assert_eq!(per(1, None), cores);
    assert_eq!(per(2, None), (cores / 2).max(1));
    assert_eq!(per(cores * 4, None), 1, "more workers than cores: one thread each");
    assert_eq!(per(2, Some(3)), 3, "an explicit budget wins");
    assert!(per(2, None) * 2 <= cores.max(2));
}
