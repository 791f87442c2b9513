//! The shared conformance cases of adp.
//!
//! Every case is a plain function over the `adp-api` traits; [`conformance_tests!`] turns them into
//! `#[test]`s for one backend. Each backend's test binary (`tests/<backend>.rs`) instantiates the
//! suite twice: in process, and through its plugin loaded by the host, so one test body runs
//! against both. A backend is held to the cases of every trait it declares.
pub mod backbone_cases;
pub mod cases;
pub mod diffuser_cases;
pub mod encoder_cases;
pub mod goldens;
pub mod optimizer_cases;

use adp_api::Backend;
use std::path::PathBuf;
use std::sync::Arc;

pub type Subject = Arc<dyn Backend>;

pub fn in_process(backend: impl Backend + 'static) -> Subject {
    Arc::new(backend)
}

/// The build folder holding the test binary's sibling artifacts (`target/<profile>`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps folder");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The path of the plugin library built from crate `crate_name` (e.g. `adp_plugin_candle`).
pub fn built_plugin_path(crate_name: &str) -> PathBuf {
    let file = format!("{}{crate_name}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let dir = build_dir();
    [dir.join(&file), dir.join("deps").join(&file)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{file} not found in {}: build the plugins first (`cargo build --workspace`)", dir.display()))
}

/// The plugin built from `crate_name`, loaded through the host.
pub fn plugin(crate_name: &str) -> Subject {
    let path = built_plugin_path(crate_name);
    Arc::new(adp_host::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

/// Instantiates every shared case as a `#[test]` for the backend that `$make` returns.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        fn subject() -> $crate::Subject {
            $make
        }
        #[test]
        fn info_is_consistent() {
            $crate::cases::info_is_consistent(&*subject());
        }
        #[test]
        fn undeclared_parts_are_refused() {
            $crate::cases::undeclared_parts_are_refused(&*subject());
        }
        #[test]
        fn image_features_match_open_clip() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::image_features_match_open_clip);
        }
        #[test]
        fn text_embeddings_match_open_clip() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::text_embeddings_match_open_clip);
        }
        #[test]
        fn state_probability_matches_open_clip() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::state_probability_matches_open_clip);
        }
        #[test]
        fn state_probability_gradient_matches_finite_differences() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::state_probability_gradient_matches_finite_differences);
        }
        #[test]
        fn encoder_is_deterministic_batch_invariant_and_thread_safe() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::encoder_is_deterministic_batch_invariant_and_thread_safe);
        }
        #[test]
        fn encoder_rejects_bad_checkpoints() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::encoder_rejects_bad_checkpoints);
        }
        #[test]
        fn encoder_rejects_bad_inputs() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::TextImageEncoder, $crate::encoder_cases::encoder_rejects_bad_inputs);
        }
        #[test]
        fn vae_matches_diffusers() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::vae_matches_diffusers);
        }
        #[test]
        fn conditioning_and_unet_match_diffusers() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::conditioning_and_unet_match_diffusers);
        }
        #[test]
        fn denoising_loss_matches_diffusers_epsilon() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::denoising_loss_matches_diffusers_epsilon);
        }
        #[test]
        fn denoising_loss_matches_diffusers_v_prediction() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::denoising_loss_matches_diffusers_v_prediction);
        }
        #[test]
        fn denoising_loss_gradient_matches_finite_differences() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::denoising_loss_gradient_matches_finite_differences);
        }
        #[test]
        fn img2img_matches_diffusers() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::img2img_matches_diffusers);
        }
        #[test]
        fn img2img_is_deterministic_under_a_seed() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::img2img_is_deterministic_under_a_seed);
        }
        #[test]
        fn diffuser_rejects_bad_inputs() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::LatentDiffuser, $crate::diffuser_cases::diffuser_rejects_bad_inputs);
        }
        #[test]
        fn learns_deterministically_with_progress() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::ConceptOptimizer, $crate::optimizer_cases::learns_deterministically_with_progress);
        }
        #[test]
        fn anomaly_aware_objective_runs() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::ConceptOptimizer, $crate::optimizer_cases::anomaly_aware_objective_runs);
        }
        #[test]
        fn a_killed_run_resumes_to_the_same_concept() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::ConceptOptimizer, $crate::optimizer_cases::a_killed_run_resumes_to_the_same_concept);
        }
        #[test]
        fn optimizer_rejects_bad_requests() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::ConceptOptimizer, $crate::optimizer_cases::optimizer_rejects_bad_requests);
        }
        #[test]
        fn backbone_preprocessing_matches_the_reference() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::FeatureExtractor, $crate::backbone_cases::preprocessing_matches_the_reference);
        }
        #[test]
        fn backbone_lite0_matches_the_reference() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::FeatureExtractor, $crate::backbone_cases::lite0_matches_the_reference);
        }
        #[test]
        fn backbone_lite2_matches_the_reference() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::FeatureExtractor, $crate::backbone_cases::lite2_matches_the_reference);
        }
        #[test]
        fn backbone_is_deterministic_batch_invariant_and_thread_safe() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::FeatureExtractor, $crate::backbone_cases::extractor_is_deterministic_batch_invariant_and_thread_safe);
        }
        #[test]
        fn backbone_rejects_bad_checkpoints() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::FeatureExtractor, $crate::backbone_cases::extractor_rejects_bad_checkpoints);
        }
        #[test]
        fn backbone_rejects_bad_inputs() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::FeatureExtractor, $crate::backbone_cases::extractor_rejects_bad_inputs);
        }
        #[test]
        fn scorer_matches_the_definition() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::Scorer, $crate::cases::scorer_matches_the_definition);
        }
        #[test]
        fn scorer_rejects_bad_features() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::Scorer, $crate::cases::scorer_rejects_bad_features);
        }
        #[test]
        fn scorer_is_batch_invariant_and_thread_safe() {
            $crate::cases::when_declared(&*subject(), adp_api::Capability::Scorer, $crate::cases::scorer_is_batch_invariant_and_thread_safe);
        }
    };
}
