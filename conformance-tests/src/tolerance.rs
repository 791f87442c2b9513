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

/// Bounds for models run in half precision (`--dtype`) against the same f32 references.
#[derive(Debug, Clone, Copy)]
pub struct Half {
    pub forward: f32,
    pub gradient: f32,
}

/// f16 keeps 11 bits of mantissa (unit roundoff 2⁻¹¹ ≈ 5e-4), so every weight and activation is
/// off by up to ~5e-4 relative, and the fixtures' layers compound it to a few 1e-3 of the
/// magnitude (seen on candle: 3.5e-3 for the UNet and the decoded image, 1.1e-2 for the loss
/// gradient, whose backward pass runs in f16 too); norms and softmaxes run in f32.
pub const F16: Half = Half {
    forward: 1e-2,
    gradient: 3e-2,
};

/// bf16 keeps 8 bits of mantissa (unit roundoff 2⁻⁸ ≈ 4e-3): ~1e-2 of the magnitude after a few
/// layers (seen on tch: 2e-2 for the UNet, the decoded image and the loss gradient; candle runs
/// no bf16 on the CPU).
pub const BF16: Half = Half {
    forward: 5e-2,
    gradient: 1e-1,
};

/// Asserts that `err`, from opening a model in half precision on the CPU, is the documented refusal
/// ("`<dtype>` needs cuda on backend …"); anything else fails the case. Backends' own tests pin
/// which dtypes they must run on the CPU, so a refusal is never a silent skip.
pub fn assert_refused_on_cpu(dtype: adp_api::Dtype, err: &adp_api::Error) {
    let m = err.to_string();
    assert!(
        matches!(err, adp_api::Error::Invalid { .. }) && m.contains(&format!("{dtype} needs cuda")),
        "{dtype}: open failed with an unexpected error: {m}"
    );
    eprintln!("{dtype}: refused on the cpu, as documented: {m}");
}

/// The bounds for `dtype`; f32 is held to [`FORWARD`] and [`GRADIENT`].
pub fn half(dtype: adp_api::Dtype) -> Half {
    match dtype {
        adp_api::Dtype::F32 => Half {
            forward: FORWARD,
            gradient: GRADIENT,
        },
        adp_api::Dtype::F16 => F16,
        adp_api::Dtype::Bf16 => BF16,
    }
}

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
