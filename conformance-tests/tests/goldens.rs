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
