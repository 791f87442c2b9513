//! Mutation fuzzing of adp's untrusted inputs on stable Rust: detector files, safetensors
//! headers, open_clip and diffusers configs, PNG and JPEG photos, each driven through the entry
//! point the CLI uses. A seeded PRNG makes every case reproducible on its own
//! (`adp-fuzz --seed S --target T --case K`); panics, hangs and heap growth past
//! [`alloc::LIMIT`] are failures.
pub mod alloc;
pub mod detector;
pub mod formats;
pub mod harness;
pub mod mutate;
pub mod rng;
pub mod targets;

// In the library, so that the test rounds are bounded and measured like the binary's.
#[global_allocator]
static HEAP: alloc::Counting = alloc::Counting;

pub use harness::{run, table, Stats};
