//! Reading f32 tensors out of safetensors files with errors that name the file and tensor, and
//! writing them (detectors, fixture checkpoints).
use crate::{Error, Result, Tensor};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The bytes of a safetensors file holding `tensors` (name, shape, values) as little-endian f32,
/// with `metadata`; `file` names the destination in errors.
pub fn serialize_f32(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
    file: &Path,
) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), b)
                .map_err(|e| Error::invalid(name.as_str(), e.to_string()))?;
            Ok((name.as_str(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, metadata).map_err(|e| Error::io(file, e))
}

/// Reads `name` as f32 (f16 and bf16 are widened), or fails naming `file` and `name`.
pub fn read_f32(st: &SafeTensors<'_>, name: &str, file: &Path) -> Result<Tensor> {
    let view = st.tensor(name).map_err(|_| Error::MissingTensor {
        file: file.into(),
        tensor: name.into(),
    })?;
    let raw = view.data();
    let data: Vec<f32> = match view.dtype() {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
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

/// The JSON header of a safetensors file, checked against the file's length.
fn read_header(file: &Path) -> Result<(u64, u64, serde_json::Map<String, serde_json::Value>)> {
    let (_, total, n, header) = open_header(file)?;
    let header = serde_json::from_slice(&header)
        .map_err(|e| Error::config(file, format!("unreadable safetensors header: {e}")))?;
    Ok((total, n, header))
}

/// A safetensors file opened and read up to the end of its header: the file (positioned after
/// the header), its length, the header's length `n` (the data starts at `8 + n`) and the header's
/// bytes. A header longer than the file or than 100 MB (the safetensors crate's bound) is refused
/// before it is read.
pub(crate) fn open_header(file: &Path) -> Result<(std::fs::File, u64, u64, Vec<u8>)> {
    let bad = |m: String| Error::config(file, m);
    let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    let total = f.metadata().map_err(|e| Error::io(file, e))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| bad("truncated: shorter than a safetensors header".into()))?;
    let n = u64::from_le_bytes(len);
    if n > total.saturating_sub(8) || n > 100_000_000 {
        return Err(bad(format!(
            "truncated or not safetensors: header of {n} bytes in a {total}-byte file"
        )));
    }
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(file, e))?;
    Ok((f, total, n, header))
}

/// The `__metadata__` strings of a safetensors file (empty when it has none).
pub fn read_metadata(file: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let (_, _, header) = read_header(file)?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads only the header of a safetensors file and checks that every `(name, shape)` is there.
/// Catches a truncated file, a missing tensor and a wrong shape before any weight is loaded.
pub fn check_tensors(file: &Path, expected: &[(String, Vec<usize>)]) -> Result<()> {
    let bad = |m: String| Error::Config {
        file: file.into(),
        message: m,
    };
    let (total, n, header) = read_header(file)?;
    let mut data_end = 0u64;
    for (name, v) in &header {
        if name == "__metadata__" {
            continue;
        }
        let end = v["data_offsets"][1]
            .as_u64()
            .ok_or_else(|| bad(format!("tensor `{name}` has no valid `data_offsets`")))?;
        data_end = data_end.max(end);
    }
    // Saturating: offsets near u64::MAX must read as truncation, not wrap (or panic) past the check.
    let need = (8 + n).saturating_add(data_end);
    if need > total {
        return Err(bad(format!(
            "truncated: tensors need {need} bytes, the file has {total}"
        )));
    }
    for (name, shape) in expected {
        let entry = header.get(name).ok_or_else(|| Error::MissingTensor {
            file: file.into(),
            tensor: name.clone(),
        })?;
        let got: Vec<usize> = entry["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect())
            .unwrap_or_default();
        if &got != shape {
            return Err(Error::TensorShape {
                file: file.into(),
                tensor: name.clone(),
                expected: shape.clone(),
                got,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    fn file_with(dir: &Path, shape: Vec<usize>) -> std::path::PathBuf {
        let bytes = vec![0u8; shape.iter().product::<usize>() * 4];
        let view = TensorView::new(Dtype::F32, shape, &bytes).unwrap();
        let path = dir.join("w.safetensors");
        std::fs::write(&path, safetensors::serialize([("visual.proj", view)], None).unwrap()).unwrap();
        path
    }

    #[test]
    fn names_missing_tensors_wrong_shapes_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), vec![4, 2]);
        check_tensors(&path, &[("visual.proj".into(), vec![4, 2])]).unwrap();
        let e = check_tensors(&path, &[("visual.conv1.weight".into(), vec![1])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("checkpoint {}: missing tensor `visual.conv1.weight`", path.display())
        );
        let e = check_tensors(&path, &[("visual.proj".into(), vec![4, 3])]).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "checkpoint {}: tensor `visual.proj` has shape [4, 2], the config implies [4, 3]",
                path.display()
            )
        );
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let e = check_tensors(&path, &[]).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&path, b"abc").unwrap();
        assert!(check_tensors(&path, &[]).unwrap_err().to_string().contains("truncated"));
    }

    /// Found by adp-fuzz: offsets near u64::MAX overflowed the truncation check (a panic in debug
    /// builds, a wrapped sum that passed it in release).
    #[test]
    fn absurd_or_missing_data_offsets_are_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), vec![4, 2]);
        let bytes = std::fs::read(&path).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        for (offsets, want) in [
            (
                serde_json::json!([0, u64::MAX]),
                "truncated: tensors need 18446744073709551615 bytes",
            ),
            (serde_json::json!([0, u64::MAX - 8]), "truncated"),
            (
                serde_json::json!(null),
                "tensor `visual.proj` has no valid `data_offsets`",
            ),
            (
                serde_json::json!([0, -1]),
                "tensor `visual.proj` has no valid `data_offsets`",
            ),
        ] {
            let mut h = header.clone();
            h["visual.proj"]["data_offsets"] = offsets;
            let text = h.to_string();
            let mut out = (text.len() as u64).to_le_bytes().to_vec();
            out.extend(text.as_bytes());
            out.extend(&bytes[8 + n..]);
            std::fs::write(&path, &out).unwrap();
            let e = check_tensors(&path, &[]).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("w.safetensors"), "{e}");
        }
    }
}
