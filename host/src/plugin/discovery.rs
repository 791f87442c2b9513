//! Finding plugins: by path only from the user (command line, API call), by backend name in the
//! configured folders (`--plugin-dir`, `ADP_PLUGIN_PATH`, or the program's own folder).
//!
//! Opening a library runs its initialisers, so a name from a file (a detector's `backend`) is
//! only ever a name: checked against [`check_name`], turned into one file name
//! ([`library_file_name`]) and looked up in the configured folders; no other library is opened.
use super::library;
use super::proxy::Plugin;
use adp_api::{Error, Result};
use std::path::{Path, PathBuf};

/// Folders (`:`-separated) searched for plugins when none is named.
pub const PLUGIN_PATH_ENV: &str = "ADP_PLUGIN_PATH";

/// Loads the plugin at `path` (the same file twice yields the same library). Only for a path the
/// user gave; a name read from a file goes through [`find_named`].
pub fn load(path: &Path) -> Result<Plugin> {
    if !path.is_file() {
        return Err(Error::PluginNotFound { path: path.into() });
    }
    let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
    Plugin::from_library(library::open(&canonical)?)
}

/// Refuses a backend name that is not `[a-z0-9_-]+` (so no path separator, no `..`).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "plugin",
            format!(
                "{name:?} is not a plugin name (a plugin is named by [a-z0-9_-]+, at most 64 \
                 characters; a path to a plugin is only taken from the command line: --plugin PATH)"
            ),
        ))
    }
}

/// The file a plugin named `name` is built as: `test-fixture` → `libadp_plugin_test_fixture.so`.
pub fn library_file_name(name: &str) -> Result<String> {
    check_name(name)?;
    Ok(format!(
        "{}adp_plugin_{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ))
}

/// The backend name a plugin file name stands for, without opening it.
fn name_of_file(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_prefix(std::env::consts::DLL_PREFIX).unwrap_or(name);
    let plugin = stem
        .strip_prefix("adp_plugin_")?
        .strip_suffix(std::env::consts::DLL_SUFFIX)?;
    Some(plugin.replace('_', "-"))
}

/// Every plugin-named file in `dir`, sorted, with the name it stands for; nothing is opened.
pub fn available(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| Some((name_of_file(&p)?, p)))
        .collect();
    found.sort();
    Ok(found)
}

/// Every plugin-named file in `dir`, sorted, each opened (running its initialisers): for `adp
/// plugins`, where the user asks to inspect every plugin of the folders they configured.
pub fn discover(dir: &Path) -> Result<Vec<(PathBuf, Result<Plugin>)>> {
    Ok(available(dir)?
        .into_iter()
        .map(|(_, p)| {
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

/// Loads the plugin called `name` (a name only, e.g. from a detector file) from the first of
/// `dirs` holding its library; only that one library is opened.
pub fn find_named(name: &str, dirs: &[PathBuf]) -> Result<Plugin> {
    let file = library_file_name(name)?;
    let Some(path) = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) else {
        let mut seen: Vec<String> = dirs
            .iter()
            .flat_map(|d| available(d).unwrap_or_default())
            .map(|(n, _)| n)
            .collect();
        seen.sort();
        seen.dedup();
        let seen = if seen.is_empty() {
            "none".into()
        } else {
            seen.join(", ")
        };
        return Err(Error::invalid(
            "plugin",
            format!("no plugin named {name:?} ({file}) in {dirs:?} (found: {seen})"),
        ));
    };
    let plugin = load(&path)?;
    let declared = &plugin.backend_info().name;
    if declared != name {
        return Err(Error::invalid(
            "plugin",
            format!("{} declares backend {declared:?}, not {name:?}", path.display()),
        ));
    }
    Ok(plugin)
}

/// Loads a plugin the user named on the command line or in an API call: a path (anything with a
/// path separator, or an existing file) or a backend name searched in `dirs`.
pub fn find(name_or_path: &str, dirs: &[PathBuf]) -> Result<Plugin> {
    let as_path = Path::new(name_or_path);
    if as_path.components().count() > 1 || as_path.is_file() {
        return load(as_path);
    }
    find_named(name_or_path, dirs)
}
