//! Backend conformance (not a host end-to-end test): one backend at real model sizes.
//!
//! Real sizes: random weights in the ViT-H-14 and Stable Diffusion 2.1 layouts (about 14 GB on
//! disk), loaded by the candle backend, one forward pass of each part on the CPU, with the peak
//! resident memory after each. Ignored by default:
//! `cargo test --release -p adp-conformance --test real_sizes -- --ignored --nocapture`.
use adp_api::requests::*;
use adp_api::*;
use adp_host::fixtures::{diffusers::DiffusionPreset, write_all_with};
use std::time::Instant;

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn report(what: &str, start: Instant) {
    eprintln!(
        "{what:<40} {:>7.1} s   peak RSS {:>8.0} MiB",
        start.elapsed().as_secs_f64(),
        peak_rss_mib()
    );
}

fn image(size: usize) -> ImageBatch {
    ImageBatch::new(Tensor::from_fn(vec![1, 3, size, size], |i| (i % 251) as f32 / 250.0)).unwrap()
}

#[test]
#[ignore = "writes ~14 GB of random ViT-H-14 and SD 2.1 weights; run with --ignored"]
fn vit_h_14_and_sd_2_1_run_one_forward_pass_each() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let paths = write_all_with(dir.path(), 0, "ViT-H-14", DiffusionPreset::Sd21).unwrap();
    report("write random weights", t);
    let backend = adp_backend_candle::CandleBackend::new();

    let t = Instant::now();
    let enc = backend
        .text_image_encoder(&ClipCheckpoint::from_dir(&paths.clip).unwrap(), Device::Cpu)
        .unwrap();
    report("load ViT-H-14", t);
    let t = Instant::now();
    assert_eq!(enc.image_embeddings(&image(256)).unwrap().shape(), &[1, 1024]);
    report("ViT-H-14 image embedding (256 px in)", t);
    let t = Instant::now();
    assert_eq!(
        enc.text_embeddings(&[Prompt::plain("a photo of a damaged bottle")])
            .unwrap()
            .shape(),
        &[1, 1024]
    );
    report("ViT-H-14 text embedding", t);
    drop(enc);

    let t = Instant::now();
    let spec = DiffusionSpec::from_dir(&paths.sd_v).unwrap();
    let dif = backend.latent_diffuser(&spec, Device::Cpu).unwrap();
    report("load SD 2.1 (v-prediction)", t);
    let dims = dif.dims();
    assert_eq!((dims.image_size, dims.text_width), (768, 1024));
    let t = Instant::now();
    let cond = dif.text_conditioning(&[Prompt::plain("a photo with damage")]).unwrap();
    assert_eq!(cond.shape(), &[1, 77, 1024]);
    report("SD 2.1 text conditioning", t);
    let t = Instant::now();
    let z = dif.vae_encode(&image(768)).unwrap();
    assert_eq!(z.shape(), &[1, 4, 96, 96]);
    report("SD 2.1 VAE encode (768 px)", t);
    let t = Instant::now();
    let pred = dif
        .unet_prediction(&UnetRequest {
            latents: z.clone(),
            timesteps: vec![500],
            conditioning: cond,
        })
        .unwrap();
    assert!(pred.check_finite("UNet prediction").is_ok());
    report("SD 2.1 UNet prediction (96×96 latent)", t);
    let t = Instant::now();
    assert_eq!(dif.vae_decode(&z).unwrap().height(), 768);
    report("SD 2.1 VAE decode", t);
}
