//! The messages that cross the boundary, and their encoding (MessagePack: self-describing, so
//! untagged config enums and JSON values inside concepts cross unchanged).
use adp_api::requests::*;
use adp_api::{BackboneCheckpoint, ClipCheckpoint, Concept, Device, DiffusionSpec, Error, ImageBatch, Result, Tensor};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::borrow::Cow;

/// Opens one of the pipeline parts.
#[derive(Debug, Serialize, Deserialize)]
pub enum Open<'a> {
    TextImageEncoder {
        clip: Cow<'a, ClipCheckpoint>,
        device: Device,
    },
    LatentDiffuser {
        sd: Cow<'a, DiffusionSpec>,
        device: Device,
    },
    ConceptOptimizer {
        clip: Cow<'a, ClipCheckpoint>,
        sd: Cow<'a, DiffusionSpec>,
        device: Device,
    },
    Scorer {
        device: Device,
    },
    FeatureExtractor {
        backbone: Cow<'a, BackboneCheckpoint>,
        device: Device,
    },
}

/// One trait method call on an opened object. Borrowed on the host side, owned after decoding.
#[derive(Debug, Serialize, Deserialize)]
pub enum Call<'a> {
    EncoderDims,
    ImageEmbeddings(Cow<'a, ImageBatch>),
    DenseFeatures(Cow<'a, ImageBatch>, Cow<'a, [usize]>),
    TextEmbeddings(Cow<'a, [Prompt]>),
    TokenEmbedding(Cow<'a, str>),
    StateProbability(Cow<'a, StateProbabilityRequest>),
    DiffuserDims,
    VaeEncode(Cow<'a, ImageBatch>),
    VaeDecode(Cow<'a, Tensor>),
    TextConditioning(Cow<'a, [Prompt]>),
    UnetPrediction(Cow<'a, UnetRequest>),
    DenoisingLoss(Cow<'a, DenoisingLossRequest>),
    Img2Img(Cow<'a, Img2ImgRequest>),
    Learn(Cow<'a, LearnRequest>),
    BuildMemory(FeatureKind, Cow<'a, Tensor>),
    Associate(Cow<'a, ReferenceMemory>, Cow<'a, Tensor>),
    FeatureDims,
    PatchFeatures(Cow<'a, ImageBatch>),
    BackboneOutputs(Cow<'a, ImageBatch>),
}

/// What the host hands to `call` (since ABI 4): one method call and the most threads its own
/// work may spread over ([`adp_api::Backend::with_threads`]; `None`: the backend's default).
/// The host encodes a `Request<&Call>`, the plugin decodes a `Request<Call>`: the same bytes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request<C> {
    pub threads: Option<u32>,
    pub call: C,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    EncoderDims(EncoderDims),
    DiffuserDims(DiffuserDims),
    Tensor(Tensor),
    Images(ImageBatch),
    Dense(DenseFeatures),
    Vector(Vec<f32>),
    StateProbability(StateProbability),
    ValueAndGrad(ValueAndGrad),
    Concept(Concept),
    Memory(ReferenceMemory),
    FeatureDims(FeatureDims),
    BackboneOutputs(BackboneOutputs),
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec(value).map_err(|e| Error::invalid("wire message", e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> std::result::Result<T, rmp_serde::decode::Error> {
    rmp_serde::from_slice(bytes)
}

/// The progress numbers cross the C boundary field for field, in both directions; one field list
/// keeps the two conversions from drifting apart.
macro_rules! progress_fields {
    ($($field:ident),*) => {
        impl From<&Progress> for crate::ffi::AdpProgress {
            fn from(p: &Progress) -> Self {
                Self { $($field: p.$field),* }
            }
        }
        impl From<&crate::ffi::AdpProgress> for Progress {
            fn from(p: &crate::ffi::AdpProgress) -> Self {
                Self { $($field: p.$field),* }
            }
        }
    };
}
progress_fields!(step, total_steps, loss, diffusion_loss, clip_normal, clip_anomaly);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_calls_decode_to_owned_ones() {
        let t = Tensor::from_fn(vec![2, 3], |i| i as f32 * 0.5);
        let bytes = encode(&Call::BuildMemory(FeatureKind::Window(2), Cow::Borrowed(&t))).unwrap();
        match decode::<Call>(&bytes).unwrap() {
            Call::BuildMemory(FeatureKind::Window(2), back) => assert_eq!(back.as_ref(), &t),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn requests_carry_their_thread_budget() {
        let call = Call::TokenEmbedding(Cow::Borrowed("object"));
        let request = Request {
            threads: Some(3),
            call: &call,
        };
        match decode::<Request<Call>>(&encode(&request).unwrap()).unwrap() {
            Request {
                threads: Some(3),
                call: Call::TokenEmbedding(w),
            } => assert_eq!(w, "object"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tensors_cross_as_bytes_and_are_checked() {
        let t = Tensor::from_fn(vec![2, 3], |i| i as f32 - 2.5);
        let bytes = encode(&t).unwrap();
        // shape, then one byte string (bin8: 0xc4, length 24) of the six values.
        let data: Vec<u8> = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(
            bytes.windows(26).any(|w| w[..2] == [0xc4, 24] && w[2..] == data[..]),
            "{bytes:?}"
        );
        assert_eq!(decode::<Tensor>(&bytes).unwrap(), t);
        // A shape that does not match the values, or bytes that are not whole f32s, are refused.
        struct Bin(usize);
        impl Serialize for Bin {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_bytes(&vec![0u8; self.0])
            }
        }
        let form = |shape: Vec<usize>, n: usize| encode(&(shape, Bin(n))).unwrap();
        assert!(decode::<Tensor>(&form(vec![2, 3], 24)).is_ok());
        let e = decode::<Tensor>(&form(vec![2, 4], 24)).unwrap_err().to_string();
        assert!(e.contains("shape [2, 4] holds 8 values but 6"), "{e}");
        let e = decode::<Tensor>(&form(vec![1], 5)).unwrap_err().to_string();
        assert!(e.contains("5 bytes"), "{e}");
    }

    #[test]
    fn a_nan_image_cannot_be_smuggled_through() {
        // ImageBatch validates on decoding too.
        let mut bad = Tensor::zeros(vec![1, 3, 1, 1]);
        bad.data_mut()[0] = f32::NAN;
        let bytes = encode(&bad).unwrap();
        assert!(decode::<ImageBatch>(&bytes).is_err());
    }

    #[test]
    fn diffusion_specs_and_concepts_cross() {
        let v: adp_api::config::diffusion::PerBlock = serde_json::from_str("[2, 4]").unwrap();
        assert_eq!(
            decode::<adp_api::config::diffusion::PerBlock>(&encode(&v).unwrap()).unwrap(),
            v
        );
        let mut c = Concept {
            name: "c".into(),
            placeholder: "<c>".into(),
            vector: vec![1.0],
            provenance: Default::default(),
        };
        c.provenance
            .hyperparameters
            .insert("alpha".into(), serde_json::json!({"x": [1, 2.5]}));
        assert_eq!(decode::<Concept>(&encode(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn errors_round_trip_exactly() {
        let e = Error::MissingTensor {
            file: "w.safetensors".into(),
            tensor: "visual.proj".into(),
        };
        assert_eq!(decode::<Error>(&encode(&e).unwrap()).unwrap(), e);
    }
}
