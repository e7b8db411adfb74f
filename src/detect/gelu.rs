//! Exact GELU on flex from a vectorised kernel.
//!
//! Flex computes GELU one element at a time with libm's `erff` (branchy, so never
//! vectorised), on the calling thread, and its backward calls `erff` and `exp` again: 7 % of a
//! 1-thread detector training step and 7.5 % of scoring in the profile of
//! docs/benchmarks.md, where PyTorch runs a vectorised `erf`. Here one branch-free pass over
//! the input gives GELU's value and, when training, its slope; the compiler vectorises it
//! (8 lanes with AVX2). It runs on the calling thread: split over rayon's pool it slowed
//! sharded training, where a shard waiting on its own chunks can be handed another shard's
//! work.
//!
//! Under autodiff the gradient comes from a surrogate, as in [`super::fused`]: with the slope
//! `s` and the offset `c = v - s x` held constant, `s x + c` has GELU's value `v` (to one
//! rounding) and its gradient. `erf` is a rational approximation (max error 4.8e-7 in f32
//! against libm's; a test holds it to 5e-7), so values differ from Burn's by about one part
//! in 10^7: results are not bit-identical with the composition, the same up to rounding.
//! Elsewhere than flex (a GPU) it is Burn's `gelu`.

use burn::tensor::{DType, Device, Tensor, TensorData, activation};

/// Exact GELU, `x Φ(x)`, of `x` (any shape), with its gradient under autodiff.
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.device() != Device::flex() || x.dtype() != DType::F32 {
        return activation::gelu(x);
    }
    let shape = x.shape();
    if !x.is_autodiff() {
        let device = x.device();
        let mut values = x.into_data().try_into_vec::<f32>().expect("an f32 tensor");
        gelu_in_place(&mut values);
        return Tensor::from_data(TensorData::new(values, shape), &device);
    }
    let plain = x.clone().inner();
    let device = plain.device();
    let input = plain.into_data();
    let input = input.as_slice::<f32>().expect("an f32 tensor");
    let mut slope = vec![0f32; input.len()];
    let mut offset = vec![0f32; input.len()];
    slope_and_offset(input, &mut slope, &mut offset);
    let slope = Tensor::<D>::from_data(TensorData::new(slope, shape.clone()), &device);
    let offset = Tensor::<D>::from_data(TensorData::new(offset, shape), &device);
    x * slope + offset
}

crate::simd::avx2_dispatch! {
    /// `values[i] = gelu(values[i])`, 8 lanes at a time with AVX2 (the results do not depend on
    /// the CPU).
    fn gelu_in_place(values: &mut [f32]) => gelu_in_place_kernel
}

#[inline(always)]
fn gelu_in_place_kernel(values: &mut [f32]) {
    for v in values.iter_mut() {
        let x = *v;
        *v = 0.5 * x * (1.0 + erf(x * FRAC_1_SQRT_2));
    }
}

crate::simd::avx2_dispatch! {
    /// GELU's slope `Φ(x) + x φ(x)` and the offset `gelu(x) - slope x`, for each `x`.
    fn slope_and_offset(x: &[f32], slope: &mut [f32], offset: &mut [f32]) => slope_and_offset_kernel
}

#[inline(always)]
fn slope_and_offset_kernel(x: &[f32], slope: &mut [f32], offset: &mut [f32]) {
    for ((&x, s), c) in x.iter().zip(slope.iter_mut()).zip(offset.iter_mut()) {
        let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp_non_positive(-0.5 * x * x);
        let slope = cdf + x * pdf;
        *s = slope;
        *c = x * cdf - slope * x;
    }
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1 / sqrt(2 pi)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `erf(x)`: the rational approximation Eigen and XLA use for f32 (odd numerator of degree
/// 13 over an even denominator of degree 8, on `x` clamped to [-4, 4], where `erf` is 1 to
/// f32 precision). Branch-free, so a loop over it vectorises.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_2e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// `exp(x)` for `x <= 0` (larger inputs are not needed here): `2^n e^r` with `n` the nearest
/// integer to `x / ln 2` (rounded by adding 1.5 * 2^23, which vectorises where `round` is a
/// call), `r` in [-ln 2 / 2, ln 2 / 2] and `e^r` a degree-6 Taylor polynomial (relative error
/// below 2e-7). Inputs below -87 give `e^-87` (subnormal results are not needed: they
/// multiply a `x` of at least 13 into GELU's slope).
#[inline(always)]
fn exp_non_positive(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.max(-87.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 720.0_f32;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    // t's low mantissa bits hold n (|n| < 2^22): 2^n's exponent field is n + 127.
    let n_bits = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits(((n_bits + 127) as u32) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn erf_and_exp_match_the_reference() {
        // erf against flex's own (libm's `erff`, correctly rounded to about one ulp), on a
        // grid over [-18, 18] that reaches the clamp; exp against f64's.
        let xs: Vec<f32> = (-3_000_000..=3_000_000).map(|i| i as f32 * 6e-6).collect();
        let n = xs.len();
        let reference = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &Device::flex())
            .erf()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let worst_erf = xs
            .iter()
            .zip(&reference)
            .map(|(&x, &r)| (erf(x) - r).abs())
            .fold(0f32, f32::max);
        assert!(worst_erf < 5e-7, "erf: max abs error {worst_erf}");
        let worst_exp = xs
            .iter()
            .map(|&x| {
                let e = -x.abs() * 4.0; // [-72, 0]
                let exact = (e as f64).exp();
                ((exp_non_positive(e) as f64 - exact) / exact).abs()
            })
            .fold(0f64, f64::max);
        assert!(worst_exp < 4e-7, "exp: max relative error {worst_exp}");
        assert_eq!(exp_non_positive(-200.0), exp_non_positive(-87.0));
        assert_eq!(exp_non_positive(0.0), 1.0);
    }

    #[test]
    fn gelu_has_burns_value_and_gradient() {
        let device = Device::flex().autodiff();
        // Wide enough to reach both tails, with a non-multiple of the lanes and of BLOCK.
        let x = Tensor::<3>::random([3, 77, 301], Distribution::Normal(0.0, 4.0), &device);
        let weight = Tensor::<3>::random([3, 77, 301], Distribution::Normal(0.0, 1.0), &device);
        let x = x.detach().require_grad();
        let burn = activation::gelu(x.clone());
        let ours = gelu(x.clone());
        let diff = |a: Tensor<3>, b: Tensor<3>| -> f32 { (a - b).abs().max().into_scalar() };
        assert!(diff(burn.clone(), ours.clone()) < 4e-6, "values");
        let g_burn = x.grad(&(burn * weight.clone()).sum().backward()).unwrap();
        let g_ours = x.grad(&(ours * weight.clone()).sum().backward()).unwrap();
        assert!(diff(g_burn, g_ours) < 4e-6, "gradients");
        // Without autodiff: the in-place path, the same values as the tracked one.
        let plain = x.inner();
        let burn = activation::gelu(plain.clone());
        assert!(diff(burn, gelu(plain)) < 4e-6, "values without autodiff");
    }
}
