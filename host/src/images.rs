//! Image files for the command line: listing folders, reading a support set of mixed sizes, and
//! writing anomaly maps.
use adp_api::{Error, ImageBatch, Result};
use std::path::{Component, Path, PathBuf};

const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Files as given, and the images inside given folders (sorted); errors name what is missing.
pub fn list(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            if files.is_empty() {
                return Err(Error::io(p, "no images in this folder"));
            }
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(Error::io(p, "no such file or folder"));
        }
    }
    if out.is_empty() {
        return Err(Error::EmptySupportSet);
    }
    Ok(out)
}

/// Reads images of any sizes into one batch at `size`×`size`: each photo resized once, straight
/// from the file's pixels, to the square (Pillow's bicubic, no crop; SPEC §2).
pub fn read_resized(files: &[PathBuf], size: usize) -> Result<ImageBatch> {
    squares(&read_each(files)?, size)
}

/// Reads each file as it is, one batch per photo at its own size (for a fit that resizes the
/// originals to more than one model's input, see [`squares`]).
pub fn read_each(files: &[PathBuf]) -> Result<Vec<ImageBatch>> {
    files
        .iter()
        .map(|f| ImageBatch::read_files(std::slice::from_ref(f)))
        .collect()
}

/// Photos of any sizes (each batch one size) in one batch at `size`×`size`: every photo resized
/// once, straight from the pixels given, to the square (Pillow's bicubic, no crop; SPEC §2); a
/// photo already at that size is taken as it is.
pub fn squares(photos: &[ImageBatch], size: usize) -> Result<ImageBatch> {
    let mut data = Vec::new();
    let mut n = 0;
    for b in photos {
        data.extend_from_slice(adp_api::preprocess::resize(b, size, size).pixels().data());
        n += b.len();
    }
    ImageBatch::new(adp_api::Tensor::new(vec![n, 3, size, size], data)?)
}

/// `path` made absolute against the current folder, with `.` and `..` resolved lexically (no
/// file system access, so symbolic links are kept as named).
fn normalize(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| Error::io(path, e))?;
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The deepest folder holding every one of `files`, each made absolute (against the current
/// folder) with `.` and `..` resolved: for one file its folder; for `a/good/000.png` and
/// `b/good/000.png` the folder holding `a` and `b`.
pub fn common_folder(files: &[PathBuf]) -> Result<PathBuf> {
    let mut common: Option<PathBuf> = None;
    for f in files {
        let path = normalize(f)?;
        let folder = path.parent().unwrap_or(&path);
        match &mut common {
            None => common = Some(folder.to_path_buf()),
            Some(c) => while !folder.starts_with(&*c) && c.pop() {},
        }
    }
    common.ok_or_else(|| Error::invalid("images", "no input files"))
}

/// Where `adp score --maps DIR` writes the anomaly map of each of `files` (one call's inputs):
/// its path below their [`common_folder`], mirrored under `dir`, with `_map.png` for the
/// extension: `a/good/000.png` and `b/good/000.png` give `DIR/a/good/000_map.png` and
/// `DIR/b/good/000_map.png`; a single file gives `DIR/<stem>_map.png`. Refused when two inputs
/// would share a map (the same file twice, or `000.png` beside `000.jpg`), naming both.
pub fn map_paths(dir: &Path, files: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let common = common_folder(files)?;
    let mut seen: std::collections::HashMap<PathBuf, &PathBuf> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let path = normalize(f)?;
        let below = path.strip_prefix(&common).expect("the common folder holds every input");
        let stem = below
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let rel = below.with_file_name(format!("{stem}_map.png"));
        let map = dir.join(rel);
        if let Some(first) = seen.insert(map.clone(), f) {
            return Err(Error::invalid(
                "--maps",
                format!(
                    "{} and {} would both write the map {}; score them in separate calls",
                    first.display(),
                    f.display(),
                    map.display()
                ),
            ));
        }
        out.push(map);
    }
    Ok(out)
}

/// Refuses `path` if something is there already, unless `overwrite`.
pub fn check_new(path: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && std::fs::symlink_metadata(path).is_ok() {
        return Err(Error::io(
            path,
            "already exists; not overwritten (pass --overwrite to replace it)",
        ));
    }
    Ok(())
}

/// Writes the anomaly map (`height × width`, row-major) as an 8-bit grey PNG (0 → 0, 1 → 255) at
/// `out` (see [`map_paths`]), creating its folder, atomically. An existing file is refused unless
/// `overwrite`.
pub fn write_map(out: &Path, map: &[f32], height: usize, width: usize, overwrite: bool) -> Result<()> {
    check_new(out, overwrite)?;
    let pixels: Vec<u8> = map.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let img = image::GrayImage::from_raw(width as u32, height as u32, pixels)
        .ok_or_else(|| Error::invalid("anomaly map", "size mismatch"))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::io(out, e))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    adp_api::atomic::write_atomic(out, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn same_stem_in_different_folders_gives_different_maps() {
        // The case that used to collide on `good_000_map.png`.
        let files = paths(&["a/good/000.png", "b/good/000.png"]);
        assert_eq!(common_folder(&files).unwrap(), std::env::current_dir().unwrap());
        let maps = map_paths(Path::new("maps"), &files).unwrap();
        assert_eq!(maps, paths(&["maps/a/good/000_map.png", "maps/b/good/000_map.png"]));
        // Deeper: only what differs below the shared folder is mirrored.
        let files = paths(&[
            "/d/mvtec/bottle/test/good/000.png",
            "/d/mvtec/bottle/test/broken_large/000.png",
        ]);
        assert_eq!(common_folder(&files).unwrap(), PathBuf::from("/d/mvtec/bottle/test"));
        let maps = map_paths(Path::new("/out"), &files).unwrap();
        assert_eq!(maps, paths(&["/out/good/000_map.png", "/out/broken_large/000_map.png"]));
    }

    #[test]
    fn a_single_file_or_one_folder_gives_stems() {
        let maps = map_paths(Path::new("m"), &paths(&["/data/x/good/000.png"])).unwrap();
        assert_eq!(maps, paths(&["m/000_map.png"]));
        assert_eq!(
            common_folder(&paths(&["/data/x/good/000.png"])).unwrap(),
            PathBuf::from("/data/x/good")
        );
        let maps = map_paths(Path::new("m"), &paths(&["/data/x/000.png", "/data/x/001.jpg"])).unwrap();
        assert_eq!(maps, paths(&["m/000_map.png", "m/001_map.png"]));
    }

    #[test]
    fn absolute_relative_and_dotted_paths() {
        let cwd = std::env::current_dir().unwrap();
        // One absolute, one relative, one with `.` and `..`: all below `<cwd>/sub`.
        let files = vec![
            cwd.join("sub/a/000.png"),
            PathBuf::from("sub/b/000.png"),
            PathBuf::from("./sub/c/../d/./000.png"),
        ];
        assert_eq!(common_folder(&files).unwrap(), cwd.join("sub"));
        let maps = map_paths(Path::new("m"), &files).unwrap();
        assert_eq!(maps, paths(&["m/a/000_map.png", "m/b/000_map.png", "m/d/000_map.png"]));
        // Nothing shared but the root.
        let files = paths(&["/p/000.png", "/q/000.png"]);
        assert_eq!(common_folder(&files).unwrap(), PathBuf::from("/"));
        assert_eq!(
            map_paths(Path::new("m"), &files).unwrap(),
            paths(&["m/p/000_map.png", "m/q/000_map.png"])
        );
        assert!(common_folder(&[]).is_err());
    }

    #[test]
    fn inputs_sharing_a_map_are_refused() {
        let e = map_paths(Path::new("m"), &paths(&["/x/000.png", "/x/000.jpg"]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/x/000.png and /x/000.jpg") && e.contains("m/000_map.png"),
            "{e}"
        );
        let e = map_paths(
            Path::new("m"),
            &paths(&["/x/a/000.png", "/x/b/1.png", "/x/a/../a/000.png"]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("both write the map m/a/000_map.png"), "{e}");
    }

    #[test]
    fn write_map_creates_folders_and_never_overwrites_silently() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("maps/a/good/000_map.png");
        write_map(&out, &[0.0, 1.0, 0.5, 2.0], 2, 2, false).unwrap();
        let img = image::open(&out).unwrap().to_luma8();
        assert_eq!(img.as_raw(), &[0, 255, 128, 255]);
        let e = write_map(&out, &[1.0; 4], 2, 2, false).unwrap_err().to_string();
        assert!(
            e.contains("000_map.png") && e.contains("already exists") && e.contains("--overwrite"),
            "{e}"
        );
        assert_eq!(
            image::open(&out).unwrap().to_luma8().as_raw(),
            &[0, 255, 128, 255],
            "left as it was"
        );
        write_map(&out, &[1.0; 4], 2, 2, true).unwrap();
        assert_eq!(image::open(&out).unwrap().to_luma8().as_raw(), &[255; 4]);
        assert!(check_new(&out, false).is_err());
        assert!(check_new(&d.path().join("maps/other.png"), false).is_ok());
        assert!(write_map(&d.path().join("bad.png"), &[0.0; 3], 2, 2, false).is_err());
    }
}
