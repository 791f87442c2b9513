//! Host end-to-end test (not backend conformance): the `adp` binary's error paths.
//!
//! Every bad input of `adp fit`, `adp score` and `adp eval` ends the process with a non-zero exit
//! (never a panic) and an error on stderr that names the file, tensor or shape at fault.
//! Needs the `adp` binary and the plugins in the build folder (`cargo build --workspace`).
use adp_conformance::goldens::fixtures;
use adp_conformance::{build_dir, built_plugin_path};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// An `adp` argument list written as one line: the template's words (split on white space), each
/// `{}` word replaced by the next of `values` in turn. The values (paths) are inserted after the
/// split, so a space in one would stay inside its argument.
fn argv(template: &str, values: &[&str]) -> Vec<String> {
    let mut values = values.iter();
    let args: Vec<String> = template
        .split_whitespace()
        .map(|w| match w {
            "{}" => values.next().expect("a value for every {}").to_string(),
            w => w.to_string(),
        })
        .collect();
    assert!(values.next().is_none(), "more values than {{}} in {template:?}");
    args
}

fn run<S: AsRef<str>>(args: &[S]) -> Output {
    let exe = build_dir().join("adp");
    Command::new(&exe)
        .args(args.iter().map(|a| a.as_ref()))
        .env("RUST_BACKTRACE", "0")
        .env("RUST_LIB_BACKTRACE", "0")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (cargo build --workspace first)", exe.display()))
}

/// Runs `adp args`, asserts a clean failure (non-zero exit, no panic) whose stderr contains every
/// one of `names`; returns stderr.
fn fails<S: AsRef<str> + std::fmt::Debug>(args: &[S], names: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "adp {args:?} succeeded; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_ne!(out.status.code(), Some(101), "adp {args:?} panicked: {err}");
    assert!(
        out.status.code().is_some(),
        "adp {args:?} was killed by a signal: {err}"
    );
    assert!(!err.contains("panicked at"), "adp {args:?} panicked: {err}");
    eprintln!("adp {}: {}", args[0].as_ref(), err.trim_end());
    for name in names {
        assert!(
            err.contains(name),
            "adp {args:?}: the error does not name {name:?}:\n{err}"
        );
    }
    err
}

/// `adp score --detector detector --plugin-dir plugin_dir image`.
fn score_args<'a>(detector: &'a str, plugin_dir: &'a str, image: &'a str) -> [&'a str; 6] {
    ["score", "--detector", detector, "--plugin-dir", plugin_dir, image]
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn plugin_dir() -> String {
    s(&build_dir()).to_string()
}

fn clip() -> PathBuf {
    fixtures().clip.clone()
}

/// Two small normal "photos" (PNG) in `dir/support/`.
fn support(dir: &Path) -> PathBuf {
    let out = dir.join("support");
    std::fs::create_dir_all(&out).unwrap();
    for k in 0..2u8 {
        let img = image::RgbImage::from_fn(40, 36, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, 60 + 40 * k]));
        img.save(out.join(format!("{k:03}.png"))).unwrap();
    }
    out
}

/// `adp fit --method winclip` (no Stable Diffusion, fast) with the `candle` plugin from `dir`.
fn fit_args(clip: &str, support: &str, output: &str, dir: &str) -> Vec<String> {
    let line = "fit --plugin candle --plugin-dir {} --clip {} --method winclip --quiet --support {} -o {}";
    argv(line, &[dir, clip, support, output])
}

/// A detector fitted on the fixture CLIP, at `dir/d.adp`.
fn detector(dir: &Path) -> PathBuf {
    let support = support(dir);
    let path = dir.join("d.adp");
    let pd = plugin_dir();
    let out = run(&fit_args(s(&clip()), s(&support), s(&path), &pd));
    assert!(
        out.status.success(),
        "fitting the test detector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A folder `dir/name` holding copies of the fixture CLIP's `files`.
fn clip_copy(dir: &Path, name: &str, files: &[&str]) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    for f in files {
        std::fs::copy(clip().join(f), out.join(f)).unwrap();
    }
    out
}

/// A copy of the fixture CLIP folder whose safetensors went through `edit` (tensors by name).
fn edited_clip(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) -> PathBuf {
    let out = clip_copy(dir, "clip-edited", &["open_clip_config.json"]);
    let bytes = std::fs::read(clip().join("open_clip_model.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    let info: Option<HashMap<String, String>> = meta.metadata().clone();
    std::fs::write(
        out.join("open_clip_model.safetensors"),
        safetensors::serialize(views, info).unwrap(),
    )
    .unwrap();
    out
}

#[test]
fn a_corrupt_image_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.png");
    let noise: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(&bad, noise).unwrap();
    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    let pd = plugin_dir();
    let (c, out) = (clip(), dir.path().join("x.adp"));
    // As a support image, alone and inside a support folder.
    fails(&fit_args(s(&c), s(&bad), s(&out), &pd), &[s(&bad)]);
    let folder = support(dir.path());
    std::fs::copy(&bad, folder.join("zzz.png")).unwrap();
    fails(
        &fit_args(s(&c), s(&folder), s(&out), &pd),
        &[s(&folder.join("zzz.png"))],
    );
    assert!(!out.exists(), "a failed fit wrote a detector");
    // As an image to score.
    let d = detector(&dir.path().join("fit"));
    fails(
        &["score", "--detector", s(&d), "--plugin-dir", &pd, "--quiet", s(&bad)],
        &[s(&bad)],
    );
    fails(&score_args(s(&d), &pd, s(&empty)), &[s(&empty)]);
    let missing = dir.path().join("missing.png");
    fails(&score_args(s(&d), &pd, s(&missing)), &[s(&missing)]);
}

#[test]
fn a_missing_or_empty_support_folder_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pd = plugin_dir();
    let (c, out) = (clip(), dir.path().join("x.adp"));
    let missing = dir.path().join("no-such-folder");
    let err = fails(&fit_args(s(&c), s(&missing), s(&out), &pd), &[s(&missing)]);
    assert!(err.contains("no such file or folder"), "{err}");
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), b"not an image").unwrap();
    let err = fails(&fit_args(s(&c), s(&empty), s(&out), &pd), &[s(&empty)]);
    assert!(err.contains("no images"), "{err}");
}

#[test]
fn a_missing_checkpoint_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let edited = edited_clip(dir.path(), |t| t.retain(|(n, _, _)| n != "visual.proj"));
    let support = support(dir.path());
    let pd = plugin_dir();
    let file = edited.join("open_clip_model.safetensors");
    let err = fails(
        &fit_args(s(&edited), s(&support), s(&dir.path().join("x.adp")), &pd),
        &[s(&file), "visual.proj"],
    );
    assert!(err.contains("missing tensor"), "{err}");
    // Scoring with it is refused before the tensors are read: it is not the detector's checkpoint.
    let d = detector(&dir.path().join("fit"));
    let score = argv(
        "score --detector {} --plugin-dir {} --clip {} {}",
        &[s(&d), &pd, s(&edited), s(&support)],
    );
    fails(&score, &[s(&file), "another CLIP checkpoint"]);
}

#[test]
fn a_wrong_tensor_shape_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut shape = Vec::new();
    let edited = edited_clip(dir.path(), |t| {
        let (_, s, data) = t
            .iter_mut()
            .find(|(n, _, _)| n == "visual.proj")
            .expect("visual.proj in the fixture");
        shape = s.clone();
        let row = data.len() / s[0];
        s[0] -= 1;
        data.truncate(data.len() - row);
    });
    let support = support(dir.path());
    let pd = plugin_dir();
    let file = edited.join("open_clip_model.safetensors");
    let mut wrong = shape.clone();
    wrong[0] -= 1;
    fails(
        &fit_args(s(&edited), s(&support), s(&dir.path().join("x.adp")), &pd),
        &[s(&file), "visual.proj", &format!("{wrong:?}"), &format!("{shape:?}")],
    );
}

#[test]
fn a_checkpoint_folder_without_config_or_weights_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let support = support(dir.path());
    let pd = plugin_dir();
    let out = dir.path().join("x.adp");
    let no_config = clip_copy(dir.path(), "clip-no-config", &["open_clip_model.safetensors"]);
    let err = fails(&fit_args(s(&no_config), s(&support), s(&out), &pd), &[s(&no_config)]);
    assert!(err.contains("open_clip_config.json"), "{err}");
    let no_weights = clip_copy(dir.path(), "clip-no-weights", &["open_clip_config.json"]);
    fails(&fit_args(s(&no_weights), s(&support), s(&out), &pd), &[s(&no_weights)]);
    let nowhere = dir.path().join("no-such-clip");
    fails(&fit_args(s(&nowhere), s(&support), s(&out), &pd), &[s(&nowhere)]);
    // A truncated weights file.
    let truncated = clip_copy(dir.path(), "clip-truncated", &["open_clip_config.json"]);
    let bytes = std::fs::read(clip().join("open_clip_model.safetensors")).unwrap();
    std::fs::write(truncated.join("open_clip_model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &fit_args(s(&truncated), s(&support), s(&out), &pd),
        &[s(&truncated.join("open_clip_model.safetensors"))],
    );
}

#[test]
fn a_truncated_or_corrupt_detector_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = detector(&dir.path().join("fit"));
    let bytes = std::fs::read(&d).unwrap();
    let pd = plugin_dir();
    let image = support(dir.path()).join("000.png");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("head.adp", bytes[..7].to_vec()),
        ("header-cut.adp", bytes[..200.min(bytes.len() / 2)].to_vec()),
        ("half.adp", bytes[..bytes.len() / 2].to_vec()),
        (
            "noise.adp",
            (0..5000u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect(),
        ),
        ("empty.adp", Vec::new()),
    ];
    for (name, content) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let err = fails(&score_args(s(&path), &pd, s(&image)), &[s(&path)]);
        assert!(err.contains("detector"), "{name}: {err}");
    }
    // A valid safetensors file that is not a detector (the CLIP weights).
    let weights = clip().join("open_clip_model.safetensors");
    fails(
        &score_args(s(&weights), &pd, s(&image)),
        &[s(&weights), "not a detector file"],
    );
    let missing = dir.path().join("missing.adp");
    fails(&score_args(s(&missing), &pd, s(&image)), &[s(&missing)]);
}

#[test]
fn a_detector_with_another_clip_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = detector(&dir.path().join("fit"));
    // Same architecture, one weight changed: another checkpoint.
    let other = edited_clip(dir.path(), |t| {
        let (_, _, data) = t.iter_mut().find(|(n, _, _)| n == "ln_final.bias").unwrap();
        data[0] ^= 0x40;
    });
    let image = support(dir.path()).join("000.png");
    let score = argv(
        "score --detector {} --plugin-dir {} --clip {} {}",
        &[s(&d), &plugin_dir(), s(&other), s(&image)],
    );
    let err = fails(&score, &[s(&other.join("open_clip_model.safetensors"))]);
    assert!(err.contains("another CLIP checkpoint"), "{err}");
}

#[test]
fn a_file_that_is_not_a_plugin_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap(); // the loader names plugins by their canonical path
    let support = support(&dir);
    let (c, out) = (clip(), dir.join("x.adp"));
    let check = |plugin: &Path, names: &[&str]| {
        let line = "fit --plugin {} --clip {} --method winclip --support {} -o {}";
        let args = argv(line, &[s(plugin), s(&c), s(&support), s(&out)]);
        let mut names = names.to_vec();
        names.push(s(plugin));
        fails(&args, &names)
    };
    let text = dir.join("libadp_plugin_fake.so");
    std::fs::write(&text, b"not a shared library").unwrap();
    check(&text, &["not a loadable shared library"]);
    check(&dir.join("libadp_plugin_absent.so"), &["not found"]);
    // A shared library without the declaration symbol, and one built for a future ABI.
    let no_decl = built_plugin_path("adp_plugin_test_fixture_no_declaration")
        .canonicalize()
        .unwrap();
    check(&no_decl, &["adp_plugin_declaration"]);
    let future = built_plugin_path("adp_plugin_test_fixture_future_abi")
        .canonicalize()
        .unwrap();
    let err = check(&future, &["ABI"]);
    let (host, plugin) = (adp_plugin_abi::ADP_ABI_VERSION, adp_plugin_abi::ADP_ABI_VERSION + 1);
    assert!(
        err.contains(&format!("ABI {plugin}")) && err.contains(&format!("ABI {host}")),
        "{err}"
    );
    // A name no plugin in the folder has.
    let pd = plugin_dir();
    let line = "fit --plugin nonesuch --plugin-dir {} --clip {} --method winclip --support {} -o {}";
    fails(
        &argv(line, &[&pd, s(&c), s(&support), s(&out)]),
        &["nonesuch", "candle"],
    );
    assert!(!out.exists());
}

#[test]
fn an_unknown_method_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let support = support(dir.path());
    let pd = plugin_dir();
    let c = clip();
    let out = dir.path().join("x.adp");
    let line = "fit --plugin candle --plugin-dir {} --clip {} --method bogus --support {} -o {}";
    let err = fails(&argv(line, &[&pd, s(&c), s(&support), s(&out)]), &["bogus", "--method"]);
    assert!(err.contains("winclip"), "the error lists the methods: {err}");
    let line = "eval --plugin candle --plugin-dir {} --clip {} --method bogus --data {} --out {}";
    let report = dir.path().join("report");
    let err = fails(&argv(line, &[&pd, s(&c), s(dir.path()), s(&report)]), &["bogus"]);
    assert!(err.contains("adp-label"), "{err}");
}

#[test]
fn eval_names_a_missing_category_and_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for split in ["train/good", "test/good"] {
        std::fs::create_dir_all(data.join("widget").join(split)).unwrap();
    }
    let pd = plugin_dir();
    let c = clip();
    let report = dir.path().join("report");
    let eval = |data: &Path, category: &str, names: &[&str]| {
        let line =
            "eval --plugin candle --plugin-dir {} --clip {} --method winclip --data {} --category {} --quiet --out {}";
        fails(&argv(line, &[&pd, s(&c), s(data), category, s(&report)]), names)
    };
    eval(&data, "nonesuch", &["nonesuch", "widget", s(&data)]);
    let nowhere = dir.path().join("no-such-dataset");
    eval(&nowhere, "widget", &[s(&nowhere)]);
}

/// `adp fixtures | head -1`: output into a closed pipe ends the command quietly (SIGPIPE), never
/// with a panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(build_dir().join("adp"))
        .args(["fixtures", "--out", s(dir.path())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.signal(), Some(libc_sigpipe()), "{:?}: {err}", out.status);
}

/// SIGPIPE's number on Linux and the BSDs.
#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

/// `--dtype` reaches the plugin: `adp fit` in f16 fits on the CPU, bf16 is candle's documented
/// refusal there, and a dtype that does not exist is named.
#[test]
fn dtype_reaches_the_plugin_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (clip, support, dirp) = (clip(), support(dir.path()), plugin_dir());
    let out = dir.path().join("f16.adp");
    let mut args = fit_args(s(&clip), s(&support), s(&out), &dirp);
    args.extend(["--dtype".into(), "f16".into()]);
    let ok = run(&args);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.is_file());
    let refused = dir.path().join("bf16.adp");
    let mut args = fit_args(s(&clip), s(&support), s(&refused), &dirp);
    args.extend(["--dtype".into(), "bf16".into()]);
    fails(&args, &["bf16 needs cuda on backend candle"]);
    assert!(!refused.exists());
    let mut args = fit_args(s(&clip), s(&support), s(&refused), &dirp);
    args.extend(["--dtype".into(), "half".into()]);
    fails(&args, &["\"half\"", "f16"]);
}
