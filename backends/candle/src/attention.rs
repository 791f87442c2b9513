//! Memory-efficient scaled dot-product attention, `softmax(q·kᵀ/√d)·v`, as one candle custom op.
//!
//! Composed of tensor ops, attention keeps every intermediate of the `[B, H, T_q, T_kv]` scores
//! for the backward pass: at 768 px the SD 2.1 UNet attends 9216 latent tokens to each other, so
//! each such intermediate is 1.7 GB in f32 and a concept-learning step needed more than 24 GB.
//! This op keeps only q, k, v and the output; the forward and the backward pass both walk the
//! query rows in chunks whose scores stay under [`CHUNK_SCORES`], and the backward pass recomputes
//! each chunk's probabilities instead of storing them. Scores, softmax and products are computed
//! in f32 whatever the inputs' dtype, as the softmax was before (see `crate::nn`). On the CPU both
//! passes run fused instead ([`attention_cpu`]: blocks of scores in the cores' caches); the chunks
//! of candle ops serve the GPUs.
use crate::attention_cpu;
use crate::storage::copy_out_view;
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, D};

/// Most f32 scores one chunk of query rows may hold: 2^25, 128 MiB. The backward pass keeps about
/// five chunk-sized tensors at once (probabilities, their gradient, transposes), so attention's
/// transient memory stays under a GiB, while chunks stay large enough (hundreds of query rows at
/// SD's 9216 tokens) for the matrix products to run at full speed.
const CHUNK_SCORES: usize = 1 << 25;

/// `softmax(q·kᵀ/√d)·v` over `q: [B, H, T_q, D]`, `k: [B, H, T_kv, D]`, `v: [B, H, T_kv, D_v]`,
/// giving `[B, H, T_q, D_v]` in q's dtype, differentiable in all three.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    apply(q, k, v, CHUNK_SCORES, true, None)
}

/// [`attention`] whose value is known already: `out`, computed earlier from the same q, k and v.
/// A node for the backward pass at the cost of a copy, not of a forward pass (the recomputation of
/// a checkpointed block, `crate::checkpoint::Memo`).
pub fn attention_with_output(q: &Tensor, k: &Tensor, v: &Tensor, out: &Tensor) -> Result<Tensor> {
    apply(q, k, v, CHUNK_SCORES, true, Some(out.detach()))
}

/// [`attention`] composed of chunks of at most `max_scores` scores (at least one query row per
/// chunk) on the CPU too, where it is otherwise fused: tests force chunks smaller than the sequence.
#[cfg(test)]
fn attention_chunked(q: &Tensor, k: &Tensor, v: &Tensor, max_scores: usize) -> Result<Tensor> {
    apply(q, k, v, max_scores, false, None)
}

fn apply(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    max_scores: usize,
    fused_cpu: bool,
    output: Option<Tensor>,
) -> Result<Tensor> {
    let _t = crate::op_times::forward("attention", q.dims());
    let (b, h, _, d) = q.dims4()?;
    let (kb, kh, tkv, kd) = k.dims4()?;
    let (vb, vh, vt, _) = v.dims4()?;
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vt) != (b, h, tkv) {
        bail!(
            "attention: q {:?}, k {:?} and v {:?} do not fit [B, H, T_q, D], [B, H, T_kv, D], [B, H, T_kv, D_v]",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if q.dtype() != k.dtype() || q.dtype() != v.dtype() {
        bail!(
            "attention: q, k and v differ in dtype ({:?}, {:?}, {:?})",
            q.dtype(),
            k.dtype(),
            v.dtype()
        );
    }
    if let Some(o) = &output {
        let expected = [b, h, q.dim(2)?, v.dim(3)?];
        if o.dims() != expected || o.dtype() != q.dtype() {
            bail!(
                "attention: a known output of {:?} ({:?}) for q {:?}, v {:?}",
                o.dims(),
                o.dtype(),
                q.dims(),
                v.dims()
            );
        }
    }
    q.apply_op3(
        k,
        v,
        ChunkedAttention {
            scale: 1.0 / (d as f64).sqrt(),
            max_scores,
            fused_cpu,
            output,
        },
    )
}

struct ChunkedAttention {
    scale: f64,
    max_scores: usize,
    /// On the CPU, f32: the fused kernels of [`attention_cpu`] instead of chunks.
    fused_cpu: bool,
    /// The forward pass's result, known beforehand ([`attention_with_output`]).
    output: Option<Tensor>,
}

impl ChunkedAttention {
    /// Query rows per chunk for `[B, H, ·, T_kv]` scores.
    fn rows(&self, q: &Tensor, k: &Tensor) -> Result<usize> {
        let (b, h, _, _) = q.dims4()?;
        let tkv = k.dim(2)?;
        Ok((self.max_scores / (b * h * tkv).max(1)).max(1))
    }

    /// The forward pass on tensors without autograd.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let dtype = q.dtype();
        let (q, k, v) = (f32(q)?, f32(k)?, f32(v)?);
        let rows = self.rows(&q, &k)?;
        let kt = k.t()?;
        let mut out = Vec::new();
        for (start, n) in chunks(q.dim(2)?, rows) {
            let qc = (q.narrow(2, start, n)? * self.scale)?.contiguous()?;
            let p = candle_nn::ops::softmax_last_dim(&qc.matmul(&kt)?)?;
            out.push(p.matmul(&v)?);
        }
        Tensor::cat(&out, 2)?.to_dtype(dtype)
    }

    /// Runs [`Self::forward`] on one backend's storages: copies them into contiguous tensors
    /// (a layout may be strided or start at an offset), computes, and copies the result out.
    fn fwd<S, Dev>(
        &self,
        inputs: [(&S, &Layout); 3],
        wrap: fn(S) -> Storage,
        unwrap: fn(&Storage) -> Option<&S>,
    ) -> Result<(S, Shape)>
    where
        S: BackendStorage<Device = Dev>,
        Dev: BackendDevice<Storage = S>,
    {
        let tensor = |(s, l): (&S, &Layout)| -> Result<Tensor> {
            let mut dst = s.device().zeros_impl(l.shape(), s.dtype())?;
            s.copy_strided_src(&mut dst, 0, l)?;
            Ok(Tensor::from_storage(
                wrap(dst),
                l.shape().clone(),
                BackpropOp::none(),
                false,
            ))
        };
        let [q, k, v] = inputs;
        let out = self.forward(&tensor(q)?, &tensor(k)?, &tensor(v)?)?;
        let (storage, layout) = out.storage_and_layout();
        let Some(s) = unwrap(&storage) else {
            bail!("attention: the output landed on another device than the inputs")
        };
        let mut dst = s.device().zeros_impl(layout.shape(), s.dtype())?;
        s.copy_strided_src(&mut dst, 0, layout)?;
        Ok((dst, layout.shape().clone()))
    }
}

impl ChunkedAttention {
    /// A copy of the known output's storage, if there is one (its shape was checked in `apply`).
    fn known<S>(&self, unwrap: fn(Storage) -> Option<S>) -> Result<Option<(S, Shape)>> {
        let Some(o) = &self.output else { return Ok(None) };
        match unwrap(copy_out_view(o)?) {
            Some(s) => Ok(Some((s, o.shape().clone()))),
            None => bail!("attention: the known output lies on another device than q"),
        }
    }

    /// f32 inputs, each contiguous: the fused CPU kernel, reading them in place.
    fn fused_cpu(&self, inputs: [(&CpuStorage, &Layout); 3]) -> Option<(CpuStorage, Shape)> {
        if !self.fused_cpu {
            return None;
        }
        let [q, k, v] = inputs.map(|(s, l)| match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(data), Some((start, end))) => Some(&data[start..end]),
            _ => None,
        });
        let (q, k, v) = (q?, k?, v?);
        let (b, h, tq, d) = inputs[0].1.shape().dims4().ok()?;
        let (_, _, tk, dv) = inputs[2].1.shape().dims4().ok()?;
        let dims = attention_cpu::Dims {
            bh: b * h,
            tq,
            tk,
            d,
            dv,
        };
        let mut out = vec![0f32; b * h * tq * dv];
        attention_cpu::forward(q, k, v, dims, self.scale as f32, &mut out);
        Some((CpuStorage::F32(out), Shape::from((b, h, tq, dv))))
    }
}

impl ChunkedAttention {
    /// On the CPU, with no size zero: the fused backward pass over `[q, k, v, out, grad_out]`
    /// (contiguous f32), giving `[dq, dk, dv]`.
    fn fused_cpu_bwd(&self, t: [&Tensor; 5]) -> Result<Option<[Tensor; 3]>> {
        let [q, k, v, _, _] = t;
        if !self.fused_cpu || !q.device().is_cpu() || t.iter().any(|x| x.elem_count() == 0) {
            return Ok(None);
        }
        let (b, h, tq, d) = q.dims4()?;
        let (_, _, tk, dv) = v.dims4()?;
        let dims = attention_cpu::Dims {
            bh: b * h,
            tq,
            tk,
            d,
            dv,
        };
        let [q_, k_, v_, o_, go_] = t.map(|x| x.flatten_all().and_then(|x| x.to_vec1::<f32>()));
        let (dq, dk, dvs) = attention_cpu::backward(&q_?, &k_?, &v_?, &o_?, &go_?, dims, self.scale as f32);
        let dev = q.device();
        Ok(Some([
            Tensor::from_vec(dq, q.shape(), dev)?,
            Tensor::from_vec(dk, k.shape(), dev)?,
            Tensor::from_vec(dvs, v.shape(), dev)?,
        ]))
    }
}

impl CustomOp3 for ChunkedAttention {
    fn name(&self) -> &'static str {
        "chunked-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if let Some(known) = self.known(|s| match s {
            Storage::Cpu(s) => Some(s),
            _ => None,
        })? {
            return Ok(known);
        }
        if let Some(fused) = self.fused_cpu([(s1, l1), (s2, l2), (s3, l3)]) {
            return Ok(fused);
        }
        self.fwd([(s1, l1), (s2, l2), (s3, l3)], Storage::Cpu, crate::storage::cpu)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if let Some(known) = self.known(|s| match s {
            Storage::Cuda(s) => Some(s),
            _ => None,
        })? {
            return Ok(known);
        }
        self.fwd([(s1, l1), (s2, l2), (s3, l3)], Storage::Cuda, crate::storage::cuda)
    }

    /// Recomputes each chunk's probabilities `P` and accumulates the standard gradients:
    /// `dV += Pᵀ·dO`, `dS = P ⊙ (dO·Vᵀ − rowsum(dO ⊙ O))`, `dQ = dS·K·scale`, `dK += dSᵀ·Q·scale`.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Dims of the scores: [B, H, T_q, T_kv].
        let _t = crate::op_times::backward("attention", &[&q.dims()[..3], &k.dims()[2..3]].concat());
        // Detached: the gradients are plain values, and a graph through the chunks would keep
        // every chunk's intermediates alive as long as the gradients.
        let [qf, kf, vf, o, go] = [q, k, v, out, grad_out].map(Tensor::detach);
        let (qf, kf, vf, o, go) = (f32(&qf)?, f32(&kf)?, f32(&vf)?, f32(&o)?, f32(&go)?);
        if let Some([dq, dk, dv]) = self.fused_cpu_bwd([&qf, &kf, &vf, &o, &go])? {
            return Ok((
                Some(dq.to_dtype(q.dtype())?),
                Some(dk.to_dtype(k.dtype())?),
                Some(dv.to_dtype(v.dtype())?),
            ));
        }
        let rows = self.rows(&qf, &kf)?;
        let (kt, vt) = (kf.t()?, vf.t()?);
        let mut dq = Vec::new();
        let mut dk = kf.zeros_like()?;
        let mut dv = vf.zeros_like()?;
        for (start, n) in chunks(qf.dim(2)?, rows) {
            let qc = (qf.narrow(2, start, n)? * self.scale)?.contiguous()?;
            let goc = go.narrow(2, start, n)?.contiguous()?;
            let p = candle_nn::ops::softmax_last_dim(&qc.matmul(&kt)?)?;
            dv = (dv + p.t()?.contiguous()?.matmul(&goc)?)?;
            let delta = (&goc * o.narrow(2, start, n)?)?.sum_keepdim(D::Minus1)?;
            let ds = (p * goc.matmul(&vt)?.broadcast_sub(&delta)?)?;
            dq.push((ds.matmul(&kf)? * self.scale)?);
            // qc already carries the scale.
            dk = (dk + ds.t()?.contiguous()?.matmul(&qc)?)?;
        }
        let dq = Tensor::cat(&dq, 2)?;
        Ok((
            Some(dq.to_dtype(q.dtype())?),
            Some(dk.to_dtype(k.dtype())?),
            Some(dv.to_dtype(v.dtype())?),
        ))
    }
}

/// `x` as a contiguous f32 tensor.
fn f32(x: &Tensor) -> Result<Tensor> {
    x.to_dtype(DType::F32)?.contiguous()
}

/// `(start, len)` of consecutive chunks of at most `rows` rows covering `0..total`.
fn chunks(total: usize, rows: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..total)
        .step_by(rows.max(1))
        .map(move |start| (start, rows.max(1).min(total - start)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Largest allowed |chunked − naive|, relative to max(1, max |naive|). f32 only reorders
    /// sums; f16 rounds the inputs' gradient, the output and the gradients to 11 bits (2^-11 ≈
    /// 5e-4) on top, and sums of such terms over the keys add a few of those.
    fn tolerance(dtype: DType) -> f32 {
        match dtype {
            DType::F32 => 1e-4,
            _ => 5e-3,
        }
    }

    /// Deterministic values in [-2, 2) (xorshift), so that the softmax is far from uniform.
    fn random(dims: &[usize], seed: u64) -> Result<Tensor> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let n = dims.iter().product::<usize>();
        let values = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect::<Vec<_>>();
        Tensor::from_vec(values, dims, &Device::Cpu)
    }

    /// The composition the op replaces: matmul, candle-nn's softmax, matmul, in f32.
    fn naive(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        let scores = (q.matmul(&k.t()?)? / (q.dim(3)? as f64).sqrt())?;
        candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
    }

    fn assert_close(what: &str, got: &Tensor, want: &Tensor, dtype: DType) -> Result<()> {
        assert_eq!(got.dims(), want.dims(), "{what}: shape");
        let got = got.to_dtype(DType::F32)?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?.max(1.0);
        let diff = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff <= tolerance(dtype) * scale,
            "{what} ({dtype:?}): max |diff| {diff} > {} × {scale}",
            tolerance(dtype)
        );
        Ok(())
    }

    /// Output and the three gradients of `sum(out ⊙ w)` against [`naive`] in f32 on the same
    /// (dtype-rounded) inputs, for `dims = [B, H, T_q, T_kv, D, D_v]` and chunks of `rows` query
    /// rows.
    fn check(dims: [usize; 6], rows: usize, dtype: DType) -> Result<()> {
        let [b, h, tq, tkv, d, dv] = dims;
        let what = format!("b{b} h{h} tq{tq} tkv{tkv} d{d} dv{dv} rows{rows}");
        let inputs = [
            random(&[b, h, tq, d], 1)?,
            random(&[b, h, tkv, d], 2)?,
            random(&[b, h, tkv, dv], 3)?,
        ]
        .map(|x| x.to_dtype(dtype).unwrap());
        let w = random(&[b, h, tq, dv], 4)?;
        let run = |inputs: &[Tensor; 3],
                   f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>|
         -> Result<(Tensor, Vec<Tensor>)> {
            let vars = inputs.iter().map(Var::from_tensor).collect::<Result<Vec<_>>>()?;
            let out = f(vars[0].as_tensor(), vars[1].as_tensor(), vars[2].as_tensor())?.to_dtype(DType::F32)?;
            let grads = (&out * &w)?.sum_all()?.backward()?;
            let grads = vars.iter().map(|v| grads.get(v.as_tensor()).unwrap().clone()).collect();
            Ok((out, grads))
        };
        let (want, want_grads) = run(&inputs.clone().map(|x| x.to_dtype(DType::F32).unwrap()), &naive)?;
        let chunked = |q: &Tensor, k: &Tensor, v: &Tensor| attention_chunked(q, k, v, b * h * tkv * rows);
        // The output computed once, untracked, then given as known: the node's gradients.
        let known = |q: &Tensor, k: &Tensor, v: &Tensor| {
            let out = attention(&q.detach(), &k.detach(), &v.detach())?;
            attention_with_output(q, k, v, &out)
        };
        for (how, f) in [
            (
                "chunked",
                &chunked as &dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
            ),
            ("fused", &attention),
            ("known", &known),
        ] {
            let (out, grads) = run(&inputs, f)?;
            assert_close(&format!("{what} {how} out"), &out, &want, dtype)?;
            for ((name, got), want) in ["dq", "dk", "dv"].iter().zip(&grads).zip(&want_grads) {
                assert_eq!(got.dtype(), dtype, "{what} {how} {name} dtype");
                assert_close(&format!("{what} {how} {name}"), got, want, dtype)?;
            }
        }
        Ok(())
    }

    #[test]
    fn matches_the_naive_composition_f32() -> Result<()> {
        // One chunk; chunks not dividing T_q with T_q ≠ T_kv and batch 2; one row per chunk;
        // cross-attention-like (few keys, D_v ≠ D).
        check([1, 1, 5, 5, 4, 4], 100, DType::F32)?;
        check([2, 3, 10, 7, 8, 8], 3, DType::F32)?;
        check([2, 2, 9, 9, 4, 4], 1, DType::F32)?;
        check([1, 2, 16, 5, 4, 6], 7, DType::F32)
    }

    #[test]
    fn matches_the_naive_composition_f16() -> Result<()> {
        check([2, 3, 10, 7, 8, 8], 3, DType::F16)?;
        check([1, 2, 16, 5, 4, 6], 7, DType::F16)
    }

    #[test]
    fn a_known_output_of_another_shape_is_refused() -> Result<()> {
        let (q, k, v) = (
            random(&[1, 2, 5, 4], 1)?,
            random(&[1, 2, 3, 4], 2)?,
            random(&[1, 2, 3, 6], 3)?,
        );
        let wrong = random(&[1, 2, 5, 4], 4)?;
        let e = attention_with_output(&q, &k, &v, &wrong).unwrap_err().to_string();
        assert!(e.contains("[1, 2, 5, 4]") && e.contains("known output"), "{e}");
        Ok(())
    }

    #[test]
    fn reads_strided_and_offset_inputs() -> Result<()> {
        // [B, T, H, D] → [B, H, T, D] without a copy, then a slice not starting at 0.
        let view = |x: Tensor| -> Result<Tensor> { x.transpose(1, 2)?.narrow(2, 1, 6) };
        let q = view(random(&[2, 8, 3, 4], 5)?)?;
        let k = view(random(&[2, 8, 3, 4], 6)?)?;
        let v = view(random(&[2, 8, 3, 4], 7)?)?;
        assert!(!q.is_contiguous());
        let want = naive(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?)?;
        assert_close(
            "strided",
            &attention_chunked(&q, &k, &v, 2 * 3 * 6 * 4)?,
            &want,
            DType::F32,
        )?;
        assert_close("strided, fused", &attention(&q, &k, &v)?, &want, DType::F32)
    }

    #[test]
    fn refuses_mismatched_shapes() -> Result<()> {
        let q = random(&[1, 2, 4, 8], 1)?;
        let k = random(&[1, 2, 5, 4], 2)?;
        assert!(attention(&q, &k, &k).is_err());
        assert!(attention(&q, &q, &q.to_dtype(DType::F16)?).is_err());
        assert!(attention(&q.flatten_all()?, &q, &q).is_err());
        Ok(())
    }
}
