//! The adp host library: finding and loading backend plugins ([`plugin`]) and the proxy that
//! makes a loaded plugin an ordinary [`adp_api::Backend`] ([`proxy`]); the deterministic
//! reference checkpoints of the test suite ([`fixtures`]); and the scoring pieces of ADP: prompt
//! templates ([`prompts`]), self-tuned prototypes and the language score ([`prototypes`]),
//! reference association and anomaly maps ([`association`]).
pub mod association;
pub mod bench;
pub mod detector;
pub mod eval;
pub mod dataset;
pub mod fixtures;
pub mod images;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod progress;
pub mod prompts;
pub mod prototypes;
pub mod proxy;
pub mod service;
pub mod visual;

pub use plugin::{discover, load, plugin_dirs, Plugin, PLUGIN_PATH_ENV};
