//! The candle backend as an adp plugin.
#[cfg(target_os = "linux")]
mod huge_pages;

#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: huge_pages::HugePageHint = huge_pages::HugePageHint;

adp_plugin_abi::export_plugin!("candle", adp_backend_candle::CandleBackend::new());
