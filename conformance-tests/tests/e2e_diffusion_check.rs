//! Host end-to-end test (not backend conformance): `adp diffusion-check` on the fixture diffusers
//! folders, fed the inputs of the diffusers goldens (`sd`, `ti_epsilon`, `ti_v`), writes the
//! goldens' outputs; bad input files are refused, naming the tensor.
use adp_api::Tensor;
use adp_conformance::goldens::{fixtures, Golden};
use adp_conformance::tolerance::{assert_close, FORWARD, GRADIENT};
use adp_conformance::{adp, build_dir};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// One input tensor: name, dtype, shape, little-endian bytes.
type Input = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_input(name: &str, t: &Tensor) -> Input {
    let bytes = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
    (name.into(), Dtype::F32, t.shape().to_vec(), bytes)
}

fn i64_input(name: &str, (shape, values): (Vec<usize>, Vec<i64>)) -> Input {
    (
        name.into(),
        Dtype::I64,
        shape,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

fn write_inputs(path: &Path, inputs: &[Input], prompts: Option<serde_json::Value>) {
    let views: Vec<(String, TensorView)> = inputs
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let meta = prompts.map(|p| HashMap::from([("prompts".to_string(), p.to_string())]));
    std::fs::write(path, safetensors::serialize(views, meta).unwrap()).unwrap();
}

/// Runs the command and reads its outputs.
fn check(plugin: &str, sd: &Path, inputs: &Path, out: &Path) -> HashMap<String, Tensor> {
    let line = adp(&[
        "diffusion-check",
        "--plugin",
        plugin,
        "--plugin-dir",
        build_dir().to_str().unwrap(),
        "--diffusion",
        sd.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(line.contains("outputs"), "{line}");
    let bytes = std::fs::read(out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.names()
        .into_iter()
        .map(|n| (n.to_string(), adp_api::config::st::read_f32(&st, n, out).unwrap()))
        .collect()
}

fn text_encoder_unet_and_vae_match_diffusers(plugin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let g = Golden::open("sd");
    let inputs = dir.path().join("in.safetensors");
    write_inputs(
        &inputs,
        &[
            f32_input("images", &g.f32("vae_images")),
            f32_input("latents", &g.f32("unet_latents")),
            i64_input("timesteps", g.i64("unet_timesteps")),
            f32_input("concept", &g.f32("concept")),
        ],
        Some(g.meta_json("cond_prompts")),
    );
    let got = check(
        plugin,
        &fixtures().sd_epsilon,
        &inputs,
        &dir.path().join("out.safetensors"),
    );
    for (name, golden) in [
        ("vae_latents", "vae_latents"),
        ("vae_decoded", "vae_decoded"),
        ("conditioning", "conditioning"),
        ("unet_prediction", "unet_prediction"),
    ] {
        assert_close(&format!("{plugin}: {name}"), &got[name], &g.f32(golden), FORWARD);
    }
    assert_eq!(got["latents_decoded"].shape(), g.f32("vae_decoded").shape());

    // The textual-inversion loss and its gradient, epsilon and v-prediction.
    for (name, sd) in [("ti_epsilon", &fixtures().sd_epsilon), ("ti_v", &fixtures().sd_v)] {
        let g = Golden::open(name);
        write_inputs(
            &inputs,
            &[
                f32_input("images", &g.f32("images")),
                f32_input("noise", &g.f32("noise")),
                i64_input("timesteps", g.i64("timesteps")),
                f32_input("concept", &g.f32("concept")),
            ],
            Some(g.meta_json("prompts")),
        );
        let got = check(plugin, sd, &inputs, &dir.path().join("loss.safetensors"));
        assert_close(
            &format!("{plugin} {name}: loss"),
            &got["denoising_loss"],
            &g.f32("loss"),
            FORWARD,
        );
        assert_close(
            &format!("{plugin} {name}: gradient"),
            &got["denoising_loss_grad"],
            &g.f32("loss_grad"),
            GRADIENT,
        );
    }
}

#[test]
fn outputs_match_the_diffusers_goldens_with_candle() {
    text_encoder_unet_and_vae_match_diffusers("candle");
}

#[cfg(feature = "tch")]
#[test]
fn outputs_match_the_diffusers_goldens_with_tch() {
    text_encoder_unet_and_vae_match_diffusers("tch");
}

#[test]
fn bad_inputs_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let g = Golden::open("sd");
    let inputs = dir.path().join("in.safetensors");
    let fails = |inputs_: &[Input], prompts: Option<serde_json::Value>| {
        write_inputs(&inputs, inputs_, prompts);
        let out = std::process::Command::new(build_dir().join("adp"))
            .args(["diffusion-check", "--plugin-dir", build_dir().to_str().unwrap()])
            .args(["--diffusion", fixtures().sd_epsilon.to_str().unwrap()])
            .args(["--inputs", inputs.to_str().unwrap()])
            .args(["--out", dir.path().join("out.safetensors").to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let images = g.f32("vae_images");
    let small = Tensor::zeros(vec![1, 3, 8, 8]);
    let latents = g.f32("unet_latents");
    let timesteps = || i64_input("timesteps", g.i64("unet_timesteps"));
    let cases: Vec<(Vec<Input>, Option<serde_json::Value>, &str)> = vec![
        (vec![f32_input("imagez", &images)], None, "unknown tensor `imagez`"),
        (vec![f32_input("images", &small)], None, "tensor `images`"),
        (
            vec![("images".into(), Dtype::F64, vec![1], vec![0; 8])],
            None,
            "tensor `images`: dtype F64",
        ),
        (
            vec![
                f32_input("latents", &latents),
                i64_input("timesteps", (vec![2], vec![5, 4000])),
            ],
            Some(serde_json::json!(["a", "b"])),
            "tensor `timesteps`: 4000",
        ),
        (
            vec![f32_input("latents", &latents), timesteps()],
            Some(serde_json::json!(["one prompt"])),
            "2 latents but 1 prompts",
        ),
        (vec![f32_input("noise", &latents)], None, "`noise` needs `images`"),
        (vec![], Some(serde_json::json!("not a list")), "metadata `prompts`"),
        (vec![], None, "nothing to run"),
        (
            vec![f32_input("concept", &g.f32("concept"))],
            Some(serde_json::json!(["no placeholder"])),
            "tensor `concept`: no prompt holds",
        ),
    ];
    for (inputs_, prompts, want) in cases {
        let err = fails(&inputs_, prompts);
        assert!(
            err.contains(want) && err.contains("in.safetensors"),
            "want {want:?}: {err}"
        );
    }
    std::fs::write(&inputs, b"truncated").unwrap();
    let out = std::process::Command::new(build_dir().join("adp"))
        .args(["diffusion-check", "--plugin-dir", build_dir().to_str().unwrap()])
        .args(["--diffusion", fixtures().sd_epsilon.to_str().unwrap()])
        .args(["--inputs", inputs.to_str().unwrap(), "--out", "/dev/null/x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in.safetensors"), "{err}");
}
