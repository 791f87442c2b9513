//! `adp embed`: a CLIP checkpoint's image and text embeddings as JSON lines, to check it against
//! open_clip. Each photo goes to the encoder as read, so it gets open_clip's own preprocessing
//! (shorter side resized, centre crop: `adp_api::preprocess::clip_preprocess`), as open_clip
//! would; detection instead resizes the whole photo straight to the square input (SPEC §2).
use crate::common::PluginDirs;
use adp_api::{Backend, ClipCheckpoint, Device, ImageBatch, Prompt};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Plugin name (searched like `adp plugins` does) or path.
    #[arg(long)]
    plugin: String,
    #[command(flatten)]
    plugins: PluginDirs,
    /// Folder with `open_clip_config.json` and `open_clip_model.safetensors`.
    #[arg(long)]
    clip: PathBuf,
    /// A photo to embed, with open_clip's own preprocessing (shorter side, centre crop).
    #[arg(long = "image")]
    images: Vec<PathBuf>,
    #[arg(long = "text")]
    texts: Vec<String>,
    #[arg(long, default_value = "cpu")]
    device: Device,
    #[arg(long, default_value = "f32", help = crate::common::DTYPE_HELP)]
    dtype: adp_api::Dtype,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let backend = a.plugins.find(&a.plugin)?;
    let encoder = backend.text_image_encoder(&ClipCheckpoint::from_dir(&a.clip)?.with_dtype(a.dtype), a.device)?;
    for path in &a.images {
        let e = encoder.image_embeddings(&ImageBatch::read_files(std::slice::from_ref(path))?)?;
        println!("{}", serde_json::json!({ "image": path, "embedding": e.data() }));
    }
    if !a.texts.is_empty() {
        let e = encoder.text_embeddings(&a.texts.iter().map(Prompt::plain).collect::<Vec<_>>())?;
        for (i, text) in a.texts.iter().enumerate() {
            println!("{}", serde_json::json!({ "text": text, "embedding": e.row(i) }));
        }
    }
    Ok(())
}
