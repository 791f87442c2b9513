//! Atomic file writes: a reader sees the old file or the new one, never half of one.
use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Links followed before giving up (the kernel's own limit for a path is 40).
const MAX_LINKS: usize = 40;

/// Where a write to `path` lands: `path` itself, or, where it is a symbolic link, the file the
/// link (chain) points to, so the link stays a link.
fn final_target(path: &Path) -> Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?;
                p = match p.parent() {
                    Some(dir) => dir.join(to),
                    None => to,
                };
            }
            _ => return Ok(p),
        }
    }
    Err(Error::io(path, format!("more than {MAX_LINKS} symbolic links")))
}

/// Writes `bytes` to `path` through a temporary file in the same folder, then renames it. A file
/// replaced keeps its permission bits (a new one is 0644); a symbolic link is followed and its
/// target replaced, the link kept.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let path = &final_target(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".adp-write-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    // Temporary files are private (0600); what we write is an ordinary file for its user, or
    // keeps the mode of the file it replaces.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m.permissions().mode() & 0o777,
            _ => 0o644,
        };
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_a_new_one_is_0644() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret.adp");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!((std::fs::read(&p).unwrap(), mode(&p)), (b"new".to_vec(), 0o600));
        let q = dir.path().join("fresh.adp");
        write_atomic(&q, b"x").unwrap();
        assert_eq!(mode(&q), 0o644);
    }

    #[test]
    fn a_symlink_is_followed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let target = dir.path().join("real/d.adp");
        std::fs::write(&target, b"old").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("link.adp");
        std::os::unix::fs::symlink("real/d.adp", &link).unwrap();
        let chain = dir.path().join("chain.adp");
        std::os::unix::fs::symlink("link.adp", &chain).unwrap();
        write_atomic(&chain, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&chain).unwrap().file_type().is_symlink());
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(
            (std::fs::read(&target).unwrap(), mode(&target)),
            (b"new".to_vec(), 0o640)
        );
        // A dangling link: its target is created.
        let dangling = dir.path().join("dangling.adp");
        std::os::unix::fs::symlink("real/new.adp", &dangling).unwrap();
        write_atomic(&dangling, b"made").unwrap();
        assert_eq!(std::fs::read(dir.path().join("real/new.adp")).unwrap(), b"made");
        // A loop is an error, not a hang.
        let a = dir.path().join("a");
        std::os::unix::fs::symlink("b", &a).unwrap();
        std::os::unix::fs::symlink("a", dir.path().join("b")).unwrap();
        assert!(write_atomic(&a, b"x")
            .unwrap_err()
            .to_string()
            .contains("symbolic links"));
    }
}
