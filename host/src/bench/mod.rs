//! `adp bench`: every part of the pipeline a user waits for, one row at a time ([`rows`]), and
//! the async service's throughput per configuration of workers and threads ([`service`], feature
//! `service`).
pub mod rows;
#[cfg(feature = "service")]
pub mod service;
