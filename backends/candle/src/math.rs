//! Branch-free f32 `exp`, `erfc` and the logistic function, so that loops over slices vectorise:
//! libm's are scalar calls (candle's softmax, SiLU and GELU spent their time in `expf` and
//! `erff`, one value at a time). Accuracy is stated per function and tested against f64.

/// `e^x` for `x ≤ 88` to about 2 ulp (Cephes' `expf`: `x = n·ln 2 + r`, a degree-6 polynomial
/// for `e^r` on |r| ≤ ln 2 / 2, times `2^n`). Below −87.3 (where `e^x` leaves f32's normal range)
/// it gives `e^−87.3` ≈ 1.2e-38, not 0: nothing added to a term near 1 can tell. NaN stays NaN
/// (`f32::max` would drop it). No float-to-integer cast (Rust's saturates, one value at a time):
/// adding 1.5·2²³ rounds `x·log₂e` to the integer `n` and leaves it in the low mantissa bits,
/// from which `2^n`'s exponent field is built. No `mul_add` either: without FMA it is a libm call.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x };
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_2e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let y = p * (r * r) + r + 1.0;
    // `shifted`'s bits are ROUND's plus n: n ≥ −126 keeps it in ROUND's binade, where a unit is 1.
    let biased = shifted.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127);
    y * f32::from_bits(biased << 23)
}

/// `erfc(z)` for `z ≥ 0` (Numerical Recipes' `erfcc`, a Chebyshev fit of `erfc(z)·e^{z²}` in
/// `t = 1/(1 + z/2)`, relative error under 1.2e-7 in exact arithmetic). In f32, rounding `z²`
/// adds a relative error of about `z²·6e-8` (1e-6 at z = 4, 5e-6 at z = 9: values under 1e-35);
/// below about 1e-38 (z > 9.2) the result is that floor rather than 0.
#[inline(always)]
pub fn erfc(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = 0.170_872_77_f32;
    let p = p * t - 0.822_152_23;
    let p = p * t + 1.488_515_9;
    let p = p * t - 1.135_204;
    let p = p * t + 0.278_868_07;
    let p = p * t - 0.186_288_06;
    let p = p * t + 0.096_784_18;
    let p = p * t + 0.374_091_96;
    let p = p * t + 1.000_023_7;
    let p = p * t - 1.265_512_2;
    t * exp(p - z * z)
}

/// The normal distribution's CDF `Φ(x) = erfc(−x/√2)/2`, from the tail that does not cancel.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    let tail = 0.5 * erfc(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The logistic function `1 / (1 + e^{−x})`, from `e^{−|x|}` so that nothing overflows.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let e = exp(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        e * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x` from `lo` to `hi` in `n` steps.
    fn grid(lo: f32, hi: f32, n: usize) -> impl Iterator<Item = f32> {
        (0..=n).map(move |i| lo + (hi - lo) * i as f32 / n as f32)
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        for x in grid(-87.0, 88.0, 200_000) {
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 4e-7 * want, "exp({x}) = {got}, want {want}");
        }
        assert!(exp(-1e30) < 2e-38 && exp(f32::NEG_INFINITY) < 2e-38);
        assert!(exp(f32::NAN).is_nan());
    }

    /// f64 `erfc` by its continued fraction / series, precise enough to judge f32.
    fn erfc64(z: f64) -> f64 {
        if z < 0.0 {
            2.0 - erfc64(-z)
        } else if z < 2.0 {
            // erf by its Maclaurin series.
            let (mut term, mut sum, mut k) = (z, z, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                k += 1.0;
                term *= -z * z / k;
                sum += term / (2.0 * k + 1.0);
            }
            1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            // Lentz's continued fraction for erfc(z)·e^{z²}·√π.
            let mut f = z;
            for k in (1..200).rev() {
                f = z + (k as f64 / 2.0) / f;
            }
            (-z * z).exp() / (std::f64::consts::PI.sqrt() * f)
        }
    }

    #[test]
    fn erfc_and_the_normal_cdf_are_relatively_close() {
        // Relative: 1e-6, plus the rounding of z² (see `erfc`).
        let tolerance = |z: f64| 1e-6 + 1.2e-7 * z * z;
        for z in grid(0.0, 9.0, 50_000) {
            let (got, want) = (erfc(z) as f64, erfc64(z as f64));
            assert!(
                (got - want).abs() <= tolerance(z as f64) * want,
                "erfc({z}) = {got}, want {want}"
            );
        }
        for x in grid(-13.0, 13.0, 50_000) {
            let z = -(x as f64) / std::f64::consts::SQRT_2;
            let (got, want) = (normal_cdf(x) as f64, 0.5 * erfc64(z));
            // Relative in the lower tail; one f32 ulp of 1 in the upper.
            assert!(
                (got - want).abs() <= tolerance(z) * want + 1.2e-7,
                "Φ({x}) = {got}, want {want}"
            );
        }
        assert!(normal_cdf(f32::NAN).is_nan());
    }

    #[test]
    fn sigmoid_is_within_a_few_ulp() {
        for x in grid(-80.0, 80.0, 100_000) {
            let (got, want) = (sigmoid(x) as f64, 1.0 / (1.0 + (-(x as f64)).exp()));
            assert!((got - want).abs() <= 5e-7 * want, "σ({x}) = {got}, want {want}");
        }
        assert!(sigmoid(f32::NAN).is_nan());
    }
}
