//! A host application loading every plugin in a folder and asking each what it provides.
//! `cargo build --workspace && cargo run -p adp-examples --example list_plugins -- target/debug`
use adp_api::Backend;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| "target/debug".into());
    for (path, plugin) in adp_host::discover(&dir)? {
        match plugin {
            Ok(p) => {
                let info = p.info();
                println!(
                    "{}: {} {} provides {:?} on {:?}",
                    path.display(),
                    info.name,
                    info.version,
                    info.provides,
                    info.devices
                );
            }
            Err(e) => println!("{}: {e}", path.display()),
        }
    }
    Ok(())
}
