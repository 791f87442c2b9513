//! The candle backend as an adp plugin.
adp_plugin_abi::export_plugin!("candle", adp_backend_candle::CandleBackend::new());
