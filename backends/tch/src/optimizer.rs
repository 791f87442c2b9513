//! `ConceptOptimizer`: the shared learning loop of `adp_api::learning` over this backend's
//! encoder and diffuser.
use crate::{diffuser::TchDiffuser, encoder::TchEncoder};
use adp_api::requests::{Flow, LearnRequest, Progress};
use adp_api::{Concept, ConceptOptimizer, Result};

pub struct TchOptimizer {
    pub encoder: TchEncoder,
    pub diffuser: TchDiffuser,
}

impl ConceptOptimizer for TchOptimizer {
    fn learn(&self, request: &LearnRequest, progress: &mut dyn FnMut(&Progress) -> Flow) -> Result<Concept> {
        adp_api::learning::learn(crate::NAME, &self.encoder, &self.diffuser, request, progress)
    }
}
