//! Image files for the command line: listing folders, reading a support set of mixed sizes, and
//! writing anomaly maps.
use adp_api::{Error, ImageBatch, Result};
use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Files as given, and the images inside given folders (sorted); errors name what is missing.
pub fn list(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str())))
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

/// Reads images of any sizes into one batch at `size`×`size` (Pillow-style bicubic).
pub fn read_resized(files: &[PathBuf], size: usize) -> Result<ImageBatch> {
    let batches = files
        .iter()
        .map(|f| ImageBatch::read_files(std::slice::from_ref(f)).map(|b| adp_api::preprocess::resize(&b, size, size)))
        .collect::<Result<Vec<_>>>()?;
    let data: Vec<f32> = batches.iter().flat_map(|b| b.pixels().data().to_vec()).collect();
    ImageBatch::new(adp_api::Tensor::new(vec![batches.len(), 3, size, size], data)?)
}

/// Writes the anomaly map (`height × width`, row-major) of `source` as an 8-bit grey PNG
/// (0 → 0, 1 → 255) in `dir`, atomically.
pub fn write_map(dir: &Path, source: &Path, map: &[f32], height: usize, width: usize) -> Result<PathBuf> {
    let stem = source.file_stem().and_then(|n| n.to_str()).unwrap_or("image");
    let parent = source.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("");
    let out = dir.join(format!("{parent}_{stem}_map.png"));
    let pixels: Vec<u8> = map.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect();
    let img = image::GrayImage::from_raw(width as u32, height as u32, pixels).ok_or_else(|| Error::invalid("anomaly map", "size mismatch"))?;
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png).map_err(|e| Error::io(&out, e))?;
    adp_api::atomic::write_atomic(&out, &bytes)?;
    Ok(out)
}
