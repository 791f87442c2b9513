use crate::{tensor::check_finite, Error, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A batch of RGB images, NCHW, values in [0, 1]. Construction checks the channel count and
/// rejects NaN, so a backend never sees a malformed batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Tensor", into = "Tensor")]
pub struct ImageBatch {
    pixels: Tensor,
}

/// What a photo file may be: photos come from anywhere, and a small compressed file can declare
/// billions of pixels (a decompression bomb).
pub struct PhotoLimits;

impl PhotoLimits {
    /// The most pixels a photo may have (100 MP, e.g. 10000×10000), checked from the file's
    /// header before any pixel is decoded.
    pub const MAX_PIXELS: u64 = 100_000_000;
    /// The most memory the decoder may allocate (a 100 MP 16-bit RGBA photo).
    pub const MAX_ALLOC: u64 = 800 << 20;
    /// The largest photo file read.
    pub const MAX_FILE_BYTES: u64 = 1 << 30;
    /// The smallest side, in pixels, of a photo worth scoring: below it no model sees structure.
    /// Small, so that test fixtures may use tiny photos; a 1×1 "photo" is refused.
    pub const MIN_SIDE: u32 = 4;
}

/// Decodes one photo within [`PhotoLimits`], each limit with its own error naming the file.
fn decode_photo(p: &Path) -> Result<image::RgbImage> {
    let bytes = crate::config::read_bounded(p, PhotoLimits::MAX_FILE_BYTES)?;
    let reader = || {
        image::ImageReader::new(std::io::Cursor::new(&bytes[..]))
            .with_guessed_format()
            .map_err(|e| Error::io(p, e))
    };
    // Reading the header allocates no pixels: probe it unlimited, to name the size below.
    let mut probe = reader()?;
    probe.no_limits();
    let (w, h) = probe.into_dimensions().map_err(|e| Error::io(p, e))?;
    let pixels = w as u64 * h as u64;
    if pixels > PhotoLimits::MAX_PIXELS {
        let max = PhotoLimits::MAX_PIXELS;
        return Err(Error::config(
            p,
            format!("photo of {w}x{h} = {pixels} pixels, above the limit of {max} pixels"),
        ));
    }
    if w.min(h) < PhotoLimits::MIN_SIDE {
        let min = PhotoLimits::MIN_SIDE;
        return Err(Error::config(
            p,
            format!("photo of {w}x{h} pixels, below the minimum of {min}x{min}"),
        ));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(PhotoLimits::MAX_ALLOC);
    let mut reader = reader()?;
    reader.limits(limits);
    let decoded = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(l) => Error::config(
            p,
            format!(
                "decoding needs more than {} bytes of memory: {l}",
                PhotoLimits::MAX_ALLOC
            ),
        ),
        e => Error::io(p, e),
    })?;
    Ok(decoded.to_rgb8())
}

impl ImageBatch {
    pub fn new(pixels: Tensor) -> Result<Self> {
        pixels.expect_shape("image batch (N, 3, H, W)", &[None, Some(3), None, None])?;
        if pixels.shape()[2] == 0 || pixels.shape()[3] == 0 {
            return Err(Error::shape("image batch (N, 3, H, W)", "H, W > 0", pixels.shape()));
        }
        check_finite("image batch", pixels.data())?;
        // Pixels are [0, 1]; anything else is a caller's scaling bug, not a photo (1e30 would
        // score as more normal than any real photo).
        if let Some(i) = pixels.data().iter().position(|v| !(0.0..=1.0).contains(v)) {
            return Err(Error::invalid(
                "image batch",
                format!(
                    "pixel {i} is {}, outside [0, 1] (scale 8-bit values by 1/255)",
                    pixels.data()[i]
                ),
            ));
        }
        Ok(Self { pixels })
    }

    /// Stacks 8-bit RGB images of one size.
    pub fn from_rgb8(images: &[image::RgbImage]) -> Result<Self> {
        let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((1, 1));
        let (w, h) = (w as usize, h as usize);
        let mut data = Vec::with_capacity(images.len() * 3 * h * w);
        for (k, img) in images.iter().enumerate() {
            if img.dimensions() != (w as u32, h as u32) {
                let (iw, ih) = img.dimensions();
                return Err(Error::shape(
                    format!("image {k} of the batch"),
                    format!("{w}x{h} like the first"),
                    &[ih as usize, iw as usize],
                ));
            }
            for c in 0..3 {
                data.extend(img.pixels().map(|p| p.0[c] as f32 / 255.0));
            }
        }
        Self::new(Tensor::new(vec![images.len(), 3, h, w], data)?)
    }

    /// Reads image files (any format the `image` crate decodes) into one batch; every file must
    /// have the size of the first. Each is decoded within [`PhotoLimits`]. Errors name the file.
    pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let images = paths
            .iter()
            .map(|p| decode_photo(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Self::from_rgb8(&images)
    }

    pub fn len(&self) -> usize {
        self.pixels.shape()[0]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn height(&self) -> usize {
        self.pixels.shape()[2]
    }
    pub fn width(&self) -> usize {
        self.pixels.shape()[3]
    }
    pub fn pixels(&self) -> &Tensor {
        &self.pixels
    }
    pub fn into_pixels(self) -> Tensor {
        self.pixels
    }

    /// Image `i` alone, as a batch of one.
    pub fn image(&self, i: usize) -> ImageBatch {
        let (h, w) = (self.height(), self.width());
        let pixels = Tensor::new(vec![1, 3, h, w], self.pixels.row(i).to_vec()).expect("row size");
        ImageBatch { pixels }
    }

    /// Fails unless the images are `size`×`size`, naming the shape found.
    pub fn expect_size(&self, what: &str, height: usize, width: usize) -> Result<()> {
        self.pixels
            .expect_shape(what, &[None, Some(3), Some(height), Some(width)])
    }

    pub fn non_empty(self) -> Result<Self> {
        if self.is_empty() {
            Err(Error::EmptySupportSet)
        } else {
            Ok(self)
        }
    }
}

impl TryFrom<Tensor> for ImageBatch {
    type Error = Error;
    fn try_from(t: Tensor) -> Result<Self> {
        Self::new(t)
    }
}

impl From<ImageBatch> for Tensor {
    fn from(b: ImageBatch) -> Tensor {
        b.pixels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_channels_and_nan() {
        let e = ImageBatch::new(Tensor::zeros(vec![1, 4, 2, 2]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("(N, 3, H, W)") && e.contains("[1, 4, 2, 2]"), "{e}");
        let mut t = Tensor::zeros(vec![1, 3, 2, 2]);
        t.data_mut()[5] = f32::NAN;
        assert!(matches!(ImageBatch::new(t), Err(Error::NonFinite { index: 5, .. })));
    }

    #[test]
    fn pixels_outside_0_1_are_refused() {
        for bad in [1e30, -0.5, 1.0001, 255.0] {
            let mut t = Tensor::zeros(vec![1, 3, 2, 2]);
            t.data_mut()[7] = bad;
            let e = ImageBatch::new(t).unwrap_err().to_string();
            assert!(e.contains("pixel 7") && e.contains("outside [0, 1]"), "{bad}: {e}");
        }
        let mut t = Tensor::zeros(vec![1, 3, 2, 2]);
        t.data_mut()[3] = 1.0;
        ImageBatch::new(t).unwrap();
        // The wire path (serde) goes through the same check.
        let t = Tensor::new(vec![1, 3, 1, 1], vec![0.0, 2.0, 0.0]).unwrap();
        assert!(serde_json::from_value::<ImageBatch>(serde_json::to_value(&t).unwrap()).is_err());
    }

    #[test]
    fn rgb8_is_nchw() {
        let img = image::RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 0, 255]));
        let b = ImageBatch::from_rgb8(&[img]).unwrap();
        assert_eq!(b.pixels().shape(), &[1, 3, 1, 2]);
        assert_eq!(b.pixels().data(), &[0.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
    }

    /// A PNG of `w`×`h` grey pixels, compressed: a bomb is small on disk.
    fn grey_png(path: &Path, w: u32, h: u32) {
        use image::ImageEncoder;
        let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
        let enc = image::codecs::png::PngEncoder::new(file);
        // The header is what the limits see; a few rows of data are enough for a decoder to try.
        let row = vec![128u8; w as usize];
        let rows: Vec<u8> = (0..h.min(64)).flat_map(|_| row.iter().copied()).collect();
        if h <= 64 {
            enc.write_image(&rows, w, h, image::ExtendedColorType::L8).unwrap();
        } else {
            // Too big to build here: the chunks by hand, with the start of a compressed body.
            drop(enc);
            let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
            let mut chunk = |kind: &[u8], data: &[u8]| {
                let body: Vec<u8> = kind.iter().chain(data).copied().collect();
                bytes.extend((data.len() as u32).to_be_bytes());
                bytes.extend(&body);
                bytes.extend(crc32(&body).to_be_bytes());
            };
            let ihdr: Vec<u8> = w
                .to_be_bytes()
                .into_iter()
                .chain(h.to_be_bytes())
                .chain([8, 0, 0, 0, 0])
                .collect();
            chunk(b"IHDR", &ihdr);
            chunk(b"IDAT", &[0x78, 0x9c, 0xed, 0xc1, 0x01, 0x0d, 0x00, 0x00]);
            chunk(b"IEND", &[]);
            std::fs::write(path, bytes).unwrap();
        }
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0xedb88320 ^ (c >> 1) } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn decompression_bombs_tiny_photos_and_devices_are_refused_before_decoding() {
        let dir = tempfile::tempdir().unwrap();
        let bomb = dir.path().join("bomb.png");
        grey_png(&bomb, 23000, 23000);
        let e = ImageBatch::read_files(&[&bomb]).unwrap_err().to_string();
        assert!(
            e.contains("bomb.png") && e.contains("23000x23000") && e.contains("limit of 100000000 pixels"),
            "{e}"
        );
        let dot = dir.path().join("dot.png");
        grey_png(&dot, 1, 1);
        let e = ImageBatch::read_files(&[&dot]).unwrap_err().to_string();
        assert!(
            e.contains("dot.png") && e.contains("1x1") && e.contains("minimum of 4x4"),
            "{e}"
        );
        let e = ImageBatch::read_files(&[Path::new("/dev/zero")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let ok = dir.path().join("ok.png");
        grey_png(&ok, 6, 5);
        let b = ImageBatch::read_files(&[&ok]).unwrap();
        assert_eq!((b.height(), b.width()), (5, 6));
        assert!((b.pixels().data()[0] - 128.0 / 255.0).abs() < 1e-6);
    }

    #[test]
    fn unreadable_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("corrupt.png");
        std::fs::write(&p, b"not a png").unwrap();
        let e = ImageBatch::read_files(&[&p]).unwrap_err().to_string();
        assert!(e.contains("corrupt.png"), "{e}");
    }
}
