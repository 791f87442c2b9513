//! Image F1-max and AUPRO against the reference golden `conformance-tests/goldens/metrics.safetensors`.
//! That file is written by `tools/golden/make_metrics_golden.py`: F1-max from scikit-learn's
//! `precision_recall_curve`, AUPRO from a port of the MVTec AD evaluation script.
//!
//! The tolerance is 1e-6 absolute. Both sides compute the same exact counts, and the remaining
//! differences are all rounding:
//! - the reference keeps FPR in float32 (each value off by up to 2⁻²⁴ relative), which moves the
//!   generator's AUPRO by at most 9e-9 against float64 (its `aupro_float32_fpr_vs_float64_max_abs`
//!   metadata);
//! - the PRO sums and the trapezoid sum run in a different order. The golden also holds the
//!   reference port with FPR in float64 (`aupro_f64`), which we match to 1e-12;
//! - scikit-learn computes F1 as 2PR/(P+R) in floats, and we compute it as an exact ratio.
//!
//! Together these are around 1e-8, so 1e-6 leaves room and still catches any real difference in
//! definition. For example, 4-connected regions change every AUPRO case by more than 1e-4 (the
//! generator asserts this), and one threshold more or less changes F1 by at least 1/(2n).
use adp_host::eval::metrics::{f1_max, Aupro};
use safetensors::{Dtype, SafeTensors};

const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../conformance-tests/goldens/metrics.safetensors"
);
const TOL: f64 = 1e-6;

struct Golden<'a>(SafeTensors<'a>);

impl Golden<'_> {
    fn raw(&self, name: &str, dtype: Dtype) -> (Vec<usize>, &[u8]) {
        let t = self.0.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.dtype(), dtype, "{name}");
        (t.shape().to_vec(), t.data())
    }
    fn f32s(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, d) = self.raw(name, Dtype::F32);
        (
            shape,
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
    fn bools(&self, name: &str) -> Vec<bool> {
        let (_, d) = self.raw(name, Dtype::U8);
        assert!(d.iter().all(|&b| b <= 1), "{name} is not 0/1");
        d.iter().map(|&b| b == 1).collect()
    }
    fn f64_scalar(&self, name: &str) -> f64 {
        let (shape, d) = self.raw(name, Dtype::F64);
        assert_eq!(shape, [1], "{name}");
        f64::from_le_bytes(d.try_into().unwrap())
    }
    fn i64_scalar(&self, name: &str) -> i64 {
        let (shape, d) = self.raw(name, Dtype::I64);
        assert_eq!(shape, [1], "{name}");
        i64::from_le_bytes(d.try_into().unwrap())
    }
    /// How many cases `{prefix}.0.{key}`, `{prefix}.1.{key}`, … the file holds.
    fn cases(&self, prefix: &str, key: &str) -> usize {
        (0..)
            .take_while(|i| self.0.tensor(&format!("{prefix}.{i}.{key}")).is_ok())
            .count()
    }
}

fn golden_bytes() -> Vec<u8> {
    std::fs::read(GOLDEN)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e} (regenerate with tools/golden/make_metrics_golden.py)"))
}

#[test]
fn f1_max_matches_sklearn() {
    let bytes = golden_bytes();
    let g = Golden(SafeTensors::deserialize(&bytes).unwrap());
    let n = g.cases("f1", "scores");
    assert!(n >= 3, "expected at least 3 F1 cases, found {n}");
    for i in 0..n {
        let (_, scores) = g.f32s(&format!("f1.{i}.scores"));
        let labels = g.bools(&format!("f1.{i}.labels"));
        let want = g.f64_scalar(&format!("f1.{i}.f1_max"));
        let (_, t) = g.f32s(&format!("f1.{i}.threshold"));
        let got = f1_max(&scores, &labels).unwrap();
        eprintln!(
            "f1.{i}: ours {:.12} at {} | sklearn {want:.12} at {}",
            got.f1, got.threshold, t[0]
        );
        assert!((got.f1 - want).abs() <= TOL, "f1.{i}: {} vs {want}", got.f1);
        // The threshold is a score from the input, so it matches exactly.
        assert_eq!(got.threshold, t[0], "f1.{i} threshold");
    }
}

#[test]
fn aupro_matches_mvtec_reference() {
    let bytes = golden_bytes();
    let g = Golden(SafeTensors::deserialize(&bytes).unwrap());
    let n = g.cases("aupro", "maps");
    assert!(n >= 4, "expected at least 4 AUPRO cases, found {n}");
    for i in 0..n {
        let (shape, maps) = g.f32s(&format!("aupro.{i}.maps"));
        let masks = g.bools(&format!("aupro.{i}.masks"));
        let (images, h, w) = (shape[0], shape[1], shape[2]);
        assert_eq!(masks.len(), maps.len());
        let limit = g.f64_scalar(&format!("aupro.{i}.limit"));
        let want = g.f64_scalar(&format!("aupro.{i}.aupro"));
        let mut acc = Aupro::new();
        for k in 0..images {
            let r = k * h * w..(k + 1) * h * w;
            acc.add(&maps[r.clone()], &masks[r], w, h).unwrap();
        }
        assert_eq!(
            acc.regions() as i64,
            g.i64_scalar(&format!("aupro.{i}.regions")),
            "aupro.{i}: 8-connected regions"
        );
        let got = acc.finish_at(limit).unwrap();
        let want64 = g.f64_scalar(&format!("aupro.{i}.aupro_f64"));
        eprintln!(
            "aupro.{i}: limit {limit} ours {got:.12} | reference {want:.12} (diff {:.1e}) | float64 port diff {:.1e}",
            (got - want).abs(),
            (got - want64).abs()
        );
        assert!((got - want).abs() <= TOL, "aupro.{i}: {got} vs {want}");
        // The same port with FPR in float64, as we compute it: only the summation order differs.
        assert!(
            (got - want64).abs() <= 1e-12,
            "aupro.{i}: {got} vs float64 reference {want64}"
        );
    }
}
