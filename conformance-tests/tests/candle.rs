//! Backend conformance (not a host end-to-end test).
//!
//! The conformance suite for the candle backend, in process and as a plugin.
mod in_process {
    adp_conformance::conformance_tests!(adp_conformance::in_process(adp_backend_candle::CandleBackend::new()));
}
mod plugin {
    adp_conformance::conformance_tests!(adp_conformance::plugin("adp_plugin_candle"));
}

/// The suite fails a backend that declares a trait and breaks it: the candle encoder with its
/// image embeddings nudged by 0.1 % of their largest value is rejected by the parity case.
mod a_perturbed_backend_is_rejected {
    use adp_api::requests::*;
    use adp_api::*;

    struct Perturbed(Box<dyn TextImageEncoder>);

    impl TextImageEncoder for Perturbed {
        fn dims(&self) -> EncoderDims {
            self.0.dims()
        }
        fn image_embeddings(&self, images: &ImageBatch) -> Result<Tensor> {
            let mut t = self.0.image_embeddings(images)?;
            let nudge = 1e-3 * t.max_abs();
            t.data_mut()[0] += nudge;
            Ok(t)
        }
        fn dense_features(&self, images: &ImageBatch, w: &[usize]) -> Result<DenseFeatures> {
            self.0.dense_features(images, w)
        }
        fn text_embeddings(&self, prompts: &[Prompt]) -> Result<Tensor> {
            self.0.text_embeddings(prompts)
        }
        fn token_embedding(&self, word: &str) -> Result<Vec<f32>> {
            self.0.token_embedding(word)
        }
        fn state_probability(&self, r: &StateProbabilityRequest) -> Result<StateProbability> {
            self.0.state_probability(r)
        }
    }

    struct PerturbedBackend;

    impl Backend for PerturbedBackend {
        fn info(&self) -> BackendInfo {
            adp_backend_candle::CandleBackend.info()
        }
        fn text_image_encoder(&self, clip: &ClipCheckpoint, device: Device) -> Result<Box<dyn TextImageEncoder>> {
            Ok(Box::new(Perturbed(
                adp_backend_candle::CandleBackend.text_image_encoder(clip, device)?,
            )))
        }
    }

    #[test]
    #[should_panic(expected = "image embeddings: max |diff|")]
    fn parity_case_fails_it() {
        adp_conformance::encoder_cases::image_features_match_open_clip(&PerturbedBackend);
    }
}

/// Which half precisions candle must run on the CPU, so that the shared half-precision cases never
/// pass by refusal alone: f16 runs, bf16 is refused (no bf16 matmul kernel on candle's CPU).
#[test]
fn half_precision_on_the_cpu_is_f16_only() {
    use adp_api::{Backend, Device, Dtype};
    use adp_conformance::goldens::{clip_checkpoint, diffusion_spec};
    let b = adp_backend_candle::CandleBackend;
    assert!(b
        .text_image_encoder(&clip_checkpoint().with_dtype(Dtype::F16), Device::Cpu)
        .is_ok());
    assert!(b
        .latent_diffuser(&diffusion_spec(false).with_dtype(Dtype::F16), Device::Cpu)
        .is_ok());
    let refusals = [
        b.text_image_encoder(&clip_checkpoint().with_dtype(Dtype::Bf16), Device::Cpu)
            .err(),
        b.latent_diffuser(&diffusion_spec(false).with_dtype(Dtype::Bf16), Device::Cpu)
            .err(),
        b.concept_optimizer(
            &clip_checkpoint().with_dtype(Dtype::Bf16),
            &diffusion_spec(false),
            Device::Cpu,
        )
        .err(),
    ];
    for e in refusals {
        let m = e.expect("bf16 refused on the cpu").to_string();
        assert!(m.contains("bf16 needs cuda on backend candle"), "{m}");
    }
}
