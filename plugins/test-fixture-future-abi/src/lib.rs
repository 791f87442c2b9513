//! Test fixture: a library that declares a future plugin ABI. Only the two fields that never move
//! are meaningful; a host must refuse it after reading them.
#[repr(C)]
pub struct FutureDeclaration {
    pub abi_version: u32,
    pub declaration_size: u32,
    pub something_new: u64,
}

#[no_mangle]
pub static adp_plugin_declaration: FutureDeclaration = FutureDeclaration {
    abi_version: adp_plugin_abi::ADP_ABI_VERSION + 1,
    declaration_size: std::mem::size_of::<FutureDeclaration>() as u32,
    something_new: 42,
};
