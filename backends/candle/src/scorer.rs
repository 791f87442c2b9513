//! `Scorer`: nearest neighbours by matrix products on the device, in chunks of test features so
//! that memory stays bounded (`chunk × memory rows` distances at a time).
use crate::convert::{err, from_candle, to_candle};
use adp_api::layout::chunks;
use adp_api::requests::{FeatureKind, ReferenceMemory};
use adp_api::{checks, Result, Scorer, Tensor};
use candle_core::D;

pub struct CandleScorer {
    pub device: candle_core::Device,
    /// Test features per matrix product.
    pub chunk: usize,
}

fn unit_rows(t: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
    t.broadcast_div(&t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?)
}

impl Scorer for CandleScorer {
    fn build_memory(&self, kind: FeatureKind, support: &Tensor) -> Result<ReferenceMemory> {
        let (rows, d) = checks::support_features(support)?;
        let t = to_candle(support, &self.device)?.reshape((rows, d)).map_err(err)?;
        Ok(ReferenceMemory {
            kind,
            features: from_candle(&unit_rows(&t).map_err(err)?)?,
        })
    }

    fn associate(&self, memory: &ReferenceMemory, test: &Tensor) -> Result<Tensor> {
        let (n, p, d) = checks::association(memory, test)?;
        let mem_t = to_candle(&memory.features, &self.device)?
            .t()
            .map_err(err)?
            .contiguous()
            .map_err(err)?;
        let queries = to_candle(test, &self.device)?.reshape((n * p, d)).map_err(err)?;
        let mut out = Vec::with_capacity(n * p);
        for (start, len) in chunks(n * p, self.chunk) {
            let q = unit_rows(&queries.narrow(0, start, len).map_err(err)?).map_err(err)?;
            let best = q.matmul(&mem_t).and_then(|s| s.max(D::Minus1)).map_err(err)?;
            out.extend(best.to_vec1::<f32>().map_err(err)?.into_iter().map(|s| 0.5 * (1.0 - s)));
        }
        Tensor::new(vec![n, p], out)
    }
}
