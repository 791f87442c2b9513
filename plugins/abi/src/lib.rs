//! The plugin boundary of adp.
//!
//! A plugin is a shared library exporting one symbol, [`DECLARATION_SYMBOL`], a
//! [`ffi::AdpPluginDeclaration`] that names the ABI version, the plugin's crate version and its
//! backend, and points at two `#[repr(C)]` function tables: one for the backend (info, open,
//! free_buffer) and one for the objects it opens (call, close). Arguments and results cross as
//! byte buffers holding [`wire`] messages (MessagePack encoding of the `adp-api` types), so the same
//! Rust values reach the plugin as a host would pass in process. Every buffer is freed by the side
//! that allocated it; every exported function catches panics; progress and cancellation cross as
//! a C function pointer. Plugins are built with [`export_plugin!`].
//!
//! Layout rule: the first two fields of the declaration (`abi_version: u32`,
//! `declaration_size: u32`) never move, so any host can read them from any plugin and refuse a
//! mismatch before touching anything else.

pub mod export;
pub mod ffi;
pub mod wire;

pub use adp_api;
pub use ffi::{ADP_ABI_VERSION, DECLARATION_SYMBOL};

#[doc(hidden)]
pub const API_VERSION_NUL: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
