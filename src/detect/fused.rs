//! Training-time ops that reach flex's fused kernels through autodiff.
//!
//! Burn 0.22's autodiff composes softmax and log-softmax from max, `exp`, sum and div (it has
//! no op of its own for them), and flex runs `exp` on the calling thread, while its fused
//! softmax (what a tensor without autodiff gets) is SIMD and row-parallel: on the detector's
//! attention shapes the composition takes 2-2.7x as long, forward and backward
//! (`fused_softmax_speed` below; docs/benchmarks.md). Each op here takes its *value* from the
//! fused kernel on the tensor without autodiff, and its *gradient* from a surrogate with the
//! same Jacobian: for a constant `v` and a tracked `z`, `v + (z - detach(z))` has the value
//! of `v` (`z - z` is exactly 0) and the gradient of `z`. Without autodiff they are Burn's own
//! functions.

use burn::tensor::activation;
use burn::tensor::{Int, Tensor};

/// Softmax along `dim`. Under autodiff, with `s = softmax(x)` from the fused kernel held
/// constant, the surrogate is `z = s * (x - sum(s * x))`: `dz/dx = diag(s) - s s^T`, softmax's
/// Jacobian.
pub fn softmax<const D: usize>(x: Tensor<D>, dim: usize) -> Tensor<D> {
    if !x.is_autodiff() {
        return activation::softmax(x, dim);
    }
    let s = activation::softmax(x.clone().inner(), dim);
    let centred = x.clone() - (x * s.clone()).sum_dim(dim);
    let z = centred * s.clone();
    z.clone() - z.detach() + s
}

/// Negative log-likelihood of `targets` under `logits` (`[batch, len, vocab]` ->
/// `[batch, len]`, nats): `-log_softmax(logits)` gathered at the targets.
///
/// Under autodiff: `log-sum-exp = max - log(max(s))` for `s = softmax(logits)` (fused; the
/// largest probability is at least `1 / vocab`, so its log is well conditioned), with the
/// gradient of the surrogate `sum(s * logits)`, whose Jacobian `s` is log-sum-exp's.
pub fn nll(logits: Tensor<3>, targets: Tensor<2, Int>) -> Tensor<2> {
    let [batch, len, _] = logits.dims();
    let at_targets = |t: Tensor<3>| t.gather(2, targets.clone().reshape([batch, len, 1]));
    if !logits.is_autodiff() {
        return at_targets(activation::log_softmax(logits, 2))
            .reshape([batch, len])
            .neg();
    }
    let plain = logits.clone().inner();
    let s = activation::softmax(plain.clone(), 2);
    let lse = plain.max_dim(2) - s.clone().max_dim(2).log();
    let surrogate = (logits.clone() * s).sum_dim(2);
    let lse = surrogate.clone() - surrogate.detach() + lse;
    (lse - at_targets(logits)).reshape([batch, len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn fused_softmax_has_burns_value_and_gradient() {
        let device = Device::flex().autodiff();
        let x = Tensor::<3>::random([5, 7, 33], Distribution::Normal(0.0, 3.0), &device);
        let weight = Tensor::<3>::random([5, 7, 33], Distribution::Normal(0.0, 1.0), &device);
        for dim in [2, 1] {
            let x = x.clone().detach().require_grad();
            let burn = activation::softmax(x.clone(), dim);
            let ours = softmax(x.clone(), dim);
            assert!(max_abs_diff(burn.clone(), ours.clone()) < 1e-6, "dim {dim}");
            // A loss that weighs each output differently, so the gradient is not zero.
            let g_burn = x.grad(&(burn * weight.clone()).sum().backward()).unwrap();
            let g_ours = x.grad(&(ours * weight.clone()).sum().backward()).unwrap();
            let scale: f32 = g_burn.clone().abs().max().into_scalar();
            assert!(scale > 1e-3, "the check below means something");
            let diff = max_abs_diff(g_burn, g_ours);
            assert!(
                diff < 1e-5 * scale.max(1.0),
                "dim {dim}: gradients differ by {diff}"
            );
        }
        // Without autodiff it is Burn's softmax, bit for bit.
        let plain = x.inner();
        let exact = activation::softmax(plain.clone(), 2).into_data();
        assert_eq!(exact, softmax(plain, 2).into_data());
    }

    /// `cargo test --release --lib fused_softmax_speed -- --ignored --nocapture`: one training
    /// step's attention softmax (forward and backward), Burn's composition against
    /// `fused::softmax`, on the detector's shapes.
    #[test]
    #[ignore = "a timing, not a check: run by hand"]
    fn fused_softmax_speed() {
        let device = Device::flex().autodiff();
        let x = Tensor::<4>::random([64, 4, 128, 128], Distribution::Normal(0.0, 1.0), &device);
        let w = x.clone().detach();
        let time = |f: &dyn Fn(Tensor<4>) -> Tensor<4>| {
            let start = std::time::Instant::now();
            for _ in 0..10 {
                let x = x.clone().detach().require_grad();
                let g = x
                    .grad(&(f(x.clone()) * w.clone()).sum().backward())
                    .unwrap();
                let _: f32 = g.sum().into_scalar();
            }
            start.elapsed().as_secs_f64() / 10.0
        };
        for _ in 0..2 {
            let burn = time(&|x| activation::softmax(x, 3));
            let ours = time(&|x| softmax(x, 3));
            println!(
                "burn {:.1} ms, fused {:.1} ms, {:.2}x",
                burn * 1e3,
                ours * 1e3,
                burn / ours
            );
        }
    }

    #[test]
    fn fused_nll_has_burns_value_and_gradient() {
        let device = Device::flex().autodiff();
        let logits = Tensor::<3>::random([4, 9, 258], Distribution::Normal(0.0, 4.0), &device)
            .require_grad();
        let targets = Tensor::<2, Int>::random([4, 9], Distribution::Uniform(0.0, 258.0), &device);
        let weight = Tensor::<2>::random([4, 9], Distribution::Uniform(0.0, 1.0), &device);
        let burn = activation::log_softmax(logits.clone(), 2)
            .gather(2, targets.clone().reshape([4, 9, 1]))
            .reshape([4, 9])
            .neg();
        let ours = nll(logits.clone(), targets.clone());
        let value_diff = max_abs_diff(burn.clone(), ours.clone());
        assert!(value_diff < 1e-4, "values differ by {value_diff}");
        let g_burn = logits
            .grad(&(burn * weight.clone()).sum().backward())
            .unwrap();
        let g_ours = logits.grad(&(ours * weight).sum().backward()).unwrap();
        let diff = max_abs_diff(g_burn, g_ours);
        assert!(diff < 1e-6, "gradients differ by {diff}");
        // Without autodiff it is Burn's composition, bit for bit.
        let plain = logits.inner();
        let exact = activation::log_softmax(plain.clone(), 2)
            .gather(2, targets.clone().inner().reshape([4, 9, 1]))
            .reshape([4, 9])
            .neg();
        assert_eq!(exact.into_data(), nll(plain, targets.inner()).into_data());
    }
}
