//! The tch diffuser against the candle one (which matches diffusers / transformers within 1e-4)
//! on the fixture diffusers folders, epsilon and v-prediction: VAE both ways, conditioning with a
//! concept, the UNet at per-sample timesteps, the denoising loss and its concept gradient, seeded
//! img2img, concurrent calls, and the error variants of bad inputs.
use adp_api::requests::*;
use adp_api::{Backend, Device, DiffusionSpec, Error, ImageBatch, LatentDiffuser, Tensor};
use adp_backend_candle::CandleBackend;
use adp_backend_tch::TchBackend;
use std::sync::Arc;

fn close(what: &str, got: &Tensor, want: &Tensor, rel: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shapes");
    let diff = got.max_abs_diff(want).unwrap();
    let scale = want.max_abs();
    eprintln!("{what}: max |diff| {diff:.3e}, max |value| {scale:.3e}");
    assert!(diff <= rel * scale.max(1e-6), "{what}: max |diff| {diff} against max |value| {scale}");
}

fn pattern(shape: Vec<usize>, seed: usize, lo: f32, hi: f32) -> Tensor {
    Tensor::from_fn(shape, |i| lo + (hi - lo) * (((i + seed) * 2654435761usize) % 1000) as f32 / 1000.0)
}

fn compare(spec: &DiffusionSpec, label: &str) {
    let c = CandleBackend.latent_diffuser(spec, Device::Cpu).unwrap();
    let t: Arc<dyn LatentDiffuser> = Arc::from(TchBackend.latent_diffuser(spec, Device::Cpu).unwrap());
    let dims = t.dims();
    assert_eq!(dims, c.dims());
    let s = dims.image_size;
    let side = s / dims.vae_downsampling;
    let images = ImageBatch::new(pattern(vec![2, 3, s, s], 1, 0.0, 1.0)).unwrap();

    let zt = t.vae_encode(&images).unwrap();
    close(&format!("{label} VAE latents"), &zt, &c.vae_encode(&images).unwrap(), 1e-4);
    close(&format!("{label} VAE decoded"), t.vae_decode(&zt).unwrap().pixels(), c.vae_decode(&zt).unwrap().pixels(), 1e-4);

    let concept: Vec<f32> = (0..dims.text_width).map(|i| ((i * 37 % 17) as f32 - 8.0) / 40.0).collect();
    let prompts = vec![Prompt::with_concept("a photo of a <c> with damage", "<c>", &concept), Prompt::plain("a flawless object")];
    let cond = t.text_conditioning(&prompts).unwrap();
    close(&format!("{label} text conditioning"), &cond, &c.text_conditioning(&prompts).unwrap(), 1e-4);

    let unet = UnetRequest { latents: pattern(vec![2, dims.latent_channels, side, side], 3, -1.5, 1.5), timesteps: vec![999, 17], conditioning: cond };
    close(&format!("{label} UNet"), &t.unet_prediction(&unet).unwrap(), &c.unet_prediction(&unet).unwrap(), 1e-4);

    let loss = DenoisingLossRequest {
        images: images.clone(),
        prompts: prompts.clone(),
        timesteps: vec![500, 42],
        noise: pattern(vec![2, dims.latent_channels, side, side], 5, -2.0, 2.0),
        gradient_of: Some("<c>".into()),
    };
    let (lt, lc) = (t.denoising_loss(&loss).unwrap(), c.denoising_loss(&loss).unwrap());
    close(&format!("{label} loss"), &Tensor::new(vec![1], vec![lt.value]).unwrap(), &Tensor::new(vec![1], vec![lc.value]).unwrap(), 1e-4);
    let g = |v: Vec<f32>| Tensor::new(vec![v.len()], v).unwrap();
    close(&format!("{label} d loss / d concept"), &g(lt.grad.unwrap()), &g(lc.grad.unwrap()), 1e-3);
    let no_grad = t.denoising_loss(&DenoisingLossRequest { gradient_of: None, ..loss.clone() }).unwrap();
    assert_eq!((no_grad.value, no_grad.grad), (lt.value, None), "{label}: the loss without a gradient differs");

    // Seeded noise (no noise given) follows adp_api::rng on both backends.
    let mut i2i = Img2ImgRequest::spec_defaults(images.clone(), prompts[0].clone(), 11);
    i2i.steps = 4;
    i2i.strength = 0.75;
    close(&format!("{label} img2img"), t.img2img(&i2i).unwrap().pixels(), c.img2img(&i2i).unwrap().pixels(), 1e-3);

    // Concurrent calls agree with the batch.
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let (t, one) = (t.clone(), images.image(i % 2));
            std::thread::spawn(move || t.vae_encode(&one).unwrap())
        })
        .collect();
    let per = zt.len() / 2;
    for (i, h) in threads.into_iter().enumerate() {
        let row = Tensor::new(vec![1, dims.latent_channels, side, side], zt.data()[(i % 2) * per..(i % 2 + 1) * per].to_vec()).unwrap();
        close(&format!("{label} latents of image {} alone, thread {i}", i % 2), &h.join().unwrap(), &row, 1e-5);
    }

    // Bad inputs: the same error variants as candle.
    let bad_concept = vec![Prompt::with_concept("a <c>", "<c>", &[0.0; 3])];
    let kinds = |r: adp_api::Result<Tensor>| std::mem::discriminant(&r.unwrap_err());
    assert_eq!(kinds(t.text_conditioning(&bad_concept)), kinds(c.text_conditioning(&bad_concept)));
    assert!(matches!(t.text_conditioning(&[]), Err(Error::Invalid { .. })));
    let past = UnetRequest { timesteps: vec![dims.train_timesteps as u32, 0], ..unet.clone() };
    assert!(matches!(t.unet_prediction(&past), Err(Error::Invalid { .. })));
    let short_noise = DenoisingLossRequest { noise: Tensor::zeros(vec![1, dims.latent_channels, side, side]), ..loss.clone() };
    assert!(matches!(t.denoising_loss(&short_noise), Err(Error::Shape { .. })));
    let unknown = DenoisingLossRequest { gradient_of: Some("<d>".into()), ..loss };
    assert!(matches!(t.denoising_loss(&unknown), Err(Error::Invalid { .. })));
    let nan = Tensor::new(vec![1, dims.latent_channels, side, side], vec![f32::NAN; dims.latent_channels * side * side]).unwrap();
    assert!(t.vae_decode(&nan).is_err(), "{label}: NaN latents were decoded");
    i2i.guidance = f32::NAN;
    assert!(matches!(t.img2img(&i2i), Err(Error::Invalid { .. })));
}

#[test]
fn tch_diffuser_matches_candle_on_the_fixture_folders() {
    let dir = tempfile::tempdir().unwrap();
    let paths = adp_host::fixtures::write_all(dir.path(), 0, "tiny").unwrap();
    compare(&DiffusionSpec::from_dir(&paths.sd_epsilon).unwrap(), "epsilon");
    compare(&DiffusionSpec::from_dir(&paths.sd_v).unwrap(), "v-prediction");
}
