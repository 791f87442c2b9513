//! Stable Diffusion from a diffusers folder, on libtorch: the transformers text encoder, the
//! diffusers UNet and VAE (`AutoencoderKL`), all read under their original tensor names, and DDIM.
//! The layers mirror the candle backend's module for module.
pub mod ddim;
pub mod text_encoder;
pub mod unet;
pub mod vae;
