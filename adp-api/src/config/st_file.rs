//! A safetensors file read one tensor at a time. Memory-mapping a checkpoint and copying its
//! tensors out (candle's `MmapedSafetensors`, tch's `read_safetensors`) counts every page read
//! through the map in the process's resident memory until the map is dropped: loading a 3.5 GB
//! UNet peaked at twice its size. Here the header is read and checked first, then each tensor's
//! bytes are read into a buffer of their own, which the caller converts and drops.
use super::st::open_header;
use crate::{Error, Result};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An error about tensor `name` of `file`.
pub fn tensor_error(file: &Path, name: &str, message: impl std::fmt::Display) -> Error {
    Error::config(file, format!("tensor `{name}`: {message}"))
}

/// The dtypes a checkpoint's tensors may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatDtype {
    F32,
    F16,
    BF16,
    F64,
}

pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    /// Where the tensors' data starts: 8 + the header's length.
    data_start: u64,
    /// In file order.
    tensors: Vec<(String, TensorInfo)>,
}

impl SafetensorsFile {
    /// Opens `path` and checks its header against the file. Parsing the header checks that each
    /// tensor's bytes fit its dtype and shape and follow the previous tensor's (the safetensors
    /// crate's `Metadata`); here, that the last ends where the file does.
    pub fn open(path: &Path) -> Result<Self> {
        let (file, len, n, header) = open_header(path)?;
        let metadata: Metadata =
            serde_json::from_slice(&header).map_err(|e| Error::config(path, format!("safetensors header: {e}")))?;
        let mut tensors: Vec<(String, TensorInfo)> = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        tensors.sort_by_key(|(_, info)| info.data_offsets);
        let end = tensors.last().map_or(0, |(_, info)| info.data_offsets.1) as u64;
        let data_end = (8 + n).saturating_add(end);
        if data_end != len {
            let m = format!("safetensors header: the tensors end at byte {data_end}, the file at {len}");
            return Err(Error::config(path, m));
        }
        Ok(Self {
            path: path.into(),
            file,
            data_start: 8 + n,
            tensors,
        })
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[(String, TensorInfo)] {
        &self.tensors
    }

    /// Each tensor in file order, read one at a time: its name, float dtype, shape and raw
    /// little-endian bytes, which `each` converts and drops. A tensor of another dtype is an
    /// error naming it, before its bytes are read.
    pub fn read_floats(
        mut self,
        mut each: impl FnMut(String, FloatDtype, &[usize], Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        for (name, info) in std::mem::take(&mut self.tensors) {
            let dtype = match info.dtype {
                Dtype::F32 => FloatDtype::F32,
                Dtype::F16 => FloatDtype::F16,
                Dtype::BF16 => FloatDtype::BF16,
                Dtype::F64 => FloatDtype::F64,
                other => {
                    let m = format!("dtype {other:?}; adp reads F32, F16, BF16 and F64");
                    return Err(tensor_error(&self.path, &name, m));
                }
            };
            let bytes = self.read(&info)?;
            each(name, dtype, &info.shape, bytes)?;
        }
        Ok(())
    }

    /// The raw little-endian bytes of one tensor of [`Self::tensors`].
    pub fn read(&mut self, info: &TensorInfo) -> Result<Vec<u8>> {
        let (s, e) = info.data_offsets;
        let mut bytes = vec![0u8; e - s];
        self.file
            .seek(SeekFrom::Start(self.data_start + s as u64))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::st::serialize_f32;

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("w.safetensors");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn reads_each_tensor_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = ([1.0f32, -2.0, 3.5], [0.25f32; 4]);
        let t = [
            ("b".to_string(), vec![2, 2], &b[..]),
            ("a".to_string(), vec![3], &a[..]),
        ];
        let p = write(dir.path(), &serialize_f32(&t, None, dir.path()).unwrap());
        let mut f = SafetensorsFile::open(&p).unwrap();
        let infos = f.tensors().to_vec();
        assert_eq!(infos.len(), 2);
        for (name, info) in infos {
            let bytes = f.read(&info).unwrap();
            let got: Vec<f32> = bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            assert_eq!(got, if name == "a" { a.to_vec() } else { b.to_vec() }, "{name}");
        }
    }

    #[test]
    fn bad_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = serialize_f32(&[("x".into(), vec![2], &[1.0f32, 2.0][..])], None, dir.path()).unwrap();
        let fails = |bytes: &[u8], fragment: &str| {
            let p = write(dir.path(), bytes);
            let e = SafetensorsFile::open(&p).err().expect("accepted").to_string();
            assert!(e.contains("w.safetensors") && e.contains(fragment), "{e}");
        };
        fails(&good[..5], "shorter than a safetensors header");
        fails(&good[..good.len() - 1], "the file at");
        fails(&[good.as_slice(), &[0]].concat(), "the file at");
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        fails(&huge, "truncated or not safetensors");
        let header = br#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let forged = [&(header.len() as u64).to_le_bytes()[..], header, &[0u8; 8]].concat();
        fails(&forged, "safetensors header");
        let header = br#"{"x":{"dtype":"F32","shape":[1]"#;
        fails(
            &[&(header.len() as u64).to_le_bytes()[..], header].concat(),
            "safetensors header",
        );
    }
}
