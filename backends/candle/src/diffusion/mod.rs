//! Stable Diffusion from a diffusers folder: our own VAE, UNet and text encoder (gradients must
//! reach the concept; the frozen convolutions have a CPU kernel of their own) and DDIM.
pub mod ddim;
pub mod text_encoder;
pub mod unet;
pub mod vae;
