//! `ConceptOptimizer`: the shared learning loop of `adp_api::learning` over this backend's
//! encoder and diffuser.
use crate::{diffuser::CandleDiffuser, encoder::CandleEncoder};
use adp_api::requests::{Flow, LearnRequest, Progress};
use adp_api::{Concept, ConceptOptimizer, Result};

pub struct CandleOptimizer {
    pub encoder: CandleEncoder,
    pub diffuser: CandleDiffuser,
}

impl ConceptOptimizer for CandleOptimizer {
    fn learn(&self, request: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept> {
        adp_api::learning::learn(crate::NAME, &self.encoder, &self.diffuser, request, progress)
    }
}
