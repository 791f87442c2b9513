//! Backend conformance (not a host end-to-end test).
//!
//! The conformance suite for the libtorch backend, in process and as a plugin.
mod in_process {
    adp_conformance::conformance_tests!(adp_conformance::in_process(adp_backend_tch::TchBackend::new()));
}
mod plugin {
    adp_conformance::conformance_tests!(adp_conformance::plugin("adp_plugin_tch"));
}
