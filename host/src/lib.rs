//! The adp host library: finding and loading backend plugins ([`plugin`]) and the proxy that
//! makes a loaded plugin an ordinary [`adp_api::Backend`] ([`proxy`]); the deterministic
//! reference checkpoints of the test suite ([`fixtures`]).
pub mod fixtures;
pub mod plugin;
pub mod proxy;

pub use plugin::{discover, load, plugin_dirs, Plugin, PLUGIN_PATH_ENV};
