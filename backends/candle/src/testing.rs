//! Helpers the unit tests of the custom ops share.
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};

/// The largest absolute difference between two tensors of the same shape, compared in f32.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let (a, b) = (a.to_dtype(DType::F32).unwrap(), b.to_dtype(DType::F32).unwrap());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Asserts `|got − want| ≤ tolerance · max(1, |want|)` element by element (f32 tensors), naming
/// the first element that is not.
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, tolerance: f32) {
    assert_eq!(got.dims(), want.dims(), "{what}");
    let (got, want) = (
        got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance * w.abs().max(1.0),
            "{what}[{i}]: {g} against {w}"
        );
    }
}

/// `f(x)` and the gradient of `sum(f(x) · weight)` with respect to `x`: an op's value and its
/// backward pass, to compare with the same of candle's own ops.
pub fn value_and_gradient(f: fn(&Tensor) -> Result<Tensor>, x: &Tensor, weight: &Tensor) -> (Tensor, Tensor) {
    let x = Var::from_tensor(x).unwrap();
    let y = f(x.as_tensor()).unwrap();
    let grads = (&y * weight).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = grads.get(x.as_tensor()).unwrap().clone();
    (y, dx)
}

/// The gradients of `sum(y · weight)`: a loss that weighs every element of `y` differently.
pub fn weighted_sum_grads(y: &Tensor, weight: &Tensor) -> GradStore {
    y.mul(weight).unwrap().sum_all().unwrap().backward().unwrap()
}
