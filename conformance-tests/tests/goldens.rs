//! Backend conformance (not a host end-to-end test): the goldens every backend is held to.
//!
//! Backend-neutral checks of the goldens: they were computed on exactly the fixtures this build
//! writes, and adp's own preprocessing reproduces open_clip's.
use adp_conformance::goldens::{fixtures, Golden};
use sha2::{Digest, Sha256};

#[test]
fn goldens_were_made_from_these_fixtures() {
    let root = fixtures().clip.parent().unwrap().to_path_buf();
    for name in ["clip", "sd", "ti_epsilon", "ti_v", "img2img_epsilon", "img2img_v"] {
        let g = Golden::open(name);
        let hashes = g.meta_json("fixture_sha256");
        let hashes = hashes.as_object().expect("fixture_sha256 object");
        assert!(!hashes.is_empty());
        for (file, want) in hashes {
            let got = hex(&Sha256::digest(std::fs::read(root.join(file)).unwrap()));
            assert_eq!(
                &got,
                want.as_str().unwrap(),
                "{name}: fixture {file} changed; regenerate the goldens (tools/golden/README.md)"
            );
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn preprocessing_matches_open_clip() {
    let g = Golden::open("clip");
    let raw = g.f32("raw_image");
    let (h, w) = (raw.shape()[0], raw.shape()[1]);
    let chw = adp_api::Tensor::from_fn(vec![1, 3, h, w], |i| {
        let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
        raw.data()[(y * w + x) * 3 + c] / 255.0
    });
    let got = adp_api::preprocess::clip_preprocess(&adp_api::ImageBatch::new(chw).unwrap(), 32);
    let want = g.f32("preprocessed");
    let diff = got.max_abs_diff(&want).unwrap();
    assert!(diff <= 1e-5, "preprocessing differs from open_clip's by {diff}");
}

/// Pillow 13's bicubic resize on non-square magnetic tile photos (both pass orders): the CLIP
/// detection input and the EfficientNet-Lite input of each photo are exact functions of Pillow's
/// uint8 result, to 1e-6 (one uint8 level is 1.5e-2 in CLIP units, 7.8e-3 in the backbone's) (`pillow_resize.safetensors`, tools/golden/make_pillow_resize_golden.py).
#[test]
fn detection_and_backbone_inputs_match_pillow_on_non_square_photos() {
    use adp_api::preprocess::{backbone_input, clip_detection_input, CLIP_MEAN, CLIP_STD};
    let g = Golden::open("pillow_resize");
    let Some(root) = adp_conformance::shared_data("", "checking Pillow's resize on real photos") else {
        return;
    };
    let files: Vec<String> = serde_json::from_value(g.meta_json("images")).expect("images list");
    let (shape, bytes) = g.u8("resized_u8");
    let plane = shape[1] * shape[2] * shape[3];
    let size = shape[2];
    let lite0 = adp_api::EfficientNetConfig::lite0();
    for (i, f) in files.iter().enumerate() {
        let photo = adp_api::ImageBatch::read_files(&[root.join(f)]).unwrap_or_else(|e| panic!("{e}"));
        let want = &bytes[i * plane..(i + 1) * plane];
        let clip = clip_detection_input(&photo, size);
        let backbone = backbone_input(&photo, &lite0);
        for (j, &b) in want.iter().enumerate() {
            let c = j / (size * size);
            let x = b as f32 / 255.0;
            let (got, want) = (clip.data()[j], (x - CLIP_MEAN[c]) / CLIP_STD[c]);
            assert!(
                (got - want).abs() <= 1e-6,
                "{f}: CLIP input, element {j}: {got} vs {want}"
            );
            let (got, want) = (backbone.data()[j], (x * 255.0 - 127.0) / 128.0);
            assert!(
                (got - want).abs() <= 1e-6,
                "{f}: backbone input, element {j}: {got} vs {want}"
            );
        }
    }
}
