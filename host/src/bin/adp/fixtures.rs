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
    /// Default: `tiny`, or the diffusion preset's own text tower.
    #[arg(long)]
    preset: Option<String>,
    /// `tiny` (writes `sd-epsilon/` and `sd-v/`), or a Stable Diffusion layout with random
    /// weights, written to a folder of its name: `sd-1.5`, `sd-2.1-base`, `sd-2.1` at real size,
    /// `sd-1.5-small`, `sd-2.1-base-small`, `sd-2.1-small` with the same config keys at tiny widths.
    #[arg(long, default_value = "tiny")]
    diffusion: String,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let diffusion = DiffusionPreset::from_name(&a.diffusion)?;
    if diffusion == DiffusionPreset::Tiny {
        let preset = a.preset.as_deref().unwrap_or("tiny");
        let paths = fixtures::write_all_with(&a.out, a.seed, preset, diffusion)?;
        println!(
            "{}\n{}\n{}",
            paths.clip.display(),
            paths.sd_epsilon.display(),
            paths.sd_v.display()
        );
    } else {
        let paths = fixtures::write_preset(&a.out, a.seed, diffusion, a.preset.as_deref())?;
        println!("{}\n{}", paths.clip.display(), paths.sd.display());
    }
    Ok(())
}
