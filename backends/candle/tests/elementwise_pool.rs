//! The plugin keeps candle's process-wide element-wise pool empty (see `threads.rs`), so that
//! large maps run on the calling thread, inside its thread budget. Its own process: the pool is
//! built once, at the first large map.
use adp_backend_candle::CandleBackend;
use candle_core::{DType, Device, Tensor};

#[test]
fn large_elementwise_maps_stay_on_the_caller() {
    let chosen = std::env::var_os("CANDLE_NUM_THREADS");
    let _backend = CandleBackend::new();
    // 2^17 elements: above candle's 64 Ki threshold for splitting a map over its pool.
    let x = Tensor::ones(1 << 17, DType::F32, &Device::Cpu).unwrap();
    let y = (&x + &x).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    // Exact: a sum of 2^17 twos is an integer far below 2^24.
    assert_eq!(y, (2u32 << 17) as f32);
    if chosen.is_none() {
        assert_eq!(candle_core::utils::barrier_pool().n_workers(), 0);
    }
}
