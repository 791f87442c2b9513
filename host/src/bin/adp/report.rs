//! `adp report merge`: joins the folders of a sharded `adp eval` into the report an unsharded one
//! gives.
use adp_host::eval::merge::merge;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Join shard folders (each from `adp eval --shard I/N`) into OUT: runs.jsonl, report.json
    /// and report.md as one unsharded `adp eval` writes them, and the shards' overlays. Refuses
    /// shards of another setup (options, data, weights), a run found in two shards, and runs
    /// found in none.
    Merge {
        /// Folder for the merged report (not one of the shard folders).
        out: PathBuf,
        /// The shard folders, e.g. OUT_OF_EVAL/shard-*.
        #[arg(required = true)]
        shards: Vec<PathBuf>,
        /// Nothing on stderr but errors; stdout keeps its JSON lines.
        #[arg(long)]
        quiet: bool,
    },
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Command::Merge { out, shards, quiet } => {
            let report = merge(&out, &shards)?;
            for r in &report.runs {
                println!("{}", serde_json::to_string(r)?);
            }
            if !quiet {
                eprintln!(
                    "{} runs from {} shards: {}",
                    report.runs.len(),
                    shards.len(),
                    out.join("report.md").display()
                );
            }
            Ok(())
        }
    }
}
