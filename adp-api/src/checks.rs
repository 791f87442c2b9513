//! The checks every backend makes before it touches its tensor library, written once so that
//! candle and tch refuse the same inputs with the same errors (each names the tensor, key or shape
//! at fault). The diffuser's request checks are methods of [`DiffuserDims`], in `diffuser`.
mod diffuser;

use crate::requests::{ConceptSlot, Prompt, ReferenceMemory};
use crate::{Error, ImageBatch, Result, Tensor};

/// Encoder and diffuser inputs: at least one image.
pub fn images(images: &ImageBatch) -> Result<()> {
    if images.is_empty() {
        return Err(Error::EmptySupportSet);
    }
    Ok(())
}

/// Backbone inputs: at least one image.
pub fn backbone_images(images: &ImageBatch) -> Result<()> {
    if images.is_empty() {
        return Err(Error::invalid(
            "image batch",
            "it is empty: there is no image to extract features from",
        ));
    }
    Ok(())
}

/// A WinCLIP window must fit the patch grid.
pub fn window_size(size: usize, grid: usize) -> Result<()> {
    if size == 0 || size > grid {
        return Err(Error::invalid(
            "window size",
            format!("{size} on a {grid}×{grid} patch grid"),
        ));
    }
    Ok(())
}

/// A softmax temperature must be positive (NaN is not).
pub fn temperature(t: f32) -> Result<()> {
    if t.is_nan() || t <= 0.0 {
        return Err(Error::invalid("temperature", format!("{t} must be positive")));
    }
    Ok(())
}

/// Every concept vector of every prompt has the text width.
pub fn concept_widths(prompts: &[Prompt], width: usize) -> Result<()> {
    match prompts
        .iter()
        .flat_map(|p| &p.concepts)
        .find(|c| c.vector.len() != width)
    {
        Some(c) => Err(Error::shape(
            format!("concept {}", c.placeholder),
            format!("[{width}]"),
            &[c.vector.len()],
        )),
        None => Ok(()),
    }
}

/// The concept to differentiate with respect to: the first one named `gradient_of`, which some
/// prompt must use; `None` without `gradient_of`.
pub fn trainable_concept<'a>(prompts: &[&'a Prompt], gradient_of: Option<&String>) -> Result<Option<&'a ConceptSlot>> {
    let Some(name) = gradient_of else { return Ok(None) };
    let found = prompts
        .iter()
        .flat_map(|p| &p.concepts)
        .find(|c| &c.placeholder == name);
    found
        .map(Some)
        .ok_or_else(|| Error::invalid("gradient_of", format!("no prompt uses the concept {name:?}")))
}

/// Support features `[K, P, D]` or `[M, D]`, non-empty and finite: `(rows, D)` of the memory.
pub fn support_features(support: &Tensor) -> Result<(usize, usize)> {
    let rank = support.shape().len();
    let d = support.shape().last().copied().unwrap_or(0);
    if !(2..=3).contains(&rank) || support.is_empty() || d == 0 {
        return Err(Error::shape(
            "support features",
            "[K, P, D] or [M, D], non-empty",
            support.shape(),
        ));
    }
    support.check_finite("support features")?;
    Ok((support.len() / d, d))
}

/// A memory `[M, D]` and test features `[N, P, D]`, finite: `(N, P, D)`.
pub fn association(memory: &ReferenceMemory, test: &Tensor) -> Result<(usize, usize, usize)> {
    let d = match memory.features.shape() {
        &[rows, d] if rows > 0 && d > 0 => d,
        other => return Err(Error::shape("reference memory", "[M, D], non-empty", other)),
    };
    test.expect_shape("test features", &[None, None, Some(d)])?;
    test.check_finite("test features")?;
    Ok((test.shape()[0], test.shape()[1], d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::FeatureKind;

    fn fails<T: std::fmt::Debug>(r: Result<T>, fragment: &str) {
        let e = r.expect_err("accepted").to_string();
        assert!(e.contains(fragment), "{e:?} does not contain {fragment:?}");
    }

    #[test]
    fn each_check_names_what_is_wrong() {
        fails(
            images(&ImageBatch::new(Tensor::zeros(vec![0, 3, 2, 2])).unwrap()),
            "empty support set",
        );
        fails(
            backbone_images(&ImageBatch::new(Tensor::zeros(vec![0, 3, 2, 2])).unwrap()),
            "image batch",
        );
        fails(window_size(0, 7), "0 on a 7×7 patch grid");
        fails(window_size(8, 7), "8 on a 7×7 patch grid");
        window_size(7, 7).unwrap();
        fails(temperature(f32::NAN), "temperature");
        fails(temperature(0.0), "0 must be positive");
        let p = Prompt::with_concept("a <c>", "<c>", &[1.0, 2.0]);
        fails(
            concept_widths(std::slice::from_ref(&p), 3),
            "concept <c>: expected shape [3], got [2]",
        );
        fails(
            trainable_concept(&[&p], Some(&"<d>".to_string())),
            "no prompt uses the concept \"<d>\"",
        );
        assert_eq!(
            trainable_concept(&[&p], Some(&"<c>".to_string()))
                .unwrap()
                .unwrap()
                .vector,
            [1.0, 2.0]
        );
        fails(
            support_features(&Tensor::zeros(vec![4])),
            "support features: expected shape [K, P, D]",
        );
        let nan = Tensor::new(vec![1, 2], vec![0.0, f32::NAN]).unwrap();
        fails(support_features(&nan), "support features: non-finite");
        assert_eq!(support_features(&Tensor::zeros(vec![2, 3, 4])).unwrap(), (6, 4));
        let memory = |shape| ReferenceMemory {
            kind: FeatureKind::PatchTokens,
            features: Tensor::zeros(shape),
        };
        fails(
            association(&memory(vec![0, 4]), &Tensor::zeros(vec![1, 1, 4])),
            "reference memory",
        );
        let wrong_width = Tensor::zeros(vec![1, 1, 3]);
        fails(
            association(&memory(vec![2, 4]), &wrong_width),
            "test features: expected shape [_, _, 4]",
        );
        assert_eq!(
            association(&memory(vec![2, 4]), &Tensor::zeros(vec![1, 5, 4])).unwrap(),
            (1, 5, 4)
        );
    }
}
