//! Cases for `LatentDiffuser`: parity with diffusers and transformers on the fixture folders
//! (VAE, text conditioning with a concept, UNet, textual-inversion loss and gradient for epsilon
//! and v-prediction, DDIM img2img), gradients, determinism and bad inputs.
use crate::cases::assert_gradient_matches_finite_differences;
use crate::goldens::{diffusion_spec, preset_golden, preset_spec, Golden, SMALL_PRESETS};
use crate::tolerance::{self, assert_close, FORWARD, GRADIENT, SAMPLED};
use adp_api::requests::*;
use adp_api::{Backend, Device, Dtype, Error, ImageBatch, LatentDiffuser, Tensor};

fn diffuser(backend: &dyn Backend, v_prediction: bool) -> Box<dyn LatentDiffuser> {
    backend
        .latent_diffuser(&diffusion_spec(v_prediction), Device::Cpu)
        .expect("open the fixture diffusers folder")
}

fn prompts(g: &Golden, key: &str, concept: &[f32]) -> Vec<Prompt> {
    let texts: Vec<String> = serde_json::from_value(g.meta_json(key)).expect("prompt list");
    texts
        .iter()
        .map(|t| {
            if t.contains("<c>") {
                Prompt::with_concept(t.as_str(), "<c>", concept)
            } else {
                Prompt::plain(t.as_str())
            }
        })
        .collect()
}

fn timesteps(g: &Golden, name: &str) -> Vec<u32> {
    g.i64(name).1.into_iter().map(|t| t as u32).collect()
}

pub fn vae_matches_diffusers(backend: &dyn Backend) {
    let g = Golden::open("sd");
    let d = diffuser(backend, false);
    let images = ImageBatch::new(g.f32("vae_images")).unwrap();
    assert_close(
        "VAE latents",
        &d.vae_encode(&images).unwrap(),
        &g.f32("vae_latents"),
        FORWARD,
    );
    let decoded = d.vae_decode(&g.f32("vae_latents")).unwrap();
    assert_close("VAE decoded image", decoded.pixels(), &g.f32("vae_decoded"), FORWARD);
}

pub fn conditioning_and_unet_match_diffusers(backend: &dyn Backend) {
    let g = Golden::open("sd");
    let d = diffuser(backend, false);
    let concept = g.f32("concept").into_data();
    let cond = d.text_conditioning(&prompts(&g, "cond_prompts", &concept)).unwrap();
    assert_close("text conditioning", &cond, &g.f32("conditioning"), FORWARD);
    let request = UnetRequest {
        latents: g.f32("unet_latents"),
        timesteps: timesteps(&g, "unet_timesteps"),
        conditioning: g.f32("conditioning"),
    };
    assert_close(
        "UNet prediction",
        &d.unet_prediction(&request).unwrap(),
        &g.f32("unet_prediction"),
        FORWARD,
    );
}

/// `--dtype f16` and `bf16`: the fixture text encoder, UNet and VAE run in half precision give
/// diffusers' f32 VAE latents and decoded image, text conditioning, UNet prediction, and the
/// textual-inversion loss with its gradient with respect to the f32 concept vector, within
/// [`tolerance::half`]'s looser bounds.
pub fn half_precision_matches_diffusers(backend: &dyn Backend) {
    let (sd, ti) = (Golden::open("sd"), Golden::open("ti_epsilon"));
    for dtype in [Dtype::F16, Dtype::Bf16] {
        let d = match backend.latent_diffuser(&diffusion_spec(false).with_dtype(dtype), Device::Cpu) {
            Ok(d) => d,
            Err(e) => {
                tolerance::assert_refused_on_cpu(dtype, &e);
                continue;
            }
        };
        let tol = tolerance::half(dtype);
        let what = |s: &str| format!("{dtype}: {s}");
        let images = ImageBatch::new(sd.f32("vae_images")).unwrap();
        let latents = d.vae_encode(&images).unwrap();
        assert_close(&what("VAE latents"), &latents, &sd.f32("vae_latents"), tol.forward);
        let decoded = d.vae_decode(&sd.f32("vae_latents")).unwrap();
        assert_close(
            &what("VAE decoded image"),
            decoded.pixels(),
            &sd.f32("vae_decoded"),
            tol.forward,
        );
        let concept = sd.f32("concept").into_data();
        let cond = d.text_conditioning(&prompts(&sd, "cond_prompts", &concept)).unwrap();
        assert_close(&what("text conditioning"), &cond, &sd.f32("conditioning"), tol.forward);
        let request = UnetRequest {
            latents: sd.f32("unet_latents"),
            timesteps: timesteps(&sd, "unet_timesteps"),
            conditioning: sd.f32("conditioning"),
        };
        let pred = d.unet_prediction(&request).unwrap();
        assert_close(&what("UNet prediction"), &pred, &sd.f32("unet_prediction"), tol.forward);
        let concept = ti.f32("concept").into_data();
        let got = d.denoising_loss(&loss_request(&ti, &concept)).unwrap();
        let value = Tensor::new(vec![1], vec![got.value]).unwrap();
        assert_close(&what("textual-inversion loss"), &value, &ti.f32("loss"), tol.forward);
        let grad = Tensor::new(vec![concept.len()], got.grad.expect("gradient")).unwrap();
        assert_close(&what("d loss / d concept"), &grad, &ti.f32("loss_grad"), tol.gradient);
    }
}

fn loss_request(g: &Golden, concept: &[f32]) -> DenoisingLossRequest {
    DenoisingLossRequest {
        input: DenoisingInput::Images(ImageBatch::new(g.f32("images")).unwrap()),
        prompts: prompts(g, "prompts", concept),
        timesteps: timesteps(g, "timesteps"),
        noise: g.f32("noise"),
        gradient_of: Some("<c>".into()),
    }
}

fn loss_matches(backend: &dyn Backend, v_prediction: bool) {
    let g = Golden::open(if v_prediction { "ti_v" } else { "ti_epsilon" });
    let d = diffuser(backend, v_prediction);
    let concept = g.f32("concept").into_data();
    let got = d.denoising_loss(&loss_request(&g, &concept)).unwrap();
    assert_close(
        "textual-inversion loss",
        &Tensor::new(vec![1], vec![got.value]).unwrap(),
        &g.f32("loss"),
        FORWARD,
    );
    let grad = Tensor::new(vec![concept.len()], got.grad.expect("gradient")).unwrap();
    assert_close("d loss / d concept", &grad, &g.f32("loss_grad"), GRADIENT);
    // The same loss from the photos' latents, as a learning loop sends it after a photo's first step.
    let latents = d.vae_encode(&ImageBatch::new(g.f32("images")).unwrap()).unwrap();
    let got = d
        .denoising_loss(&DenoisingLossRequest {
            input: DenoisingInput::Latents(latents),
            ..loss_request(&g, &concept)
        })
        .unwrap();
    let value = Tensor::new(vec![1], vec![got.value]).unwrap();
    assert_close("textual-inversion loss from latents", &value, &g.f32("loss"), FORWARD);
    let grad = Tensor::new(vec![concept.len()], got.grad.expect("gradient")).unwrap();
    assert_close("d loss / d concept from latents", &grad, &g.f32("loss_grad"), GRADIENT);
}

pub fn denoising_loss_matches_diffusers_epsilon(backend: &dyn Backend) {
    loss_matches(backend, false);
}

pub fn denoising_loss_matches_diffusers_v_prediction(backend: &dyn Backend) {
    loss_matches(backend, true);
}

/// The loss gradient against central finite differences of the loss itself.
pub fn denoising_loss_gradient_matches_finite_differences(backend: &dyn Backend) {
    let g = Golden::open("ti_epsilon");
    let d = diffuser(backend, false);
    let concept = g.f32("concept").into_data();
    let grad = d.denoising_loss(&loss_request(&g, &concept)).unwrap().grad.unwrap();
    let value = |v: &[f32]| {
        d.denoising_loss(&DenoisingLossRequest {
            gradient_of: None,
            ..loss_request(&g, v)
        })
        .unwrap()
        .value as f64
    };
    assert_gradient_matches_finite_differences(&grad, &concept, [0, 11, concept.len() - 1], 5e-2, (0.05, 1e-5), value);
}

fn img2img_matches(backend: &dyn Backend, v_prediction: bool) {
    let g = Golden::open(if v_prediction { "img2img_v" } else { "img2img_epsilon" });
    let d = diffuser(backend, v_prediction);
    let text = |k: &str| Prompt::plain(g.meta_str(k));
    let request = Img2ImgRequest {
        images: ImageBatch::new(g.f32("image")).unwrap(),
        prompt: text("prompt"),
        negative_prompt: text("negative_prompt"),
        strength: g.meta_str("strength").parse().unwrap(),
        guidance: g.meta_str("guidance_scale").parse().unwrap(),
        steps: g.meta_str("num_inference_steps").parse().unwrap(),
        seed: 0,
        noise: Some(g.f32("noise")),
    };
    let out = d.img2img(&request).unwrap();
    assert_close("img2img output", out.pixels(), &g.f32("output"), SAMPLED);
}

pub fn img2img_matches_diffusers(backend: &dyn Backend) {
    img2img_matches(backend, false);
}

pub fn img2img_matches_diffusers_v_prediction(backend: &dyn Backend) {
    img2img_matches(backend, true);
}

pub fn img2img_is_deterministic_under_a_seed(backend: &dyn Backend) {
    let d = diffuser(backend, true);
    let mut r = Img2ImgRequest::spec_defaults(crate::cases::images(1, 32, 4), Prompt::plain("a photo with damage"), 7);
    r.steps = 4;
    let a = d.img2img(&r).unwrap();
    assert_eq!(a, d.img2img(&r).unwrap(), "the same seed gave two results");
    r.seed = 8;
    assert_ne!(a, d.img2img(&r).unwrap(), "another seed gave the same result");
}

pub fn diffuser_rejects_bad_inputs(backend: &dyn Backend) {
    let d = diffuser(backend, false);
    let wrong = ImageBatch::new(Tensor::zeros(vec![1, 3, 24, 32])).unwrap();
    assert!(
        matches!(d.vae_encode(&wrong), Err(Error::Shape { .. })),
        "wrong image size"
    );
    let empty = ImageBatch::new(Tensor::zeros(vec![0, 3, 32, 32])).unwrap();
    assert_eq!(d.vae_encode(&empty).unwrap_err(), Error::EmptySupportSet);
    let g = Golden::open("sd");
    let mut r = UnetRequest {
        latents: g.f32("unet_latents"),
        timesteps: vec![1000, 3],
        conditioning: g.f32("conditioning"),
    };
    assert!(
        matches!(d.unet_prediction(&r), Err(Error::Invalid { .. })),
        "timestep past the schedule"
    );
    r.timesteps = vec![1];
    assert!(d.unet_prediction(&r).is_err(), "one timestep for two latents");
    assert!(
        matches!(
            d.vae_decode(&Tensor::zeros(vec![1, 3, 16, 16])),
            Err(Error::Shape { .. })
        ),
        "3 latent channels"
    );
    let long = Prompt::plain("scratch ".repeat(80));
    assert!(matches!(d.text_conditioning(&[long]), Err(Error::PromptTooLong { .. })));
}

/// Two backends that both declare the diffuser agree on the UNet and on the loss and its gradient.
pub fn diffusers_agree(a: &dyn Backend, b: &dyn Backend) {
    let g = Golden::open("ti_v");
    let (da, db) = (diffuser(a, true), diffuser(b, true));
    let concept = g.f32("concept").into_data();
    let (la, lb) = (
        da.denoising_loss(&loss_request(&g, &concept)).unwrap(),
        db.denoising_loss(&loss_request(&g, &concept)).unwrap(),
    );
    assert_close(
        "loss across backends",
        &Tensor::new(vec![1], vec![lb.value]).unwrap(),
        &Tensor::new(vec![1], vec![la.value]).unwrap(),
        FORWARD,
    );
    let grad = |v: ValueAndGrad| Tensor::new(vec![concept.len()], v.grad.unwrap()).unwrap();
    assert_close("loss gradient across backends", &grad(lb), &grad(la), GRADIENT);
}

/// Runs `check` on each small release preset (SD 1.5, 2.1-base, 2.1 layouts) with its golden.
fn for_each_preset(backend: &dyn Backend, check: impl Fn(&str, &dyn LatentDiffuser, &Golden, &[f32])) {
    for preset in SMALL_PRESETS {
        let g = preset_golden(preset);
        let d = backend
            .latent_diffuser(&preset_spec(preset), Device::Cpu)
            .unwrap_or_else(|e| panic!("open the {} fixture: {e}", preset.name()));
        assert_eq!(d.dims().image_size, g.meta_str("image_size").parse::<usize>().unwrap());
        let concept = g.f32("concept").into_data();
        eprintln!("-- {}", preset.name());
        check(preset.name(), &*d, &g, &concept);
    }
}

pub fn presets_vae_matches_diffusers(backend: &dyn Backend) {
    for_each_preset(backend, |name, d, g, _| {
        let images = ImageBatch::new(g.f32("vae_images")).unwrap();
        let latents = d.vae_encode(&images).unwrap();
        assert_close(
            &format!("{name}: VAE latents"),
            &latents,
            &g.f32("vae_latents"),
            FORWARD,
        );
        let decoded = d.vae_decode(&g.f32("vae_latents")).unwrap();
        assert_close(
            &format!("{name}: VAE decoded"),
            decoded.pixels(),
            &g.f32("vae_decoded"),
            FORWARD,
        );
    });
}

/// Text conditioning padded with the folder's pad token, and the UNet's projections and heads.
pub fn presets_conditioning_and_unet_match_diffusers(backend: &dyn Backend) {
    for_each_preset(backend, |name, d, g, concept| {
        let cond = d.text_conditioning(&prompts(g, "cond_prompts", concept)).unwrap();
        assert_close(
            &format!("{name}: text conditioning"),
            &cond,
            &g.f32("conditioning"),
            FORWARD,
        );
        let request = UnetRequest {
            latents: g.f32("unet_latents"),
            timesteps: timesteps(g, "unet_timesteps"),
            conditioning: g.f32("conditioning"),
        };
        let pred = d.unet_prediction(&request).unwrap();
        assert_close(
            &format!("{name}: UNet prediction"),
            &pred,
            &g.f32("unet_prediction"),
            FORWARD,
        );
    });
}

pub fn presets_denoising_loss_matches_diffusers(backend: &dyn Backend) {
    for_each_preset(backend, |name, d, g, concept| {
        let got = d.denoising_loss(&loss_request(g, concept)).unwrap();
        let loss = Tensor::new(vec![1], vec![got.value]).unwrap();
        assert_close(&format!("{name}: denoising loss"), &loss, &g.f32("loss"), FORWARD);
        let grad = Tensor::new(vec![concept.len()], got.grad.expect("gradient")).unwrap();
        assert_close(
            &format!("{name}: d loss / d concept"),
            &grad,
            &g.f32("loss_grad"),
            GRADIENT,
        );
    });
}

pub fn presets_img2img_matches_diffusers(backend: &dyn Backend) {
    for_each_preset(backend, |name, d, g, _| {
        let text = |k: &str| Prompt::plain(g.meta_str(k));
        let request = Img2ImgRequest {
            images: ImageBatch::new(g.f32("image")).unwrap(),
            prompt: text("prompt"),
            negative_prompt: text("negative_prompt"),
            strength: g.meta_str("strength").parse().unwrap(),
            guidance: g.meta_str("guidance_scale").parse().unwrap(),
            steps: g.meta_str("num_inference_steps").parse().unwrap(),
            seed: 0,
            noise: Some(g.f32("img2img_noise")),
        };
        let out = d.img2img(&request).unwrap();
        assert_close(
            &format!("{name}: img2img output"),
            out.pixels(),
            &g.f32("output"),
            SAMPLED,
        );
    });
}
