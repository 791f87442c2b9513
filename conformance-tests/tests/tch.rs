//! Backend conformance (not a host end-to-end test).
//!
//! The conformance suite for the libtorch backend, in process and as a plugin.
mod in_process {
    adp_conformance::conformance_tests!(adp_conformance::in_process(adp_backend_tch::TchBackend::new()));
}
mod plugin {
    adp_conformance::conformance_tests!(adp_conformance::plugin("adp_plugin_tch"));
}

/// libtorch runs both half precisions on the CPU, so the shared half-precision cases compare
/// both with the goldens here: neither may pass by refusal.
#[test]
fn half_precision_on_the_cpu_is_f16_and_bf16() {
    use adp_api::{Backend, Device, Dtype};
    use adp_conformance::goldens::{clip_checkpoint, diffusion_spec};
    let b = adp_backend_tch::TchBackend;
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let enc = b.text_image_encoder(&clip_checkpoint().with_dtype(dtype), Device::Cpu);
        let dif = b.latent_diffuser(&diffusion_spec(false).with_dtype(dtype), Device::Cpu);
        assert!(enc.is_ok() && dif.is_ok(), "{dtype} refused on the cpu");
    }
}
