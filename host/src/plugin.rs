//! Loading plugins: by path, from a folder, or from the folders of `ADP_PLUGIN_PATH`.
use adp_api::{BackendInfo, Error, Result};
use adp_plugin_abi::ffi::{AdpBackendTable, AdpObjectTable, AdpPluginDeclaration, ADP_ABI_VERSION};
use adp_plugin_abi::DECLARATION_SYMBOL;
use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// Folders (`:`-separated) searched for plugins when none is named.
pub const PLUGIN_PATH_ENV: &str = "ADP_PLUGIN_PATH";

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

/// A loaded plugin: its declaration, what it says of itself, and (through [`adp_api::Backend`])
/// the pipeline parts it provides.
#[derive(Clone)]
pub struct Plugin {
    pub(crate) lib: Arc<Library>,
    pub(crate) info: BackendInfo,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("path", &self.lib.path).field("info", &self.info).finish()
    }
}

impl Plugin {
    pub fn path(&self) -> &Path {
        &self.lib.path
    }
    pub fn abi_version(&self) -> u32 {
        ADP_ABI_VERSION
    }
    /// The plugin crate's own version.
    pub fn crate_version(&self) -> &str {
        &self.lib.crate_version
    }
    pub fn abi_crate_version(&self) -> &str {
        &self.lib.abi_crate_version
    }
    pub fn backend_info(&self) -> &BackendInfo {
        &self.info
    }
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

/// Loads the plugin at `path` (the same file twice yields the same library).
pub fn load(path: &Path) -> Result<Plugin> {
    if !path.is_file() {
        return Err(Error::PluginNotFound { path: path.into() });
    }
    let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
    let lib = {
        let mut loaded = registry().lock().unwrap_or_else(|e| e.into_inner());
        match loaded.get(&canonical) {
            Some(lib) => lib.clone(),
            None => {
                let lib = Arc::new(open_library(&canonical)?);
                loaded.insert(canonical, lib.clone());
                lib
            }
        }
    };
    let info = crate::proxy::backend_info(&lib)?;
    Ok(Plugin { lib, info })
}

fn open_library(path: &Path) -> Result<Library> {
    // SAFETY: loading runs the library's initialisers; adp plugins are Rust cdylibs without any.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| {
            // libloading's message is "dlopen failed"; the loader's own reason is its source.
            let reason = match std::error::Error::source(&e) {
                Some(why) => format!("{e}: {why}"),
                None => e.to_string(),
            };
            Error::NotASharedLibrary { path: path.into(), reason }
        })?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    let symbol = String::from_utf8_lossy(&DECLARATION_SYMBOL[..DECLARATION_SYMBOL.len() - 1]).into_owned();
    // SAFETY: a data symbol's address; nothing is read through it until the version is checked.
    let decl: *const AdpPluginDeclaration = unsafe {
        *lib.get::<*const AdpPluginDeclaration>(DECLARATION_SYMBOL)
            .map_err(|_| Error::MissingDeclaration { path: path.into(), symbol: symbol.clone() })?
    };
    // SAFETY: every ABI version starts with these two u32 fields.
    let (abi, size) = unsafe { (std::ptr::read(decl.cast::<u32>()), std::ptr::read(decl.cast::<u32>().add(1))) };
    if abi != ADP_ABI_VERSION {
        return Err(Error::AbiMismatch { path: path.into(), plugin: abi, host: ADP_ABI_VERSION });
    }
    if size as usize != std::mem::size_of::<AdpPluginDeclaration>() {
        let want = std::mem::size_of::<AdpPluginDeclaration>();
        return Err(Error::config(path, format!("plugin declaration is {size} bytes where ABI {abi} has {want}: built against another revision of ABI {abi}; rebuild the plugin")));
    }
    // SAFETY: the version and size match ours, so the layout is ours.
    let decl = unsafe { &*decl };
    if decl.backend.is_null() || decl.object.is_null() {
        return Err(Error::Protocol { backend: path.display().to_string(), message: "null function table".into() });
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

/// Whether a file name looks like an adp plugin on this platform (`libadp_plugin_*.so`, …).
fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
    let stem = name.strip_prefix(std::env::consts::DLL_PREFIX).unwrap_or(name);
    stem.starts_with("adp_plugin_") && name.ends_with(std::env::consts::DLL_SUFFIX)
}

/// Every plugin-named file in `dir`, sorted; each entry is the plugin or why it failed to load.
pub fn discover(dir: &Path) -> Result<Vec<(PathBuf, Result<Plugin>)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_plugin_file(p)).collect();
    paths.sort();
    Ok(paths.into_iter().map(|p| { let r = load(&p); (p, r) }).collect())
}

/// The folders to search: those given, else `ADP_PLUGIN_PATH`, else the running program's folder.
pub fn plugin_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if !given.is_empty() {
        return given.to_vec();
    }
    if let Some(path) = std::env::var_os(PLUGIN_PATH_ENV) {
        let dirs: Vec<PathBuf> = std::env::split_paths(&path).filter(|p| !p.as_os_str().is_empty()).collect();
        if !dirs.is_empty() {
            return dirs;
        }
    }
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).into_iter().collect()
}

/// Loads a plugin named by path, or by backend name from the search folders.
pub fn find(name_or_path: &str, dirs: &[PathBuf]) -> Result<Plugin> {
    let as_path = Path::new(name_or_path);
    if as_path.components().count() > 1 || as_path.is_file() {
        return load(as_path);
    }
    let mut seen = Vec::new();
    for dir in dirs {
        for (_, plugin) in discover(dir).unwrap_or_default() {
            match plugin {
                Ok(p) if p.info.name == name_or_path => return Ok(p),
                Ok(p) => seen.push(p.info.name.clone()),
                Err(_) => {}
            }
        }
    }
    Err(Error::invalid(
        "plugin",
        format!("no plugin named {name_or_path:?} in {dirs:?} (found: {})", if seen.is_empty() { "none".into() } else { seen.join(", ") }),
    ))
}
