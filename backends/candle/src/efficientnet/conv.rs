//! A convolution with its batch norm folded in (`adp_api::fold`) and TensorFlow's "SAME" padding,
//! computed from the actual input: output side `ceil(i / s)`, the odd pixel of padding at the
//! bottom / right (asymmetric for stride 2).
use adp_api::layout::same_padding;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub struct SameConv {
    weight: Tensor,
    /// Depthwise only: the kernel's k² taps, each `[1, C, 1, 1, 1, 1]` (see [`depthwise`]).
    taps: Vec<Tensor>,
    /// Depthwise on the CPU: the same weights for [`DepthwiseCpu`].
    cpu: Option<DepthwiseCpu>,
    /// `[1, C, 1, 1]`, the folded batch norm's shift.
    bias: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
}

impl SameConv {
    /// `vb` at the convolution's name (`…_depthwise_conv`): reads `weight` and the folded `bias`.
    pub fn new(
        vb: VarBuilder,
        input: usize,
        output: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Result<Self> {
        let weight = vb.get((output, input / groups, kernel, kernel), "weight")?;
        let taps = if groups > 1 && groups == input && input == output {
            let flat = weight.reshape((output, kernel * kernel))?;
            (0..kernel * kernel)
                .map(|t| flat.narrow(1, t, 1)?.reshape((1, output, 1, 1, 1, 1)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let cpu = match (taps.is_empty(), weight.device()) {
            (false, candle_core::Device::Cpu) => Some(DepthwiseCpu {
                weight: weight.flatten_all()?.to_vec1::<f32>()?,
                k: kernel,
                s: stride,
            }),
            _ => None,
        };
        Ok(Self {
            weight,
            taps,
            cpu,
            bias: vb.get(output, "bias")?.reshape((1, output, 1, 1))?,
            kernel,
            stride,
            groups,
        })
    }
}

impl Module for SameConv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let x = if top + bottom + left + right == 0 {
            x.clone()
        } else {
            x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?
        };
        if self.taps.is_empty() {
            x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
                .broadcast_add(&self.bias)
        } else if let (Some(op), candle_core::Device::Cpu) = (&self.cpu, x.device()) {
            x.contiguous()?.apply_op1_no_bwd(op)?.broadcast_add(&self.bias)
        } else {
            depthwise(&x, &self.taps, self.kernel, self.stride)?.broadcast_add(&self.bias)
        }
    }
}

/// A depthwise convolution of the padded `x` `[N, C, Hp, Wp]` as the sum of its k² shifted,
/// per-channel-scaled views: candle's grouped `conv2d` runs one convolution per channel, which
/// made the whole network about twice as slow on the CPU. A stride s is a reshape `[…, Hp/s, s, Wp/s, s]`: tap (dy, dx) reads rows
/// `dy + s·i` = `s·(dy / s + i) + dy % s`.
fn depthwise(x: &Tensor, taps: &[Tensor], k: usize, s: usize) -> Result<Tensor> {
    let (n, c, hp, wp) = x.dims4()?;
    let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
    let (hq, wq) = (hp.div_ceil(s), wp.div_ceil(s));
    let x = x
        .pad_with_zeros(2, 0, hq * s - hp)?
        .pad_with_zeros(3, 0, wq * s - wp)?
        .reshape((n, c, hq, s, wq, s))?;
    let tap = |t: usize| {
        let (dy, dx) = (t / k, t % k);
        x.narrow(2, dy / s, ho)?
            .narrow(3, dy % s, 1)?
            .narrow(4, dx / s, wo)?
            .narrow(5, dx % s, 1)?
            .broadcast_mul(&taps[t])
    };
    let mut acc = tap(0)?;
    for t in 1..k * k {
        acc = (acc + tap(t)?)?;
    }
    acc.reshape((n, c, ho, wo))
}

/// The depthwise convolution on the CPU as one pass per output plane (planes in parallel):
/// the k² shifted views cost a full tensor each, which made them a fifth of the network's time.
struct DepthwiseCpu {
    /// `[C, k, k]`, row-major.
    weight: Vec<f32>,
    k: usize,
    s: usize,
}

impl candle_core::CustomOp1 for DepthwiseCpu {
    fn name(&self) -> &'static str {
        "efficientnet-depthwise"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("depthwise: input not contiguous".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        let (n, c, hp, wp) = layout.shape().dims4()?;
        let (k, s) = (self.k, self.s);
        let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut(ho * wo).enumerate().for_each(|(plane, o)| {
            let xp = &x[plane * hp * wp..(plane + 1) * hp * wp];
            let w = &self.weight[(plane % c) * k * k..(plane % c + 1) * k * k];
            for (oy, row) in o.chunks_mut(wo).enumerate() {
                for dy in 0..k {
                    let xr = &xp[(oy * s + dy) * wp..(oy * s + dy + 1) * wp];
                    for dx in 0..k {
                        let wt = w[dy * k + dx];
                        if s == 1 {
                            for (r, v) in row.iter_mut().zip(&xr[dx..dx + wo]) {
                                *r += wt * v;
                            }
                        } else {
                            for (ox, r) in row.iter_mut().enumerate() {
                                *r += wt * xr[ox * s + dx];
                            }
                        }
                    }
                }
            }
        });
        Ok((candle_core::CpuStorage::F32(out), (n, c, ho, wo).into()))
    }
}

/// ReLU6, the Lite models' activation.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depthwise_equals_grouped_conv2d() {
        let dev = candle_core::Device::Cpu;
        for (k, s, h, w) in [(3, 1, 9, 7), (3, 2, 9, 8), (5, 2, 12, 11), (5, 1, 6, 6)] {
            let x = Tensor::arange(0f32, (2 * 4 * h * w) as f32, &dev)
                .unwrap()
                .reshape((2, 4, h, w))
                .unwrap()
                .sin()
                .unwrap();
            let weight = Tensor::arange(0f32, (4 * k * k) as f32, &dev)
                .unwrap()
                .reshape((4, 1, k, k))
                .unwrap()
                .cos()
                .unwrap();
            let flat = weight.reshape((4, k * k)).unwrap();
            let taps: Vec<Tensor> = (0..k * k)
                .map(|t| flat.narrow(1, t, 1).unwrap().reshape((1, 4, 1, 1, 1, 1)).unwrap())
                .collect();
            let want = x.conv2d(&weight, 0, s, 1, 4).unwrap();
            let op = DepthwiseCpu {
                weight: weight.flatten_all().unwrap().to_vec1().unwrap(),
                k,
                s,
            };
            for (how, got) in [
                ("shifted views", depthwise(&x, &taps, k, s).unwrap()),
                ("CPU kernel", x.apply_op1_no_bwd(&op).unwrap()),
            ] {
                assert_eq!(got.dims(), want.dims(), "{how}: k {k} s {s} {h}×{w}");
                let diff = crate::testing::max_diff(&got, &want);
                assert!(diff < 1e-5, "{how}: k {k} s {s} {h}×{w}: {diff}");
            }
        }
    }
}
