//! adp's libtorch backend (tch): OpenCLIP (`TextImageEncoder`), Stable Diffusion
//! (`LatentDiffuser`), concept learning (`ConceptOptimizer`, the shared loop of
//! `adp_api::learning`), reference association (`Scorer`) and the EfficientNet-Lite image backbone
//! (`FeatureExtractor`), mirroring the candle backend module for module.
mod convert;
mod diffuser;
pub mod diffusion;
pub mod efficientnet;
mod encoder;
mod features;
mod nn;
pub mod open_clip;
mod scorer;

use adp_api::learning::Learner;
use adp_api::{
    BackboneCheckpoint, Backend, BackendInfo, ClipCheckpoint, Device, DiffusionSpec, FeatureExtractor, LatentDiffuser,
    Result, Scorer, TextImageEncoder,
};

pub const NAME: &str = "tch";

#[derive(Debug, Default, Clone, Copy)]
pub struct TchBackend;

impl TchBackend {
    pub fn new() -> Self {
        Self
    }
}

/// The CPU, then every CUDA device the loaded libtorch sees (none with a CPU libtorch).
fn devices() -> Vec<Device> {
    std::iter::once(Device::Cpu)
        .chain((0..convert::cuda_count()).map(Device::Cuda))
        .collect()
}

impl Backend for TchBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo::complete(NAME, env!("CARGO_PKG_VERSION"), "libtorch 2.13 (tch 0.26)", devices())
    }

    fn text_image_encoder(&self, clip: &ClipCheckpoint, device: Device) -> Result<Box<dyn TextImageEncoder>> {
        Ok(Box::new(encoder::TchEncoder::load(clip, convert::device(device)?)?))
    }

    fn latent_diffuser(&self, sd: &DiffusionSpec, device: Device) -> Result<Box<dyn LatentDiffuser>> {
        Ok(Box::new(diffuser::TchDiffuser::load(sd, convert::device(device)?)?))
    }

    fn concept_optimizer(
        &self,
        clip: &ClipCheckpoint,
        sd: &DiffusionSpec,
        device: Device,
    ) -> Result<Box<dyn adp_api::ConceptOptimizer>> {
        let device = convert::device(device)?;
        let (encoder, diffuser) = (
            encoder::TchEncoder::load(clip, device)?,
            diffuser::TchDiffuser::load(sd, device)?,
        );
        Ok(Box::new(Learner {
            backend: NAME,
            encoder,
            diffuser,
        }))
    }

    fn scorer(&self, device: Device) -> Result<Box<dyn Scorer>> {
        Ok(Box::new(scorer::TchScorer {
            device: convert::device(device)?,
            chunk: adp_api::layout::association_chunk(device),
        }))
    }

    fn feature_extractor(&self, backbone: &BackboneCheckpoint, device: Device) -> Result<Box<dyn FeatureExtractor>> {
        Ok(Box::new(features::TchFeatures::load(
            backbone,
            convert::device(device)?,
        )?))
    }

    /// libtorch's intra-op threads are OpenMP's: `at::set_num_threads` sets the calling thread's
    /// OpenMP and MKL thread counts (per-thread settings), and only the default of threads that
    /// have not run an op yet (a process-wide number). So the budget is set on this thread
    /// around `work` and the previous count restored after it.
    fn with_threads(&self, threads: usize, work: &mut (dyn FnMut() + Send)) {
        struct Restore(i32);
        impl Drop for Restore {
            fn drop(&mut self) {
                tch::set_num_threads(self.0);
            }
        }
        let threads = threads.clamp(1, i32::MAX as usize) as i32;
        let before = tch::get_num_threads();
        if before == threads {
            return work();
        }
        tch::set_num_threads(threads);
        let _restore = Restore(before);
        work()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adp_api::requests::FeatureKind;
    use adp_api::Capability;
    use adp_api::{Error, Tensor};

    #[test]
    fn reports_cpu_and_what_it_provides() {
        let info = TchBackend.info();
        assert_eq!(info.name, "tch");
        assert_eq!(info.devices[0], Device::Cpu);
        assert_eq!(
            info.provides,
            vec![
                Capability::TextImageEncoder,
                Capability::LatentDiffuser,
                Capability::ConceptOptimizer,
                Capability::Scorer,
                Capability::FeatureExtractor
            ]
        );
        // libtorch really is loaded and computes.
        let t = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).sum(tch::Kind::Float);
        assert_eq!(f32::try_from(t).unwrap(), 6.0);
    }

    #[test]
    fn thread_budget_holds_during_the_work_and_is_undone_after() {
        let before = tch::get_num_threads();
        let mut inside = 0;
        TchBackend.with_threads(1, &mut || inside = tch::get_num_threads());
        assert_eq!(inside, 1);
        assert_eq!(tch::get_num_threads(), before);
        // Another thread keeps its own count while this one is budgeted.
        TchBackend.with_threads(1, &mut || {
            let other = std::thread::spawn(|| {
                TchBackend.with_threads(2, &mut || assert_eq!(tch::get_num_threads(), 2));
                tch::get_num_threads()
            });
            other.join().unwrap();
            assert_eq!(tch::get_num_threads(), 1);
        });
    }

    #[test]
    fn unknown_cuda_device_is_refused() {
        let n = convert::cuda_count();
        let err = TchBackend
            .scorer(Device::Cuda(n))
            .err()
            .expect("a missing device was accepted");
        assert_eq!(
            err,
            Error::DeviceUnavailable {
                backend: NAME.into(),
                device: Device::Cuda(n).to_string()
            }
        );
    }

    #[test]
    fn scorer_chunks_do_not_change_the_result() {
        let support = Tensor::from_fn(vec![3, 5, 4], |i| ((i * 7919) % 13) as f32 - 6.0);
        let test = Tensor::from_fn(vec![2, 6, 4], |i| ((i * 104729) % 11) as f32 - 5.0);
        let whole = scorer::TchScorer {
            device: tch::Device::Cpu,
            chunk: 4096,
        };
        let memory = whole.build_memory(FeatureKind::PatchTokens, &support).unwrap();
        let expected = whole.associate(&memory, &test).unwrap();
        // Not bit for bit: BLAS blocks a matrix product differently by its shape (with AVX-512 on
        // some CPUs), so other chunks round differently; a relative 1e-5 of the largest score is
        // float rounding, not a wrong neighbour.
        let tolerance = 1e-5 * expected.max_abs().max(f32::MIN_POSITIVE);
        for chunk in [0, 1, 5, 12] {
            let s = scorer::TchScorer {
                device: tch::Device::Cpu,
                chunk,
            };
            let diff = s
                .associate(&memory, &test)
                .unwrap()
                .max_abs_diff(&expected)
                .expect("same shape");
            assert!(diff <= tolerance, "chunk {chunk}: {diff} > {tolerance}");
        }
        let bad = adp_api::requests::ReferenceMemory {
            kind: FeatureKind::PatchTokens,
            features: Tensor::zeros(vec![4]),
        };
        assert!(matches!(whole.associate(&bad, &test), Err(Error::Shape { .. })));
    }
}
