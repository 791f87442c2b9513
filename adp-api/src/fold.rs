//! Batch norm folded into the convolution before it, once, at load time, for every backend.
//!
//! In inference a batch norm after a bias-free convolution is an affine map per output channel, so
//! `BN(W * x) = W' * x + b'` with `W' = W · γ/√(var + eps)` and `b' = β − mean · γ/√(var + eps)`.
//! The backends then run plain convolutions with a bias and never see a batch norm.
use crate::config::efficientnet::{BackboneCheckpoint, BN_EPS, HEAD_WIDTH, STEM_WIDTH};
use crate::config::st::read_f32_shaped;
use crate::{Error, Result, Tensor};
use std::path::Path;

/// A batch norm's four tensors, each `[C]`.
pub struct BatchNorm<'a> {
    pub weight: &'a Tensor,
    pub bias: &'a Tensor,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    pub eps: f64,
}

/// `(W', b')` for a bias-free convolution `weight` `[C, …]` followed by `bn` over its C outputs.
/// The scale is computed in f64 and each product rounded once to f32.
pub fn fold_batch_norm(weight: &Tensor, bn: &BatchNorm) -> Result<(Tensor, Tensor)> {
    let c = weight.shape().first().copied().unwrap_or(0);
    for (what, t) in [
        ("weight", bn.weight),
        ("bias", bn.bias),
        ("running_mean", bn.running_mean),
        ("running_var", bn.running_var),
    ] {
        if t.shape() != [c] {
            return Err(Error::shape(
                format!("batch norm {what}"),
                format!("[{c}] (the convolution's outputs)"),
                t.shape(),
            ));
        }
    }
    let per_channel = weight.len().checked_div(c).unwrap_or(0);
    let mut w = Vec::with_capacity(weight.len());
    let mut b = Vec::with_capacity(c);
    for o in 0..c {
        let var = bn.running_var.data()[o] as f64 + bn.eps;
        if var.is_nan() || var <= 0.0 {
            return Err(Error::invalid(
                "batch norm",
                format!("running_var[{o}] + eps = {var} is not positive"),
            ));
        }
        let scale = bn.weight.data()[o] as f64 / var.sqrt();
        w.extend(
            weight.data()[o * per_channel..(o + 1) * per_channel]
                .iter()
                .map(|&v| (v as f64 * scale) as f32),
        );
        b.push((bn.bias.data()[o] as f64 - bn.running_mean.data()[o] as f64 * scale) as f32);
    }
    Ok((Tensor::new(weight.shape().to_vec(), w)?, Tensor::new(vec![c], b)?))
}

/// Reads a convolution and the batch norm after it from the file and folds them.
fn read_folded(
    st: &safetensors::SafeTensors<'_>,
    file: &Path,
    conv: &str,
    shape: &[usize],
    bn: &str,
) -> Result<(Tensor, Tensor)> {
    let weight = read_f32_shaped(st, &format!("{conv}.weight"), file, shape)?;
    let c = [shape[0]];
    let read = |p: &str| read_f32_shaped(st, &format!("{bn}.{p}"), file, &c);
    let (g, b, m, v) = (
        read("weight")?,
        read("bias")?,
        read("running_mean")?,
        read("running_var")?,
    );
    fold_batch_norm(
        &weight,
        &BatchNorm {
            weight: &g,
            bias: &b,
            running_mean: &m,
            running_var: &v,
            eps: BN_EPS,
        },
    )
}

/// Every tensor an EfficientNet-Lite forward pass needs, batch norms folded: `{conv}.weight` and
/// `{conv}.bias` for `_conv_stem`, `_blocks.N._expand_conv` (when the block expands),
/// `_blocks.N._depthwise_conv`, `_blocks.N._project_conv` and `_conv_head`, and `_fc.weight`,
/// `_fc.bias` as stored. Names keep the port's convolution names, so a backend's modules read
/// them under the same prefixes as the checkpoint. Errors name the file and the tensor.
pub fn efficientnet(checkpoint: &BackboneCheckpoint) -> Result<Vec<(String, Tensor)>> {
    let file = checkpoint.weights.as_path();
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::config(file, format!("unreadable safetensors: {e}")))?;
    let cfg = &checkpoint.config;
    let mut out = Vec::new();
    let mut conv = |conv: String, shape: &[usize], bn: String| -> Result<()> {
        let (w, b) = read_folded(&st, file, &conv, shape, &bn)?;
        out.push((format!("{conv}.weight"), w));
        out.push((format!("{conv}.bias"), b));
        Ok(())
    };
    conv("_conv_stem".into(), &[STEM_WIDTH, 3, 3, 3], "_bn0".into())?;
    let blocks = cfg.blocks();
    for b in &blocks {
        let p = format!("_blocks.{}", b.index);
        if b.expand_ratio != 1 {
            conv(
                format!("{p}._expand_conv"),
                &[b.expanded(), b.input, 1, 1],
                format!("{p}._bn0"),
            )?;
        }
        conv(
            format!("{p}._depthwise_conv"),
            &[b.expanded(), 1, b.kernel, b.kernel],
            format!("{p}._bn1"),
        )?;
        conv(
            format!("{p}._project_conv"),
            &[b.output, b.expanded(), 1, 1],
            format!("{p}._bn2"),
        )?;
    }
    let last = blocks.last().map(|b| b.output).unwrap_or(0);
    conv("_conv_head".into(), &[HEAD_WIDTH, last, 1, 1], "_bn1".into())?;
    out.push((
        "_fc.weight".into(),
        read_f32_shaped(&st, "_fc.weight", file, &[cfg.num_classes, HEAD_WIDTH])?,
    ));
    out.push((
        "_fc.bias".into(),
        read_f32_shaped(&st, "_fc.bias", file, &[cfg.num_classes])?,
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_equals_the_batch_norm_of_the_convolution() {
        // A 1×1 convolution of 2 inputs to 3 outputs on one pixel, then batch norm, by hand.
        let w = Tensor::new(vec![3, 2, 1, 1], vec![1.0, -2.0, 0.5, 0.25, 3.0, 1.0]).unwrap();
        let v = |x: [f32; 3]| Tensor::new(vec![3], x.to_vec()).unwrap();
        let (g, beta, mean, var) = (
            v([2.0, 0.5, -1.0]),
            v([0.1, -0.2, 0.3]),
            v([0.4, 1.0, -2.0]),
            v([3.0, 0.25, 1.0]),
        );
        let bn = BatchNorm {
            weight: &g,
            bias: &beta,
            running_mean: &mean,
            running_var: &var,
            eps: 1e-3,
        };
        let (wf, bf) = fold_batch_norm(&w, &bn).unwrap();
        let x = [0.7f64, -1.3];
        for o in 0..3 {
            let conv: f64 = (0..2).map(|i| w.data()[o * 2 + i] as f64 * x[i]).sum();
            let want = (conv - mean.data()[o] as f64) / (var.data()[o] as f64 + 1e-3).sqrt() * g.data()[o] as f64
                + beta.data()[o] as f64;
            let got: f64 = (0..2).map(|i| wf.data()[o * 2 + i] as f64 * x[i]).sum::<f64>() + bf.data()[o] as f64;
            assert!((got - want).abs() < 1e-6, "channel {o}: {got} vs {want}");
        }
        let short = v([1.0, 1.0, 1.0]).reshape(vec![3]).unwrap();
        let two = Tensor::new(vec![2], vec![1.0, 1.0]).unwrap();
        let bad = BatchNorm {
            weight: &two,
            bias: &short,
            running_mean: &short,
            running_var: &short,
            eps: 1e-3,
        };
        assert!(matches!(fold_batch_norm(&w, &bad), Err(Error::Shape { .. })));
    }
}
