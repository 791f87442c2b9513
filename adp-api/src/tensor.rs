use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// An owned, row-major f32 tensor: the currency between the host and every backend.
/// Serialised as `{shape, data}`: in a readable format (JSON) `data` is a list of numbers; in a
/// binary one (the plugin wire, MessagePack) it is one byte string of little-endian f32s, which
/// crosses as a copy instead of a tagged number per value (a 900×900 photo is 2.4 M values).
/// Either way the shape is checked against the data on the way in.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Checks that `data` holds exactly `shape.iter().product()` values (a product that
    /// overflows holds none: it could otherwise wrap round to the length given).
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let n = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if n != Some(data.len()) {
            let n = n.map_or("more than usize::MAX".to_string(), |n| n.to_string());
            return Err(Error::Invalid {
                what: "tensor".into(),
                message: format!("shape {shape:?} holds {n} values but {} were given", data.len()),
            });
        }
        Ok(Self { shape, data })
    }

    pub fn zeros(shape: Vec<usize>) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: vec![0.0; n],
        }
    }

    pub fn from_fn(shape: Vec<usize>, f: impl FnMut(usize) -> f32) -> Self {
        let n = shape.iter().product();
        Self {
            shape,
            data: (0..n).map(f).collect(),
        }
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }
    pub fn len(&self) -> usize {
        self.data.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Same data, another shape with the same number of values.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self> {
        Self::new(shape, self.data)
    }

    /// Fails with the name `what` when the rank or a fixed dimension differs; `None` is any size.
    pub fn expect_shape(&self, what: &str, expected: &[Option<usize>]) -> Result<()> {
        let ok = self.shape.len() == expected.len()
            && self.shape.iter().zip(expected).all(|(d, e)| e.is_none_or(|e| e == *d));
        if ok {
            return Ok(());
        }
        let pattern: Vec<String> = expected
            .iter()
            .map(|e| e.map_or("_".to_string(), |v| v.to_string()))
            .collect();
        Err(Error::shape(what, format!("[{}]", pattern.join(", ")), &self.shape))
    }

    /// Rejects NaN and infinities, naming `what` and the first bad index.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        check_finite(what, &self.data)
    }

    /// Row `i` of the leading dimension, as a slice.
    pub fn row(&self, i: usize) -> &[f32] {
        let stride: usize = self.shape[1..].iter().product();
        &self.data[i * stride..(i + 1) * stride]
    }

    /// Largest absolute difference to `other`; `None` when the shapes differ.
    pub fn max_abs_diff(&self, other: &Tensor) -> Option<f32> {
        (self.shape == other.shape).then(|| {
            self.data
                .iter()
                .zip(&other.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max)
        })
    }

    /// The parts stacked along the leading dimension: the same trailing shape, at least one part.
    pub fn concat(parts: &[Tensor]) -> Result<Self> {
        let Some(first) = parts.first() else {
            return Err(Error::invalid("concatenation", "no tensor given"));
        };
        let tail = first.shape.get(1..).unwrap_or_default();
        if let Some(bad) = parts.iter().find(|p| p.shape.is_empty() || &p.shape[1..] != tail) {
            return Err(Error::shape(
                "concatenated part",
                format!("[_, {tail:?}] like the first"),
                &bad.shape,
            ));
        }
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        Tensor::new(shape, parts.iter().flat_map(|p| p.data.iter().copied()).collect())
    }

    pub fn max_abs(&self) -> f32 {
        self.data.iter().map(|v| v.abs()).fold(0.0, f32::max)
    }
}

pub fn check_finite(what: &str, values: &[f32]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: what.into(),
            index,
        }),
        None => Ok(()),
    }
}

/// The serialised form; `data` borrows when writing.
#[derive(Serialize, Deserialize)]
struct Form<'a, D> {
    shape: std::borrow::Cow<'a, [usize]>,
    data: D,
}

/// `data` as little-endian f32 bytes.
struct Packed<'a>(std::borrow::Cow<'a, [f32]>);

impl Serialize for Packed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = self.0.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for Packed<'static> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Vec<f32>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string of little-endian f32 values")
            }
            fn visit_bytes<E: serde::de::Error>(self, b: &[u8]) -> std::result::Result<Vec<f32>, E> {
                if !b.len().is_multiple_of(4) {
                    return Err(E::custom(format!(
                        "tensor data of {} bytes: not a whole number of f32",
                        b.len()
                    )));
                }
                Ok(b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
        Ok(Packed(d.deserialize_bytes(Bytes)?.into()))
    }
}

impl Serialize for Tensor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let shape = self.shape.as_slice().into();
        if s.is_human_readable() {
            Form {
                shape,
                data: self.data.as_slice(),
            }
            .serialize(s)
        } else {
            Form {
                shape,
                data: Packed(self.data.as_slice().into()),
            }
            .serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Tensor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let (shape, data) = if d.is_human_readable() {
            let f = Form::<Vec<f32>>::deserialize(d)?;
            (f.shape, f.data)
        } else {
            let f = Form::<Packed>::deserialize(d)?;
            (f.shape, f.data.0.into_owned())
        };
        Tensor::new(shape.into_owned(), data).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_keeps_numbers_and_checks_the_shape() {
        let t = Tensor::from_fn(vec![1, 2], |i| i as f32 + 0.5);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"shape":[1,2],"data":[0.5,1.5]}"#);
        // 0.5 and 1.5 are exact in binary and decimal: the round trip is exact on any CPU.
        assert_eq!(serde_json::from_str::<Tensor>(&json).unwrap(), t);
        let e = serde_json::from_str::<Tensor>(r#"{"shape":[3],"data":[0.5,1.5]}"#).unwrap_err();
        assert!(e.to_string().contains("shape [3] holds 3 values but 2"), "{e}");
        // 2^33 · 2^31 wraps to 0 in 64 bits: refused, not taken for an empty tensor.
        let e = Tensor::new(vec![1 << 33, 1 << 31], vec![]).unwrap_err().to_string();
        assert!(e.contains("holds more than usize::MAX values"), "{e}");
    }

    #[test]
    fn constructor_checks_length() {
        assert!(Tensor::new(vec![2, 3], vec![0.0; 6]).is_ok());
        let e = Tensor::new(vec![2, 3], vec![0.0; 5]).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("5"), "{e}");
    }

    #[test]
    fn expect_shape_names_the_tensor() {
        let t = Tensor::zeros(vec![2, 4]);
        t.expect_shape("x", &[None, Some(4)]).unwrap();
        let e = t.expect_shape("embeddings", &[None, Some(3)]).unwrap_err().to_string();
        assert_eq!(e, "embeddings: expected shape [_, 3], got [2, 4]");
    }

    #[test]
    fn concat_stacks_rows_of_one_shape() {
        let a = Tensor::new(vec![1, 2], vec![1.0, 2.0]).unwrap();
        let b = Tensor::new(vec![2, 2], vec![3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(
            Tensor::concat(&[a.clone(), b]).unwrap().data(),
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );
        let e = Tensor::concat(&[a, Tensor::zeros(vec![1, 3])]).unwrap_err().to_string();
        assert!(
            e.contains("concatenated part: expected shape [_, [2]] like the first, got [1, 3]"),
            "{e}"
        );
        assert!(Tensor::concat(&[]).is_err());
    }

    #[test]
    fn finds_nan() {
        let t = Tensor::new(vec![3], vec![1.0, f32::NAN, 0.0]).unwrap();
        assert_eq!(
            t.check_finite("t").unwrap_err(),
            Error::NonFinite {
                what: "t".into(),
                index: 1
            }
        );
    }
}
