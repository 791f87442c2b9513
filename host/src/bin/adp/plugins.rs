//! `adp plugins`: every plugin found, with what it declares.
use crate::common::PluginDirs;
use adp_host::plugin;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    plugins: PluginDirs,
    /// One JSON object per plugin instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let dirs = a.plugins.dirs();
    let mut found = 0;
    for dir in &dirs {
        for (path, loaded) in plugin::discover(dir)? {
            found += 1;
            match (&loaded, a.json) {
                (Ok(p), true) => {
                    let i = p.backend_info();
                    println!(
                        "{}",
                        serde_json::json!({
                            "name": i.name, "version": p.crate_version(), "abi": p.abi_version(),
                            "runtime": i.runtime,
                            "devices": i.devices.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                            "traits": i.provides.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                            "path": path,
                        })
                    );
                }
                (Err(e), true) => println!("{}", serde_json::json!({ "path": path, "error": e.to_string() })),
                (Ok(p), false) => {
                    let i = p.backend_info();
                    let list = |v: Vec<String>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
                    println!(
                        "{} {} (ABI {}, {})",
                        i.name,
                        p.crate_version(),
                        p.abi_version(),
                        i.runtime
                    );
                    println!("  devices: {}", list(i.devices.iter().map(|d| d.to_string()).collect()));
                    println!(
                        "  traits:  {}",
                        list(i.provides.iter().map(|c| c.to_string()).collect())
                    );
                    println!("  path:    {}", path.display());
                }
                (Err(e), false) => println!("(not loadable) {}\n  error:   {e}", path.display()),
            }
        }
    }
    if found == 0 && !a.json {
        println!("no plugins found in {dirs:?}");
    }
    Ok(())
}
