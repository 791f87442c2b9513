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

impl ImageBatch {
    pub fn new(pixels: Tensor) -> Result<Self> {
        pixels.expect_shape("image batch (N, 3, H, W)", &[None, Some(3), None, None])?;
        if pixels.shape()[2] == 0 || pixels.shape()[3] == 0 {
            return Err(Error::shape("image batch (N, 3, H, W)", "H, W > 0", pixels.shape()));
        }
        check_finite("image batch", pixels.data())?;
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
    /// have the size of the first. Errors name the file.
    pub fn read_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self> {
        let images = paths
            .iter()
            .map(|p| {
                let p = p.as_ref();
                image::open(p).map(|i| i.to_rgb8()).map_err(|e| Error::io(p, e))
            })
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
    fn rgb8_is_nchw() {
        let img = image::RgbImage::from_fn(2, 1, |x, _| image::Rgb([x as u8 * 255, 0, 255]));
        let b = ImageBatch::from_rgb8(&[img]).unwrap();
        assert_eq!(b.pixels().shape(), &[1, 3, 1, 2]);
        assert_eq!(b.pixels().data(), &[0.0, 1.0, 0.0, 0.0, 1.0, 1.0]);
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
