//! `Scorer`: nearest neighbours by matrix products on the device, in chunks of test features so
//! that memory stays bounded (`chunk × memory rows` similarities at a time).
use crate::convert::{err, from_tch, to_tch, to_vec};
use adp_api::layout::chunks;
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::{checks, Result, Scorer, Tensor};
use tch::{Kind, TchError};

pub struct TchScorer {
    pub device: tch::Device,
    /// Test features per matrix product.
    pub chunk: usize,
}

fn unit_rows(t: &tch::Tensor) -> std::result::Result<tch::Tensor, TchError> {
    t.f_div(
        &t.f_mul(t)?
            .f_sum_dim_intlist(-1, true, Kind::Float)?
            .f_sqrt()?
            .f_clamp_min(1e-12)?,
    )
}

impl Scorer for TchScorer {
    fn build_memory(&self, kind: FeatureKind, support: &Tensor) -> Result<ReferenceMemory> {
        let (rows, d) = checks::support_features(support)?;
        let t = to_tch(support, self.device)?
            .f_reshape([rows as i64, d as i64])
            .map_err(err)?;
        tch::no_grad(|| {
            Ok(ReferenceMemory {
                kind,
                features: from_tch(&unit_rows(&t).map_err(err)?)?,
            })
        })
    }

    fn associate(&self, memory: &ReferenceMemory, test: &Tensor) -> Result<Tensor> {
        let (n, p, d) = checks::association(memory, test)?;
        tch::no_grad(|| {
            let mem_t = to_tch(&memory.features, self.device)?
                .f_tr()
                .and_then(|t| t.f_contiguous())
                .map_err(err)?;
            let queries = to_tch(test, self.device)?
                .f_reshape([(n * p) as i64, d as i64])
                .map_err(err)?;
            let mut out = Vec::with_capacity(n * p);
            for (start, len) in chunks(n * p, self.chunk) {
                let best = queries
                    .f_narrow(0, start as i64, len as i64)
                    .and_then(|q| unit_rows(&q))
                    .and_then(|q| q.f_matmul(&mem_t))
                    .and_then(|s| s.f_amax([-1], false))
                    .map_err(err)?;
                out.extend(to_vec(&best)?.into_iter().map(|s| 0.5 * (1.0 - s)));
            }
            Tensor::new(vec![n, p], out)
        })
    }
}
