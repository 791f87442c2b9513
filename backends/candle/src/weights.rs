//! Checkpoints read tensor by tensor (`adp_api::config::st_file`), not memory-mapped: the pages
//! read through a map count in resident memory beside the copies until the map is dropped, so
//! loading the SD 2.1 UNet peaked at about twice its 3.5 GB.
use adp_api::config::st_file::{tensor_error, FloatDtype, SafetensorsFile};
use adp_api::Result;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// Every tensor of `path`, converted to `dtype` on `device`, as a `VarBuilder` that hands each
/// tensor out once ([`Taken`]).
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let tensors = Taken(Mutex::new(read(path, dtype, device)?));
    Ok(VarBuilder::from_backend(Box::new(tensors), dtype, device.clone()))
}

/// A `VarBuilder` backend that gives up each tensor as the model takes it: the layers that
/// re-lay their weight at load (`FrozenLinear`'s transpose) then free the file's copy at once,
/// instead of holding both until the whole model is built (the CLIP rows peaked 55 % higher).
/// A tensor asked for twice is an error naming it.
struct Taken(Mutex<HashMap<String, Tensor>>);

impl SimpleBackend for Taken {
    fn get(&self, shape: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &shape {
            candle_core::bail!("tensor `{name}`: shape {:?}, expected {:?}", t.dims(), shape.dims())
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("weights: lock poisoned".into()))?
            .remove(name);
        let t = t.ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() })?;
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.lock().is_ok_and(|m| m.contains_key(name))
    }
}

/// Every tensor of `path` by name, converted to `dtype` on `device`.
pub fn read(path: &Path, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let file = SafetensorsFile::open(path)?;
    let mut tensors = HashMap::with_capacity(file.tensors().len());
    file.read_floats(|name, from, shape, bytes| {
        let from = match from {
            FloatDtype::F32 => DType::F32,
            FloatDtype::F16 => DType::F16,
            FloatDtype::BF16 => DType::BF16,
            FloatDtype::F64 => DType::F64,
        };
        let t = Tensor::from_raw_buffer(&bytes, from, shape, &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(device))
            .map_err(|e| tensor_error(path, &name, e))?;
        tensors.insert(name, t);
        Ok(())
    })?;
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    #[test]
    fn tensors_are_read_converted_and_bad_dtypes_named() {
        let dir = tempfile::tempdir().unwrap();
        let (w, ids) = ([1.5f32, -2.0], [7i32]);
        let w_bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
        let id_bytes: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
        let file = |views: Vec<(&str, TensorView)>| {
            let p = dir.path().join("m.safetensors");
            std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
            p
        };
        let p = file(vec![("w", TensorView::new(Dtype::F32, vec![2], &w_bytes).unwrap())]);
        let t = &read(&p, DType::F16, &Device::Cpu).unwrap()["w"];
        assert_eq!(t.dtype(), DType::F16);
        assert_eq!(t.to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap(), w);
        let p = file(vec![("ids", TensorView::new(Dtype::I32, vec![1], &id_bytes).unwrap())]);
        let e = read(&p, DType::F32, &Device::Cpu).expect_err("accepted").to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("tensor `ids`") && e.contains("I32"),
            "{e}"
        );
    }

    #[test]
    fn each_tensor_is_handed_out_once_with_its_shape_checked() {
        let dir = tempfile::tempdir().unwrap();
        let w: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let p = dir.path().join("m.safetensors");
        let views = vec![
            ("a", TensorView::new(Dtype::F32, vec![2], &w).unwrap()),
            ("b", TensorView::new(Dtype::F32, vec![2], &w).unwrap()),
        ];
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let vb = load(&p, DType::F32, &Device::Cpu).unwrap();
        assert!(vb.contains_tensor("a"));
        assert_eq!(vb.get(2, "a").unwrap().to_vec1::<f32>().unwrap(), [1.5, -2.0]);
        assert!(!vb.contains_tensor("a"));
        let e = vb.get(2, "a").unwrap_err().to_string();
        assert!(e.contains("cannot find tensor a"), "{e}");
        let e = vb.get(3, "b").unwrap_err().to_string();
        assert!(e.contains("tensor `b`: shape [2], expected [3]"), "{e}");
    }
}
