//! Host end-to-end test (not backend conformance): `adp eval` never loses finished work and
//! scales out (SPEC §8). An eval SIGKILLed after its first run and resumed with `--resume` gives
//! the report of an uninterrupted one; shards run as separate processes (one through
//! `--shard auto/N` and $JOB_COMPLETION_INDEX) and joined by `adp report merge` give it too.
use adp_conformance::goldens::fixtures;
use adp_conformance::{adp, build_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A run's numbers are read back from runs.jsonl as JSON text, which may differ from the value
/// computed by the last bit; nothing else differs between the reports compared here.
const TOLERANCE: f64 = 1e-12;
/// The runs of [`eval_args`]: 2 categories × winclip × K ∈ {1, 2} × seeds {0, 1}.
const RUNS: usize = 8;

/// Two categories in the MVTec layout, 256×256 photos with masks: the pixel metrics make each
/// run take long enough (in a debug build) for a kill to land between the first run and the last.
fn dataset(root: &Path) {
    let save = |p: PathBuf, img: image::RgbImage| {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        img.save(p).unwrap();
    };
    for (c, cat) in ["bottle", "tile"].iter().enumerate() {
        let dir = root.join(cat);
        let photo = |i: u32, crack: bool| {
            image::RgbImage::from_fn(256, 256, move |x, y| {
                let spot = crack && (60 + 10 * i..120).contains(&x) && (60..90).contains(&y);
                match spot {
                    true => image::Rgb([250, 20, 20]),
                    false => image::Rgb([(100 + 7 * i + 20 * c as u32) as u8, (x / 2) as u8, ((x + y) / 4) as u8]),
                }
            })
        };
        for i in 0..3 {
            save(dir.join(format!("train/good/{i:03}.png")), photo(i, false));
            save(dir.join(format!("test/good/{i:03}.png")), photo(i + 3, false));
            let crack = photo(i, true);
            let mask = image::GrayImage::from_fn(256, 256, |x, y| {
                image::Luma([if crack.get_pixel(x, y).0[0] == 250 { 255 } else { 0 }])
            });
            save(dir.join(format!("test/crack/{i:03}.png")), crack);
            let m = dir.join(format!("ground_truth/crack/{i:03}_mask.png"));
            std::fs::create_dir_all(m.parent().unwrap()).unwrap();
            mask.save(m).unwrap();
        }
    }
}

fn eval_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let f = fixtures();
    let mut args: Vec<String> = [
        "eval",
        "--plugin",
        "candle",
        "--plugin-dir",
        build_dir().to_str().unwrap(),
        "--clip",
        f.clip.to_str().unwrap(),
        "--method",
        "winclip",
        "--data",
        data.to_str().unwrap(),
        "--shots",
        "1,2",
        "--seeds",
        "0,1",
        "--overlays",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn adp_args(args: &[String]) -> String {
    adp(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

fn runs(dir: &Path) -> Vec<serde_json::Value> {
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    report["runs"].as_array().unwrap().clone()
}

/// Equal runs: the same keys and counts, the metrics within [`TOLERANCE`].
fn assert_same_runs(got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
        assert_eq!(g.keys().collect::<Vec<_>>(), w.keys().collect::<Vec<_>>());
        for (k, gv) in g {
            match (gv.as_f64(), w[k].as_f64()) {
                (Some(a), Some(b)) if gv.is_f64() => assert!((a - b).abs() <= TOLERANCE, "{k}: {a} ≠ {b}"),
                _ => assert_eq!(gv, &w[k], "{k}"),
            }
        }
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_killed_eval_resumes_to_the_uninterrupted_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    dataset(&data);
    let whole = dir.path().join("whole");
    adp_args(&eval_args(&data, &whole, &[]));
    assert_eq!(runs(&whole).len(), RUNS);

    let cut = dir.path().join("cut");
    let mut child = Command::new(build_dir().join("adp"))
        .args(eval_args(&data, &cut, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = cut.join("runs.jsonl");
    let start = Instant::now();
    while lines(&journal) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "adp eval ended before its first run"
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "no run finished in 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "adp eval ended before it could be killed"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = lines(&journal);
    assert!((1..RUNS).contains(&kept), "{kept} runs finished before the kill");
    // The partial report is valid: the runs written before it, or the one more being written.
    let partial = runs(&cut);
    assert!(
        partial.len() == kept || partial.len() + 1 == kept,
        "{} runs",
        partial.len()
    );
    assert_same_runs(&partial, &runs(&whole)[..partial.len()]);

    // Without --resume the finished runs are kept, and the eval refused.
    let out = Command::new(build_dir().join("adp"))
        .args(eval_args(&data, &cut, &[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--resume") && err.contains("finished runs"),
        "{err}"
    );
    assert_eq!(lines(&journal), kept);

    adp_args(&eval_args(&data, &cut, &["--resume"]));
    assert_same_runs(&runs(&cut), &runs(&whole));
    assert_eq!(lines(&journal), RUNS, "the finished runs were not done again");
    assert_eq!(read(cut.join("report.md")), read(whole.join("report.md")));
}

#[test]
fn shards_run_as_processes_merge_into_the_unsharded_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    dataset(&data);
    let whole = dir.path().join("whole");
    adp_args(&eval_args(&data, &whole, &[]));

    // Three processes at once, writing under one --out; the last finds its index as a
    // Kubernetes Indexed Job's pod would.
    let shards = dir.path().join("shards");
    let children: Vec<_> = ["0/3", "1/3", "auto/3"]
        .iter()
        .map(|s| {
            Command::new(build_dir().join("adp"))
                .args(eval_args(&data, &shards, &["--shard", s]))
                .env("JOB_COMPLETION_INDEX", "2")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let folders: Vec<PathBuf> = (0..3).map(|i| shards.join(format!("shard-{i}-of-3"))).collect();
    assert_eq!(
        folders.iter().map(|f| lines(&f.join("runs.jsonl"))).collect::<Vec<_>>(),
        [2, 3, 3]
    );

    let merged = dir.path().join("merged");
    let mut args = vec![
        "report".to_string(),
        "merge".into(),
        "--quiet".into(),
        merged.to_str().unwrap().into(),
    ];
    args.extend(folders.iter().map(|f| f.to_str().unwrap().to_string()));
    let stdout = adp_args(&args);
    assert_eq!(stdout.lines().count(), RUNS);
    assert_same_runs(&runs(&merged), &runs(&whole));
    assert_eq!(read(merged.join("report.md")), read(whole.join("report.md")));
    assert!(
        merged.join("overlays/tile/winclip").is_dir(),
        "the overlays of the shard that ran tile's first run"
    );

    // A shard missing is named.
    let out = Command::new(build_dir().join("adp"))
        .args(["report", "merge", dir.path().join("m2").to_str().unwrap()])
        .args(folders[..2].iter())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("(shard 2/3)"), "{err}");
}
