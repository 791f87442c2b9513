//! The tch encoder and scorer against the candle ones (which match open_clip to ~2e-7) on the
//! tiny fixture checkpoint: every output within 1e-4 of its magnitude, the concept gradient too.
use adp_api::requests::*;
use adp_api::{Backend, ClipCheckpoint, Device, ImageBatch, Tensor};
use adp_backend_candle::CandleBackend;
use adp_backend_tch::TchBackend;

fn close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let diff = got.max_abs_diff(want).unwrap();
    let scale = want.max_abs();
    eprintln!("{what}: max |diff| {diff:.3e}, max |value| {scale:.3e}");
    assert!(diff <= 1e-4 * scale.max(1e-6), "{what}: max |diff| {diff} against max |value| {scale}");
}

fn vec_tensor(v: Vec<f32>) -> Tensor {
    Tensor::new(vec![v.len()], v).unwrap()
}

#[test]
fn tch_matches_candle_on_the_fixture_clip() {
    let dir = tempfile::tempdir().unwrap();
    let paths = adp_host::fixtures::write_all(dir.path(), 0, "tiny").unwrap();
    let ckpt = ClipCheckpoint::from_dir(&paths.clip).unwrap();
    let c = CandleBackend.text_image_encoder(&ckpt, Device::Cpu).unwrap();
    let t = TchBackend.text_image_encoder(&ckpt, Device::Cpu).unwrap();
    assert_eq!(c.dims(), t.dims());

    // Two images of a size other than the input's, so preprocessing resizes and crops.
    let images = ImageBatch::new(Tensor::from_fn(vec![2, 3, 40, 36], |i| ((i * 2654435761usize) % 1000) as f32 / 1000.0)).unwrap();
    close("image embeddings", &t.image_embeddings(&images).unwrap(), &c.image_embeddings(&images).unwrap());

    // Concurrent calls on one encoder agree with the batch.
    let t: std::sync::Arc<dyn adp_api::TextImageEncoder> = std::sync::Arc::from(t);
    let batch = t.image_embeddings(&images).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let (t, one) = (t.clone(), images.image(i % 2));
            std::thread::spawn(move || t.image_embeddings(&one).unwrap())
        })
        .collect();
    for (i, h) in threads.into_iter().enumerate() {
        let row = Tensor::new(vec![1, batch.shape()[1]], batch.row(i % 2).to_vec()).unwrap();
        close(&format!("image {} alone, thread {i}", i % 2), &h.join().unwrap(), &row);
    }

    let grid = t.dims().grid;
    let sizes = [1, 2, grid];
    let (dc, dt) = (c.dense_features(&images, &sizes).unwrap(), t.dense_features(&images, &sizes).unwrap());
    assert_eq!(dt.grid, dc.grid);
    close("penultimate patch tokens", &dt.patch_tokens, &dc.patch_tokens);
    for (wt, wc) in dt.windows.iter().zip(&dc.windows) {
        assert_eq!(wt.size, wc.size);
        close(&format!("{0}×{0} windows", wt.size), &wt.embeddings, &wc.embeddings);
    }

    let concept = t.token_embedding("object").unwrap();
    assert_eq!(concept, c.token_embedding("object").unwrap());
    let concept: Vec<f32> = concept.iter().enumerate().map(|(i, v)| v + 0.05 * ((i % 7) as f32 - 3.0)).collect();
    let prompts = [
        Prompt::plain("a photo of a damaged object"),
        Prompt::with_concept("a photo of a flawless <c>", "<c>", &concept),
        Prompt::with_concept("<c> with a crack, a <c>", "<c>", &concept),
    ];
    close("text embeddings", &t.text_embeddings(&prompts).unwrap(), &c.text_embeddings(&prompts).unwrap());

    let request = |tau: f32, v: &[f32], gradient_of: Option<&str>| StateProbabilityRequest {
        images: images.clone(),
        normal: Prompt::with_concept("a photo of a flawless <c>", "<c>", v),
        anomalous: Prompt::with_concept("a photo of a damaged <c>", "<c>", v),
        temperature: tau,
        gradient_of: gradient_of.map(Into::into),
    };
    for tau in [0.07f32, 1.0] {
        let pc = c.state_probability(&request(tau, &concept, None)).unwrap();
        let pt = t.state_probability(&request(tau, &concept, Some("<c>"))).unwrap();
        close(&format!("P(S_n|x) at τ={tau}"), &vec_tensor(pt.normal.clone()), &vec_tensor(pc.normal));
        assert!(pt.grad.is_some());
        let plain = t.state_probability(&request(tau, &concept, None)).unwrap();
        assert!(plain.grad.is_none());
        assert_eq!(plain.normal, pt.normal, "tracking gradients changed the value");
    }

    // The autograd gradient against central differences of candle's forward pass (candle's own
    // gradient cannot serve: its softmax has no backward pass), at τ = 1 where P is not saturated.
    let grad = t.state_probability(&request(1.0, &concept, Some("<c>"))).unwrap().grad.unwrap();
    let mean_p = |v: &[f32]| {
        let p = c.state_probability(&request(1.0, v, None)).unwrap().normal;
        p.iter().map(|&x| x as f64).sum::<f64>() / p.len() as f64
    };
    let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs())) as f64;
    assert!(scale > 0.0, "the gradient is identically zero");
    let h = 1e-2f32;
    let mut worst = 0f64;
    for k in 0..concept.len() {
        let (mut up, mut down) = (concept.clone(), concept.clone());
        up[k] += h;
        down[k] -= h;
        let fd = (mean_p(&up) - mean_p(&down)) / (2.0 * h as f64);
        worst = worst.max((fd - grad[k] as f64).abs());
    }
    eprintln!("gradient vs candle finite differences: max |diff| {worst:.3e}, max |grad| {scale:.3e}");
    assert!(worst <= 0.02 * scale + 1e-6, "gradient off by {worst} against max |grad| {scale}");
}

#[test]
fn tch_scorer_matches_candle() {
    let support = Tensor::from_fn(vec![3, 10, 8], |i| ((i * 7919) % 101) as f32 / 50.0 - 1.0);
    let test = Tensor::from_fn(vec![2, 10, 8], |i| ((i * 104729) % 97) as f32 / 48.0 - 1.0);
    let (c, t) = (CandleBackend.scorer(Device::Cpu).unwrap(), TchBackend.scorer(Device::Cpu).unwrap());
    let (mc, mt) = (c.build_memory(FeatureKind::Window(2), &support).unwrap(), t.build_memory(FeatureKind::Window(2), &support).unwrap());
    assert_eq!(mt.kind, mc.kind);
    close("memory", &mt.features, &mc.features);
    close("distances", &t.associate(&mt, &test).unwrap(), &c.associate(&mc, &test).unwrap());
}
