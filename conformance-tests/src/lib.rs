//! The shared conformance cases of adp.
//!
//! Every case is a plain function over the `adp-api` traits, listed once in [`with_suite!`] by group,
//! with the capability it holds a backend to. That one list makes the table [`CASES`] and, through
//! [`conformance_tests!`], one `#[test]` per case (`<group>::<case>`, so `cargo test encoder::` picks a
//! group) for one backend. Each backend's test binary (`tests/<backend>.rs`) instantiates the suite
//! twice: in process, and through its plugin loaded by the host, so one test body runs against
//! both. A backend is held to the cases of every trait it declares, and must refuse the others.
pub mod backbone_cases;
pub mod cases;
pub mod diffuser_cases;
pub mod encoder_cases;
pub mod goldens;
pub mod optimizer_cases;
pub mod tolerance;

use adp_api::Backend;
pub use adp_api::Capability;
use std::path::{Path, PathBuf};
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
    let file = format!(
        "{}{crate_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let dir = build_dir();
    [dir.join(&file), dir.join("deps").join(&file)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{file} not found in {}: build the plugins first (`cargo build --workspace`)",
                dir.display()
            )
        })
}

/// The plugin built from `crate_name`, loaded through the host.
pub fn plugin(crate_name: &str) -> Subject {
    let path = built_plugin_path(crate_name);
    Arc::new(adp_host::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display())))
}

/// The shared data folder `../shared/data/<sub>` (real photos). Where it is absent, a developer's
/// run skips `what` loudly (`None`), and a CI run (`CI` set) fails: there the data is provided,
/// so its absence is a broken setup, not a reason to pass.
pub fn shared_data(sub: &str, what: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(sub);
    if root.is_dir() {
        return Some(root);
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{} is absent under CI: {what} cannot run", root.display());
    }
    eprintln!("SKIPPED: {} is absent, so {what} did not run", root.display());
    None
}

/// Runs the built `adp` with `args`, asserts that it succeeded, and returns its stdout.
pub fn adp(args: &[&str]) -> String {
    let exe = build_dir().join("adp");
    let out = std::process::Command::new(&exe)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --workspace first)", exe.display()));
    assert!(
        out.status.success(),
        "adp {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The first `n` PNG files of `dir`, by name.
pub fn pngs(dir: PathBuf, n: usize) -> Vec<PathBuf> {
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut v: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v.truncate(n);
    v
}

/// `n` small (40 × 40) smooth photos with a little texture, written as PNG files into `dir`: inputs
/// for end-to-end runs that check that every stage runs, not what it finds.
pub fn textured_photos(dir: &Path, n: u32) -> Vec<PathBuf> {
    (0..n)
        .map(|k| {
            let img = image::RgbImage::from_fn(40, 40, |x, y| {
                let v = |s: u32| ((x * 5 + y * 3 + k * 40 + s) % 256) as u8;
                image::Rgb([v(0), v(85), v(170)])
            });
            let path = dir.join(format!("{k:03}.png"));
            img.save(&path).unwrap();
            path
        })
        .collect()
}

/// One shared case: its test module and name, the capability it holds a backend to (`None`: every
/// backend), its body.
#[derive(Debug, Clone, Copy)]
pub struct Case {
    pub group: &'static str,
    pub name: &'static str,
    pub requires: Option<Capability>,
    pub run: fn(&dyn Backend),
}

impl Case {
    /// The case `group::name` of [`CASES`].
    pub fn named(group: &str, name: &str) -> &'static Case {
        CASES
            .iter()
            .find(|c| (c.group, c.name) == (group, name))
            .unwrap_or_else(|| panic!("no case {group}::{name}"))
    }

    /// Runs the case on `backend`, which is held to it when it declares the capability
    /// ([`cases::when_declared`]; `backend::undeclared_parts_are_refused` checks the others).
    pub fn run_on(&self, backend: &dyn Backend) {
        match self.requires {
            Some(capability) => cases::when_declared(backend, capability, self.run),
            None => (self.run)(backend),
        }
    }
}

/// Every shared case, group by group.
pub const CASES: &[Case] = with_suite!(case_table);

/// The suite, each case once: `group(module, capability) [case, …]`, each case a function of
/// `module`. Hands the list to the macro `$then` (a table, or tests).
#[macro_export]
macro_rules! with_suite {
    ($then:ident) => {
        $crate::$then! {
            backend(cases, None) [info_is_consistent, undeclared_parts_are_refused]
            scorer(cases, Some($crate::Capability::Scorer))
                [scorer_matches_the_definition, scorer_rejects_bad_features, scorer_is_batch_invariant_and_thread_safe]
            encoder(encoder_cases, Some($crate::Capability::TextImageEncoder)) [
                image_features_match_open_clip,
                text_embeddings_match_open_clip,
                half_precision_matches_open_clip,
                quick_gelu_matches_open_clip,
                state_probability_matches_open_clip,
                state_probability_gradient_matches_finite_differences,
                encoder_is_deterministic_batch_invariant_and_thread_safe,
                encoder_rejects_bad_checkpoints,
                encoder_rejects_bad_inputs,
            ]
            diffuser(diffuser_cases, Some($crate::Capability::LatentDiffuser)) [
                vae_matches_diffusers,
                conditioning_and_unet_match_diffusers,
                half_precision_matches_diffusers,
                denoising_loss_matches_diffusers_epsilon,
                denoising_loss_matches_diffusers_v_prediction,
                denoising_loss_gradient_matches_finite_differences,
                img2img_matches_diffusers,
                img2img_matches_diffusers_v_prediction,
                img2img_is_deterministic_under_a_seed,
                diffuser_rejects_bad_inputs,
                presets_vae_matches_diffusers,
                presets_conditioning_and_unet_match_diffusers,
                presets_denoising_loss_matches_diffusers,
                presets_img2img_matches_diffusers,
            ]
            optimizer(optimizer_cases, Some($crate::Capability::ConceptOptimizer)) [
                learns_deterministically_with_progress,
                anomaly_aware_objective_runs,
                a_killed_run_resumes_to_the_same_concept,
                optimizer_rejects_bad_requests,
            ]
            backbone(backbone_cases, Some($crate::Capability::FeatureExtractor)) [
                preprocessing_matches_the_reference,
                lite0_matches_the_reference,
                lite2_matches_the_reference,
                extractor_is_deterministic_batch_invariant_and_thread_safe,
                extractor_rejects_bad_checkpoints,
                extractor_rejects_bad_inputs,
            ]
        }
    };
}

/// [`with_suite!`] as the table [`CASES`].
#[doc(hidden)]
#[macro_export]
macro_rules! case_table {
    ($($group:ident($module:ident, $requires:expr) [$($case:ident),* $(,)?])*) => {
        &[$($($crate::Case {
            group: stringify!($group),
            name: stringify!($case),
            requires: $requires,
            run: $crate::$module::$case,
        },)*)*]
    };
}

/// [`with_suite!`] as one `#[test]` per case, `<group>::<case>`, each running the case of [`CASES`]
/// on `super::subject()`.
#[doc(hidden)]
#[macro_export]
macro_rules! case_tests {
    ($($group:ident($module:ident, $requires:expr) [$($case:ident),* $(,)?])*) => {
        $(mod $group {
            $(#[test]
            fn $case() {
                $crate::Case::named(stringify!($group), stringify!($case)).run_on(&*super::subject());
            })*
        })*
    };
}

/// Instantiates every shared case of [`CASES`] as a `#[test]` for the backend that `$make` returns.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        fn subject() -> $crate::Subject {
            $make
        }
        $crate::with_suite!(case_tests);
    };
}

#[cfg(test)]
mod tests {
    /// Missing shared data: skipped (loudly) on a developer's machine, a failure under CI. One
    /// test, so that setting `CI` races with nothing else in this binary.
    #[test]
    fn missing_shared_data_skips_locally_and_fails_under_ci() {
        let ci = std::env::var_os("CI");
        std::env::remove_var("CI");
        assert!(super::shared_data("no/such/folder", "this check").is_none());
        std::env::set_var("CI", "true");
        let under_ci = std::panic::catch_unwind(|| super::shared_data("no/such/folder", "this check"));
        match ci {
            Some(v) => std::env::set_var("CI", v),
            None => std::env::remove_var("CI"),
        }
        let message = under_ci.expect_err("under CI a missing data folder must fail the test");
        let text = message.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            text.contains("absent under CI") && text.contains("this check"),
            "{text}"
        );
        assert!(super::shared_data("", "the shared data").is_some() || std::env::var_os("CI").is_none());
    }
}
