//! A plugin library opened once and never unloaded, its declaration checked against our ABI, and
//! the raw calls through its two function tables (objects opened inside it, calls, replies).
use adp_api::requests::{Flow, Progress};
use adp_api::{BackendInfo, Error, Result};
use adp_plugin_abi::ffi::*;
use adp_plugin_abi::wire::{self, Call, Open, Reply, Request};
use adp_plugin_abi::DECLARATION_SYMBOL;
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// A loaded plugin library. It is never unloaded: objects, callbacks and statics inside it may
/// outlive any handle, and unloading Rust cdylibs is not reliably safe.
pub(crate) struct Library {
    pub path: PathBuf,
    pub name: String,
    pub crate_version: String,
    pub abi_crate_version: String,
    pub backend: &'static AdpBackendTable,
    pub object: &'static AdpObjectTable,
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Arc<Library>>> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<Library>>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

unsafe fn c_str(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn open_library(path: &Path) -> Result<Library> {
    // SAFETY: loading runs the library's initialisers; adp plugins are Rust cdylibs without any.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's message is "dlopen failed"; the loader's own reason is its source.
        let reason = match std::error::Error::source(&e) {
            Some(why) => format!("{e}: {why}"),
            None => e.to_string(),
        };
        Error::NotASharedLibrary {
            path: path.into(),
            reason,
        }
    })?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let symbol = String::from_utf8_lossy(&DECLARATION_SYMBOL[..DECLARATION_SYMBOL.len() - 1]).into_owned();
    // SAFETY: a data symbol's address; nothing is read through it until the version is checked.
    let decl: *const AdpPluginDeclaration = unsafe {
        *lib.get::<*const AdpPluginDeclaration>(DECLARATION_SYMBOL)
            .map_err(|_| Error::MissingDeclaration {
                path: path.into(),
                symbol: symbol.clone(),
            })?
    };
    // SAFETY: every ABI version starts with these two u32 fields.
    let (abi, size) = unsafe {
        (
            std::ptr::read(decl.cast::<u32>()),
            std::ptr::read(decl.cast::<u32>().add(1)),
        )
    };
    if abi != ADP_ABI_VERSION {
        return Err(Error::AbiMismatch {
            path: path.into(),
            plugin: abi,
            host: ADP_ABI_VERSION,
        });
    }
    if size as usize != std::mem::size_of::<AdpPluginDeclaration>() {
        let want = std::mem::size_of::<AdpPluginDeclaration>();
        return Err(Error::config(path, format!("plugin declaration is {size} bytes where ABI {abi} has {want}: built against another revision of ABI {abi}; rebuild the plugin")));
    }
    // SAFETY: the version and size match ours, so the layout is ours.
    let decl = unsafe { &*decl };
    if decl.backend.is_null() || decl.object.is_null() {
        return Err(Error::Protocol {
            backend: path.display().to_string(),
            message: "null function table".into(),
        });
    }
    // SAFETY: checked above; the tables are statics of a library that is never unloaded.
    unsafe {
        Ok(Library {
            path: path.into(),
            name: c_str(decl.backend_name),
            crate_version: c_str(decl.crate_version),
            abi_crate_version: c_str(decl.abi_crate_version),
            backend: &*decl.backend,
            object: &*decl.object,
        })
    }
}

/// Opens the library at `canonical` (a canonical path), once per process.
pub(crate) fn open(canonical: &Path) -> Result<Arc<Library>> {
    let mut loaded = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(lib) = loaded.get(canonical) {
        return Ok(lib.clone());
    }
    let lib = Arc::new(open_library(canonical)?);
    loaded.insert(canonical.to_path_buf(), lib.clone());
    Ok(lib)
}

impl Library {
    /// Copies a plugin-allocated buffer out and hands it back to the plugin.
    fn take(&self, buffer: AdpBuffer) -> Vec<u8> {
        let bytes = if buffer.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: the plugin wrote `len` bytes at `ptr` and keeps them until `free_buffer`.
            unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.len).to_vec() }
        };
        // SAFETY: the buffer came from this plugin and is returned once.
        unsafe { (self.backend.free_buffer)(buffer) };
        bytes
    }

    /// Turns a status code and its buffer into the reply bytes or the plugin's error.
    pub(crate) fn outcome(&self, code: i32, buffer: AdpBuffer) -> Result<Vec<u8>> {
        let bytes = self.take(buffer);
        match code {
            ADP_OK => Ok(bytes),
            ADP_ERROR => {
                Err(wire::decode::<Error>(&bytes).unwrap_or_else(|e| self.protocol(format!("undecodable error: {e}"))))
            }
            ADP_PANIC => Err(Error::PluginPanic {
                backend: self.name.clone(),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            }),
            other => Err(self.protocol(format!("unknown status code {other}"))),
        }
    }

    pub(crate) fn protocol(&self, message: impl Into<String>) -> Error {
        Error::Protocol {
            backend: self.name.clone(),
            message: message.into(),
        }
    }
}

pub(crate) fn backend_info(lib: &Library) -> Result<BackendInfo> {
    let mut out = AdpBuffer::empty();
    // SAFETY: the table belongs to a loaded library of our ABI.
    let code = unsafe { (lib.backend.info)(&mut out) };
    let bytes = lib.outcome(code, out)?;
    wire::decode(&bytes).map_err(|e| lib.protocol(format!("undecodable backend info: {e}")))
}

/// An object opened inside a plugin; closed when dropped.
pub(crate) struct Remote {
    pub(crate) lib: Arc<Library>,
    handle: *mut AdpObject,
}

// SAFETY: plugin objects are `Send + Sync` trait objects on the plugin side, and every entry
// point of the object table is reentrant.
unsafe impl Send for Remote {}
unsafe impl Sync for Remote {}

impl Drop for Remote {
    fn drop(&mut self) {
        // SAFETY: opened by this library, closed once.
        unsafe { (self.lib.object.close)(self.handle) };
    }
}

/// Hands each step's numbers to the host's observer; a panicking observer cancels the run.
unsafe extern "C" fn forward_progress(user: *mut c_void, progress: *const AdpProgress) -> i32 {
    let observer = &mut *user.cast::<&mut dyn FnMut(&Progress) -> Flow>();
    let p = Progress::from(&*progress);
    match catch_unwind(AssertUnwindSafe(|| observer(&p))) {
        Ok(Flow::Continue) => 0,
        _ => 1,
    }
}

thread_local! {
    /// The thread budget [`adp_api::Backend::with_threads`] set on this thread for its plugin
    /// calls; every call carries it across the boundary.
    static CALL_THREADS: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Runs `work` with this thread's plugin calls carrying `threads`; the previous budget is back
/// afterwards, even if `work` panics.
pub(crate) fn with_call_threads(threads: usize, work: &mut (dyn FnMut() + Send)) {
    struct Restore(Option<u32>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CALL_THREADS.with(|t| t.set(self.0));
        }
    }
    let budget = threads.clamp(1, u32::MAX as usize) as u32;
    let _restore = Restore(CALL_THREADS.with(|t| t.replace(Some(budget))));
    work()
}

impl Remote {
    pub(crate) fn open(lib: &Arc<Library>, request: &Open) -> Result<Self> {
        let bytes = wire::encode(request)?;
        let mut handle = std::ptr::null_mut();
        let mut out = AdpBuffer::empty();
        // SAFETY: the request outlives the call; `handle` and `out` are valid slots.
        let code = unsafe { (lib.backend.open)(AdpBytes::from_slice(&bytes), &mut handle, &mut out) };
        lib.outcome(code, out)?;
        if handle.is_null() {
            return Err(lib.protocol("open succeeded without an object"));
        }
        Ok(Remote {
            lib: lib.clone(),
            handle,
        })
    }

    pub(crate) fn call(&self, call: &Call, progress: Option<&mut dyn FnMut(&Progress) -> Flow>) -> Result<Reply> {
        let threads = CALL_THREADS.with(|t| t.get());
        let bytes = wire::encode(&Request { threads, call })?;
        let mut out = AdpBuffer::empty();
        let code = match progress {
            Some(mut observer) => {
                let user: *mut &mut dyn FnMut(&Progress) -> Flow = &mut observer;
                // SAFETY: `observer` lives across the call; the plugin calls back synchronously.
                unsafe {
                    (self.lib.object.call)(
                        self.handle,
                        AdpBytes::from_slice(&bytes),
                        Some(forward_progress),
                        user.cast(),
                        &mut out,
                    )
                }
            }
            // SAFETY: as above, without a callback.
            None => unsafe {
                (self.lib.object.call)(
                    self.handle,
                    AdpBytes::from_slice(&bytes),
                    None,
                    std::ptr::null_mut(),
                    &mut out,
                )
            },
        };
        let reply = self.lib.outcome(code, out)?;
        wire::decode(&reply).map_err(|e| self.lib.protocol(format!("undecodable reply: {e}")))
    }
}
