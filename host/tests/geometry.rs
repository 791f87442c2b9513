//! The detection geometry of SPEC §2 on the in-process test fixture (CLIP input 4×4, diffusion
//! images 4×4): every photo, support or test, square or not, is resized once, straight from its
//! own pixels, to the model's square input (no crop), and the map computed there is resized back
//! over the whole photo.
use adp_api::preprocess::{clip_preprocess, resize, CLIP_MEAN, CLIP_STD};
mod common;

use adp_api::requests::Flow;
use adp_api::Device;
use adp_api::{ClipCheckpoint, DiffusionSpec, ImageBatch};
use adp_host::detect::fit::fit_files;
use adp_host::detect::{score, Checkpoints, DetectorFile, FitOptions, Fitter, Method};
use adp_host::score::association::resize_square;
use common::Recording;
use std::path::{Path, PathBuf};

/// The fixture's specs with their weight files present; the VAE config claims a larger
/// `sample_size` than the diffusion image size, as 2.1-base's does (768 against 512).
fn specs(dir: &Path) -> (ClipCheckpoint, DiffusionSpec) {
    let (clip, mut sd) = common::specs(dir);
    sd.vae.sample_size = Some(16);
    (clip, sd)
}

/// A `height`×`width` photo with structure everywhere (so that any second resampling or crop
/// shows), and an optional bright block in its bottom-right corner.
fn photo(path: &Path, height: u32, width: u32, seed: u32, defect: bool) -> ImageBatch {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(width, height, |x, y| {
        if defect && y >= height * 3 / 4 && x >= width * 3 / 4 {
            return image::Rgb([255, 255, 255]);
        }
        let v = (x * 37 + y * 91 + seed * 13) % 200;
        image::Rgb([v as u8, (200 - v) as u8, ((x * 7) % 120 + 40) as u8])
    })
    .save(path)
    .unwrap();
    ImageBatch::read_files(&[path]).unwrap()
}

fn quick(method: Method) -> FitOptions {
    FitOptions {
        method,
        steps: 2,
        batch_size: 1,
        ddim_steps: 2,
        pseudo_per_image: 1,
        validation_pseudo: 2,
        window_sizes: vec![2],
        ..FitOptions::default()
    }
}

fn memories(d: &DetectorFile) -> Vec<Vec<f32>> {
    d.memories.iter().map(|m| m.features.data().to_vec()).collect()
}

#[test]
fn clip_preprocessing_of_a_square_input_is_the_identity_then_normalisation() {
    // A photo already at the CLIP side is neither resampled nor cropped by the encoder's
    // shorter-side + centre-crop step: exactly the normalised pixels.
    let dir = tempfile::tempdir().unwrap();
    let square = resize(&photo(&dir.path().join("p.png"), 30, 70, 1, false), 24, 24);
    let got = clip_preprocess(&square, 24);
    let want: Vec<f32> = square
        .pixels()
        .data()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / (24 * 24)) % 3;
            (v - CLIP_MEAN[c]) / CLIP_STD[c]
        })
        .collect();
    assert_eq!(got.shape(), &[1, 3, 24, 24]);
    assert_eq!(got.data(), &want[..]);
}

#[test]
fn a_fit_on_non_square_photos_uses_each_photo_resized_straight_to_each_model() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, sd) = specs(dir.path());
    let files: Vec<PathBuf> = vec![dir.path().join("good/0.png"), dir.path().join("good/1.png")];
    let originals = [photo(&files[0], 10, 22, 0, false), photo(&files[1], 19, 7, 1, false)];
    let straight: Vec<ImageBatch> = originals.iter().map(|p| resize(p, 4, 4)).collect();
    let straight_batch = adp_host::images::squares(&straight, 4).unwrap();

    for method in [Method::Adp, Method::Winclip] {
        let backend = Recording::default();
        let fitted = fit_files(
            &backend,
            &Checkpoints::clip(&clip),
            Some(&sd),
            &files,
            quick(method),
            &mut |_| Flow::Continue,
        )
        .unwrap();
        backend.log(|l| {
            for b in &l.encoded {
                assert_eq!((b.height(), b.width()), (4, 4), "{method}: CLIP sees its square input");
            }
            // The support set CLIP encoded is the originals resized straight to 4×4, not via a
            // larger square.
            assert!(
                l.encoded.iter().any(|b| b == &straight_batch),
                "{method}: the support photos resized straight to CLIP's input"
            );
            // The diffusion model's support set: the originals resized straight to its image size,
            // each encoded on its own the first time a learning step draws it.
            let straight: Vec<_> = (0..straight_batch.len()).map(|i| straight_batch.image(i)).collect();
            assert_eq!(
                l.learned_on.is_empty(),
                !method.needs_diffusion(),
                "{method}: what SD encoded"
            );
            for b in &l.learned_on {
                assert!(
                    straight.contains(b),
                    "{method}: learned on the photos straight at the SD size"
                );
            }
        });

        // The same memories as a fit on the photos resized straight to CLIP's square beforehand.
        let reference = Fitter {
            backend: &Recording::default(),
            clip: &clip,
            sd: Some(&sd),
            options: quick(method),
        }
        .fit(&straight_batch, &mut |_| Flow::Continue)
        .unwrap();
        assert_eq!(memories(&fitted), memories(&reference), "{method}");
        assert_eq!(fitted.prototypes, reference.prototypes, "{method}");
    }
}

/// An ADP fit learns its concepts on the CLIP and Stable Diffusion it has opened, each opened once:
/// not through a backend `ConceptOptimizer`, which would load both again beside them (about 9 GB
/// for ViT-H-14 and SD 2.1 in f32).
#[test]
fn an_adp_fit_opens_each_model_once_and_learns_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, sd) = specs(dir.path());
    let files = vec![dir.path().join("good/0.png")];
    photo(&files[0], 9, 9, 0, false);
    let backend = Recording::default();
    let fit = fit_files(
        &backend,
        &Checkpoints::clip(&clip),
        Some(&sd),
        &files,
        quick(Method::Adp),
        &mut |_| Flow::Continue,
    );
    fit.unwrap();
    backend.log(|l| {
        let opened = |part: &str| l.parts.iter().filter(|&&p| p == part).count();
        assert_eq!(opened("text_image_encoder"), 1, "{:?}", l.parts);
        assert_eq!(opened("latent_diffuser"), 1, "{:?}", l.parts);
        assert_eq!(opened("concept_optimizer"), 0, "{:?}", l.parts);
        assert_eq!(l.learned, ["c_n", "c_a"], "learned on the fit's own diffuser");
    });
}

/// A `winclip` detector fitted on one support photo.
fn winclip_on(support: &ImageBatch, clip: &ClipCheckpoint, sd: &DiffusionSpec) -> DetectorFile {
    let fitter = Fitter {
        backend: &Recording::default(),
        clip,
        sd: Some(sd),
        options: quick(Method::Winclip),
    };
    fitter.fit(support, &mut |_| Flow::Continue).unwrap()
}

#[test]
fn a_score_on_a_non_square_photo_is_the_score_of_the_photo_resized_straight_to_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, sd) = specs(dir.path());
    let detector = winclip_on(&photo(&dir.path().join("good/0.png"), 12, 30, 0, false), &clip, &sd);
    let ck = Checkpoints::clip(&clip);
    for (h, w) in [(12usize, 30usize), (33, 9)] {
        let test = photo(
            &dir.path().join(format!("test/{h}x{w}.png")),
            h as u32,
            w as u32,
            3,
            true,
        );
        let got = &score(
            &Recording::default(),
            &ck,
            &detector,
            std::slice::from_ref(&test),
            Device::Cpu,
        )
        .unwrap()[0];
        let square = &score(
            &Recording::default(),
            &ck,
            &detector,
            &[resize(&test, 4, 4)],
            Device::Cpu,
        )
        .unwrap()[0];
        assert_eq!((got.height, got.width, got.map.len()), (h, w, h * w));
        assert_eq!(
            (got.score, got.language, got.association),
            (square.score, square.language, square.association)
        );
        assert_eq!(got.map, resize_square(&square.map, 4, h, w), "{h}×{w}");
    }
}

#[test]
fn a_defect_in_the_corner_of_a_non_square_photo_lands_in_the_same_corner_of_its_map() {
    // Outside the centre crop of a wide photo: seen, and mapped where it is.
    let dir = tempfile::tempdir().unwrap();
    let (clip, sd) = specs(dir.path());
    let detector = winclip_on(&photo(&dir.path().join("good/0.png"), 16, 48, 0, false), &clip, &sd);
    let test = photo(&dir.path().join("test/bad.png"), 16, 48, 0, true);
    let s = &score(
        &Recording::default(),
        &Checkpoints::clip(&clip),
        &detector,
        &[test],
        Device::Cpu,
    )
    .unwrap()[0];
    let argmax = s.map.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let (y, x) = (argmax / 48, argmax % 48);
    assert!(y >= 8 && x >= 24, "peak at {y},{x}, not in the bottom-right quadrant");
    assert!(s.map[0] < s.map[argmax], "the opposite corner is colder");
}
