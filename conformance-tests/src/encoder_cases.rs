//! Cases for `TextImageEncoder`: parity with open_clip on the fixture checkpoint, gradients,
//! determinism, batching, threads, and every bad input with its own error.
use crate::cases::{alone_in_threads_matches_batch, assert_gradient_matches_finite_differences};
use crate::goldens::{assert_made_from, clip_checkpoint, fixtures, quickgelu_fixtures, Golden};
use crate::tolerance::{self, assert_close, FORWARD, GRADIENT};
use adp_api::requests::*;
use adp_api::{Backend, ClipCheckpoint, Device, Dtype, Error, ImageBatch, Tensor, TextImageEncoder};

fn encoder(backend: &dyn Backend) -> Box<dyn TextImageEncoder> {
    backend
        .text_image_encoder(&clip_checkpoint(), Device::Cpu)
        .expect("open the fixture CLIP")
}

fn golden_images(g: &Golden) -> ImageBatch {
    ImageBatch::new(g.f32("images")).expect("golden images")
}

/// A prompt from the goldens: `<c>` stands for the golden concept vector.
fn prompt(text: &str, concept: &[f32]) -> Prompt {
    if text.contains("<c>") {
        Prompt::with_concept(text, "<c>", concept)
    } else {
        Prompt::plain(text)
    }
}

pub fn image_features_match_open_clip(backend: &dyn Backend) {
    image_features_match(&Golden::open("clip"), &*encoder(backend));
}

/// `enc`'s image embeddings, penultimate patch tokens and 2×2 / 3×3 windows against golden `g`.
fn image_features_match(g: &Golden, enc: &dyn TextImageEncoder) {
    image_features_match_within(g, enc, FORWARD);
}

/// [`image_features_match`] within `rel`.
fn image_features_match_within(g: &Golden, enc: &dyn TextImageEncoder, rel: f32) {
    let n = &g.name;
    let images = golden_images(g);
    assert_close(
        &format!("{n}: image embeddings"),
        &enc.image_embeddings(&images).unwrap(),
        &g.f32("image_embeddings"),
        rel,
    );
    let dense = enc.dense_features(&images, &[2, 3]).unwrap();
    assert_eq!(dense.grid, 4);
    assert_close(
        &format!("{n}: penultimate patch tokens"),
        &dense.patch_tokens,
        &g.f32("patch_tokens"),
        rel,
    );
    assert_eq!((dense.windows[0].size, dense.windows[1].size), (2, 3));
    assert_close(
        &format!("{n}: 2×2 window embeddings"),
        &dense.windows[0].embeddings,
        &g.f32("window_2"),
        rel,
    );
    assert_close(
        &format!("{n}: 3×3 window embeddings"),
        &dense.windows[1].embeddings,
        &g.f32("window_3"),
        rel,
    );
}

/// `--dtype f16` and `bf16`: the fixture CLIP run in half precision gives open_clip's f32 image
/// features and text embeddings within [`tolerance::half`]'s looser bounds (the concept vector
/// enters as f32 and everything returns as f32).
pub fn half_precision_matches_open_clip(backend: &dyn Backend) {
    let g = Golden::open("clip");
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let enc = match backend.text_image_encoder(&clip_checkpoint().with_dtype(dtype), Device::Cpu) {
            Ok(enc) => enc,
            Err(e) => {
                tolerance::assert_refused_on_cpu(dtype, &e);
                continue;
            }
        };
        let rel = tolerance::half(dtype).forward;
        image_features_match_within(&g, &*enc, rel);
        text_embeddings_match_within(&g, &*enc, rel);
        let row = enc.token_embedding("photo").unwrap();
        assert!(row.iter().all(|v| v.is_finite()) && row.len() == enc.dims().text_width);
    }
}

pub fn text_embeddings_match_open_clip(backend: &dyn Backend) {
    text_embeddings_match(&Golden::open("clip"), &*encoder(backend));
}

/// `enc`'s token ids and text embeddings of golden `g`'s prompts.
fn text_embeddings_match(g: &Golden, enc: &dyn TextImageEncoder) {
    text_embeddings_match_within(g, enc, FORWARD);
}

/// [`text_embeddings_match`] within `rel`.
fn text_embeddings_match_within(g: &Golden, enc: &dyn TextImageEncoder, rel: f32) {
    let concept = g.f32("concept").into_data();
    let texts: Vec<String> = serde_json::from_value(g.meta_json("prompts")).expect("prompts list");
    let prompts: Vec<Prompt> = texts.iter().map(|t| prompt(t, &concept)).collect();
    // The tokenizer gives open_clip's ids, with the placeholder id where the concept goes.
    let (shape, ids) = g.i64("text_ids");
    let tokenizer = adp_api::tokenizer::ClipTokenizer::new();
    for (i, p) in prompts.iter().enumerate() {
        let ours = tokenizer.encode(p, 77).unwrap().ids;
        let theirs: Vec<u32> = ids[i * shape[1]..(i + 1) * shape[1]]
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(ours, theirs, "token ids of {:?}", p.text);
    }
    assert_close(
        &format!("{}: text embeddings", g.name),
        &enc.text_embeddings(&prompts).unwrap(),
        &g.f32("text_embeddings"),
        rel,
    );
}

/// OpenAI-trained CLIP (open_clip's `-quickgelu` configs, `pretrained='openai'`): with
/// `quick_gelu: true` every MLP of both towers is `x·σ(1.702x)`. The `tiny-quickgelu` fixture's
/// image embeddings, penultimate patch tokens, windows and text embeddings match open_clip's.
pub fn quick_gelu_matches_open_clip(backend: &dyn Backend) {
    let g = Golden::open("clip_quickgelu");
    let root = quickgelu_fixtures();
    assert_made_from(&g, root);
    let ckpt = ClipCheckpoint::from_dir(&root.join("clip")).expect("tiny-quickgelu fixture");
    assert!(ckpt.config.quick_gelu);
    let enc = backend
        .text_image_encoder(&ckpt, Device::Cpu)
        .expect("open tiny-quickgelu");
    image_features_match(&g, &*enc);
    text_embeddings_match(&g, &*enc);
}

fn state_request(g: &Golden, images: ImageBatch, concept: &[f32], temperature: f32) -> StateProbabilityRequest {
    StateProbabilityRequest {
        images,
        normal: prompt(&g.meta_str("state_prompt_normal"), concept),
        anomalous: prompt(&g.meta_str("state_prompt_anomalous"), concept),
        temperature,
        gradient_of: Some("<c>".into()),
    }
}

pub fn state_probability_matches_open_clip(backend: &dyn Backend) {
    let g = Golden::open("clip");
    let enc = encoder(backend);
    let concept = g.f32("concept").into_data();
    let tau: f32 = g.meta_str("tau").parse().expect("tau");
    let got = enc
        .state_probability(&state_request(&g, golden_images(&g), &concept, tau))
        .unwrap();
    let p = Tensor::new(vec![got.normal.len()], got.normal).unwrap();
    assert_close("P_CLIP(S_n | x)", &p, &g.f32("state_probability"), FORWARD);
    let grad = Tensor::new(vec![concept.len()], got.grad.expect("gradient")).unwrap();
    assert_close(
        "d mean P_CLIP / d concept",
        &grad,
        &g.f32("state_probability_grad"),
        GRADIENT,
    );
}

/// The concept gradient against central finite differences (temperature 1, where P is not
/// saturated, so differences of f32 values resolve it).
pub fn state_probability_gradient_matches_finite_differences(backend: &dyn Backend) {
    let g = Golden::open("clip");
    let enc = encoder(backend);
    let concept = g.f32("concept").into_data();
    let mean_p = |v: &[f32]| {
        let r = enc
            .state_probability(&StateProbabilityRequest {
                gradient_of: None,
                ..state_request(&g, golden_images(&g), v, 1.0)
            })
            .unwrap();
        r.normal.iter().map(|&p| p as f64).sum::<f64>() / r.normal.len() as f64
    };
    let grad = enc
        .state_probability(&state_request(&g, golden_images(&g), &concept, 1.0))
        .unwrap()
        .grad
        .unwrap();
    let components = [0, 7, 19, concept.len() - 1];
    assert_gradient_matches_finite_differences(&grad, &concept, components, 1e-2, (0.02, 1e-6), mean_p);
}

pub fn encoder_is_deterministic_batch_invariant_and_thread_safe(backend: &dyn Backend) {
    let g = Golden::open("clip");
    let enc = encoder(backend);
    let images = golden_images(&g);
    let batch = enc.image_embeddings(&images).unwrap();
    assert_eq!(
        batch,
        enc.image_embeddings(&images).unwrap(),
        "two identical calls differ"
    );
    let alone = |i| enc.image_embeddings(&images.image(i)).unwrap();
    alone_in_threads_matches_batch("image embeddings", &batch, images.len(), alone);
    // Text too: a backend may split a batch of prompts into parts (candle, one per thread).
    let concept = g.f32("concept").into_data();
    let texts: Vec<String> = serde_json::from_value(g.meta_json("prompts")).expect("prompts list");
    let prompts: Vec<Prompt> = texts.iter().map(|t| prompt(t, &concept)).collect();
    let batch = enc.text_embeddings(&prompts).unwrap();
    let alone = |i: usize| enc.text_embeddings(&prompts[i..i + 1]).unwrap();
    alone_in_threads_matches_batch("text embeddings", &batch, prompts.len(), alone);
}

/// A copy of the fixture CLIP folder whose weights `edit` rewrites (name → shape and values).
fn edited_checkpoint(
    edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
    config: Option<adp_api::ClipConfig>,
) -> (tempfile::TempDir, ClipCheckpoint) {
    let src = &fixtures().clip;
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(src.join("open_clip_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .into_iter()
        .map(|n| {
            let t = adp_api::config::st::read_f32(&st, n, src).unwrap();
            (n.to_string(), t.shape().to_vec(), t.into_data())
        })
        .collect();
    edit(&mut tensors);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<_> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.path().join("open_clip_model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let mut ckpt = ClipCheckpoint::from_dir(src).unwrap();
    if let Some(c) = config {
        ckpt.config = c;
    }
    ckpt.weights = dir.path().join("open_clip_model.safetensors");
    (dir, ckpt)
}

fn open_err(backend: &dyn Backend, ckpt: &ClipCheckpoint) -> Error {
    backend
        .text_image_encoder(ckpt, Device::Cpu)
        .err()
        .expect("a broken checkpoint was accepted")
}

pub fn encoder_rejects_bad_checkpoints(backend: &dyn Backend) {
    let (_d, ckpt) = edited_checkpoint(|t| t.retain(|(n, _, _)| n != "visual.proj"), None);
    assert_eq!(
        open_err(backend, &ckpt),
        Error::MissingTensor {
            file: ckpt.weights.clone(),
            tensor: "visual.proj".into()
        }
    );

    let (_d, ckpt) = edited_checkpoint(
        |t| {
            let e = t.iter_mut().find(|(n, _, _)| n == "ln_final.weight").unwrap();
            e.1 = vec![16];
            e.2.truncate(16);
        },
        None,
    );
    assert_eq!(
        open_err(backend, &ckpt),
        Error::TensorShape {
            file: ckpt.weights.clone(),
            tensor: "ln_final.weight".into(),
            expected: vec![32],
            got: vec![16]
        }
    );

    let mut wider = clip_checkpoint().config;
    wider.embed_dim = 48;
    let (_d, ckpt) = edited_checkpoint(|_| {}, Some(wider));
    assert!(
        matches!(open_err(backend, &ckpt), Error::TensorShape { expected, got, .. } if expected == vec![64, 48] && got == vec![64, 32]),
        "config contradicting the tensors"
    );

    let (_d, ckpt) = edited_checkpoint(|_| {}, None);
    let bytes = std::fs::read(&ckpt.weights).unwrap();
    std::fs::write(&ckpt.weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_err(backend, &ckpt);
    assert!(
        err.to_string().contains("truncated") && err.to_string().contains(&ckpt.weights.display().to_string()),
        "{err}"
    );
}

pub fn encoder_rejects_bad_inputs(backend: &dyn Backend) {
    let enc = encoder(backend);
    let long = Prompt::plain("defect ".repeat(80));
    assert!(matches!(
        enc.text_embeddings(&[long]),
        Err(Error::PromptTooLong { context: 77, .. })
    ));
    let wrong = Prompt::with_concept("a photo of a <c>", "<c>", &[0.0; 5]);
    assert!(matches!(enc.text_embeddings(&[wrong]), Err(Error::Shape { .. })));
    let empty = ImageBatch::new(Tensor::zeros(vec![0, 3, 32, 32])).unwrap();
    assert_eq!(enc.image_embeddings(&empty).unwrap_err(), Error::EmptySupportSet);
    let images = ImageBatch::new(Tensor::zeros(vec![1, 3, 32, 32])).unwrap();
    assert!(matches!(enc.dense_features(&images, &[5]), Err(Error::Invalid { .. })));
    assert!(
        ImageBatch::new(Tensor::zeros(vec![1, 1, 32, 32])).is_err(),
        "one channel"
    );
    let mut nan = Tensor::zeros(vec![1, 3, 32, 32]);
    nan.data_mut()[9] = f32::NAN;
    assert!(matches!(ImageBatch::new(nan), Err(Error::NonFinite { index: 9, .. })));
}

/// Two backends that both declare the encoder agree within the parity bound.
pub fn encoders_agree(a: &dyn Backend, b: &dyn Backend) {
    let g = Golden::open("clip");
    let (ea, eb) = (encoder(a), encoder(b));
    let images = golden_images(&g);
    let reference = ea.image_embeddings(&images).unwrap();
    assert_close(
        "image embeddings across backends",
        &eb.image_embeddings(&images).unwrap(),
        &reference,
        FORWARD,
    );
}
