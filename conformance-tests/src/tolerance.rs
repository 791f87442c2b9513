//! Every bound the suite compares floats within, each stated once with its reason, and the one
//! comparison that applies them. Where the code guarantees the very same operations (the same call
//! twice, a value sent through the plugin boundary), results are compared exactly instead.
use adp_api::Tensor;

/// Forward values against a reference implementation (open_clip, diffusers, the EfficientNet-Lite
/// port) or another backend: 1e-4 of the reference's magnitude.
pub const FORWARD: f32 = 1e-4;

/// Gradients pass through more operations than forward values: 1e-3 of the reference's magnitude.
pub const GRADIENT: f32 = 1e-3;

/// Sampled images (DDIM img2img) compound the forward rounding of every denoising step: 1e-3 of
/// the reference's magnitude.
pub const SAMPLED: f32 = 1e-3;

/// The same values computed with their float sums reassociated: one image alone against the same
/// image in a batch, a batch split into chunks, a call made from another thread. BLAS blocking,
/// batch size, chunking and thread count pick the order of the additions (and AVX-512 kernels pick
/// another than AVX2 ones), so such results agree to rounding, not bit for bit: 1e-5 of the
/// magnitude (seen: 2e-7 on the scorer's distances, AMD EPYC with AVX-512).
pub const REORDERING: f32 = 1e-5;

/// max |got − want| ≤ `rel` × max |want| (f32 throughout), the difference printed either way.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let diff = got.max_abs_diff(want).expect("same shape");
    let bound = rel * want.max_abs().max(1e-6);
    eprintln!(
        "{what}: max |diff| {diff:.3e}, max |reference| {:.3e} (bound {bound:.3e})",
        want.max_abs()
    );
    assert!(
        diff <= bound,
        "{what}: max |diff| {diff:e} exceeds {rel:e} × max |reference| = {bound:e}"
    );
}

/// `got` is `want` up to the order of float operations ([`REORDERING`]).
pub fn assert_reordered(what: &str, got: &Tensor, want: &Tensor) {
    assert_close(what, got, want, REORDERING);
}
