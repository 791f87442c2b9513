//! The cases. Each panics with a message naming what broke.
use crate::tolerance::assert_reordered;
use adp_api::requests::FeatureKind;
use adp_api::{BackboneCheckpoint, Backend, Capability, Device, EfficientNetConfig, Error, ImageBatch, Tensor};

/// Runs `case` when the backend declares `capability`; a backend is held to what it declares.
pub fn when_declared(backend: &dyn Backend, capability: Capability, case: fn(&dyn Backend)) {
    if backend.info().provides.contains(&capability) {
        case(backend);
    } else {
        eprintln!("{} does not declare {capability}: case skipped", backend.info().name);
    }
}

pub fn info_is_consistent(backend: &dyn Backend) {
    let info = backend.info();
    assert!(!info.name.is_empty(), "backend name is empty");
    assert!(!info.version.is_empty(), "{}: empty version", info.name);
    assert_eq!(
        info.devices.first(),
        Some(&Device::Cpu),
        "{}: every backend runs on the CPU, listed first",
        info.name
    );
    let mut provides = info.provides.clone();
    provides.dedup();
    assert_eq!(
        provides.len(),
        info.provides.len(),
        "{}: capability listed twice",
        info.name
    );
}

/// Opens `capability`'s part of `backend` with placeholder checkpoints that name no real file.
fn open_part(backend: &dyn Backend, capability: Capability) -> adp_api::Result<()> {
    let (clip, sd) = adp_plugin_test_fixture::dummy_specs();
    match capability {
        Capability::TextImageEncoder => backend.text_image_encoder(&clip, Device::Cpu).map(drop),
        Capability::LatentDiffuser => backend.latent_diffuser(&sd, Device::Cpu).map(drop),
        Capability::ConceptOptimizer => backend.concept_optimizer(&clip, &sd, Device::Cpu).map(drop),
        Capability::Scorer => backend.scorer(Device::Cpu).map(drop),
        Capability::FeatureExtractor => {
            let weights = "none.safetensors".into();
            let backbone = BackboneCheckpoint {
                config: EfficientNetConfig::lite0(),
                weights,
            };
            backend.feature_extractor(&backbone, Device::Cpu).map(drop)
        }
    }
}

/// A part the backend does not declare must be refused with `Unsupported`, not faked.
pub fn undeclared_parts_are_refused(backend: &dyn Backend) {
    let info = backend.info();
    for capability in Capability::ALL.into_iter().filter(|c| !info.provides.contains(c)) {
        let err = open_part(backend, capability)
            .err()
            .unwrap_or_else(|| panic!("undeclared {capability} was created"));
        assert!(
            matches!(err, Error::Unsupported { .. }),
            "undeclared {capability}: {err}"
        );
    }
}

/// Deterministic pseudo-random features (a fixed LCG), the same on every machine.
pub fn features(shape: Vec<usize>, seed: u64) -> Tensor {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    Tensor::from_fn(shape, |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// `n` deterministic pseudo-random RGB images of `size`×`size` pixels in [0, 1].
pub fn images(n: usize, size: usize, seed: u64) -> ImageBatch {
    let f = features(vec![n, 3, size, size], seed);
    ImageBatch::new(Tensor::from_fn(f.shape().to_vec(), |i| (f.data()[i] + 1.0) / 2.0)).expect("images")
}

/// Item `i` of a `[N, …]` tensor, as `[1, …]`.
pub fn row(t: &Tensor, i: usize) -> Tensor {
    let mut shape = t.shape().to_vec();
    shape[0] = 1;
    Tensor::new(shape, t.row(i).to_vec()).unwrap()
}

/// `calls` calls at once, each in its own thread: call `k` computes item `k % N` alone, which must be
/// its row of `batch` (all `N` items computed together) up to the order of float operations.
pub fn alone_in_threads_matches_batch(
    what: &str,
    batch: &Tensor,
    calls: usize,
    alone: impl Fn(usize) -> Tensor + Sync,
) {
    let n = batch.shape()[0];
    std::thread::scope(|s| {
        let alone = &alone;
        let handles: Vec<_> = (0..calls).map(|k| s.spawn(move || alone(k % n))).collect();
        for (k, h) in handles.into_iter().enumerate() {
            let single = h.join().expect("thread");
            let what = format!("{what}: item {} alone (call {k}) vs in the batch", k % n);
            assert_reordered(&what, &single, &row(batch, k % n));
        }
    });
}

/// The autograd gradient `grad` of `f` at `x` against central differences with step `h` on
/// `components`: each within `rel` × max |grad| + `abs`.
pub fn assert_gradient_matches_finite_differences(
    grad: &[f32],
    x: &[f32],
    components: impl IntoIterator<Item = usize>,
    h: f32,
    (rel, abs): (f64, f64),
    f: impl Fn(&[f32]) -> f64,
) {
    let scale = grad.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    assert!(scale > 0.0, "the gradient is identically zero");
    let mut worst = 0f64;
    for k in components {
        let (mut up, mut down) = (x.to_vec(), x.to_vec());
        up[k] += h;
        down[k] -= h;
        let fd = (f(&up) - f(&down)) / (2.0 * h as f64);
        let diff = (fd - grad[k] as f64).abs();
        assert!(
            diff <= rel * scale + abs,
            "component {k}: autograd {} vs finite differences {fd}",
            grad[k]
        );
        worst = worst.max(diff);
    }
    eprintln!("gradient vs finite differences: max |diff| {worst:.3e}, max |grad| {scale:.3e}");
}

fn unit(v: &[f32]) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / n).collect()
}

/// SPEC eq. 8 computed by its definition, in f64.
fn nearest_by_definition(memory: &Tensor, test: &Tensor) -> Vec<f32> {
    let d = memory.shape()[memory.shape().len() - 1];
    let mem: Vec<Vec<f32>> = memory.data().chunks(d).map(unit).collect();
    test.data()
        .chunks(d)
        .map(|q| {
            let q = unit(q);
            mem.iter()
                .map(|r| 0.5 * (1.0 - r.iter().zip(&q).map(|(a, b)| (*a as f64) * (*b as f64)).sum::<f64>()))
                .fold(f64::INFINITY, f64::min) as f32
        })
        .collect()
}

pub fn scorer_matches_the_definition(backend: &dyn Backend) {
    let scorer = backend.scorer(Device::Cpu).expect("scorer");
    let support = features(vec![3, 5, 8], 1);
    let memory = scorer
        .build_memory(FeatureKind::PatchTokens, &support)
        .expect("build_memory");
    assert_eq!(memory.kind, FeatureKind::PatchTokens);
    assert_eq!(memory.features.shape(), &[15, 8], "memory rows");
    for row in memory.features.data().chunks(8) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-5,
            "memory rows are unit vectors, got norm {norm}"
        );
    }
    let test = features(vec![2, 4, 8], 2);
    let got = scorer.associate(&memory, &test).expect("associate");
    assert_eq!(got.shape(), &[2, 4]);
    let want = nearest_by_definition(&support, &test);
    for (i, (g, w)) in got.data().iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-5, "distance {i}: {g} vs definition {w}");
    }
    // A support feature is at distance 0 from itself.
    let own = Tensor::new(vec![1, 5, 8], support.row(0).to_vec()).unwrap();
    let zero = scorer.associate(&memory, &own).expect("associate");
    assert!(
        zero.max_abs() < 1e-5,
        "a support feature's own distance is {}",
        zero.max_abs()
    );
}

pub fn scorer_rejects_bad_features(backend: &dyn Backend) {
    let scorer = backend.scorer(Device::Cpu).expect("scorer");
    let memory = scorer
        .build_memory(FeatureKind::Window(2), &features(vec![2, 3, 4], 3))
        .expect("memory");
    let err = scorer
        .associate(&memory, &features(vec![1, 3, 5], 4))
        .expect_err("width 5 against a width-4 memory");
    assert!(matches!(err, Error::Shape { .. }), "wrong width: {err}");
    let mut nan = features(vec![1, 2, 4], 5);
    nan.data_mut()[3] = f32::NAN;
    let err = scorer.associate(&memory, &nan).expect_err("NaN test features");
    assert!(matches!(err, Error::NonFinite { index: 3, .. }), "NaN: {err}");
    let err = scorer
        .build_memory(FeatureKind::PatchTokens, &Tensor::zeros(vec![0, 4]))
        .expect_err("empty support");
    assert!(
        matches!(err, Error::Shape { .. } | Error::EmptySupportSet),
        "empty support: {err}"
    );
}

pub fn scorer_is_batch_invariant_and_thread_safe(backend: &dyn Backend) {
    let scorer = backend.scorer(Device::Cpu).expect("scorer");
    let memory = scorer
        .build_memory(FeatureKind::PatchTokens, &features(vec![4, 6, 8], 6))
        .expect("memory");
    let batch = features(vec![4, 6, 8], 7);
    let whole = scorer.associate(&memory, &batch).expect("batch");
    assert_eq!(
        whole,
        scorer.associate(&memory, &batch).expect("batch"),
        "two identical calls differ"
    );
    let alone = |i| scorer.associate(&memory, &row(&batch, i)).expect("single");
    alone_in_threads_matches_batch("distances", &whole, 4, alone);
}
