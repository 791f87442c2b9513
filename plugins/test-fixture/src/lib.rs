//! A test fixture, not a backend: every trait implemented by tiny deterministic arithmetic, so the
//! plugin boundary can be exercised call by call. Some inputs are traps on purpose: a prompt
//! reading `panic!` panics, a prompt of more than eight words is too long for its context.
mod diffuser;
mod encoder;
mod optimizer;
mod scorer;

use adp_api::{Backend, BackendInfo, Capability, ClipCheckpoint, Device, DiffusionSpec, Result};
pub use encoder::prompt_vector;

pub const NAME: &str = "test-fixture";
/// Every vector of the fixture has this many components.
pub const WIDTH: usize = 3;
/// `token_embedding` of this word is `[budget, 0, 0]`: the thread budget
/// ([`Backend::with_threads`]) the call ran under, 0 for none, so tests can see it cross.
pub const THREADS_PROBE: &str = "<threads>";

thread_local! {
    pub(crate) static THREADS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[derive(Debug, Default, Clone, Copy)]
pub struct FixtureBackend;

impl Backend for FixtureBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            name: NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            runtime: "plain Rust arithmetic".into(),
            devices: vec![Device::Cpu],
            provides: vec![
                Capability::TextImageEncoder,
                Capability::LatentDiffuser,
                Capability::ConceptOptimizer,
                Capability::Scorer,
            ],
        }
    }
    fn text_image_encoder(&self, _: &ClipCheckpoint, device: Device) -> Result<Box<dyn adp_api::TextImageEncoder>> {
        self.info().check_device(device)?;
        Ok(Box::new(encoder::FixtureEncoder))
    }
    fn latent_diffuser(&self, _: &DiffusionSpec, device: Device) -> Result<Box<dyn adp_api::LatentDiffuser>> {
        self.info().check_device(device)?;
        Ok(Box::new(diffuser::FixtureDiffuser))
    }
    fn concept_optimizer(
        &self,
        _: &ClipCheckpoint,
        _: &DiffusionSpec,
        device: Device,
    ) -> Result<Box<dyn adp_api::ConceptOptimizer>> {
        self.info().check_device(device)?;
        Ok(Box::new(optimizer::FixtureOptimizer))
    }
    fn scorer(&self, device: Device) -> Result<Box<dyn adp_api::Scorer>> {
        self.info().check_device(device)?;
        Ok(Box::new(scorer::FixtureScorer))
    }
    fn with_threads(&self, threads: usize, work: &mut (dyn FnMut() + Send)) {
        let before = THREADS.with(|t| t.replace(threads));
        work();
        THREADS.with(|t| t.set(before));
    }
}

adp_plugin_abi::export_plugin!("test-fixture", crate::FixtureBackend);

/// Checkpoint specs to open the fixture's parts with; the fixture reads no files.
pub fn dummy_specs() -> (ClipCheckpoint, DiffusionSpec) {
    let clip = ClipCheckpoint {
        config: adp_api::ClipConfig::vit_b_16(),
        config_path: "fixture/open_clip_config.json".into(),
        weights: "fixture/open_clip_model.safetensors".into(),
        dtype: Default::default(),
    };
    let sd = serde_json::from_value(serde_json::json!({
        "root": "fixture/sd",
        "text_encoder": {"hidden_size": 3, "intermediate_size": 12, "num_attention_heads": 1, "num_hidden_layers": 1},
        "unet": {"in_channels": 3, "out_channels": 3, "block_out_channels": [4], "down_block_types": ["DownBlock2D"],
                 "up_block_types": ["UpBlock2D"], "cross_attention_dim": 3},
        "vae": {"block_out_channels": [4, 4], "latent_channels": 3},
        "scheduler": {},
        "prediction": "Epsilon"
    }))
    .expect("fixture diffusion spec");
    (clip, sd)
}
