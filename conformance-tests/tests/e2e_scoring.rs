//! Host end-to-end test (not backend conformance): `adp_host`'s scoring over the candle backend.
//!
//! ADP's scoring pieces over a real backend (candle) on the fixture CLIP: reference association,
//! self-tuned weights and prototypes.
use adp_api::{Backend, Device, ImageBatch};
use adp_conformance::goldens::clip_checkpoint;
use adp_host::score::association::{anomaly_map, ReferenceMemories};
use adp_host::score::prototypes::{final_score, image_features, language_score, prototypes, weigh, ConceptToken};

fn images(n: usize, seed: u64) -> ImageBatch {
    adp_conformance::cases::images(n, 32, seed)
}

#[test]
fn a_support_image_is_not_anomalous_to_its_own_memory() {
    let backend = adp_backend_candle::CandleBackend::new();
    let enc = backend.text_image_encoder(&clip_checkpoint(), Device::Cpu).unwrap();
    let scorer = backend.scorer(Device::Cpu).unwrap();
    let support = images(3, 1);
    let memories = ReferenceMemories::build(&*scorer, &enc.dense_features(&support, &[2, 3]).unwrap()).unwrap();
    assert_eq!(memories.memories.len(), 3);
    let own = memories
        .patch_maps(&*scorer, &enc.dense_features(&support.image(1), &[2, 3]).unwrap())
        .unwrap();
    assert!(own.max_abs() < 1e-5, "own distance {}", own.max_abs());
    let other = memories
        .patch_maps(&*scorer, &enc.dense_features(&images(1, 9), &[2, 3]).unwrap())
        .unwrap();
    assert_eq!(other.shape(), &[1, 16]);
    assert!(other.data().iter().all(|&v| v > 0.0 && v <= 1.0));
    let map = anomaly_map(other.row(0), 4, 32, 32, 4.0);
    assert_eq!(map.len(), 32 * 32);
    let lang = 0.3;
    assert!(final_score(lang, other.row(0)) > final_score(lang, own.row(0)));
}

#[test]
fn concepts_are_weighed_and_mixed_into_prototypes() {
    let backend = adp_backend_candle::CandleBackend::new();
    let enc = backend.text_image_encoder(&clip_checkpoint(), Device::Cpu).unwrap();
    let support = image_features(&*enc, &images(2, 3)).unwrap();
    let pseudo = image_features(&*enc, &images(3, 4)).unwrap();
    let word = ConceptToken::Word("bottle".into());
    let w = weigh(&*enc, &word, &support, &pseudo).unwrap();
    assert!(
        (0.0..=2.0).contains(&w.weight),
        "eq. 5 sums two probabilities: {}",
        w.weight
    );
    let p = prototypes(&[w]).unwrap();
    let s = language_score(&support[0], &p);
    assert!((0.0..=1.0).contains(&s));
    assert!(weigh(&*enc, &word, &[], &pseudo).is_err(), "empty support set");
}
