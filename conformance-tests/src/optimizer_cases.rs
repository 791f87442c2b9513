//! Cases for `ConceptOptimizer` on the fixture checkpoints: SPEC eq. 3 and eq. 4 run with every
//! loss term present, runs are deterministic under a seed, a killed run resumes from its
//! checkpoint to the same concept, progress and cancellation work, bad requests fail.
use crate::goldens::{clip_checkpoint, diffusion_spec};
use adp_api::requests::*;
use adp_api::{Backend, Concept, ConceptOptimizer, Device, Error, ImageBatch, Tensor};

fn optimizer(backend: &dyn Backend) -> Box<dyn ConceptOptimizer> {
    backend
        .concept_optimizer(&clip_checkpoint(), &diffusion_spec(false), Device::Cpu)
        .expect("open the optimizer")
}

fn images(n: usize, seed: u64, size: usize) -> ImageBatch {
    crate::cases::images(n, size, seed)
}

pub fn request(backend: &dyn Backend, steps: u64) -> LearnRequest {
    let enc = backend.text_image_encoder(&clip_checkpoint(), Device::Cpu).unwrap();
    LearnRequest {
        name: "c_n".into(),
        placeholder: "<c_n>".into(),
        // 40×40 support photos: the loop must resize them for the 32-pixel diffusion fixture.
        support: images(2, 11, 40),
        pseudo_anomalies: None,
        init: enc.token_embedding("object").unwrap(),
        objective: Objective::NormalAware { alpha: 0.003 },
        templates: vec!["a photo of a {}".into(), "a rendering of a {}".into()],
        learning_rate: 5e-3,
        scale_lr_by_batch: false,
        weight_decay: 0.0,
        steps,
        batch_size: 2,
        seed: 3,
        checkpoint: None,
    }
}

pub fn learns_deterministically_with_progress(backend: &dyn Backend) {
    let opt = optimizer(backend);
    let r = request(backend, 4);
    let mut seen = Vec::new();
    let a = opt
        .learn(&r, &mut |p| {
            seen.push(p.step);
            Flow::Continue
        })
        .unwrap();
    assert_eq!(seen, vec![1, 2, 3, 4]);
    assert_eq!(a.provenance.loss_history.len(), 4);
    assert_eq!((a.provenance.seed, a.provenance.steps), (3, 4));
    assert!(a.vector.iter().all(|v| v.is_finite()));
    assert_ne!(a.vector, r.init, "the concept did not move");
    assert!(a
        .provenance
        .loss_history
        .iter()
        .all(|l| l.clip_normal > 0.0 && l.diffusion_loss > 0.0));
    let b = opt.learn(&r, &mut |_| Flow::Continue).unwrap();
    assert_eq!(a.vector, b.vector, "same seed, different concept");
}

pub fn anomaly_aware_objective_runs(backend: &dyn Backend) {
    let opt = optimizer(backend);
    let mut r = request(backend, 2);
    r.objective = Objective::AnomalyAware {
        alpha_normal: 0.003,
        alpha_anomaly: 0.002,
        gamma: 0.0,
    };
    assert!(
        matches!(opt.learn(&r, &mut |_| Flow::Continue), Err(Error::Invalid { .. })),
        "eq. 4 without pseudo-anomalies"
    );
    r.pseudo_anomalies = Some(images(3, 12, 32));
    let c = opt.learn(&r, &mut |_| Flow::Continue).unwrap();
    // γ = 0: every pseudo-anomaly's P(S_n) > 0 is penalised.
    assert!(c.provenance.loss_history.iter().all(|l| l.clip_anomaly > 0.0));
    // One template: the first step's hinge (at `init`) is Σ_j P(S_n | x̃_j, T) over all three, and
    // the loss weighs the attraction by α_n = 0.003 and the hinge by α_a = 0.002.
    r.templates.truncate(1);
    let first = opt.learn(&r, &mut |_| Flow::Continue).unwrap().provenance.loss_history[0];
    let enc = backend.text_image_encoder(&clip_checkpoint(), Device::Cpu).unwrap();
    let state = |s: &str| Prompt::with_concept(r.templates[0].replace("{}", &format!("{s} <c_n>")), "<c_n>", &r.init);
    let p = enc
        .state_probability(&StateProbabilityRequest {
            images: r.pseudo_anomalies.clone().unwrap(),
            normal: state("flawless"),
            anomalous: state("damaged"),
            temperature: 0.01,
            gradient_of: None,
        })
        .unwrap()
        .normal;
    let sum: f32 = p.iter().sum();
    assert!(
        (first.clip_anomaly - sum).abs() < 1e-4 * sum.max(1.0),
        "hinge {} ≠ Σ_j P(S_n | x̃_j) = {sum} over all pseudo-anomalies",
        first.clip_anomaly
    );
    let eq4 = first.diffusion_loss - 0.003 * first.clip_normal + 0.002 * first.clip_anomaly;
    assert!((first.loss - eq4).abs() < 1e-5, "loss {} ≠ eq. 4 {eq4}", first.loss);
}

/// `request` run straight, then with a checkpoint every `every` steps and killed at step `kill`
/// (one past a checkpoint), then rerun: the rerun resumes at step `kill` and ends at the straight
/// run's concept, exactly (the same steps, from the same saved state). Returns the straight run, the
/// resumed one, and the checkpointed request with the folder holding its checkpoint.
pub fn assert_killed_run_resumes(
    opt: &dyn ConceptOptimizer,
    request: &LearnRequest,
    every: u64,
    kill: u64,
) -> (Concept, Concept, LearnRequest, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let straight = opt.learn(request, &mut |_| Flow::Continue).unwrap();
    let mut r = request.clone();
    r.checkpoint = Some(CheckpointPolicy {
        path: dir.path().join("run.ckpt"),
        every,
        resume: true,
    });
    let err = opt
        .learn(&r, &mut |p| if p.step == kill { Flow::Cancel } else { Flow::Continue })
        .unwrap_err();
    assert_eq!(err, Error::Cancelled { step: kill });
    let mut first = None;
    let resumed = opt
        .learn(&r, &mut |p| {
            first.get_or_insert(p.step);
            Flow::Continue
        })
        .unwrap();
    assert_eq!(first, Some(kill), "resumes after the step-{} checkpoint", kill - 1);
    assert_eq!(resumed.vector, straight.vector, "the resumed run ends elsewhere");
    (straight, resumed, r, dir)
}

pub fn a_killed_run_resumes_to_the_same_concept(backend: &dyn Backend) {
    let opt = optimizer(backend);
    let (_, _, r, _dir) = assert_killed_run_resumes(&*opt, &request(backend, 5), 2, 3);
    let mut other = r.clone();
    other.seed = 4;
    let err = opt.learn(&other, &mut |_| Flow::Continue).unwrap_err();
    assert!(err.to_string().contains("different learning request"), "{err}");
}

pub fn optimizer_rejects_bad_requests(backend: &dyn Backend) {
    let opt = optimizer(backend);
    let mut r = request(backend, 1);
    r.support = ImageBatch::new(Tensor::zeros(vec![0, 3, 32, 32])).unwrap();
    assert_eq!(
        opt.learn(&r, &mut |_| Flow::Continue).unwrap_err(),
        Error::EmptySupportSet
    );
    let mut r = request(backend, 1);
    r.init.truncate(5);
    assert!(matches!(
        opt.learn(&r, &mut |_| Flow::Continue),
        Err(Error::Shape { .. })
    ));
    let mut r = request(backend, 1);
    r.templates = vec!["no slot".into()];
    assert!(matches!(
        opt.learn(&r, &mut |_| Flow::Continue),
        Err(Error::Invalid { .. })
    ));
}
