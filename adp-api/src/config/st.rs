//! Reading f32 tensors out of safetensors files with errors that name the file and tensor.
use crate::{Error, Result, Tensor};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Reads `name` as f32 (f16 and bf16 are widened), or fails naming `file` and `name`.
pub fn read_f32(st: &SafeTensors<'_>, name: &str, file: &Path) -> Result<Tensor> {
    let view = st
        .tensor(name)
        .map_err(|_| Error::MissingTensor { file: file.into(), tensor: name.into() })?;
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        other => {
            return Err(Error::TensorDtype {
                file: file.into(),
                tensor: name.into(),
                dtype: format!("{other:?}"),
                expected: "F32, F16 or BF16".into(),
            })
        }
    };
    Tensor::new(view.shape().to_vec(), data)
}

/// Reads `name` and checks its shape against what the config implies.
pub fn read_f32_shaped(st: &SafeTensors<'_>, name: &str, file: &Path, expected: &[usize]) -> Result<Tensor> {
    let t = read_f32(st, name, file)?;
    if t.shape() != expected {
        return Err(Error::TensorShape {
            file: file.into(),
            tensor: name.into(),
            expected: expected.to_vec(),
            got: t.shape().to_vec(),
        });
    }
    Ok(t)
}
