//! The conformance suite for the libtorch backend, in process and as a plugin.
mod in_process {
    adp_conformance::conformance_tests!(adp_conformance::in_process(adp_backend_tch::TchBackend::new()));
}
mod plugin {
    adp_conformance::conformance_tests!(adp_conformance::plugin("adp_plugin_tch"));
}

/// Both real plugins live in one process.
#[test]
fn tch_and_candle_plugins_load_side_by_side() {
    let tch = adp_conformance::plugin("adp_plugin_tch");
    let candle = adp_conformance::plugin("adp_plugin_candle");
    assert_eq!((tch.info().name, candle.info().name), ("tch".to_string(), "candle".to_string()));
}

/// The two backends agree with each other on the same inputs, for every trait both declare.
#[test]
fn tch_and_candle_agree() {
    use adp_api::Capability;
    let (tch, candle) = (adp_conformance::plugin("adp_plugin_tch"), adp_conformance::plugin("adp_plugin_candle"));
    let both = |c: Capability| tch.info().provides.contains(&c) && candle.info().provides.contains(&c);
    if both(Capability::TextImageEncoder) {
        adp_conformance::encoder_cases::encoders_agree(&*candle, &*tch);
    }
    if both(Capability::LatentDiffuser) {
        adp_conformance::diffuser_cases::diffusers_agree(&*candle, &*tch);
    }
    if both(Capability::FeatureExtractor) {
        adp_conformance::backbone_cases::extractors_agree(&*candle, &*tch);
    }
}
