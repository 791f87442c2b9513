//! Thread budgets ([`adp_api::Backend::with_threads`]): one rayon pool per calling thread.
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    /// The calling thread's pool and its size, rebuilt when the budget changes. It lives as
    /// long as the thread (a service worker): building a pool per call would cost thread starts.
    static POOL: RefCell<Option<(usize, Arc<rayon::ThreadPool>)>> = const { RefCell::new(None) };
}

/// candle 0.11 splits element-wise maps of 64 Ki elements or more over a process-wide "barrier
/// pool" of `CANDLE_NUM_THREADS − 1` threads (default: every core), behind one lock, whose
/// caller spins until the pool's threads are done. That pool ignores the budgets above: beside
/// budgeted callers it serialises their maps and its spinning takes the cores their pools need
/// (a `visual` service on 2 cores: 2.2–3.6 photos/s with it, 6.6–20.7 without). Unless the
/// user set `CANDLE_NUM_THREADS`, it is sized to no threads before candle first builds it, so
/// those maps run on the calling thread, inside its budget.
/// A batch of `n` items as `(start, len)` parts, one per thread of the calling pool on the CPU
/// (one part elsewhere), for work whose items are independent. Every candle kernel spreads its
/// work over the pool, and between two kernels the pool's other threads sleep and are woken
/// again; with one part per thread, each part's kernels run on its own thread (candle's `visual`
/// features: 30 515 context switches over 20 repeats of a 4-photo batch before, 2684–3009 after;
/// its CLIP text embeddings: 1.05–1.10× PyTorch's wall time at 0.88–0.91× its CPU time before).
pub(crate) fn per_thread_parts(n: usize, device: &candle_core::Device) -> Vec<(usize, usize)> {
    let parts = if device.is_cpu() {
        rayon::current_num_threads().min(n).max(1)
    } else {
        1
    };
    adp_api::layout::chunks(n, n.div_ceil(parts)).collect()
}

pub(crate) fn keep_elementwise_maps_on_the_caller() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            // Set once, when the plugin is created, before any candle operation reads it.
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    });
}

pub(crate) fn with_threads(threads: usize, work: &mut (dyn FnMut() + Send)) {
    let threads = threads.max(1);
    // Already on a pool of that size (a budgeted call inside another): stay there.
    if rayon::current_thread_index().is_some() && rayon::current_num_threads() == threads {
        return work();
    }
    let pool = POOL.with(|slot| {
        let mut slot = slot.borrow_mut();
        match &*slot {
            Some((n, pool)) if *n == threads => Some(pool.clone()),
            _ => {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(move |i| format!("adp-candle-{threads}-{i}"))
                    .build()
                    .ok()
                    .map(Arc::new);
                *slot = pool.clone().map(|p| (threads, p));
                pool
            }
        }
    });
    match pool {
        Some(pool) => pool.install(work),
        // No thread could be started: the call still runs, on the shared pool.
        None => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_threads;

    #[test]
    fn work_runs_on_a_pool_of_the_budget() {
        for budget in [1, 2, 3] {
            let mut seen = None;
            with_threads(budget, &mut || seen = Some(rayon::current_num_threads()));
            assert_eq!(seen, Some(budget));
        }
        let mut nested = None;
        with_threads(2, &mut || {
            with_threads(2, &mut || nested = Some(rayon::current_num_threads()))
        });
        assert_eq!(nested, Some(2));
        let mut zero = None;
        with_threads(0, &mut || zero = Some(rayon::current_num_threads()));
        assert_eq!(zero, Some(1), "a budget of 0 counts as 1");
    }
}
