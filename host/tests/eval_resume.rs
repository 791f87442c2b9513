//! SPEC §8 on the in-process test fixture: an evaluation cancelled midway keeps its finished runs
//! (runs.jsonl, and a valid partial report), and resuming it gives the report of an
//! uninterrupted one while fitting only the runs left; shards merged give the unsharded report.
mod common;

use adp_api::requests::Flow;
use adp_api::{DiffusionSpec, Error};
use adp_host::detect::{Checkpoints, FitOptions, Method};
use adp_host::eval::journal::{read_lines, RUNS_FILE};
use adp_host::eval::merge::merge;
use adp_host::eval::{self, Earlier, EvalOptions, Report, Run, Schedule, Shard};
use common::{specs, Recording};
use std::path::{Path, PathBuf};

/// The runs' numbers come out of the same arithmetic on the same inputs in every case here; the
/// tolerance only guards against a future change that reorders a sum.
const TOLERANCE: f64 = 1e-9;

fn png(path: &Path, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(8, 8, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

/// Two categories in the MVTec layout: three good training photos, two good and two cracked test
/// photos, the cracks with masks.
fn dataset(root: &Path) {
    for (c, cat) in ["metal_plate", "tile"].iter().enumerate() {
        let dir = root.join(cat);
        for i in 0..3u8 {
            png(&dir.join(format!("train/good/{i:03}.png")), |x, y| {
                [100 + 10 * i + c as u8, (x * 16) as u8, (y * 16) as u8]
            });
        }
        for i in 0..2u8 {
            png(&dir.join(format!("test/good/{i:03}.png")), |x, y| {
                [105 + 10 * i, (x * 16) as u8, (y * 16) as u8]
            });
            let spot = move |x: u32, y: u32| (2 + i as u32..5).contains(&x) && (3..6).contains(&y);
            png(&dir.join(format!("test/crack/{i:03}.png")), |x, y| match spot(x, y) {
                true => [250, 10, 10],
                false => [110, (x * 16) as u8, (y * 16) as u8],
            });
            let mask = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([if spot(x, y) { 255 } else { 0 }]));
            let m = dir.join(format!("ground_truth/crack/{i:03}_mask.png"));
            std::fs::create_dir_all(m.parent().unwrap()).unwrap();
            mask.save(m).unwrap();
        }
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    checkpoints: Checkpoints,
    sd: DiffusionSpec,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (clip, sd) = specs(dir.path());
    let root = dir.path().to_path_buf();
    dataset(&root.join("data"));
    Fixture {
        _dir: dir,
        root,
        checkpoints: Checkpoints::clip(&clip),
        sd,
    }
}

impl Fixture {
    /// 2 categories × adp × K ∈ {1, 2} × seeds {0, 1}: 8 runs, each learning two concepts.
    fn options(&self, out: &str) -> EvalOptions {
        EvalOptions {
            data: self.root.join("data"),
            categories: vec!["metal_plate".into(), "tile".into()],
            shots: vec![1, 2],
            seeds: vec![0, 1],
            methods: vec![Method::Adp],
            fit: FitOptions {
                steps: 2,
                batch_size: 1,
                ddim_steps: 2,
                pseudo_per_image: 1,
                validation_pseudo: 2,
                window_sizes: vec![2], // the fixture's grid is 2×2
                ..FitOptions::default()
            },
            labels: Vec::new(),
            limit: None,
            overlays: 0,
            out: self.root.join(out),
        }
    }

    /// Runs `o` on a fresh recording backend: the report (or error) and the concepts learned.
    fn eval(
        &self,
        o: &EvalOptions,
        schedule: Schedule,
        observer: &mut dyn FnMut(&str) -> Flow,
    ) -> (adp_api::Result<Report>, usize) {
        let backend = Recording::default();
        let r = eval::run_scheduled(
            &backend,
            &self.checkpoints,
            Some(&self.sd),
            o,
            &schedule,
            &mut |tag, _| observer(tag),
        );
        (r, backend.log(|l| l.learned.len()))
    }
}

fn resume() -> Schedule {
    Schedule {
        shard: None,
        earlier: Earlier::Resume,
    }
}

fn assert_same_runs(got: &[Run], want: &[Run]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.key(), w.key());
        assert_eq!(g.test_images, w.test_images);
        let close = |a: f64, b: f64| (a - b).abs() <= TOLERANCE;
        let close_opt = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => close(a, b),
            (a, b) => a.is_none() && b.is_none(),
        };
        assert!(
            close(g.image_auroc, w.image_auroc)
                && close(g.image_f1_max, w.image_f1_max)
                && close_opt(g.pixel_auroc, w.pixel_auroc)
                && close_opt(g.aupro, w.aupro),
            "{g:?} ≠ {w:?}"
        );
    }
}

fn report_json(dir: &Path) -> Report {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

#[test]
fn a_cancelled_eval_resumes_to_the_uninterrupted_report() {
    let f = fixture();
    let whole = f.options("whole");
    let (want, learned) = f.eval(&whole, Schedule::default(), &mut |_| Flow::Continue);
    let want = want.unwrap();
    assert_eq!((want.runs.len(), learned), (8, 16));
    assert!(want.runs.iter().all(|r| r.pixel_auroc.is_some() && r.aupro.is_some()));

    // Cancelled while fitting the 4th run: 3 runs are kept, in the journal and the report.
    let o = f.options("cut");
    let mut tags = Vec::<String>::new();
    let (r, _) = f.eval(&o, Schedule::default(), &mut |tag| {
        if tags.last().is_none_or(|t| t != tag) {
            tags.push(tag.to_string());
        }
        if tags.len() == 4 {
            Flow::Cancel
        } else {
            Flow::Continue
        }
    });
    assert!(matches!(r, Err(Error::Cancelled { .. })), "{r:?}");
    assert_eq!(tags[3], "metal_plate adp K=2 seed=1");
    let (kept, _) = read_lines::<Run>(&o.out.join(RUNS_FILE)).unwrap();
    assert_same_runs(&kept, &want.runs[..3]);
    assert_same_runs(&report_json(&o.out).runs, &want.runs[..3]);
    // A kill in the middle of writing the next line leaves it cut short.
    let mut journal = std::fs::OpenOptions::new()
        .append(true)
        .open(o.out.join(RUNS_FILE))
        .unwrap();
    std::io::Write::write_all(&mut journal, br#"{"category":"metal_plate","method":"ad"#).unwrap();

    // Without --resume the finished runs are not thrown away; with other options, not resumed.
    let (r, learned) = f.eval(&o, Schedule::default(), &mut |_| Flow::Continue);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("3 finished runs") && e.contains("--resume"), "{e}");
    let mut other = f.options("cut");
    other.fit.steps = 3;
    let (r, _) = f.eval(&other, resume(), &mut |_| Flow::Continue);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("eval.json") && e.contains("fit.steps: 2 ≠ 3"), "{e}");
    assert_eq!(learned, 0);

    // Resumed: only the 5 runs left are fitted, and the report is the uninterrupted one.
    let (got, learned) = f.eval(&o, resume(), &mut |_| Flow::Continue);
    assert_eq!(learned, 2 * 5, "only the runs left are fitted");
    assert_same_runs(&got.unwrap().runs, &want.runs);
    assert_same_runs(&report_json(&o.out).runs, &want.runs);
    assert_same_runs(&read_lines::<Run>(&o.out.join(RUNS_FILE)).unwrap().0, &want.runs);
    let md = |o: &EvalOptions| std::fs::read_to_string(o.out.join("report.md")).unwrap();
    assert_eq!(md(&o), md(&whole));

    // Resuming a finished evaluation fits nothing and keeps its report.
    let (again, learned) = f.eval(&o, resume(), &mut |_| Flow::Continue);
    assert_eq!(learned, 0);
    assert_same_runs(&again.unwrap().runs, &want.runs);
    // --overwrite starts again.
    let overwrite = Schedule {
        shard: None,
        earlier: Earlier::Overwrite,
    };
    let (_, learned) = f.eval(&o, overwrite, &mut |_| Flow::Continue);
    assert_eq!(learned, 16);
}

#[test]
fn shards_merge_into_the_unsharded_report() {
    let f = fixture();
    let whole = f.options("whole");
    let want = f.eval(&whole, Schedule::default(), &mut |_| Flow::Continue).0.unwrap();
    let mut dirs = Vec::new();
    for index in 0..3 {
        let o = f.options(&format!("shard-{index}"));
        let schedule = Schedule {
            shard: Some(Shard { index, count: 3 }),
            earlier: Earlier::Refuse,
        };
        let (r, learned) = f.eval(&o, schedule, &mut |_| Flow::Continue);
        // 8 runs in shares of 2, 3, 3.
        assert_eq!(
            (r.unwrap().runs.len(), learned),
            ([2, 3, 3][index], 2 * [2, 3, 3][index])
        );
        dirs.push(o.out);
    }
    let out = f.root.join("merged");
    let merged = merge(&out, &dirs).unwrap();
    assert_same_runs(&merged.runs, &want.runs);
    assert_same_runs(&report_json(&out).runs, &want.runs);
    assert_eq!(merged.provenance, want.provenance);
    let read = |d: &Path| std::fs::read_to_string(d.join("report.md")).unwrap();
    assert_eq!(read(&out), read(&whole.out));
    assert_eq!(
        adp_host::eval::journal::Setup::read(&out).unwrap(),
        adp_host::eval::journal::Setup::read(&whole.out).unwrap(),
        "the merged eval.json is the unsharded one's"
    );

    // A shard missing, a shard given twice, a shard of another setup: refused, naming them.
    let e = merge(&f.root.join("m1"), &dirs[..2]).unwrap_err().to_string();
    assert!(
        e.contains("3 of the 8 runs") && e.contains("tile adp K=1 seed=1 (shard 2/3)"),
        "{e}"
    );
    let e = merge(
        &f.root.join("m2"),
        &[dirs[0].clone(), dirs[1].clone(), dirs[1].clone(), dirs[2].clone()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("in both") && e.contains("shard-1"), "{e}");
    let mut other = f.options("other");
    other.limit = Some(1);
    let schedule = Schedule {
        shard: Some(Shard { index: 2, count: 3 }),
        earlier: Earlier::Refuse,
    };
    f.eval(&other, schedule, &mut |_| Flow::Continue).0.unwrap();
    let e = merge(
        &f.root.join("m3"),
        &[dirs[0].clone(), dirs[1].clone(), other.out.clone()],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("other/eval.json") && e.contains("limit: null ≠ 1"), "{e}");
    let e = merge(&dirs[0], &dirs).unwrap_err().to_string();
    assert!(e.contains("is also one of the shard folders"), "{e}");
}
