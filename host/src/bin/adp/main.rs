//! `adp`: few-shot industrial anomaly detection from the command line. Each subcommand lives in
//! its own file: it parses, calls the library, prints.
mod allocator;
mod bench;
mod common;
mod diffusion_check;
mod elementwise;
mod embed;
mod eval;
mod fit;
mod fixtures;
mod plugins;
mod progress;
mod report;
mod score;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "adp", version, about = "Few-shot anomaly detection via personalization")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List every plugin found, with its version, ABI, devices and the traits it provides.
    Plugins(plugins::Args),
    /// Print image and text embeddings of a CLIP checkpoint as JSON, to check it against a
    /// reference. Images get open_clip's own preprocessing (shorter side resized, centre crop),
    /// not the whole-photo square resize that detection uses.
    Embed(embed::Args),
    /// Run a diffusers checkpoint's text encoder, UNet and VAE on inputs from a safetensors file
    /// and write the outputs to one, to check it against diffusers (tools/check_diffusion.py).
    DiffusionCheck(diffusion_check::Args),
    /// Fit a detector on a support set of normal images. With `--clip` (and `--sd`): ADP;
    /// without: the `visual` method on the pretrained EfficientNet-Lite backbone.
    Fit(fit::Args),
    /// Score images with a fitted detector: one JSON line per image.
    Score(score::Args),
    /// Run the evaluation protocol and write report.json, report.md and overlays.
    Eval(eval::Args),
    /// Work with evaluation reports: `merge` joins the shards of `adp eval --shard`.
    Report(report::Args),
    /// Time the `visual` method per image (backbone patch features, reference association) on one
    /// or more plugins in the same run; each row gives its ratio to the first plugin.
    Bench(bench::Args),
    /// Write deterministic small checkpoints in the real layouts: an open_clip ViT (`clip/`) and
    /// diffusers folders (`sd-epsilon/`, `sd-v/`).
    Fixtures(fixtures::Args),
}

fn main() -> anyhow::Result<()> {
    // Rust ignores SIGPIPE, so `println!` into a closed pipe (`adp fixtures | head -1`) panics.
    // A command-line tool should end quietly instead, as the default action does.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    allocator::keep_freed_blocks();
    match Cli::parse().command {
        Command::Plugins(a) => plugins::run(a),
        Command::Embed(a) => embed::run(a),
        Command::DiffusionCheck(a) => diffusion_check::run(a),
        Command::Fit(a) => fit::run(a),
        Command::Score(a) => score::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Report(a) => report::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Fixtures(a) => fixtures::run(a),
    }
}
