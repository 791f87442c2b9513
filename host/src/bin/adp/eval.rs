//! `adp eval`: the evaluation protocol over a dataset, with report.json, report.md and overlays;
//! resumable (`--resume`) and shardable (`--shard I/N`).
use crate::common::{parsed, DecisionArgs, Models, Run, Training, VisualArgs};
use crate::progress::{Output, StageBars};
use adp_host::detect::{FitOptions, Method};
use adp_host::eval::{self, dataset, shard, Earlier, EvalOptions, Schedule, Shard};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    models: Models,
    /// Dataset root (MVTec-AD layout, or VisA with split_csv/1cls.csv).
    #[arg(long)]
    data: PathBuf,
    /// Categories (repeatable); all of the dataset's when absent.
    #[arg(long = "category")]
    categories: Vec<String>,
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    shots: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Repeatable [default: adp with --clip, else visual]
    #[arg(long = "method", value_parser = parsed::<Method>)]
    methods: Vec<Method>,
    /// The class word of `winclip` and `adp-label`, per category: CATEGORY=WORD (repeatable).
    /// A bare WORD only when one category is evaluated. [default: the category's folder name
    /// with `_` read as a space, e.g. metal_plate → "metal plate"]
    #[arg(long = "label", value_name = "CATEGORY=WORD")]
    labels: Vec<String>,
    #[command(flatten)]
    training: Training,
    #[command(flatten)]
    decision: DecisionArgs,
    #[command(flatten)]
    visual: VisualArgs,
    /// Only the first N good and N defective test images per category (smoke runs).
    #[arg(long)]
    limit: Option<usize>,
    /// Overlays written per category for good and for defective images.
    #[arg(long, default_value_t = 3)]
    overlays: usize,
    #[command(flatten)]
    run: Run,
    /// Output folder: report.json, report.md, runs.jsonl (each run as it finishes), eval.json
    /// (the setup), overlays/. With --shard, the shard's own folder `shard-I-of-N` under it.
    #[arg(long)]
    out: PathBuf,
    /// Do only the I-th of N equal shares of the runs (0-based; runs in the order category,
    /// method, shots, seed; contiguous shares). `auto/N` reads I from $JOB_COMPLETION_INDEX, as a
    /// Kubernetes Indexed Job sets it. Join the shards with `adp report merge`.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
    /// Continue the evaluation in --out: skip its finished runs (runs.jsonl); refused if it was
    /// started with other options, data or weights (eval.json). Starts afresh if there is none.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Discard the finished runs in --out and start again (without --resume or this, an --out
    /// holding finished runs is refused).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let shard = a
        .shard
        .as_deref()
        .map(|s| Shard::parse(s, std::env::var(shard::INDEX_VAR).ok().as_deref()))
        .transpose()?;
    let backend = a.models.backend()?;
    let methods = if a.methods.is_empty() {
        vec![a.models.default_method()]
    } else {
        a.methods
    };
    let (checkpoints, sd) = (a.models.checkpoints(&methods)?, a.models.sd()?);
    let categories = if a.categories.is_empty() {
        dataset::categories(&a.data)?
    } else {
        a.categories
    };
    let t = a.training;
    let fit = FitOptions {
        device: a.run.device,
        steps: t.steps,
        batch_size: t.batch_size,
        ddim_steps: t.ddim_steps,
        validation_pseudo: t.validation_pseudo,
        false_alarm_rate: a.decision.false_alarm_rate,
        support_views: a.visual.support_views,
        ..Default::default()
    };
    let out = match shard {
        Some(s) => a.out.join(s.folder_name()),
        None => a.out,
    };
    let schedule = Schedule {
        shard,
        earlier: match (a.resume, a.overwrite) {
            (true, _) => Earlier::Resume,
            (_, true) => Earlier::Overwrite,
            _ => Earlier::Refuse,
        },
    };
    let options = EvalOptions {
        data: a.data,
        categories,
        shots: a.shots,
        seeds: a.seeds,
        methods,
        fit,
        labels: a.labels,
        limit: a.limit,
        overlays: a.overlays,
        out,
    };
    let runs = options.categories.len() * options.methods.len() * options.shots.len() * options.seeds.len();
    let runs = shard.map_or(runs, |s| s.range(runs).len());
    let mut bars = StageBars::with_runs(Output::detect(a.run.quiet), runs);
    let report = eval::run_scheduled(
        &backend,
        &checkpoints,
        sd.as_ref(),
        &options,
        &schedule,
        &mut |tag, s| bars.observe_run(tag, s),
    )?;
    bars.finish();
    for r in &report.runs {
        println!("{}", serde_json::to_string(r)?);
    }
    if !a.run.quiet {
        eprintln!("{}", eval::markdown(&report, &options));
        eprintln!("report: {}", options.out.join("report.md").display());
    }
    Ok(())
}
