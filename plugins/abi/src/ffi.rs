//! The `#[repr(C)]` types of the boundary.
use std::ffi::{c_char, c_void};

/// Bumped on any change to these types, the tables or the wire messages.
pub const ADP_ABI_VERSION: u32 = 6;

/// The exported symbol (NUL-terminated for `dlsym`).
pub const DECLARATION_SYMBOL: &[u8] = b"adp_plugin_declaration\0";

/// Success: the out-buffer holds the reply message.
pub const ADP_OK: i32 = 0;
/// An `adp_api::Error`: the out-buffer holds it, wire-encoded.
pub const ADP_ERROR: i32 = 1;
/// The plugin panicked: the out-buffer holds the panic message as UTF-8.
pub const ADP_PANIC: i32 = 2;

/// Bytes lent by the caller for the duration of one call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct AdpBytes {
    pub ptr: *const u8,
    pub len: usize,
}

impl AdpBytes {
    pub fn from_slice(s: &[u8]) -> Self {
        Self {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }
    /// # Safety
    /// `ptr` must point at `len` readable bytes for the returned lifetime.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 {
            &[]
        } else {
            std::slice::from_raw_parts(self.ptr, self.len)
        }
    }
}

/// Bytes allocated by the plugin; the host hands them back through `free_buffer`.
#[repr(C)]
#[derive(Debug)]
pub struct AdpBuffer {
    pub ptr: *mut u8,
    pub len: usize,
    pub capacity: usize,
}

impl AdpBuffer {
    pub const fn empty() -> Self {
        Self {
            ptr: std::ptr::null_mut(),
            len: 0,
            capacity: 0,
        }
    }
}

/// One optimisation step's numbers, as passed to a progress callback.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct AdpProgress {
    pub step: u64,
    pub total_steps: u64,
    pub loss: f32,
    pub diffusion_loss: f32,
    pub clip_normal: f32,
    pub clip_anomaly: f32,
}

/// Called by the plugin after each step; a non-zero return asks it to cancel.
pub type AdpProgressFn = Option<unsafe extern "C" fn(user: *mut c_void, progress: *const AdpProgress) -> i32>;

/// An object opened by a plugin (an encoder, a diffuser, an optimizer or a scorer). Opaque.
#[repr(C)]
pub struct AdpObject {
    _private: [u8; 0],
}

#[repr(C)]
pub struct AdpBackendTable {
    /// Writes the wire-encoded `BackendInfo` to `out`.
    pub info: unsafe extern "C" fn(out: *mut AdpBuffer) -> i32,
    /// Opens an object from a wire-encoded `wire::Open`; on success `*object` is set.
    pub open: unsafe extern "C" fn(request: AdpBytes, object: *mut *mut AdpObject, out: *mut AdpBuffer) -> i32,
    /// Frees a buffer this plugin allocated.
    pub free_buffer: unsafe extern "C" fn(buffer: AdpBuffer),
}

#[repr(C)]
pub struct AdpObjectTable {
    /// Runs a wire-encoded `wire::Call`; may be called from several threads at once.
    pub call: unsafe extern "C" fn(
        object: *const AdpObject,
        request: AdpBytes,
        progress: AdpProgressFn,
        user: *mut c_void,
        out: *mut AdpBuffer,
    ) -> i32,
    pub close: unsafe extern "C" fn(object: *mut AdpObject),
}

/// The one exported symbol of a plugin.
#[repr(C)]
pub struct AdpPluginDeclaration {
    /// Never moves: see the crate docs.
    pub abi_version: u32,
    /// `size_of::<AdpPluginDeclaration>()` in the plugin's build; never moves.
    pub declaration_size: u32,
    pub crate_version: *const c_char,
    pub backend_name: *const c_char,
    /// Version of `adp-plugin-abi` the plugin was built with.
    pub abi_crate_version: *const c_char,
    pub backend: *const AdpBackendTable,
    pub object: *const AdpObjectTable,
}

// The declaration only points at immutable statics.
unsafe impl Sync for AdpPluginDeclaration {}
