//! Host end-to-end test: `adp bench`'s CLIP and diffusion rows run on the tiny fixtures through
//! each plugin, each row in a process of its own, and report what they timed. No timing is
//! asserted (speed is the bench's to measure, not a test's); `--size` is refused where a row
//! cannot honour it.
use adp_conformance::{adp, build_dir, textured_photos};
use std::process::Command;

fn rows_run(plugin: &str) {
    let dir = tempfile::tempdir().unwrap();
    let files = textured_photos(dir.path(), 3);
    let printed = adp(&["fixtures", "--out", dir.path().join("fx").to_str().unwrap()]);
    let clip = printed.lines().next().unwrap().to_string();
    let sd = dir.path().join("fx/sd-v");
    let plugins = build_dir();
    let mut args: Vec<String> = ["bench", "--plugin-dir", plugins.to_str().unwrap(), "--plugin", plugin]
        .map(String::from)
        .into();
    args.extend(
        [
            "--rows",
            "clip-image,clip-dense,clip-text,unet,learn-step-1,img2img-step",
        ]
        .map(String::from),
    );
    args.extend(["--clip", &clip, "--sd", sd.to_str().unwrap()].map(String::from));
    args.extend(["--shots", "1", "--repeats", "1", "--quiet"].map(String::from));
    args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
    let out = adp(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let rows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["row"].as_str().unwrap(),
                r["per"].as_str().unwrap(),
                r["items"].as_u64().unwrap(),
            )
        })
        .collect();
    // Two photos scored after one shot; 54 state prompts (27 templates × 2 states).
    assert_eq!(
        got,
        [
            ("clip-image", "photo", 2),
            ("clip-dense", "photo", 2),
            ("clip-text", "prompt", 54),
            ("unet", "call", 1),
            ("learn-step-1", "step", 1),
            ("img2img-step", "step", 1),
        ],
        "{out}"
    );
    for r in &rows {
        assert_eq!(r["plugin"], plugin, "{r}");
        assert!(r["ms"].as_f64().is_some_and(f64::is_finite), "{r}");
        // CPU time per item: a process total, never negative, except img2img's (a difference of
        // medians, as its `ms`).
        let cpu = r["cpu_ms"].as_f64();
        match r["row"].as_str() {
            Some("img2img-step") => assert!(cpu.is_some_and(f64::is_finite), "{r}"),
            _ => assert!(cpu.is_some_and(|c| c.is_finite() && c >= 0.0), "{r}"),
        }
        if cfg!(target_os = "linux") {
            assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let img2img = rows.iter().find(|r| r["row"] == "img2img-step").unwrap();
    for part in ["img2img_1_step", "img2img_2_steps"] {
        assert!(img2img["parts"][part].as_f64().is_some_and(|t| t > 0.0), "{img2img}");
    }
    // The learning step's parts: the VAE encoding and a UNet forward timed on their own, and
    // the rest of the step (a difference of medians: finite, its sign not asserted).
    let step = rows.iter().find(|r| r["row"] == "learn-step-1").unwrap();
    for part in ["vae_encode", "unet_forward"] {
        assert!(step["parts"][part].as_f64().is_some_and(|t| t > 0.0), "{step}");
    }
    assert!(
        step["parts"]["text_and_backward"].as_f64().is_some_and(f64::is_finite),
        "{step}"
    );

    // The UNet is fully convolutional: its row runs at another size (the tiny fixture works at
    // 32 px; 48 px is 24 latents, a multiple of its UNet's downsampling 2).
    let at = |size: &str| {
        Command::new(build_dir().join("adp"))
            .args(["bench", "--plugin-dir", plugins.to_str().unwrap(), "--plugin", plugin])
            .args(["--rows", "unet", "--sd", sd.to_str().unwrap(), "--size", size])
            .args(["--shots", "0", "--repeats", "1", "--quiet"])
            .args(&files)
            .output()
            .unwrap()
    };
    let out = at("48");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let row: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (row["row"].as_str(), row["size"].as_u64()),
        (Some("unet"), Some(48)),
        "{row}"
    );
    let out = at("42");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("42 is not a multiple of 4"), "{err}");

    // The learning step takes photos at the model's own size only: another is refused by name.
    let out = Command::new(build_dir().join("adp"))
        .args(["bench", "--plugin-dir", plugins.to_str().unwrap(), "--plugin", plugin])
        .args([
            "--rows",
            "learn-step-1",
            "--sd",
            sd.to_str().unwrap(),
            "--size",
            "64",
            "--shots",
            "0",
        ])
        .args(&files)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size") && err.contains("model's own size"), "{err}");
}

#[test]
fn bench_rows_run_on_candle() {
    rows_run("candle");
}

#[cfg(feature = "tch")]
#[test]
fn bench_rows_run_on_tch() {
    rows_run("tch");
}
