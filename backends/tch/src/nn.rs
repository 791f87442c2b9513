//! What the models share: the weights of a checkpoint by name (like candle's `VarBuilder`) and the
//! layers libtorch has as functions only (linear, layer and group norm, convolution, attention).
use crate::convert::{dims, err};
use adp_api::config::st_file::{tensor_error, FloatDtype, SafetensorsFile};
use adp_api::layout::Substitution;
use adp_api::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Kind, TchError, Tensor};

/// The tensors of a safetensors file, as f32 on one device, by their names in the file.
pub struct Weights {
    file: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads every tensor of `file` once, widening f16 / bf16 to f32, onto `device`.
    pub fn load(file: &Path, device: tch::Device) -> Result<Self> {
        Self::load_as(file, device, Kind::Float)
    }

    /// Reads every tensor of `file` once, converted to `kind` (`--dtype`), onto `device`. Tensor
    /// by tensor, not through a memory map (`adp_api::config::st_file`): the pages read through a
    /// map count in resident memory beside the copies, twice the checkpoint's size at the peak.
    pub fn load_as(file: &Path, device: tch::Device, kind: Kind) -> Result<Self> {
        let st = SafetensorsFile::open(file)?;
        let mut tensors = HashMap::with_capacity(st.tensors().len());
        st.read_floats(|name, from, shape, bytes| {
            let from = match from {
                FloatDtype::F32 => Kind::Float,
                FloatDtype::F16 => Kind::Half,
                FloatDtype::BF16 => Kind::BFloat16,
                FloatDtype::F64 => Kind::Double,
            };
            let t = Tensor::f_from_data_size(&bytes, &dims(shape), from)
                .and_then(|t| t.f_to_kind(kind))
                .and_then(|t| t.f_to_device(device))
                .map_err(|e| tensor_error(file, &name, e))?;
            tensors.insert(name, t);
            Ok(())
        })?;
        Ok(Self {
            file: file.into(),
            tensors,
        })
    }

    /// Tensors already on their device (e.g. folded at load), named as in `file`.
    pub fn from_tensors(file: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            file: file.into(),
            tensors,
        }
    }

    /// The tensor `name`, which must have `shape` (a view: no copy).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            file: self.file.clone(),
            tensor: name.into(),
        })?;
        if t.size() != dims(shape) {
            let got = t.size().into_iter().map(|d| d as usize).collect();
            return Err(Error::TensorShape {
                file: self.file.clone(),
                tensor: name.into(),
                expected: shape.to_vec(),
                got,
            });
        }
        Ok(t.shallow_clone())
    }

    /// A view of these weights under `prefix.` (like candle's `VarBuilder::pp`).
    pub fn pp(&self, prefix: impl std::fmt::Display) -> Prefixed<'_> {
        Prefixed {
            weights: self,
            prefix: prefix.to_string(),
        }
    }
}

/// [`Weights`] under a name prefix.
pub struct Prefixed<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl Prefixed<'_> {
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.weights.get(&format!("{}.{name}", self.prefix), shape)
    }
    pub fn pp(&self, prefix: impl std::fmt::Display) -> Prefixed<'_> {
        Prefixed {
            weights: self.weights,
            prefix: format!("{}.{prefix}", self.prefix),
        }
    }
}

pub type TchResult<T> = std::result::Result<T, TchError>;

/// `nn.Linear`, with or without a bias.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn new(w: Prefixed, inp: usize, out: usize, bias: bool) -> Result<Self> {
        Self::named(&w, "weight", bias.then_some("bias"), inp, out)
    }
    /// With other tensor names (`nn.MultiheadAttention`'s packed `in_proj_weight`).
    pub fn named(w: &Prefixed, weight: &str, bias: Option<&str>, inp: usize, out: usize) -> Result<Self> {
        let weight = w.get(weight, &[out, inp])?;
        let bias = bias.map(|b| w.get(b, &[out])).transpose()?;
        Ok(Self { weight, bias })
    }
    /// libtorch's `linear`, as `F.linear`: on a contiguous batch of tokens one `addmm` with the
    /// bias folded in, so no second activation-sized tensor for the bias (a product then an add
    /// made two, and with a gradient to take both were fresh pages at every layer).
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        x.f_linear(&self.weight, self.bias.as_ref())
    }
}

/// `nn.LayerNorm` over the last dimension.
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    width: i64,
    eps: f64,
}

impl LayerNorm {
    pub fn new(w: Prefixed, width: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[width])?,
            bias: w.get("bias", &[width])?,
            width: width as i64,
            eps,
        })
    }
    /// In f32 whatever the model's dtype, as under torch autocast.
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        let (w, b) = (self.weight.f_to_kind(Kind::Float)?, self.bias.f_to_kind(Kind::Float)?);
        x.f_to_kind(Kind::Float)?
            .f_layer_norm([self.width], Some(&w), Some(&b), self.eps, true)?
            .f_to_kind(x.kind())
    }
}

/// `nn.GroupNorm` with affine parameters.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: i64,
    eps: f64,
}

impl GroupNorm {
    pub fn new(w: Prefixed, groups: usize, channels: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            return Err(adp_api::Error::invalid(
                "norm_num_groups",
                format!("{groups} groups do not divide {channels} channels"),
            ));
        }
        Ok(Self {
            weight: w.get("weight", &[channels])?,
            bias: w.get("bias", &[channels])?,
            groups: groups as i64,
            eps,
        })
    }
    /// In f32 whatever the model's dtype, as under torch autocast.
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        let (w, b) = (self.weight.f_to_kind(Kind::Float)?, self.bias.f_to_kind(Kind::Float)?);
        x.f_to_kind(Kind::Float)?
            .f_group_norm(self.groups, Some(&w), Some(&b), self.eps, true)?
            .f_to_kind(x.kind())
    }
}

/// `nn.Conv2d` with a bias, square kernel.
pub struct Conv2d {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv2d {
    pub fn new(w: Prefixed, cin: usize, cout: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[cout, cin, kernel, kernel])?,
            bias: w.get("bias", &[cout])?,
            stride: stride as i64,
            padding: padding as i64,
        })
    }
    /// 3×3, padding 1.
    pub fn k3(w: Prefixed, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        Self::new(w, cin, cout, 3, stride, 1)
    }
    /// 1×1, no padding.
    pub fn k1(w: Prefixed, cin: usize, cout: usize) -> Result<Self> {
        Self::new(w, cin, cout, 1, 1, 0)
    }
    pub fn forward(&self, x: &Tensor) -> TchResult<Tensor> {
        x.f_conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// Splits `[B, S, H·D]` into `[B, H, S, D]`.
pub fn split_heads(y: &Tensor, heads: i64) -> TchResult<Tensor> {
    let (b, s, w) = y.size3()?;
    y.f_reshape([b, s, heads, w / heads])?.f_transpose(1, 2)
}

/// Scaled dot-product attention on `[B, H, S, D]` heads, merged back to `[B, S, H·D]`.
/// libtorch's fused kernel (flash attention on the CPU, as diffusers' default processor uses):
/// it never materialises the `[B, H, S, S]` scores for the backward pass, which at 768 px
/// (9216 latent tokens) would be 1.7 GB per attention layer and head group, and it accumulates
/// the softmax in f32 for half-precision inputs. `mask`: additive, broadcast to the scores (the
/// kernel wants it in the inputs' dtype).
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> TchResult<Tensor> {
    let (b, h, t, d) = q.size4()?;
    let mask = mask.map(|m| m.f_to_kind(q.kind())).transpose()?;
    Tensor::f_scaled_dot_product_attention(q, k, v, mask, 0.0, false, None, false)?
        .f_transpose(1, 2)?
        .f_reshape([b, t, h * d])
}

/// Token embeddings `[P·C, W]` as `s` lays them out: rows of `table`, zeroed at placeholders,
/// plus concept vector `slots[p][k]` at its row (through `index_add`, so gradients reach it).
pub fn substitute(table: &Tensor, s: &Substitution, slots: &[Vec<Tensor>]) -> Result<Tensor> {
    let device = table.device();
    let (ids, rows) = (index(&s.ids, device)?, index(&s.rows, device)?);
    let run = || -> TchResult<Tensor> {
        // The f32 concept vectors enter the model's dtype here; the cast is differentiable, so
        // their gradient comes back as f32.
        let vectors = s
            .slots
            .iter()
            .map(|&(i, k)| slots[i][k].f_to_kind(table.kind()))
            .collect::<TchResult<Vec<_>>>()?;
        let keep = Tensor::f_from_slice(&s.keep)?
            .f_reshape([s.keep.len() as i64, 1])?
            .f_to_device(device)?
            .f_to_kind(table.kind())?;
        let emb = table.f_index_select(0, &ids)?.f_mul(&keep)?;
        if vectors.is_empty() {
            return Ok(emb);
        }
        emb.f_index_add(0, &rows, &Tensor::f_stack(&vectors, 0)?)
    };
    run().map_err(err)
}

/// Indices for `index_select` / `index_add`.
pub fn index(values: &[u32], device: tch::Device) -> Result<Tensor> {
    let v: Vec<i64> = values.iter().map(|&i| i64::from(i)).collect();
    Tensor::f_from_slice(&v)
        .and_then(|t| t.f_to_device(device))
        .map_err(err)
}
