//! Backend conformance (not a host end-to-end test): the plugin boundary every backend crosses.
//!
//! The plugin boundary, exercised with the arithmetic test-fixture plugin: the shared suite in
//! process and through the plugin, every call's round trip, errors, panics, progress,
//! cancellation, checkpoint/resume and concurrent calls.
use adp_api::requests::*;
use adp_api::{Backend, Device, Error, ImageBatch, Tensor};
use adp_conformance::optimizer_cases::assert_killed_run_resumes;
use adp_conformance::Subject;
use adp_plugin_test_fixture::{dummy_specs, FixtureBackend};
use std::sync::{Arc, Mutex};

fn plugin() -> Subject {
    adp_conformance::plugin("adp_plugin_test_fixture")
}

/// The fixture is no model, so of the shared suite it runs the backend-neutral cases (its scorer
/// is the definition itself; it must refuse the feature extractor it does not declare).
#[test]
fn shared_neutral_cases_in_process_and_through_the_plugin() {
    for b in [adp_conformance::in_process(FixtureBackend), plugin()] {
        for case in adp_conformance::CASES
            .iter()
            .filter(|c| ["backend", "scorer"].contains(&c.group))
        {
            eprintln!("{}: {}::{}", b.info().name, case.group, case.name);
            case.run_on(&*b);
        }
    }
}

fn images(n: usize, seed: u64) -> ImageBatch {
    adp_conformance::cases::images(n, 4, seed)
}

fn learn_request(steps: u64) -> LearnRequest {
    LearnRequest {
        name: "c_n".into(),
        placeholder: "<c>".into(),
        support: images(2, 3),
        pseudo_anomalies: None,
        init: vec![0.0, 0.5, 1.0],
        objective: Objective::NormalAware { alpha: 0.003 },
        templates: vec!["a photo of a {}".into()],
        learning_rate: 0.1,
        scale_lr_by_batch: false,
        weight_decay: 0.0,
        steps,
        batch_size: 1,
        seed: 0,
        checkpoint: None,
    }
}

/// Every call of every trait, with its result rendered: the same backend must give the same text
/// in process and through the plugin.
fn every_call(b: &dyn Backend) -> Vec<String> {
    let (clip, sd) = dummy_specs();
    let enc = b.text_image_encoder(&clip, Device::Cpu).unwrap();
    let dif = b.latent_diffuser(&sd, Device::Cpu).unwrap();
    let opt = b.concept_optimizer(&clip, &sd, Device::Cpu).unwrap();
    let sco = b.scorer(Device::Cpu).unwrap();
    let x = images(2, 1);
    let v = vec![0.1, -0.2, 0.3];
    let p = Prompt::with_concept("a photo of a flawless <c>", "<c>", &v);
    let pa = Prompt::with_concept("a photo of a damaged <c>", "<c>", &v);
    let z = dif.vae_encode(&x).unwrap();
    let cond = dif.text_conditioning(&[p.clone(), pa.clone()]).unwrap();
    let noise = adp_conformance::cases::features(z.shape().to_vec(), 9);
    let mut steps = Vec::new();
    let dense = enc.dense_features(&x, &[1, 2]).unwrap();
    let memory = sco.build_memory(FeatureKind::PatchTokens, &dense.patch_tokens).unwrap();
    vec![
        format!("{:?}", b.info()),
        format!("{:?}", enc.dims()),
        format!("{:?}", enc.image_embeddings(&x)),
        format!("{:?}", dense),
        format!("{:?}", enc.text_embeddings(&[p.clone(), Prompt::plain("object")])),
        format!("{:?}", enc.token_embedding("object")),
        format!(
            "{:?}",
            enc.state_probability(&StateProbabilityRequest {
                images: x.clone(),
                normal: p.clone(),
                anomalous: pa.clone(),
                temperature: 0.01,
                gradient_of: Some("<c>".into())
            })
        ),
        format!("{:?}", dif.dims()),
        format!("{:?}", z),
        format!("{:?}", dif.vae_decode(&z)),
        format!("{:?}", cond),
        format!(
            "{:?}",
            dif.unet_prediction(&UnetRequest {
                latents: z.clone(),
                timesteps: vec![10, 500],
                conditioning: cond.clone()
            })
        ),
        format!(
            "{:?}",
            dif.denoising_loss(&DenoisingLossRequest {
                input: DenoisingInput::Images(x.clone()),
                prompts: vec![p.clone(), pa.clone()],
                timesteps: vec![3, 999],
                noise,
                gradient_of: Some("<c>".into())
            })
        ),
        format!(
            "{:?}",
            dif.img2img(&Img2ImgRequest::spec_defaults(
                x.clone(),
                Prompt::plain("a photo with damage"),
                4
            ))
        ),
        format!(
            "{:?}",
            opt.learn(&learn_request(5), &mut |p| {
                steps.push(p.step);
                Flow::Continue
            })
        ),
        format!("{steps:?}"),
        format!("{:?}", memory),
        format!(
            "{:?}",
            sco.associate(&memory, &enc.dense_features(&images(1, 2), &[]).unwrap().patch_tokens)
        ),
    ]
}

#[test]
fn every_call_round_trips_unchanged() {
    let here = every_call(&FixtureBackend);
    let there = every_call(&*plugin());
    assert_eq!(here.len(), there.len());
    for (i, (a, b)) in here.iter().zip(&there).enumerate() {
        assert_eq!(a, b, "call {i} differs through the plugin");
    }
    assert!(
        here.iter().all(|r| !r.contains("Err(")),
        "every call should succeed: {here:#?}"
    );
}

/// The same error variant, with the same fields, on both sides of the boundary.
#[test]
fn errors_arrive_as_the_same_error() {
    let (clip, _) = dummy_specs();
    for b in [adp_conformance::in_process(FixtureBackend), plugin()] {
        let long = Prompt::plain("one two three four five six seven eight nine");
        let enc = b.text_image_encoder(&clip, Device::Cpu).unwrap();
        let err = enc.text_embeddings(&[long]).unwrap_err();
        assert_eq!(
            err,
            Error::PromptTooLong {
                prompt: "one two three four five six seven eight nine".into(),
                tokens: 9,
                context: 8
            }
        );
        let err = b.scorer(Device::Cuda(3)).err().unwrap();
        assert_eq!(
            err.to_string(),
            "device cuda:3 is not available to backend `test-fixture`"
        );
        let err = enc
            .dense_features(&ImageBatch::new(Tensor::zeros(vec![1, 3, 5, 5])).unwrap(), &[])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "fixture encoder input: expected shape [_, 3, 4, 4], got [1, 3, 5, 5]"
        );
        let (clip, sd) = dummy_specs();
        let mut empty = learn_request(3);
        empty.support = ImageBatch::new(Tensor::zeros(vec![0, 3, 4, 4])).unwrap();
        let err = b
            .concept_optimizer(&clip, &sd, Device::Cpu)
            .unwrap()
            .learn(&empty, &mut |_| Flow::Continue)
            .unwrap_err();
        assert_eq!(err, Error::EmptySupportSet);
    }
}

#[test]
fn a_panic_inside_the_plugin_is_an_error_and_the_plugin_lives_on() {
    let (clip, _) = dummy_specs();
    let b = plugin();
    let enc = b.text_image_encoder(&clip, Device::Cpu).unwrap();
    let err = enc.text_embeddings(&[Prompt::plain("panic!")]).unwrap_err();
    match &err {
        Error::PluginPanic { backend, message } => {
            assert_eq!(backend, "test-fixture");
            assert!(message.contains("panics on request"), "{message}");
        }
        other => panic!("expected a PluginPanic, got {other:?}"),
    }
    assert!(
        enc.text_embeddings(&[Prompt::plain("still here")]).is_ok(),
        "the plugin survives its panic"
    );
}

#[test]
fn progress_reaches_the_host_and_cancellation_reaches_the_plugin() {
    let (clip, sd) = dummy_specs();
    for b in [adp_conformance::in_process(FixtureBackend), plugin()] {
        let opt = b.concept_optimizer(&clip, &sd, Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let err = opt
            .learn(&learn_request(10), &mut |p| {
                seen.push((p.step, p.total_steps));
                if p.step == 4 {
                    Flow::Cancel
                } else {
                    Flow::Continue
                }
            })
            .unwrap_err();
        assert_eq!(err, Error::Cancelled { step: 4 });
        assert_eq!(seen, vec![(1, 10), (2, 10), (3, 10), (4, 10)]);
    }
    // An observer that panics cancels the run instead of unwinding through the plugin.
    let opt = plugin().concept_optimizer(&clip, &sd, Device::Cpu).unwrap();
    let err = opt
        .learn(&learn_request(10), &mut |p| {
            if p.step == 2 {
                panic!("observer broke")
            } else {
                Flow::Continue
            }
        })
        .unwrap_err();
    assert_eq!(err, Error::Cancelled { step: 2 });
}

/// Eq. 4's two weights and γ cross the plugin boundary intact (ABI 3).
#[test]
fn the_anomaly_aware_objective_crosses_the_boundary_with_both_weights() {
    let (clip, sd) = dummy_specs();
    let mut r = learn_request(1);
    r.objective = Objective::AnomalyAware {
        alpha_normal: 0.003,
        alpha_anomaly: 0.002,
        gamma: 0.8,
    };
    r.pseudo_anomalies = Some(images(3, 4));
    for b in [adp_conformance::in_process(FixtureBackend), plugin()] {
        let opt = b.concept_optimizer(&clip, &sd, Device::Cpu).unwrap();
        let c = opt.learn(&r, &mut |_| Flow::Continue).unwrap();
        let got: Objective = serde_json::from_value(c.provenance.hyperparameters["objective"].clone()).unwrap();
        assert_eq!(got, r.objective, "{}", b.info().name);
    }
}

#[test]
fn a_killed_run_resumes_from_its_checkpoint_to_the_same_result() {
    let (clip, sd) = dummy_specs();
    let opt = plugin().concept_optimizer(&clip, &sd, Device::Cpu).unwrap();
    let (straight, resumed, _, _dir) = assert_killed_run_resumes(&*opt, &learn_request(9), 3, 7);
    assert_eq!(resumed.provenance.loss_history, straight.provenance.loss_history);
}

#[test]
fn calls_from_several_threads_at_once() {
    let (clip, _) = dummy_specs();
    let b = plugin();
    let enc: Arc<dyn adp_api::TextImageEncoder> = Arc::from(b.text_image_encoder(&clip, Device::Cpu).unwrap());
    let reference = FixtureBackend.text_image_encoder(&clip, Device::Cpu).unwrap();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (enc, failures) = (enc.clone(), failures.clone());
            let want_img = reference.image_embeddings(&images(3, t)).unwrap();
            let prompt = Prompt::plain("word ".repeat(t as usize % 8 + 1));
            let want_txt = reference.text_embeddings(std::slice::from_ref(&prompt)).unwrap();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    if enc.image_embeddings(&images(3, t)).unwrap() != want_img
                        || enc.text_embeddings(std::slice::from_ref(&prompt)).unwrap() != want_txt
                    {
                        failures.lock().unwrap().push(t);
                    }
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|h| h.join().unwrap());
    assert!(
        failures.lock().unwrap().is_empty(),
        "threads saw wrong results: {:?}",
        failures.lock().unwrap()
    );
}
