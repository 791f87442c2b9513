//! The conformance suite for the candle backend, in process and as a plugin.
mod in_process {
    adp_conformance::conformance_tests!(adp_conformance::in_process(adp_backend_candle::CandleBackend::new()));
}
mod plugin {
    adp_conformance::conformance_tests!(adp_conformance::plugin("adp_plugin_candle"));
}
