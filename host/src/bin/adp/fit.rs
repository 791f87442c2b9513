//! `adp fit`: a detector from a support set of normal photos.
use crate::common::{parsed, DecisionArgs, Models, Run, Training, VisualArgs};
use crate::progress::{Output, StageBars};
use adp_host::detect::{fit::fit_files, ConceptFiles, FitOptions, LearningCheckpoints, Method};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    models: Models,
    /// A folder of images, or image files.
    #[arg(long, num_args = 1.., required = true)]
    support: Vec<PathBuf>,
    /// The class word of `winclip` and `adp-label` (e.g. "metal plate"); `adp-label` needs it
    /// [default for `winclip`: "object"]
    #[arg(long)]
    label: Option<String>,
    /// adp, adp-label, winclip, ti, cn, ca or visual [default: adp with --clip, else visual]
    #[arg(long, value_parser = parsed::<Method>)]
    method: Option<Method>,
    #[command(flatten)]
    training: Training,
    #[arg(long, default_value_t = 5e-4)]
    learning_rate: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    decision: DecisionArgs,
    #[command(flatten)]
    visual: VisualArgs,
    /// Save each concept's learning state here (`<concept>.json`, written atomically), so that a
    /// killed fit can continue with --resume: concept learning is hours of GPU time.
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Save the learning state every N optimisation steps.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: u64,
    /// Continue from the checkpoints in --checkpoint-dir: the concepts come out as an
    /// uninterrupted fit's (same machine, backend and options); a checkpoint of other options or
    /// photos is refused.
    #[arg(long, requires = "checkpoint_dir")]
    resume: bool,
    /// Reuse the learned concepts of this concept file (written by --save-concepts, on any
    /// backend or machine) instead of learning them: steps 1–2 are skipped, self-tuning,
    /// prototypes, memories and the decision follow. The file must hold the method's concepts
    /// (`c_n`, `c_a`; `c_ti` for ti), learned on these very checkpoints (SHA-256): others are
    /// refused. `--sd` is then needed only by adp and adp-label (their pseudo-validation set).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["checkpoint_dir", "save_concepts"])]
    concepts: Option<PathBuf>,
    /// Save the learned concepts to this concept file (safetensors, `adp-concept/2`, written
    /// atomically as soon as they are learned), with their provenance: checkpoint SHA-256s,
    /// hyperparameters (the learning rate and its scaling among them), seed, backend, steps, loss
    /// curve.
    #[arg(long, value_name = "FILE")]
    save_concepts: Option<PathBuf>,
    #[command(flatten)]
    run: Run,
    #[arg(short = 'o', long)]
    output: PathBuf,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let method = a.method.unwrap_or(a.models.default_method());
    if method.needs_diffusion() {
        crate::elementwise::share_for_one_caller();
    }
    let backend = a.models.backend()?;
    if method.needs_clip() && a.models.clip.is_none() {
        anyhow::bail!("--method {method} needs --clip DIR");
    }
    if let Some(dir) = &a.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|e| adp_api::Error::io(dir, e))?;
    }
    let files = adp_host::images::list(&a.support)?;
    let t = a.training;
    let options = FitOptions {
        method,
        label: a.label,
        device: a.run.device,
        steps: t.steps,
        learning_rate: a.learning_rate,
        batch_size: t.batch_size,
        ddim_steps: t.ddim_steps,
        validation_pseudo: t.validation_pseudo,
        seed: a.seed,
        false_alarm_rate: a.decision.false_alarm_rate,
        support_views: a.visual.support_views,
        learning_checkpoints: a.checkpoint_dir.map(|dir| LearningCheckpoints {
            dir,
            every: a.checkpoint_every,
            resume: a.resume,
        }),
        concept_files: ConceptFiles {
            reuse: a.concepts,
            save: a.save_concepts.clone(),
        },
        ..Default::default()
    };
    let (checkpoints, sd) = (a.models.checkpoints(&[method])?, a.models.sd()?);
    let mut bars = StageBars::new(Output::detect(a.run.quiet));
    let detector = fit_files(&backend, &checkpoints, sd.as_ref(), &files, options, &mut |s| {
        bars.observe(s)
    })?;
    bars.finish();
    detector.save(&a.output)?;
    let mut line =
        serde_json::json!({ "detector": a.output, "method": detector.header.method, "support": files.len() });
    if method.needs_clip() {
        line["weights"] = serde_json::json!(detector.header.weights);
    }
    if let Some(path) = &a.save_concepts {
        line["concepts"] = serde_json::json!(path);
    }
    if let Some(d) = &detector.header.decision {
        line["threshold"] = serde_json::json!(d.threshold);
        line["false_alarm_rate"] = serde_json::json!(d.false_alarm_rate);
    }
    println!("{line}");
    Ok(())
}
