//! Stable Diffusion from a diffusers folder: candle-transformers' VAE (it uses the diffusers
//! names), our own UNet and text encoder (gradients must reach the concept) and DDIM.
pub mod ddim;
pub mod text_encoder;
pub mod unet;
