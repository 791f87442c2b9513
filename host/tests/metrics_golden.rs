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
use adp_host::eval::metrics::{decision_rates, f1_max, Aupro};
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

/// Runs `check(golden, case)` on every case `case` = `{prefix}.{i}` of the golden (found by its
/// `key` tensor), after asserting that there are at least `min` of them (`what` names them).
fn each_case(prefix: &str, key: &str, min: usize, what: &str, mut check: impl FnMut(&Golden, &str)) {
    let bytes = std::fs::read(GOLDEN)
        .unwrap_or_else(|e| panic!("{GOLDEN}: {e} (regenerate with tools/golden/make_metrics_golden.py)"));
    let g = Golden(SafeTensors::deserialize(&bytes).unwrap());
    let n = g.cases(prefix, key);
    assert!(n >= min, "expected at least {min} {what} cases, found {n}");
    for i in 0..n {
        check(&g, &format!("{prefix}.{i}"));
    }
}

#[test]
fn f1_max_matches_sklearn() {
    each_case("f1", "scores", 3, "F1", |g, case| {
        let (_, scores) = g.f32s(&format!("{case}.scores"));
        let labels = g.bools(&format!("{case}.labels"));
        let want = g.f64_scalar(&format!("{case}.f1_max"));
        let (_, t) = g.f32s(&format!("{case}.threshold"));
        let got = f1_max(&scores, &labels).unwrap();
        eprintln!(
            "{case}: ours {:.12} at {} | sklearn {want:.12} at {}",
            got.f1, got.threshold, t[0]
        );
        assert!((got.f1 - want).abs() <= TOL, "{case}: {} vs {want}", got.f1);
        // The threshold is a score from the input, so it matches exactly.
        assert_eq!(got.threshold, t[0], "{case} threshold");
    });
}

/// A stored threshold's false-alarm and miss rates against scikit-learn's confusion matrix of
/// `scores > threshold`, including photos exactly at the threshold (not flagged). Counts over
/// counts: the same f64 division on both sides, so equal up to the last bit.
#[test]
fn decision_rates_match_sklearn() {
    each_case("rates", "scores", 12, "decision-rate", |g, case| {
        let (_, scores) = g.f32s(&format!("{case}.scores"));
        let labels = g.bools(&format!("{case}.labels"));
        let (_, t) = g.f32s(&format!("{case}.threshold"));
        let got = decision_rates(&scores, &labels, t[0]).unwrap();
        let (fa, miss) = (
            g.f64_scalar(&format!("{case}.false_alarm_rate")),
            g.f64_scalar(&format!("{case}.miss_rate")),
        );
        assert!((got.false_alarm_rate - fa).abs() <= 1e-12, "{case}: {got:?} vs {fa}");
        assert!((got.miss_rate - miss).abs() <= 1e-12, "{case}: {got:?} vs {miss}");
    });
}

#[test]
fn aupro_matches_mvtec_reference() {
    each_case("aupro", "maps", 4, "AUPRO", |g, case| {
        let (shape, maps) = g.f32s(&format!("{case}.maps"));
        let masks = g.bools(&format!("{case}.masks"));
        let (images, h, w) = (shape[0], shape[1], shape[2]);
        assert_eq!(masks.len(), maps.len());
        let limit = g.f64_scalar(&format!("{case}.limit"));
        let want = g.f64_scalar(&format!("{case}.aupro"));
        let mut acc = Aupro::new();
        for k in 0..images {
            let r = k * h * w..(k + 1) * h * w;
            acc.add(&maps[r.clone()], &masks[r], w, h).unwrap();
        }
        assert_eq!(
            acc.regions() as i64,
            g.i64_scalar(&format!("{case}.regions")),
            "{case}: 8-connected regions"
        );
        let got = acc.finish_at(limit).unwrap();
        let want64 = g.f64_scalar(&format!("{case}.aupro_f64"));
        eprintln!(
            "{case}: limit {limit} ours {got:.12} | reference {want:.12} (diff {:.1e}) | float64 port diff {:.1e}",
            (got - want).abs(),
            (got - want64).abs()
        );
        assert!((got - want).abs() <= TOL, "{case}: {got} vs {want}");
        // The same port with FPR in float64, as we compute it: only the summation order differs.
        assert!(
            (got - want64).abs() <= 1e-12,
            "{case}: {got} vs float64 reference {want64}"
        );
    });
}
