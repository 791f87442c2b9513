//! The scoring pieces of ADP, independent of any detector file: prompt templates ([`prompts`]),
//! self-tuned prototypes and the language score ([`prototypes`]), reference association and
//! anomaly maps ([`association`]).
pub mod association;
pub mod prompts;
pub mod prototypes;
