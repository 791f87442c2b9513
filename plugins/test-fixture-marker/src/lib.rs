//! Test fixture: a shared library named like a plugin whose constructor writes a marker file at
//! `$ADP_TEST_MARKER` the moment it is loaded, before any symbol is looked up. Tests assert the
//! marker never appears where adp must not open the library.

/// Runs when the loader maps the library (the ELF `.init_array`), like a hostile library would.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static WRITE_MARKER_ON_LOAD: extern "C" fn() = write_marker;

extern "C" fn write_marker() {
    if let Some(path) = std::env::var_os("ADP_TEST_MARKER") {
        let _ = std::fs::write(path, b"loaded\n");
    }
}
