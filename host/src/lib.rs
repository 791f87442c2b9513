//! The adp host library, by concern, dependencies pointing one way:
//! - [`plugin`]: loading backend plugins and the proxy that makes one an [`adp_api::Backend`];
//! - [`score`]: prompts, self-tuned prototypes and the language score, reference association;
//! - [`detect`]: the methods, fitting, the detector file, scoring (uses `score`);
//! - [`images`]: image files in and anomaly maps out (uses `detect`);
//! - [`overlay`]: heat-map overlays on one colour scale per detector (uses `images`);
//! - [`eval`]: datasets, metrics, the evaluation protocol and reports, benchmarks (uses
//!   `detect`, `images`, `overlay`);
//! - [`service`] (feature `service`): the async API for host applications;
//! - [`bench`]: benchmarks beyond `eval`'s (the service's throughput);
//! - [`fixtures`]: the deterministic reference checkpoints of the test suite.
//!
//! The `adp` command line is the binary `src/bin/adp` (feature `cli`).
pub mod bench;
pub mod detect;
pub mod eval;
pub mod fixtures;
pub mod images;
pub mod overlay;
pub mod plugin;
pub mod score;
#[cfg(feature = "service")]
pub mod service;

pub use plugin::{discover, load, plugin_dirs, Plugin, PLUGIN_PATH_ENV};
