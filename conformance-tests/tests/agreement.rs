//! Backend conformance (not a host end-to-end test): the backends against each other.
//!
//! tch against candle (which matches open_clip, diffusers and the EfficientNet-Lite port on the
//! goldens) on inputs the goldens do not hold: the encoder and its concept gradient, the scorer, the
//! diffuser (epsilon and v-prediction), and both real plugins side by side in one process.
use adp_api::requests::*;
use adp_api::{Backend, Capability, ClipCheckpoint, Device, DiffusionSpec, Error, ImageBatch, Tensor};
use adp_backend_candle::CandleBackend;
use adp_backend_tch::TchBackend;
use adp_conformance::cases::{alone_in_threads_matches_batch, assert_gradient_matches_finite_differences};
use adp_conformance::goldens::{clip_checkpoint, fixtures};
use adp_conformance::tolerance::{assert_close, FORWARD, GRADIENT, SAMPLED};

fn vec_tensor(v: Vec<f32>) -> Tensor {
    Tensor::new(vec![v.len()], v).unwrap()
}

/// Values in [`lo`, `hi`) spread over the tensor by a multiplicative hash.
fn pattern(shape: Vec<usize>, seed: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::from_fn(shape, |i| {
        lo + (hi - lo) * (((i + seed) * 2654435761usize) % 1000) as f32 / 1000.0
    })
}

/// Both real plugins live in one process.
#[test]
fn tch_and_candle_plugins_load_side_by_side() {
    let tch = adp_conformance::plugin("adp_plugin_tch");
    let candle = adp_conformance::plugin("adp_plugin_candle");
    assert_eq!(
        (tch.info().name, candle.info().name),
        ("tch".to_string(), "candle".to_string())
    );
}

/// The two plugins agree with each other on the same inputs, for every trait both declare.
#[test]
fn tch_and_candle_plugins_agree() {
    let (tch, candle) = (
        adp_conformance::plugin("adp_plugin_tch"),
        adp_conformance::plugin("adp_plugin_candle"),
    );
    let both = |c: Capability| tch.info().provides.contains(&c) && candle.info().provides.contains(&c);
    if both(Capability::TextImageEncoder) {
        adp_conformance::encoder_cases::encoders_agree(&*candle, &*tch);
    }
    if both(Capability::LatentDiffuser) {
        adp_conformance::diffuser_cases::diffusers_agree(&*candle, &*tch);
    }
    if both(Capability::FeatureExtractor) {
        adp_conformance::backbone_cases::extractors_agree(&*candle, &*tch);
    }
}

/// The tch encoder against the candle one on the fixture CLIP: every output, and the concept
/// gradient against central differences of candle's forward pass.
#[test]
fn tch_encoder_matches_candle_on_the_fixture_clip() {
    let ckpt: ClipCheckpoint = clip_checkpoint();
    let c = CandleBackend.text_image_encoder(&ckpt, Device::Cpu).unwrap();
    let t = TchBackend.text_image_encoder(&ckpt, Device::Cpu).unwrap();
    assert_eq!(c.dims(), t.dims());

    // Two images of a size other than the input's, so preprocessing resizes and crops.
    let images = ImageBatch::new(pattern(vec![2, 3, 40, 36], 0, 0.0, 1.0)).unwrap();
    let batch = t.image_embeddings(&images).unwrap();
    assert_close(
        "image embeddings",
        &batch,
        &c.image_embeddings(&images).unwrap(),
        FORWARD,
    );
    let alone = |i| t.image_embeddings(&images.image(i)).unwrap();
    alone_in_threads_matches_batch("tch image embeddings", &batch, 4, alone);

    let grid = t.dims().grid;
    let sizes = [1, 2, grid];
    let (dc, dt) = (
        c.dense_features(&images, &sizes).unwrap(),
        t.dense_features(&images, &sizes).unwrap(),
    );
    assert_eq!(dt.grid, dc.grid);
    assert_close("penultimate patch tokens", &dt.patch_tokens, &dc.patch_tokens, FORWARD);
    for (wt, wc) in dt.windows.iter().zip(&dc.windows) {
        assert_eq!(wt.size, wc.size);
        let what = format!("{0}×{0} windows", wt.size);
        assert_close(&what, &wt.embeddings, &wc.embeddings, FORWARD);
    }

    let concept = t.token_embedding("object").unwrap();
    assert_eq!(concept, c.token_embedding("object").unwrap());
    let concept: Vec<f32> = concept
        .iter()
        .enumerate()
        .map(|(i, v)| v + 0.05 * ((i % 7) as f32 - 3.0))
        .collect();
    let prompts = [
        Prompt::plain("a photo of a damaged object"),
        Prompt::with_concept("a photo of a flawless <c>", "<c>", &concept),
        Prompt::with_concept("<c> with a crack, a <c>", "<c>", &concept),
    ];
    let text = t.text_embeddings(&prompts).unwrap();
    assert_close("text embeddings", &text, &c.text_embeddings(&prompts).unwrap(), FORWARD);

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
        let (nt, nc) = (vec_tensor(pt.normal.clone()), vec_tensor(pc.normal));
        assert_close(&format!("P(S_n|x) at τ={tau}"), &nt, &nc, FORWARD);
        assert!(pt.grad.is_some());
        let plain = t.state_probability(&request(tau, &concept, None)).unwrap();
        assert!(plain.grad.is_none());
        assert_eq!(plain.normal, pt.normal, "tracking gradients changed the value");
    }

    // The autograd gradient against central differences of candle's forward pass (candle's own
    // gradient cannot serve: its softmax has no backward pass), at τ = 1 where P is not saturated.
    let grad = t
        .state_probability(&request(1.0, &concept, Some("<c>")))
        .unwrap()
        .grad
        .unwrap();
    let mean_p = |v: &[f32]| {
        let p = c.state_probability(&request(1.0, v, None)).unwrap().normal;
        p.iter().map(|&x| x as f64).sum::<f64>() / p.len() as f64
    };
    assert_gradient_matches_finite_differences(&grad, &concept, 0..concept.len(), 1e-2, (0.02, 1e-6), mean_p);
}

#[test]
fn tch_scorer_matches_candle() {
    let support = Tensor::from_fn(vec![3, 10, 8], |i| ((i * 7919) % 101) as f32 / 50.0 - 1.0);
    let test = Tensor::from_fn(vec![2, 10, 8], |i| ((i * 104729) % 97) as f32 / 48.0 - 1.0);
    let (c, t) = (
        CandleBackend.scorer(Device::Cpu).unwrap(),
        TchBackend.scorer(Device::Cpu).unwrap(),
    );
    let kind = FeatureKind::Window(2);
    let (mc, mt) = (
        c.build_memory(kind, &support).unwrap(),
        t.build_memory(kind, &support).unwrap(),
    );
    assert_eq!(mt.kind, mc.kind);
    assert_close("memory", &mt.features, &mc.features, FORWARD);
    let (dt, dc) = (t.associate(&mt, &test).unwrap(), c.associate(&mc, &test).unwrap());
    assert_close("distances", &dt, &dc, FORWARD);
}

/// The tch diffuser against the candle one on one fixture diffusers folder: VAE both ways,
/// conditioning with a concept, the UNet at per-sample timesteps, the denoising loss and its
/// concept gradient, seeded img2img, concurrent calls, and the error variants of bad inputs.
fn diffusers_match(spec: &DiffusionSpec, label: &str) {
    let c = CandleBackend.latent_diffuser(spec, Device::Cpu).unwrap();
    let t = TchBackend.latent_diffuser(spec, Device::Cpu).unwrap();
    let dims = t.dims();
    assert_eq!(dims, c.dims());
    let s = dims.image_size;
    let side = s / dims.vae_downsampling;
    let images = ImageBatch::new(pattern(vec![2, 3, s, s], 1, 0.0, 1.0)).unwrap();
    // tch's `got` against candle's `want`, named with the folder's label.
    let close =
        |what: &str, got: &Tensor, want: &Tensor, rel: f32| assert_close(&format!("{label} {what}"), got, want, rel);

    let zt = t.vae_encode(&images).unwrap();
    close("VAE latents", &zt, &c.vae_encode(&images).unwrap(), FORWARD);
    let decoded = (t.vae_decode(&zt).unwrap(), c.vae_decode(&zt).unwrap());
    close("VAE decoded", decoded.0.pixels(), decoded.1.pixels(), FORWARD);
    let alone = |i| t.vae_encode(&images.image(i)).unwrap();
    alone_in_threads_matches_batch(&format!("{label} tch latents"), &zt, 3, alone);

    let concept: Vec<f32> = (0..dims.text_width)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 40.0)
        .collect();
    let prompts = vec![
        Prompt::with_concept("a photo of a <c> with damage", "<c>", &concept),
        Prompt::plain("a flawless object"),
    ];
    let cond = t.text_conditioning(&prompts).unwrap();
    let want = c.text_conditioning(&prompts).unwrap();
    close("text conditioning", &cond, &want, FORWARD);

    let latents = pattern(vec![2, dims.latent_channels, side, side], 3, -1.5, 1.5);
    let unet = UnetRequest {
        latents,
        timesteps: vec![999, 17],
        conditioning: cond,
    };
    let prediction = t.unet_prediction(&unet).unwrap();
    close("UNet", &prediction, &c.unet_prediction(&unet).unwrap(), FORWARD);

    let loss = DenoisingLossRequest {
        input: DenoisingInput::Images(images.clone()),
        prompts: prompts.clone(),
        timesteps: vec![500, 42],
        noise: pattern(vec![2, dims.latent_channels, side, side], 5, -2.0, 2.0),
        gradient_of: Some("<c>".into()),
    };
    let (lt, lc) = (t.denoising_loss(&loss).unwrap(), c.denoising_loss(&loss).unwrap());
    let (vt, vc) = (vec_tensor(vec![lt.value]), vec_tensor(vec![lc.value]));
    close("loss", &vt, &vc, FORWARD);
    let (gt, gc) = (vec_tensor(lt.grad.unwrap()), vec_tensor(lc.grad.unwrap()));
    close("d loss / d concept", &gt, &gc, GRADIENT);
    let no_grad = t
        .denoising_loss(&DenoisingLossRequest {
            gradient_of: None,
            ..loss.clone()
        })
        .unwrap();
    assert_eq!(
        (no_grad.value, no_grad.grad),
        (lt.value, None),
        "{label}: the loss without a gradient differs"
    );

    // Seeded noise (no noise given) follows adp_api::rng on both backends.
    let mut i2i = Img2ImgRequest::spec_defaults(images.clone(), prompts[0].clone(), 11);
    i2i.steps = 4;
    i2i.strength = 0.75;
    let sampled = (t.img2img(&i2i).unwrap(), c.img2img(&i2i).unwrap());
    close("img2img", sampled.0.pixels(), sampled.1.pixels(), SAMPLED);

    // Bad inputs: the same error variants as candle.
    let bad_concept = vec![Prompt::with_concept("a <c>", "<c>", &[0.0; 3])];
    let kinds = |r: adp_api::Result<Tensor>| std::mem::discriminant(&r.unwrap_err());
    assert_eq!(
        kinds(t.text_conditioning(&bad_concept)),
        kinds(c.text_conditioning(&bad_concept))
    );
    assert!(matches!(t.text_conditioning(&[]), Err(Error::Invalid { .. })));
    let past = UnetRequest {
        timesteps: vec![dims.train_timesteps as u32, 0],
        ..unet.clone()
    };
    assert!(matches!(t.unet_prediction(&past), Err(Error::Invalid { .. })));
    let one_latent = vec![1, dims.latent_channels, side, side];
    let short_noise = DenoisingLossRequest {
        noise: Tensor::zeros(one_latent.clone()),
        ..loss.clone()
    };
    assert!(matches!(t.denoising_loss(&short_noise), Err(Error::Shape { .. })));
    let unknown = DenoisingLossRequest {
        gradient_of: Some("<d>".into()),
        ..loss
    };
    assert!(matches!(t.denoising_loss(&unknown), Err(Error::Invalid { .. })));
    let nan = Tensor::from_fn(one_latent, |_| f32::NAN);
    assert!(t.vae_decode(&nan).is_err(), "{label}: NaN latents were decoded");
    i2i.guidance = f32::NAN;
    assert!(matches!(t.img2img(&i2i), Err(Error::Invalid { .. })));
}

#[test]
fn tch_diffuser_matches_candle_on_the_fixture_folders() {
    let f = fixtures();
    diffusers_match(&DiffusionSpec::from_dir(&f.sd_epsilon).unwrap(), "epsilon");
    diffusers_match(&DiffusionSpec::from_dir(&f.sd_v).unwrap(), "v-prediction");
}
