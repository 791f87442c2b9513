//! A convolution with its batch norm folded in (`adp_api::fold`) and TensorFlow's "SAME" padding,
//! computed from the actual input: output side `ceil(i / s)`, the odd pixel of padding at the
//! bottom / right (asymmetric for stride 2).
use super::cpu;
use adp_api::layout::same_padding;
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

pub struct SameConv {
    weight: Tensor,
    /// Depthwise only: the kernel's k² taps, each `[1, C, 1, 1, 1, 1]` (see [`depthwise`]).
    taps: Vec<Tensor>,
    /// On the CPU: the weights and bias as the kernels of [`super::cpu`] take them.
    cpu: Option<CpuWeights>,
    /// `[1, C, 1, 1]`, the folded batch norm's shift.
    bias: Tensor,
    kernel: usize,
    stride: usize,
    groups: usize,
}

/// The CPU copies of a convolution's weights.
struct CpuWeights {
    /// `[C_out, C_in·k²]`: for a 1×1 convolution at stride 1, the matrix of its product.
    weight: Tensor,
    /// `[C_out, C_in, k, k]` row-major: for a depthwise one, its kernel.
    flat: Vec<f32>,
    bias: Vec<f32>,
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
        let bias = vb.get(output, "bias")?;
        let depthwise = groups > 1 && groups == input && input == output;
        let taps = if depthwise {
            let flat = weight.reshape((output, kernel * kernel))?;
            (0..kernel * kernel)
                .map(|t| flat.narrow(1, t, 1)?.reshape((1, output, 1, 1, 1, 1)))
                .collect::<Result<_>>()?
        } else {
            Vec::new()
        };
        let cpu = match weight.device() {
            candle_core::Device::Cpu => Some(CpuWeights {
                weight: weight.reshape((output, input / groups * kernel * kernel))?,
                flat: weight.flatten_all()?.to_vec1::<f32>()?,
                bias: bias.to_vec1::<f32>()?,
            }),
            _ => None,
        };
        Ok(Self {
            weight,
            taps,
            cpu,
            bias: bias.reshape((1, output, 1, 1))?,
            kernel,
            stride,
            groups,
        })
    }

    /// The convolution plus its bias, then ReLU6 when `relu6`, then plus `skip` when given (the
    /// block's input): on the CPU in one pass after the product, elsewhere with candle's ops.
    pub fn forward_fused(&self, x: &Tensor, relu6: bool, skip: Option<&Tensor>) -> Result<Tensor> {
        if let (Some(w), true) = (&self.cpu, x.device().is_cpu()) {
            return self.forward_cpu(x, w, relu6, skip);
        }
        let mut y = self.forward(x)?;
        if relu6 {
            y = self::relu6(&y)?;
        }
        match skip {
            Some(s) => y + s,
            None => Ok(y),
        }
    }

    fn forward_cpu(&self, x: &Tensor, w: &CpuWeights, relu6: bool, skip: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous()?;
        let pointwise = self.kernel == 1 && self.stride == 1 && self.groups == 1;
        let (y, skip) = if !self.taps.is_empty() {
            let op = cpu::Depthwise {
                weight: &w.flat,
                bias: &w.bias,
                k: self.kernel,
                s: self.stride,
                relu6,
            };
            (x.apply_op1_no_bwd(&op)?, skip)
        } else if !pointwise {
            // The stem: candle's convolution, then bias and ReLU6 in place.
            let y = self
                .pad(&x)?
                .conv2d(&self.weight, 0, self.stride, 1, self.groups)?
                .contiguous()?;
            y.inplace_op1(&cpu::BiasAct { bias: &w.bias, relu6 })?;
            (y, skip)
        } else {
            // 1×1: `[C_out, C_in] × [N, C_in, H·W]`, no padding, straight into `[N, C_out, H·W]`.
            let (n, c, h, wd) = x.dims4()?;
            let y = w.weight.broadcast_matmul(&x.reshape((n, c, h * wd))?)?;
            let y = y.reshape((n, w.bias.len(), h, wd))?;
            match skip {
                Some(s) if !relu6 => {
                    y.inplace_op2(&s.contiguous()?, &cpu::BiasSkip { bias: &w.bias })?;
                    (y, None)
                }
                _ => {
                    y.inplace_op1(&cpu::BiasAct { bias: &w.bias, relu6 })?;
                    (y, skip)
                }
            }
        };
        match skip {
            Some(s) => y + s,
            None => Ok(y),
        }
    }

    /// `x` with its SAME padding.
    fn pad(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        if top + bottom + left + right == 0 {
            Ok(x.clone())
        } else {
            x.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)
        }
    }
}

impl Module for SameConv {
    /// The convolution plus its bias, with candle's ops on any device.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.pad(x)?;
        if self.taps.is_empty() {
            x.conv2d(&self.weight, 0, self.stride, 1, self.groups)?
                .broadcast_add(&self.bias)
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

/// ReLU6, the Lite models' activation.
pub fn relu6(x: &Tensor) -> Result<Tensor> {
    x.clamp(0f32, 6f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::collections::HashMap;

    fn wave(shape: &[usize], f: fn(&Tensor) -> Result<Tensor>) -> Tensor {
        let n = shape.iter().product::<usize>();
        f(&Tensor::arange(0f32, n as f32, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap())
        .unwrap()
    }

    fn conv(input: usize, output: usize, k: usize, s: usize, groups: usize) -> SameConv {
        let tensors = HashMap::from([
            ("weight".to_string(), wave(&[output, input / groups, k, k], Tensor::cos)),
            ("bias".to_string(), (wave(&[output], Tensor::sin) * 0.5).unwrap()),
        ]);
        SameConv::new(
            VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
            input,
            output,
            k,
            s,
            groups,
        )
        .unwrap()
    }

    /// candle's ops on the padded input, the reference for both fast paths.
    fn reference(c: &SameConv, x: &Tensor, relu6: bool, skip: Option<&Tensor>) -> Tensor {
        let (_, _, h, w) = x.dims4().unwrap();
        let ((t, b), (l, r)) = (same_padding(h, c.kernel, c.stride), same_padding(w, c.kernel, c.stride));
        let xp = x.pad_with_zeros(2, t, b).unwrap().pad_with_zeros(3, l, r).unwrap();
        let mut y = xp
            .conv2d(&c.weight, 0, c.stride, 1, c.groups)
            .unwrap()
            .broadcast_add(&c.bias)
            .unwrap();
        if relu6 {
            y = self::relu6(&y).unwrap();
        }
        skip.map_or(y.clone(), |s| (y + s).unwrap())
    }

    #[test]
    fn depthwise_paths_equal_grouped_conv2d() {
        // Odd and even sides, both strides, and inputs smaller than the kernel.
        for (k, s, h, w) in [
            (3, 1, 9, 7),
            (3, 2, 9, 8),
            (5, 2, 12, 11),
            (5, 1, 6, 6),
            (5, 2, 1, 1),
            (5, 1, 2, 3),
            (5, 1, 1, 1),
            (5, 2, 2, 1),
        ] {
            let c = conv(4, 4, k, s, 4);
            let x = wave(&[2, 4, h, w], Tensor::sin);
            for relu6 in [false, true] {
                let want = reference(&c, &x, relu6, None);
                let generic = {
                    let y = c.forward(&x).unwrap();
                    if relu6 {
                        self::relu6(&y).unwrap()
                    } else {
                        y
                    }
                };
                for (how, got) in [
                    ("shifted views", generic),
                    ("CPU kernel", c.forward_fused(&x, relu6, None).unwrap()),
                ] {
                    assert_eq!(got.dims(), want.dims(), "{how}: k {k} s {s} {h}×{w}");
                    let diff = crate::testing::max_diff(&got, &want);
                    assert!(diff < 1e-5, "{how}: k {k} s {s} {h}×{w} relu6 {relu6}: {diff}");
                }
            }
        }
    }

    #[test]
    fn stem_cpu_path_equals_conv2d() {
        let c = conv(3, 8, 3, 2, 1);
        for (h, w) in [(9, 12), (8, 8), (1, 2)] {
            let x = wave(&[2, 3, h, w], Tensor::sin);
            let diff = crate::testing::max_diff(
                &c.forward_fused(&x, true, None).unwrap(),
                &reference(&c, &x, true, None),
            );
            assert!(diff < 1e-5, "{h}×{w}: {diff}");
        }
    }

    #[test]
    fn pointwise_cpu_path_equals_conv2d() {
        let c = conv(6, 5, 1, 1, 1);
        let x = wave(&[3, 6, 5, 7], Tensor::sin);
        let skip = wave(&[3, 5, 5, 7], Tensor::cos);
        for (relu6, skip) in [(false, None), (true, None), (false, Some(&skip)), (true, Some(&skip))] {
            let got = c.forward_fused(&x, relu6, skip).unwrap();
            let diff = crate::testing::max_diff(&got, &reference(&c, &x, relu6, skip));
            assert!(diff < 1e-4, "relu6 {relu6} skip {}: {diff}", skip.is_some());
        }
    }
}
