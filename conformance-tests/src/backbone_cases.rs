//! Cases for `FeatureExtractor`: EfficientNet-Lite with the real pretrained weights (provisioned by
//! `scripts/setup-weights.sh`) against the reference port `efficientnet-lite-pytorch` on real
//! photos (`goldens/efficientnet_lite{0,2}.safetensors`, from `tools/golden/make_efficientnet_golden.py`):
//! preprocessing, every stored stage, the head, the logits and the patch features; batching,
//! chunking and threads; bad checkpoints and bad inputs.
use crate::cases::{alone_in_threads_matches_batch, row};
use crate::goldens::Golden;
use crate::tolerance::{assert_close, assert_reordered, FORWARD};
use adp_api::config::efficientnet::{default_weights_dir, FEATURE_GROUPS};
use adp_api::preprocess::{backbone_input, resize};
use adp_api::{BackboneCheckpoint, Backend, Device, EfficientNetConfig, Error, FeatureExtractor, ImageBatch, Tensor};

/// The pretrained backbone `efficientnet-{model}.safetensors` of the weights folder; its absence
/// fails the case (CI provisions it).
pub fn pretrained(model: &str) -> BackboneCheckpoint {
    let path = default_weights_dir().join(format!("efficientnet-{model}.safetensors"));
    let how = if model == "lite0" {
        "scripts/setup-weights.sh".to_string()
    } else {
        format!("scripts/setup-weights.sh --model {model}")
    };
    assert!(
        path.is_file(),
        "{} is missing: run {how} (CI does) to provision the pretrained EfficientNet-Lite weights",
        path.display()
    );
    let ckpt = BackboneCheckpoint::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ckpt.config,
        EfficientNetConfig::from_preset(model).unwrap(),
        "{}: not {model}",
        path.display()
    );
    ckpt
}

fn extractor(backend: &dyn Backend, ckpt: &BackboneCheckpoint) -> Box<dyn FeatureExtractor> {
    backend
        .feature_extractor(ckpt, Device::Cpu)
        .unwrap_or_else(|e| panic!("opening {}: {e}", ckpt.weights.display()))
}

fn golden_name(model: &str) -> String {
    format!("efficientnet_{model}")
}

/// The golden's resized images, in [0, 1], at the model's input size (so resizing is the identity).
fn golden_pixels(g: &Golden) -> ImageBatch {
    ImageBatch::new(g.f32("pixels_01")).expect("golden pixels")
}

/// The golden's original photos, each read alone (they need not share a size).
fn golden_photos(g: &Golden) -> Option<Vec<ImageBatch>> {
    let root = crate::shared_data("", "checking the original photos of the backbone goldens")?;
    let files: Vec<String> = serde_json::from_value(g.meta_json("images")).expect("images list");
    Some(
        files
            .iter()
            .map(|f| ImageBatch::read_files(&[root.join(f)]).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
    )
}

/// `(x·255 − 127) / 128`, the golden's normalisation, in its order of operations.
fn golden_input(pixels: &Tensor) -> Tensor {
    Tensor::from_fn(pixels.shape().to_vec(), |i| (pixels.data()[i] * 255.0 - 127.0) / 128.0)
}

/// Preprocessing of the original photos: Pillow's bicubic resize gives the golden `pixels_01`
/// exactly, `backbone_input` its normalised input; and the backend, handed the original photos,
/// gives the golden patch features (so it preprocesses as the reference does).
pub fn preprocessing_matches_the_reference(backend: &dyn Backend) {
    let ckpt = pretrained("lite0");
    let g = Golden::open(&golden_name("lite0"));
    let pixels = g.f32("pixels_01");
    let size = ckpt.config.image_size;
    assert_eq!(g.meta_json("image_size"), serde_json::json!(size));
    let at_size = backbone_input(&golden_pixels(&g), &ckpt.config);
    assert_close(
        "backbone input of the golden pixels",
        &at_size,
        &golden_input(&pixels),
        1e-6,
    );
    let Some(photos) = golden_photos(&g) else { return };
    let ex = extractor(backend, &ckpt);
    let golden_features = g.f32("patch_features");
    for (i, photo) in photos.iter().enumerate() {
        assert_ne!(
            (photo.height(), photo.width()),
            (size, size),
            "photo {i} would not exercise the resize"
        );
        let resized = resize(photo, size, size);
        assert_eq!(
            resized.pixels().data(),
            row(&pixels, i).data(),
            "photo {i}: Pillow's bicubic resize to {size}×{size} differs from the golden pixels_01"
        );
        assert_close(
            &format!("photo {i}: backbone input"),
            &backbone_input(photo, &ckpt.config),
            &golden_input(&row(&pixels, i)),
            1e-6,
        );
        let f = ex.patch_features(photo).unwrap();
        assert_close(
            &format!("photo {i} ({}×{}): patch features", photo.height(), photo.width()),
            &f,
            &row(&golden_features, i),
            FORWARD,
        );
    }
}

/// Stages, head, logits and patch features against the reference port on the golden pixels.
fn outputs_match(backend: &dyn Backend, model: &str) {
    let ckpt = pretrained(model);
    let cfg = &ckpt.config;
    let g = Golden::open(&golden_name(model));
    let ex = extractor(backend, &ckpt);
    assert_eq!(ex.dims(), cfg.feature_dims());
    let images = golden_pixels(&g);
    let n = images.len();
    let out = ex.backbone_outputs(&images).unwrap();

    let blocks = cfg.blocks();
    let (ends, grids) = (cfg.group_ends(), cfg.group_grids());
    let stored: Vec<usize> = serde_json::from_value(g.meta_json("stages_stored")).expect("stages_stored");
    assert_eq!(
        serde_json::from_value::<Vec<usize>>(g.meta_json("stage_block_indices")).unwrap(),
        ends,
        "group ends"
    );
    assert_eq!(out.stages.len(), ends.len(), "one output per block group");
    for (k, s) in out.stages.iter().enumerate() {
        assert_eq!(
            s.shape(),
            &[n, blocks[ends[k]].output, grids[k], grids[k]],
            "stage {k} shape"
        );
        s.check_finite(&format!("stage {k}")).unwrap();
    }
    assert!(
        stored.iter().all(|s| FEATURE_GROUPS.contains(s)) && !stored.is_empty(),
        "stored stages {stored:?}"
    );
    for k in stored {
        assert_close(
            &format!("{model} stage {k}"),
            &out.stages[k],
            &g.f32(&format!("stage.{k}")),
            FORWARD,
        );
    }
    assert!(
        g.has("head") || model != "lite0",
        "the lite0 golden stores the head features"
    );
    if g.has("head") {
        assert_close(&format!("{model} head"), &out.head, &g.f32("head"), FORWARD);
    }
    assert_eq!(
        out.head.shape(),
        &[n, adp_api::config::efficientnet::HEAD_WIDTH, grids[6], grids[6]]
    );
    assert_close(&format!("{model} logits"), &out.logits, &g.f32("logits"), FORWARD);
    let f = ex.patch_features(&images).unwrap();
    let d = cfg.feature_dims();
    assert_eq!(f.shape(), &[n, d.grid * d.grid, d.dim]);
    assert_close(
        &format!("{model} patch features"),
        &f,
        &g.f32("patch_features"),
        FORWARD,
    );
}

pub fn lite0_matches_the_reference(backend: &dyn Backend) {
    outputs_match(backend, "lite0");
}

/// lite2 runs at 260 px, where the stride-2 convolutions pad asymmetrically at odd sides
/// (130 → 65 → 33 → 17).
pub fn lite2_matches_the_reference(backend: &dyn Backend) {
    outputs_match(backend, "lite2");
}

/// Two identical calls agree exactly; each image alone (in its own thread) agrees with the batch;
/// a batch longer than a chunk agrees with its images one by one.
pub fn extractor_is_deterministic_batch_invariant_and_thread_safe(backend: &dyn Backend) {
    let ckpt = pretrained("lite0");
    let g = Golden::open(&golden_name("lite0"));
    let ex = extractor(backend, &ckpt);
    let images = golden_pixels(&g);
    let batch = ex.patch_features(&images).unwrap();
    assert_eq!(batch, ex.patch_features(&images).unwrap(), "two identical calls differ");
    let alone = |i| ex.patch_features(&images.image(i)).unwrap();
    alone_in_threads_matches_batch("patch features", &batch, images.len(), alone);
    // 9 images: more than one chunk of 8 in both backends.
    let order = [0, 1, 1, 0, 1, 0, 0, 1, 1];
    let data: Vec<f32> = order.iter().flat_map(|&i| images.pixels().row(i).to_vec()).collect();
    let mut shape = images.pixels().shape().to_vec();
    shape[0] = order.len();
    let long = ex
        .patch_features(&ImageBatch::new(Tensor::new(shape, data).unwrap()).unwrap())
        .unwrap();
    assert_eq!(long.shape()[0], order.len());
    for (k, &i) in order.iter().enumerate() {
        assert_reordered(
            &format!("image {k} of a 9-image batch"),
            &row(&long, k),
            &row(&batch, i),
        );
    }
}

/// A copy of the pretrained lite0 file whose tensors `edit` rewrites (name, shape, little-endian
/// f32 bytes), as a checkpoint.
fn edited(edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) -> (tempfile::TempDir, BackboneCheckpoint) {
    let src = pretrained("lite0");
    let bytes = std::fs::read(&src.weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{n}");
            (n, v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    edit(&mut tensors);
    let views: Vec<_> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.as_str(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("efficientnet-lite0.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    (
        dir,
        BackboneCheckpoint {
            config: src.config,
            weights: path,
        },
    )
}

fn open_err(backend: &dyn Backend, ckpt: &BackboneCheckpoint) -> Error {
    backend
        .feature_extractor(ckpt, Device::Cpu)
        .err()
        .expect("a broken backbone file was accepted")
}

pub fn extractor_rejects_bad_checkpoints(backend: &dyn Backend) {
    let missing = "_blocks.7._bn1.running_var";
    let (_d, ckpt) = edited(|t| t.retain(|(n, _, _)| n != missing));
    let err = open_err(backend, &ckpt);
    assert_eq!(
        err,
        Error::MissingTensor {
            file: ckpt.weights.clone(),
            tensor: missing.into()
        }
    );
    assert!(
        err.to_string().contains(&ckpt.weights.display().to_string()) && err.to_string().contains(missing),
        "{err}"
    );

    let wrong = "_blocks.3._depthwise_conv.weight";
    let (_d, ckpt) = edited(|t| {
        let e = t.iter_mut().find(|(n, _, _)| n == wrong).unwrap();
        assert_eq!(e.1, vec![144, 1, 5, 5]);
        e.1 = vec![144, 1, 3, 3];
        e.2.truncate(144 * 9 * 4);
    });
    let err = open_err(backend, &ckpt);
    assert_eq!(
        err,
        Error::TensorShape {
            file: ckpt.weights.clone(),
            tensor: wrong.into(),
            expected: vec![144, 1, 5, 5],
            got: vec![144, 1, 3, 3]
        }
    );
    assert!(
        err.to_string().contains(&ckpt.weights.display().to_string()) && err.to_string().contains(wrong),
        "{err}"
    );

    let (_d, ckpt) = edited(|_| {});
    let bytes = std::fs::read(&ckpt.weights).unwrap();
    std::fs::write(&ckpt.weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_err(backend, &ckpt).to_string();
    assert!(
        err.contains("truncated") && err.contains(&ckpt.weights.display().to_string()),
        "{err}"
    );

    let gone = BackboneCheckpoint {
        config: EfficientNetConfig::lite0(),
        weights: ckpt.weights.with_file_name("absent.safetensors"),
    };
    let err = open_err(backend, &gone).to_string();
    assert!(err.contains("absent.safetensors"), "{err}");
}

pub fn extractor_rejects_bad_inputs(backend: &dyn Backend) {
    let ex = extractor(backend, &pretrained("lite0"));
    let empty = ImageBatch::new(Tensor::zeros(vec![0, 3, 224, 224])).unwrap();
    for (what, err) in [
        ("patch_features", ex.patch_features(&empty).unwrap_err()),
        ("backbone_outputs", ex.backbone_outputs(&empty).err().unwrap()),
    ] {
        assert!(
            matches!(&err, Error::Invalid { what, .. } if what == "image batch"),
            "{what} of an empty batch: {err}"
        );
        assert!(err.to_string().contains("empty"), "{err}");
    }
    // Any size is resized to the input size; a flat grey image gives finite features.
    let odd = ImageBatch::new(Tensor::from_fn(vec![1, 3, 61, 97], |i| (i % 7) as f32 / 6.0)).unwrap();
    let f = ex.patch_features(&odd).unwrap();
    let d = ex.dims();
    assert_eq!(f.shape(), &[1, d.grid * d.grid, d.dim]);
    f.check_finite("features of a 61×97 image").unwrap();
}

/// Two backends that both declare the extractor agree within the parity bound, on an image that
/// needs resizing.
pub fn extractors_agree(a: &dyn Backend, b: &dyn Backend) {
    let ckpt = pretrained("lite0");
    let (ea, eb) = (extractor(a, &ckpt), extractor(b, &ckpt));
    let images = ImageBatch::new(Tensor::from_fn(vec![2, 3, 240, 200], |i| {
        ((i * 2654435761usize) % 1000) as f32 / 1000.0
    }))
    .unwrap();
    let (oa, ob) = (
        ea.backbone_outputs(&images).unwrap(),
        eb.backbone_outputs(&images).unwrap(),
    );
    for (k, (sa, sb)) in oa.stages.iter().zip(&ob.stages).enumerate() {
        assert_close(&format!("stage {k} across backends"), sb, sa, FORWARD);
    }
    assert_close("head across backends", &ob.head, &oa.head, FORWARD);
    assert_close("logits across backends", &ob.logits, &oa.logits, FORWARD);
    assert_close(
        "patch features across backends",
        &eb.patch_features(&images).unwrap(),
        &ea.patch_features(&images).unwrap(),
        FORWARD,
    );
}
