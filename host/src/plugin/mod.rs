//! Backend plugins: a library opened once ([`library`]), the proxy that makes it an ordinary
//! [`adp_api::Backend`] ([`proxy`]), and finding plugins by name or path ([`discovery`]).
//! Dependencies point one way: library ← proxy ← discovery.
pub mod discovery;
pub mod library;
pub mod proxy;

pub use discovery::{available, check_name, discover, find, find_named, load, plugin_dirs, PLUGIN_PATH_ENV};
pub use proxy::Plugin;
