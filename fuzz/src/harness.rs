//! Runs one target's cases on a worker thread: each case under `catch_unwind`, while this thread
//! watches for a case that runs longer than the hang limit (a hung case cannot be killed, so the
//! round stops there and reports it).
use crate::{alloc, rng::Rng, targets};
use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub target: String,
    pub cases: u64,
    pub ok: u64,
    pub errors: u64,
    pub panics: u64,
    pub hangs: u64,
    /// The most heap live at once during the target, in bytes.
    pub peak_bytes: usize,
    pub secs: f64,
    /// The first panic or hang, with the case that reproduces it.
    pub first_failure: Option<String>,
}

thread_local! {
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps each panic's message for the report instead of printing thousands of them.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if IN_CASE.get() {
                LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
            } else {
                eprintln!("{info}"); // The harness itself failed: say so.
            }
        }))
    });
}

/// Where a round's files go: memory-backed when the machine has it (millions of small writes).
fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir()),
        false => tempfile::tempdir(),
    }
    .expect("a scratch folder")
}

/// Runs `cases` cases of `name` (or only case `only`), seeded by `seed`.
pub fn run(name: &str, seed: u64, cases: u64, only: Option<u64>, hang: Duration) -> Stats {
    quiet_panics();
    let index = targets::NAMES.iter().position(|n| *n == name).expect("a known target");
    let stats = Arc::new(Mutex::new(Stats {
        target: name.into(),
        ..Stats::default()
    }));
    // Cases finished, and the case now running (+1; 0 = none yet).
    let done = Arc::new(AtomicU64::new(0));
    let worker = {
        let (stats, done, name) = (stats.clone(), done.clone(), name.to_string());
        std::thread::spawn(move || {
            let dir = scratch();
            let mut target = targets::make(&name, dir.path()).unwrap_or_else(|e| panic!("seeding {name}: {e}"));
            let range = only.map_or(0..cases, |c| c..c + 1);
            for case in range {
                alloc::TARGET.store(index, SeqCst);
                alloc::CASE.store(case, SeqCst);
                let mut rng = Rng::for_case(seed, &name, case);
                IN_CASE.set(true);
                let r = catch_unwind(AssertUnwindSafe(|| target.case(&mut rng)));
                IN_CASE.set(false);
                let mut s = stats.lock().unwrap();
                s.cases += 1;
                match r {
                    Ok(Ok(())) => s.ok += 1,
                    Ok(Err(_)) => s.errors += 1,
                    Err(_) => {
                        s.panics += 1;
                        let msg = LAST_PANIC.with(|p| p.borrow().clone());
                        let line =
                            format!("panic: {msg} (reproduce: adp-fuzz --seed {seed} --target {name} --case {case})");
                        eprintln!("{line}");
                        s.first_failure.get_or_insert(line);
                    }
                }
                drop(s);
                done.fetch_add(1, SeqCst);
            }
        })
    };
    alloc::SEED.store(seed, SeqCst);
    alloc::reset_peak();
    let start = Instant::now();
    let (mut seen, mut since) = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let d = done.load(SeqCst);
        if d != seen {
            (seen, since) = (d, Instant::now());
        } else if since.elapsed() > hang {
            let case = alloc::CASE.load(SeqCst);
            let mut s = stats.lock().unwrap();
            s.hangs += 1;
            s.first_failure.get_or_insert(format!(
                "hang: case ran over {hang:?} (reproduce: adp-fuzz --seed {seed} --target {name} --case {case})"
            ));
            break;
        }
    }
    if worker.is_finished() {
        if let Err(e) = worker.join() {
            panic!("the {name} worker failed outside a case: {e:?}");
        }
    }
    let mut s = stats.lock().unwrap().clone();
    s.secs = start.elapsed().as_secs_f64();
    s.peak_bytes = alloc::peak();
    s
}

/// The summary table.
pub fn table(all: &[Stats]) -> String {
    let mut out = format!(
        "{:<12} {:>9} {:>9} {:>9} {:>6} {:>5} {:>12} {:>8}\n",
        "target", "cases", "ok", "errors", "panics", "hangs", "peak bytes", "cases/s"
    );
    for s in all {
        out += &format!(
            "{:<12} {:>9} {:>9} {:>9} {:>6} {:>5} {:>12} {:>8.0}\n",
            s.target,
            s.cases,
            s.ok,
            s.errors,
            s.panics,
            s.hangs,
            s.peak_bytes,
            s.cases as f64 / s.secs.max(1e-9)
        );
    }
    out
}
