//! candle's element-wise pool for the commands that run one stream of large tensors.
//!
//! The candle plugin keeps candle's process-wide pool for large element-wise maps empty unless
//! `CANDLE_NUM_THREADS` is set (`backends/candle/src/threads.rs`): beside concurrent callers,
//! as in `adp score`/`adp eval` workers and the async service, that pool serialises their maps
//! and spins on the cores their own pools need. Concept learning is one caller on large tensors,
//! and candle's backward pass sums every gradient edge with such maps (`GradStore`: a zero tensor
//! and an add per edge), one thread each without the pool: SD 2.1 at 768 px, `adp bench --rows
//! learn-step-1`, the backward part 40.4 s without it, 34.7 s with it on 2 cores.
//!
//! Between two maps a pool thread spins up to `CANDLE_BARRIER_POOL_SPIN_LIMIT` times (25 000 by
//! default, about half a millisecond) before it sleeps, and in a learning step the next work is
//! mostly a product on rayon's threads, which want the same cores: `perf` put 4.4 % of the
//! backward pass's samples in that spinning at 512 px on 2 cores (0.4 % with a limit of 1000).

/// Spins of a pool thread between maps before it sleeps (a few tens of microseconds).
const SPIN_LIMIT: &str = "1000";

/// For a command running the diffusion model as one caller: sizes candle's pool to the threads
/// rayon would use (`RAYON_NUM_THREADS`, else every core) unless the user chose
/// `CANDLE_NUM_THREADS`, and shortens its threads' spinning unless the user chose
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`. Must run before the plugin is loaded (it reads the
/// variables once) and while this is the only thread.
pub fn share_for_one_caller() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", SPIN_LIMIT);
    }
    if std::env::var_os("CANDLE_NUM_THREADS").is_some() {
        return;
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    std::env::set_var("CANDLE_NUM_THREADS", threads.to_string());
}

#[cfg(test)]
mod tests {
    /// One test, since it changes this process's environment: chosen from rayon's count, then
    /// left alone once set.
    #[test]
    fn sizes_the_pool_unless_the_user_chose() {
        std::env::remove_var("CANDLE_NUM_THREADS");
        std::env::remove_var("CANDLE_BARRIER_POOL_SPIN_LIMIT");
        std::env::set_var("RAYON_NUM_THREADS", "3");
        super::share_for_one_caller();
        assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("3"));
        assert_eq!(
            std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").as_deref(),
            Ok(super::SPIN_LIMIT)
        );
        std::env::set_var("CANDLE_NUM_THREADS", "1");
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "7");
        super::share_for_one_caller();
        assert_eq!(std::env::var("CANDLE_NUM_THREADS").as_deref(), Ok("1"));
        assert_eq!(std::env::var("CANDLE_BARRIER_POOL_SPIN_LIMIT").as_deref(), Ok("7"));
        std::env::remove_var("CANDLE_NUM_THREADS");
        std::env::remove_var("CANDLE_BARRIER_POOL_SPIN_LIMIT");
        std::env::remove_var("RAYON_NUM_THREADS");
    }
}
