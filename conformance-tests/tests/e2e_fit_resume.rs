//! Host end-to-end test: a SIGKILLed `adp fit` resumed with `--resume` gives the detector an
//! uninterrupted fit gives (issue 17: concept learning is hours of GPU time on preemptible
//! machines). Tiny fixture models on the candle plugin; photos generated here.
use adp_conformance::goldens::fixtures;
use adp_conformance::{adp, build_dir};
use adp_host::detect::DetectorFile;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Steps per concept: enough that the kill lands inside the learning of `c_n`.
const STEPS: &str = "30";
/// A loss no step computes, written into the checkpoint's history before resuming.
const MARK: f32 = 12345.0;

fn support(dir: &Path) -> PathBuf {
    let folder = dir.join("good");
    std::fs::create_dir_all(&folder).unwrap();
    for k in 0..2u32 {
        let img = image::RgbImage::from_fn(48, 40, |x, y| {
            image::Rgb([(x * 5 + k * 30) as u8, (y * 6) as u8, ((x + y) * 3) as u8])
        });
        img.save(folder.join(format!("{k:03}.png"))).unwrap();
    }
    folder
}

fn fit_args<'a>(support: &'a str, out: &'a str, ckpt: &'a str, plugin_dir: &'a str) -> Vec<&'a str> {
    let f = fixtures();
    let (clip, sd) = (f.clip.to_str().unwrap(), f.sd_epsilon.to_str().unwrap());
    vec![
        "fit",
        "--plugin",
        "candle",
        "--plugin-dir",
        plugin_dir,
        "--clip",
        clip,
        "--sd",
        sd,
        "--method",
        "adp",
        "--steps",
        STEPS,
        "--batch-size",
        "2",
        "--ddim-steps",
        "2",
        "--validation-pseudo",
        "2",
        "--quiet",
        "--support",
        support,
        "-o",
        out,
        "--checkpoint-dir",
        ckpt,
        "--checkpoint-every",
        "1",
    ]
}

/// The step of the checkpoint in `file`, once it holds a whole one.
fn saved_step(file: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

/// The checkpoint text with the loss of its first history entry replaced by [`MARK`].
fn mark_first_loss(text: &str) -> String {
    let history = text.find("\"history\"").expect("a history in the checkpoint");
    let start = history + text[history..].find("\"loss\":").expect("a loss in the history") + "\"loss\":".len();
    let end = start + text[start..].find([',', '}']).expect("the end of the loss");
    format!("{}{MARK:?}{}", &text[..start], &text[end..])
}

/// The recorded loss of `c_n`'s first step in a detector.
fn first_loss_of_c_n(d: &mut DetectorFile) -> &mut f32 {
    let c_n = d
        .header
        .concepts
        .iter_mut()
        .find(|c| c.name == "c_n")
        .expect("a c_n concept");
    &mut c_n.provenance.loss_history[0].loss
}

#[test]
fn a_killed_fit_resumes_to_the_uninterrupted_detector() {
    let dir = tempfile::tempdir().unwrap();
    let good = support(dir.path());
    let plugin_dir = build_dir();
    let (good, plugin_dir) = (good.to_str().unwrap(), plugin_dir.to_str().unwrap());
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (whole, resumed, ckpt_a, ckpt_b) = (path("whole.adp"), path("resumed.adp"), path("a"), path("b"));

    adp(&fit_args(good, &whole, &ckpt_a, plugin_dir));

    // Kill the second fit (SIGKILL) while it learns c_n, a few steps after its first checkpoint.
    let exe = build_dir().join("adp");
    let mut child = Command::new(&exe)
        .args(fit_args(good, &resumed, &ckpt_b, plugin_dir))
        .spawn()
        .unwrap();
    let c_n = Path::new(&ckpt_b).join("c_n.json");
    let start = Instant::now();
    let killed_at = loop {
        if let Some(step) = saved_step(&c_n).filter(|&s| s >= 3) {
            child.kill().unwrap();
            break step;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the fit ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(600), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!child.wait().unwrap().success(), "SIGKILL ends the fit");
    assert!(!Path::new(&resumed).exists(), "a killed fit leaves no detector");
    let steps: u64 = STEPS.parse().unwrap();
    let at_kill = saved_step(&c_n).unwrap();
    assert!(
        (killed_at..steps).contains(&at_kill),
        "killed mid-learning (checkpoint at step {at_kill} of {steps})"
    );

    // Mark the checkpoint: a run that really continues from it carries the mark into the
    // concept's loss history; a run that silently started over would recompute that entry.
    // Only that number's text changes, so every other float is read back as it was written.
    std::fs::write(&c_n, mark_first_loss(&std::fs::read_to_string(&c_n).unwrap())).unwrap();

    let mut args = fit_args(good, &resumed, &ckpt_b, plugin_dir);
    args.push("--resume");
    adp(&args);
    let (a, mut b) = (
        DetectorFile::load(Path::new(&whole)).unwrap(),
        DetectorFile::load(Path::new(&resumed)).unwrap(),
    );
    let whole_first = *first_loss_of_c_n(&mut a.clone());
    let first_loss = first_loss_of_c_n(&mut b);
    assert_eq!(
        *first_loss, MARK,
        "the resumed fit continued from the checkpoint (step {at_kill})"
    );
    *first_loss = whole_first;
    // Same machine, backend and options: the resumed run draws and computes what the
    // uninterrupted one did, so the detectors are equal, not merely close.
    assert_eq!(a.header.concepts, b.header.concepts, "learned concepts");
    assert_eq!(a.header.weights, b.header.weights, "self-tuned weights");
    assert_eq!(a.memories, b.memories, "reference memories");
    assert_eq!(a.prototypes, b.prototypes, "prototypes");
    assert_eq!(a.header.decision, b.header.decision, "decision");

    // A checkpoint of other options (here: another seed) is refused, naming the file.
    let other_out = path("other.adp");
    let mut other = fit_args(good, &other_out, &ckpt_b, plugin_dir);
    other.extend(["--seed", "7", "--resume"]);
    let out = Command::new(&exe).args(&other).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("c_n.json"), "{err}");
}
