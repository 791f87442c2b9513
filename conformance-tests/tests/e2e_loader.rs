//! Host end-to-end test (not backend conformance): `adp_host`'s plugin loader on built libraries.
//!
//! The host's plugin loader: every way loading can fail, each with its own message.
use adp_api::Error;
use adp_conformance::{build_dir, built_plugin_path};
use std::path::Path;

#[test]
fn a_missing_file_is_named() {
    let err = adp_host::load(Path::new("/no/such/libadp_plugin_x.so")).unwrap_err();
    assert_eq!(err.to_string(), "plugin /no/such/libadp_plugin_x.so: file not found");
}

#[test]
fn a_file_that_is_not_a_shared_library() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("libadp_plugin_fake.so");
    std::fs::write(&path, b"#!/bin/sh\necho not a library\n").unwrap();
    let err = adp_host::load(&path).unwrap_err();
    assert!(matches!(err, Error::NotASharedLibrary { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("plugin {}: not a loadable shared library:", path.display())),
        "{msg}"
    );
}

#[test]
fn a_library_without_the_declaration_symbol() {
    let path = built_plugin_path("adp_plugin_test_fixture_no_declaration");
    let err = adp_host::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "plugin {}: declaration symbol `adp_plugin_declaration` not found; is this an adp plugin?",
            path.canonicalize().unwrap().display()
        )
    );
}

#[test]
fn a_plugin_built_for_another_abi_names_both_versions() {
    let path = built_plugin_path("adp_plugin_test_fixture_future_abi");
    let err = adp_host::load(&path).unwrap_err();
    let host = adp_plugin_abi::ADP_ABI_VERSION;
    assert_eq!(
        err,
        Error::AbiMismatch {
            path: path.canonicalize().unwrap(),
            plugin: host + 1,
            host
        }
    );
    assert!(err.to_string().ends_with(&format!(
        "built for adp plugin ABI {}, this host speaks ABI {host}",
        host + 1
    )));
}

#[test]
fn discovery_lists_every_plugin_in_a_folder_with_its_outcome() {
    let found = adp_host::discover(&build_dir()).unwrap();
    let outcome = |name: &str| {
        found
            .iter()
            .find(|(p, _)| p.file_name().unwrap().to_string_lossy().contains(&format!("{name}.")))
            .unwrap_or_else(|| panic!("{name} not discovered in {found:?}"))
    };
    assert_eq!(
        outcome("adp_plugin_test_fixture")
            .1
            .as_ref()
            .unwrap()
            .backend_info()
            .name,
        "test-fixture"
    );
    assert_eq!(
        outcome("adp_plugin_candle").1.as_ref().unwrap().backend_info().name,
        "candle"
    );
    assert!(matches!(
        outcome("adp_plugin_test_fixture_future_abi").1,
        Err(Error::AbiMismatch { .. })
    ));
}

#[test]
fn plugins_are_found_by_name_through_adp_plugin_path() {
    // Only this test touches the variable.
    std::env::set_var(adp_host::PLUGIN_PATH_ENV, build_dir());
    let dirs = adp_host::plugin_dirs(&[]);
    assert_eq!(dirs, vec![build_dir()]);
    let p = adp_host::plugin::find("test-fixture", &dirs).unwrap();
    assert_eq!(p.backend_info().name, "test-fixture");
    let err = adp_host::plugin::find("nonesuch", &dirs).unwrap_err().to_string();
    assert!(
        err.contains("no plugin named \"nonesuch\"") && err.contains("test-fixture"),
        "{err}"
    );
}

#[test]
fn loading_twice_gives_the_same_library() {
    let path = built_plugin_path("adp_plugin_test_fixture");
    let (a, b) = (adp_host::load(&path).unwrap(), adp_host::load(&path).unwrap());
    assert_eq!(a.path(), b.path());
    assert_eq!(a.crate_version(), env!("CARGO_PKG_VERSION"));
}
