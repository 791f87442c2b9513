//! `adp fixtures`: deterministic checkpoints in the real open_clip and diffusers layouts.
use adp_host::fixtures::{self, diffusers::DiffusionPreset};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `tiny`, or an open_clip preset (ViT-B-16, ViT-B-16-plus-240, ViT-L-14, ViT-H-14) for
    /// real-size random weights; `-quickgelu` (tiny, ViT-B-16, ViT-L-14, ViT-H-14) for OpenAI's.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// `tiny`, or `sd-2.1` for Stable Diffusion 2.1's real UNet and VAE with random weights.
    #[arg(long, default_value = "tiny")]
    diffusion: String,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let paths = fixtures::write_all_with(&a.out, a.seed, &a.preset, DiffusionPreset::from_name(&a.diffusion)?)?;
    println!(
        "{}\n{}\n{}",
        paths.clip.display(),
        paths.sd_epsilon.display(),
        paths.sd_v.display()
    );
    Ok(())
}
