//! Finding plugins: by path from the user, by backend name in the configured folders
//! (`ADP_PLUGIN_PATH`, or the program's own folder).
use super::library;
use super::proxy::Plugin;
use adp_api::{Error, Result};
use std::path::{Path, PathBuf};

/// Folders (`:`-separated) searched for plugins when none is named.
pub const PLUGIN_PATH_ENV: &str = "ADP_PLUGIN_PATH";

/// Loads the plugin at `path` (the same file twice yields the same library).
pub fn load(path: &Path) -> Result<Plugin> {
    if !path.is_file() {
        return Err(Error::PluginNotFound { path: path.into() });
    }
    let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
    Plugin::from_library(library::open(&canonical)?)
}

/// Whether a file name looks like an adp plugin on this platform (`libadp_plugin_*.so`, …).
fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let stem = name.strip_prefix(std::env::consts::DLL_PREFIX).unwrap_or(name);
    stem.starts_with("adp_plugin_") && name.ends_with(std::env::consts::DLL_SUFFIX)
}

/// Every plugin-named file in `dir`, sorted; each entry is the plugin or why it failed to load.
pub fn discover(dir: &Path) -> Result<Vec<(PathBuf, Result<Plugin>)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_plugin_file(p))
        .collect();
    paths.sort();
    Ok(paths
        .into_iter()
        .map(|p| {
            let r = load(&p);
            (p, r)
        })
        .collect())
}

/// The folders to search: those given, else `ADP_PLUGIN_PATH`, else the running program's folder.
pub fn plugin_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if !given.is_empty() {
        return given.to_vec();
    }
    if let Some(path) = std::env::var_os(PLUGIN_PATH_ENV) {
        let dirs: Vec<PathBuf> = std::env::split_paths(&path)
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if !dirs.is_empty() {
            return dirs;
        }
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .into_iter()
        .collect()
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
                Ok(p) if p.backend_info().name == name_or_path => return Ok(p),
                Ok(p) => seen.push(p.backend_info().name.clone()),
                Err(_) => {}
            }
        }
    }
    Err(Error::invalid(
        "plugin",
        format!(
            "no plugin named {name_or_path:?} in {dirs:?} (found: {})",
            if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            }
        ),
    ))
}
