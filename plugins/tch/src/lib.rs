//! The libtorch backend as an adp plugin. `build.rs` gives it an rpath to `$LIBTORCH/lib`, so a
//! host loads it without LD_LIBRARY_PATH.
adp_plugin_abi::export_plugin!("tch", adp_backend_tch::TchBackend::new());
