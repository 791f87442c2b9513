//! Test fixture: a shared library named like a plugin but lacking the declaration symbol.
#[no_mangle]
pub extern "C" fn adp_not_a_declaration() -> u32 {
    7
}
