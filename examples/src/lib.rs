//! Examples live beside this crate: `cargo run -p adp-examples --example list_plugins -- DIR`.
