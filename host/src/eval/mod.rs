//! The evaluation protocol of SPEC §8: per category, K ∈ shots and each seed, draw K normal
//! images, fit, score every test image; image AUROC and F1-max (and pixel AUROC and AUPRO where
//! masks exist), and the stored threshold's false-alarm and miss rates, mean ± std over seeds; a
//! JSON report, markdown tables in the paper's shape (rows = categories, columns = methods × shots)
//! and heat-map overlays for a few good and defective images.
pub mod bench;
pub mod dataset;
pub mod journal;
pub mod merge;
pub mod metrics;
pub mod provenance;
pub mod shard;

use crate::detect::fit::{fit_files, fit_visual};
use crate::detect::{Checkpoints, Decision, FitOptions, ImageScore, Method, Scoring, Stage, VisualModel};
use crate::images::read_resized;
use adp_api::atomic::write_atomic;
use adp_api::requests::Flow;
use adp_api::{Backend, DiffusionSpec, Error, ImageBatch, Result, Tensor};
use dataset::Sample;
pub use journal::Earlier;
use journal::{Journal, Setup};
use metrics::{decision_rates, f1_max, image_auroc, Aupro, PixelAuroc};
pub use provenance::Provenance;
use serde::{Deserialize, Serialize};
pub use shard::{RunKey, Shard};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub data: PathBuf,
    pub categories: Vec<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    pub methods: Vec<Method>,
    /// `fit` for every run, its `label` replaced by the category's class word (SPEC §6/§7).
    pub fit: FitOptions,
    /// Class-word overrides, `CATEGORY=WORD` (or one bare `WORD` when a single category is
    /// evaluated); other categories get their folder name with `_` read as a space
    /// ([`dataset::class_words`]).
    pub labels: Vec<String>,
    /// Score only the first N good and N defective test images per category (smoke runs).
    pub limit: Option<usize>,
    pub overlays: usize,
    pub out: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub category: String,
    pub method: String,
    pub shots: usize,
    pub seed: u64,
    pub image_auroc: f64,
    pub pixel_auroc: Option<f64>,
    pub test_images: usize,
    /// Image-level F1-max ([`metrics::f1_max`]). Reports written before it existed read as 0.
    #[serde(default)]
    pub image_f1_max: f64,
    /// AUPRO up to FPR 0.3 ([`metrics::Aupro`]), where masks exist.
    #[serde(default)]
    pub aupro: Option<f64>,
    /// The threshold the fit stored ([`crate::detect::decision`]); none in older reports.
    #[serde(default)]
    pub threshold: Option<f32>,
    /// Good test photos it flags / good test photos ([`metrics::decision_rates`]).
    #[serde(default)]
    pub false_alarm_rate: Option<f64>,
    /// Defective test photos it does not flag / defective test photos.
    #[serde(default)]
    pub miss_rate: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(default)]
    pub provenance: Provenance,
    pub runs: Vec<Run>,
}

/// Histogram bins of the pixel AUROC (see [`PixelAuroc`] for the error bound they give).
const PIXEL_BINS: usize = 1 << 16;

fn test_subset(tests: &[Sample], limit: Option<usize>) -> Vec<Sample> {
    let Some(n) = limit else { return tests.to_vec() };
    let good = tests.iter().filter(|s| !s.anomalous).take(n);
    let bad = tests.iter().filter(|s| s.anomalous).take(n);
    good.chain(bad).cloned().collect()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (m, var.sqrt())
}

/// Runs the protocol; `observer` sees every pipeline stage and may cancel. The ADP methods need
/// `checkpoints.clip` (and `sd` where they synthesise); `visual` needs `checkpoints.backbone`.
/// An out folder holding finished runs is refused ([`run_scheduled`] resumes or overwrites).
pub fn run(
    backend: &dyn Backend,
    checkpoints: &Checkpoints,
    sd: Option<&DiffusionSpec>,
    o: &EvalOptions,
    observer: &mut dyn FnMut(&str, &Stage) -> Flow,
) -> Result<Report> {
    run_scheduled(backend, checkpoints, sd, o, &Schedule::default(), observer)
}

/// Which runs an evaluation does (SPEC §8): one shard's, and what becomes of finished ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct Schedule {
    pub shard: Option<Shard>,
    pub earlier: Earlier,
}

/// [`run`] for `schedule`. Each finished run is appended to `runs.jsonl` at once, and
/// report.json and report.md are rewritten after it, so a killed evaluation leaves a valid
/// partial report and loses at most the run in progress. The report holds the finished runs of
/// the shard, in the plan's order ([`shard::plan`]).
pub fn run_scheduled(
    backend: &dyn Backend,
    checkpoints: &Checkpoints,
    sd: Option<&DiffusionSpec>,
    o: &EvalOptions,
    schedule: &Schedule,
    observer: &mut dyn FnMut(&str, &Stage) -> Flow,
) -> Result<Report> {
    let words = dataset::class_words(&o.labels, &o.categories)?;
    let method_names: Vec<String> = o.methods.iter().map(|m| m.name().to_string()).collect();
    let plan = shard::plan(&o.categories, &method_names, &o.shots, &o.seeds)?;
    std::fs::create_dir_all(&o.out).map_err(|e| Error::io(&o.out, e))?;
    let provenance = Provenance::new(backend, checkpoints, sd, o.fit.device, &o.data)?;
    let setup = Setup {
        provenance: provenance.clone(),
        categories: o.categories.clone(),
        methods: method_names,
        shots: o.shots.clone(),
        seeds: o.seeds.clone(),
        class_words: words.clone(),
        fit: o.fit.clone(),
        limit: o.limit,
        shard: schedule.shard,
    };
    let (mut journal, earlier) = Journal::open::<Run>(&o.out, &setup, schedule.earlier)?;
    let mine = schedule.shard.map_or(0..plan.len(), |s| s.range(plan.len()));
    // Finished runs by their place in the plan; the report lists them in that order.
    let mut finished = std::collections::BTreeMap::new();
    for r in earlier {
        if let Some(i) = plan[mine.clone()].iter().position(|k| *k == r.key()) {
            finished.insert(mine.start + i, r);
        }
    }
    let mut report = Report {
        provenance,
        runs: finished.values().cloned().collect(),
    };
    write_report(&report, o)?;
    // The plan is ordered by category, then method: each category's photos are read once, and
    // each method opened once per category.
    let mut set: Option<TestSet> = None;
    let mut fitted: Option<(Method, Fitted)> = None;
    let pending: Vec<usize> = mine.filter(|i| !finished.contains_key(i)).collect();
    for i in pending {
        let key = &plan[i];
        let set = match &mut set {
            Some(s) if s.category == key.category => s,
            _ => {
                fitted = None;
                set.insert(TestSet::load(o, &key.category)?)
            }
        };
        let method: Method = key.method.parse()?;
        let fitted = match &mut fitted {
            Some((m, f)) if *m == method => f,
            _ => {
                let f = Fitted::open(backend, checkpoints, sd, method, &set.images, o.fit.device)?;
                &mut fitted.insert((method, f)).1
            }
        };
        let run = evaluate(fitted, set, key, method, &words[&key.category], o, observer)?;
        journal.append(&run)?;
        finished.insert(i, run);
        report.runs = finished.values().cloned().collect();
        write_report(&report, o)?;
    }
    Ok(report)
}

/// One category's test photos, read once for all its runs.
struct TestSet {
    category: String,
    train_good: Vec<PathBuf>,
    tests: Vec<Sample>,
    images: Vec<ImageBatch>,
    labels: Vec<bool>,
}

impl TestSet {
    fn load(o: &EvalOptions, category: &str) -> Result<Self> {
        let cat = dataset::load(&o.data, category)?;
        let tests = test_subset(&cat.test, o.limit);
        if tests.iter().all(|s| s.anomalous) || tests.iter().all(|s| !s.anomalous) {
            return Err(Error::invalid(
                "test split",
                format!("{category}: needs both good and defective images"),
            ));
        }
        let images = tests
            .iter()
            .map(|s| ImageBatch::read_files(std::slice::from_ref(&s.path)))
            .collect::<Result<Vec<_>>>()?;
        let labels: Vec<bool> = tests.iter().map(|s| s.anomalous).collect();
        Ok(Self {
            category: category.to_string(),
            train_good: cat.train_good,
            tests,
            images,
            labels,
        })
    }
}

/// One run: draw the shots, fit, score the test set, measure.
fn evaluate(
    fitted: &mut Fitted<'_>,
    set: &TestSet,
    key: &RunKey,
    method: Method,
    word: &str,
    o: &EvalOptions,
    observer: &mut dyn FnMut(&str, &Stage) -> Flow,
) -> Result<Run> {
    let (category, tests, labels) = (&set.category, &set.tests, &set.labels);
    let (k, seed) = (key.shots, key.seed);
    let shots = dataset::draw_shots(&set.train_good, k, seed)?;
    let fit = FitOptions {
        method,
        seed,
        label: Some(word.to_string()),
        ..o.fit.clone()
    };
    let tag = key.to_string();
    let (scores, decision) = fitted.fit_and_score(&shots, fit, &set.images, &mut |s| observer(&tag, s))?;
    let image_scores: Vec<f32> = scores.iter().map(|s| s.score).collect();
    let image = image_auroc(&image_scores, labels)?;
    let image_f1_max = f1_max(&image_scores, labels)?.f1;
    let rates = decision
        .as_ref()
        .map(|d| decision_rates(&image_scores, labels, d.threshold))
        .transpose()?;
    let (pixel, aupro) = if tests.iter().filter(|s| s.anomalous).all(|s| s.mask.is_some()) {
        // The histogram spans this run's values: all its bins resolve scores.
        let (lo, hi) = map_range(&scores);
        let mut acc = PixelAuroc::new(lo, if hi > lo { hi } else { lo + 1.0 }, PIXEL_BINS)?;
        let mut pro = Aupro::new();
        for (s, sc) in tests.iter().zip(&scores) {
            let mask = match &s.mask {
                Some(m) => dataset::read_mask(m, sc.width as u32, sc.height as u32)?,
                None => vec![false; sc.map.len()],
            };
            acc.add(&sc.map, &mask)?;
            pro.add(&sc.map, &mask, sc.width, sc.height)?;
        }
        (Some(acc.finish()?), Some(pro.finish()?))
    } else {
        (None, None)
    };
    if seed == o.seeds[0] && k == o.shots[0] {
        write_overlays(
            &o.out.join("overlays").join(category).join(method.name()),
            (tests, &set.images),
            &scores,
            o.overlays,
            decision.as_ref(),
        )?;
    }
    Ok(Run {
        category: category.clone(),
        method: method.name().into(),
        shots: k,
        seed,
        image_auroc: image,
        pixel_auroc: pixel,
        test_images: tests.len(),
        image_f1_max,
        aupro,
        threshold: decision.as_ref().map(|d| d.threshold),
        false_alarm_rate: rates.map(|r| r.false_alarm_rate),
        miss_rate: rates.map(|r| r.miss_rate),
    })
}

/// report.json and report.md, each written whole.
fn write_report(report: &Report, o: &EvalOptions) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::io(o.out.join("report.json"), e))?;
    write_atomic(&o.out.join("report.json"), json.as_bytes())?;
    write_atomic(&o.out.join("report.md"), markdown(report, o).as_bytes())
}

impl Run {
    /// What identifies this run in a journal, a shard and a merge.
    pub fn key(&self) -> RunKey {
        RunKey {
            category: self.category.clone(),
            method: self.method.clone(),
            shots: self.shots,
            seed: self.seed,
        }
    }
}

/// One method's models for a category: `visual` extracts the test set's features once and
/// reuses them for every K and seed; the ADP methods refit and rescore through the pipeline.
enum Fitted<'a> {
    Visual {
        model: VisualModel,
        features: Tensor,
        sizes: Vec<(usize, usize)>,
    },
    Clip {
        backend: &'a dyn Backend,
        checkpoints: &'a Checkpoints,
        sd: Option<&'a DiffusionSpec>,
    },
}

impl<'a> Fitted<'a> {
    fn open(
        backend: &'a dyn Backend,
        checkpoints: &'a Checkpoints,
        sd: Option<&'a DiffusionSpec>,
        method: Method,
        tests: &[ImageBatch],
        device: adp_api::Device,
    ) -> Result<Self> {
        if method.needs_clip() {
            return Ok(Fitted::Clip {
                backend,
                checkpoints,
                sd,
            });
        }
        let backbone = checkpoints
            .backbone
            .as_ref()
            .ok_or_else(|| Error::invalid("method", "visual needs an image backbone (--backbone)"))?;
        let model = VisualModel::open(backend, backbone, device)?;
        let mut data = Vec::new();
        for t in tests {
            data.extend_from_slice(model.features(t)?.data());
        }
        let d = model.extractor.dims();
        let features = Tensor::new(vec![tests.len(), d.grid * d.grid, d.dim], data)?;
        let sizes = tests.iter().map(|t| (t.height(), t.width())).collect();
        Ok(Fitted::Visual { model, features, sizes })
    }

    fn fit_and_score(
        &mut self,
        shots: &[PathBuf],
        fit: FitOptions,
        tests: &[ImageBatch],
        observer: &mut dyn FnMut(&Stage) -> Flow,
    ) -> Result<(Vec<ImageScore>, Option<Decision>)> {
        match self {
            Fitted::Visual { model, features, sizes } => {
                let support = read_resized(shots, model.extractor.dims().image_size)?;
                let detector = fit_visual(model, &support, &fit, observer)?;
                let scores = model.score_features(VisualModel::memory(&detector)?, features, sizes)?;
                Ok((scores, detector.header.decision))
            }
            Fitted::Clip {
                backend,
                checkpoints,
                sd,
            } => {
                let device = fit.device;
                let detector = fit_files(*backend, checkpoints, *sd, shots, fit, observer)?;
                let decision = detector.header.decision.clone();
                Ok((
                    Scoring::open(*backend, checkpoints, detector, device)?.score(tests)?,
                    decision,
                ))
            }
        }
    }
}

/// Rows = categories, columns = methods × shots, cells = mean ± std over seeds (image AUROC %);
/// further tables for pixel AUROC where masks exist, image F1-max, AUPRO where masks exist, and
/// the stored threshold's false-alarm and miss rates; the class average last.
pub fn markdown(report: &Report, o: &EvalOptions) -> String {
    let cols: Vec<(String, usize)> = o
        .methods
        .iter()
        .flat_map(|m| o.shots.iter().map(move |&k| (m.name().to_string(), k)))
        .collect();
    let mut out = String::new();
    // (title, value, only where some run has it)
    type Table = (&'static str, fn(&Run) -> Option<f64>, bool);
    let tables: [Table; 6] = [
        ("Image AUROC (%)", |r| Some(r.image_auroc), false),
        ("Pixel AUROC (%)", |r| r.pixel_auroc, true),
        ("Image F1-max (%)", |r| Some(r.image_f1_max), false),
        ("AUPRO up to FPR 0.3 (%)", |r| r.aupro, true),
        ("Stored threshold: false-alarm rate (%)", |r| r.false_alarm_rate, true),
        ("Stored threshold: miss rate (%)", |r| r.miss_rate, true),
    ];
    for (title, value, optional) in tables {
        if optional && report.runs.iter().all(|r| value(r).is_none()) {
            continue;
        }
        out += &format!("### {title}, mean ± std over seeds {:?}\n\n| category |", o.seeds);
        for (m, k) in &cols {
            out += &format!(" {m} K={k} |");
        }
        out += "\n|---|";
        out += &"---|".repeat(cols.len());
        out += "\n";
        let mut per_col: Vec<Vec<f64>> = vec![Vec::new(); cols.len()];
        for cat in &o.categories {
            out += &format!("| {cat} |");
            for (i, (m, k)) in cols.iter().enumerate() {
                let v: Vec<f64> = report
                    .runs
                    .iter()
                    .filter(|r| &r.category == cat && &r.method == m && r.shots == *k)
                    .filter_map(value)
                    .map(|x| 100.0 * x)
                    .collect();
                if v.is_empty() {
                    out += " – |";
                } else {
                    let (mean, std) = mean_std(&v);
                    per_col[i].push(mean);
                    out += &format!(" {mean:.1} ± {std:.1} |");
                }
            }
            out += "\n";
        }
        out += "| **mean** |";
        for v in &per_col {
            out += &if v.is_empty() {
                " – |".to_string()
            } else {
                format!(" {:.1} |", mean_std(v).0)
            };
        }
        out += "\n\n";
    }
    out
}

/// The lowest and highest value of a run's anomaly maps.
fn map_range(scores: &[ImageScore]) -> (f32, f32) {
    scores
        .iter()
        .flat_map(|s| s.map.iter().copied())
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Heat-map overlays ([`crate::overlay`]) for the first `n` good and `n` defective test images,
/// on the scale the run's decision fixes (its map threshold), so that a colour means the same on
/// every photo of every run; without a decision, the run's highest map value is the top.
fn write_overlays(
    dir: &Path,
    (tests, images): (&[Sample], &[ImageBatch]),
    scores: &[ImageScore],
    n: usize,
    decision: Option<&Decision>,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let threshold = decision.map_or_else(|| map_range(scores).1 / 2.0, |d| d.map_threshold);
    let picks = tests
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.anomalous)
        .take(n)
        .chain(tests.iter().enumerate().filter(|(_, s)| s.anomalous).take(n));
    for (i, s) in picks {
        let sc = &scores[i];
        let name = format!(
            "{}_{}_{:.3}.png",
            s.defect,
            s.path.file_stem().and_then(|n| n.to_str()).unwrap_or("image"),
            sc.score
        );
        let img = crate::overlay::render(&images[i], &sc.map, threshold)?;
        crate::overlay::write_png(&dir.join(name), &img, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path, name: &str, anomalous: bool) -> Sample {
        let path = dir.join(format!("{name}.png"));
        // 4×4: the smallest photo adp reads.
        image::RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]))
            .save(&path)
            .unwrap();
        Sample {
            path,
            anomalous,
            defect: if anomalous { "crack".into() } else { "good".into() },
            mask: None,
        }
    }

    fn score(map: Vec<f32>) -> ImageScore {
        let score = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        ImageScore {
            score,
            language: None,
            association: score,
            map,
            height: 4,
            width: 4,
        }
    }

    /// The run's decision fixes the scale: a value has one colour on every photo, and only the
    /// defective photo, whose map crosses the map threshold, gets a contour.
    #[test]
    fn overlays_share_the_decisions_colour_scale() {
        let dir = tempfile::tempdir().unwrap();
        let tests = [sample(dir.path(), "a", false), sample(dir.path(), "b", true)];
        let images: Vec<ImageBatch> = tests
            .iter()
            .map(|t| ImageBatch::read_files(std::slice::from_ref(&t.path)).unwrap())
            .collect();
        let scores = [
            score([0.10, 0.12, 0.11, 0.10, 0.10, 0.11, 0.12, 0.10].repeat(2)),
            score([vec![0.10; 15], vec![0.50]].concat()),
        ];
        let decision = Decision {
            threshold: 0.2,
            map_threshold: 0.2,
            rule: "test".into(),
            false_alarm_rate: 0.01,
            null_scores: vec![0.1],
            null_map_maxima: vec![0.1],
        };
        let out = dir.path().join("overlays");
        write_overlays(&out, (&tests, &images), &scores, 1, Some(&decision)).unwrap();
        let read = |name: &str| image::open(out.join(name)).unwrap().to_rgb8();
        let (good, bad) = (read("good_a_0.120.png"), read("crack_b_0.500.png"));
        let contour = |img: &image::RgbImage| img.pixels().filter(|p| p.0 == crate::overlay::CONTOUR).count();
        assert_eq!(contour(&good), 0, "the good photo stays below the threshold");
        assert!(contour(&bad) > 0, "the defective photo's crossing is drawn");
        assert_eq!(good.get_pixel(0, 0), bad.get_pixel(0, 0), "0.10 looks the same on both");
        assert!(good.pixels().all(|p| p.0[2] > p.0[0]), "below the threshold is blue");
    }
}

#[cfg(test)]
mod metric_table_tests {
    use super::*;

    fn run(seed: u64, image_f1_max: f64, aupro: Option<f64>) -> Run {
        Run {
            category: "tile".into(),
            method: Method::Adp.name().into(),
            shots: 1,
            seed,
            image_auroc: 0.9,
            pixel_auroc: aupro.map(|_| 0.95),
            test_images: 8,
            image_f1_max,
            aupro,
            threshold: Some(0.5),
            false_alarm_rate: Some(0.1 * seed as f64),
            miss_rate: Some(0.2),
        }
    }

    fn options() -> EvalOptions {
        EvalOptions {
            data: PathBuf::new(),
            categories: vec!["tile".into()],
            shots: vec![1],
            seeds: vec![0, 1],
            methods: vec![Method::Adp],
            labels: Vec::new(),
            fit: FitOptions::default(),
            limit: None,
            overlays: 0,
            out: PathBuf::new(),
        }
    }

    #[test]
    fn markdown_has_f1_and_aupro_tables() {
        let report = Report {
            provenance: Provenance::default(),
            runs: vec![run(0, 0.8, Some(0.6)), run(1, 0.9, Some(0.7))],
        };
        let md = markdown(&report, &options());
        assert!(
            md.contains("### Image F1-max (%)") && md.contains("| tile | 85.0 ± 5.0 |"),
            "{md}"
        );
        assert!(
            md.contains("### AUPRO up to FPR 0.3 (%)") && md.contains("| tile | 65.0 ± 5.0 |"),
            "{md}"
        );
        // The stored threshold's rates: false alarms 0 % and 10 %, misses 20 % on both seeds.
        let rates = md
            .split("### Stored threshold: false-alarm rate (%)")
            .nth(1)
            .unwrap_or("");
        assert!(rates.contains("| tile | 5.0 ± 5.0 |"), "{md}");
        let misses = md.split("### Stored threshold: miss rate (%)").nth(1).unwrap_or("");
        assert!(misses.contains("| tile | 20.0 ± 0.0 |"), "{md}");
        // Without masks there is no pixel AUROC and no AUPRO table; F1-max stays.
        let report = Report {
            provenance: Provenance::default(),
            runs: vec![run(0, 0.8, None)],
        };
        let md = markdown(&report, &options());
        assert!(
            md.contains("Image F1-max") && !md.contains("AUPRO") && !md.contains("Pixel AUROC"),
            "{md}"
        );
    }

    #[test]
    fn reports_without_the_new_fields_still_load() {
        let old = r#"{"runs":[{"category":"tile","method":"adp","shots":1,"seed":0,"image_auroc":0.9,"pixel_auroc":null,"test_images":8}]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert_eq!((r.runs[0].image_f1_max, r.runs[0].aupro), (0.0, None));
        assert_eq!((r.runs[0].false_alarm_rate, r.runs[0].miss_rate), (None, None));
        let json = serde_json::to_value(run(0, 0.8, Some(0.6))).unwrap();
        assert_eq!(
            (json["image_f1_max"].as_f64(), json["aupro"].as_f64()),
            (Some(0.8), Some(0.6))
        );
    }
}
