//! The detector's transformer encoder, run over the parameters of Burn's `TransformerEncoder`.
//!
//! The module (and so every saved detector) is Burn's; only the forward pass is ours, for
//! speed on flex (`docs/benchmarks.md`, "Where the time goes"), where Burn's pass spends 28% of
//! a training step drawing dropout masks. Differences, all in how, not what:
//! - dropout masks on flex come from [`DropoutMasks`], a counter-based generator filled in
//!   parallel, with the `1 / keep` scale folded in (one multiply instead of Burn's ChaCha
//!   draw and two);
//! - the `1 / sqrt(d_k)` scale multiplies the queries, not the `[batch, heads, len, len]`
//!   scores (8x fewer elements at 128 bytes and 16-dimensional heads);
//! - a batch without padding skips the attention mask;
//! - in training, the attention softmax runs the backend's fused kernel ([`super::fused`]);
//! - exact GELU runs a vectorised kernel on flex ([`super::gelu`]).
//!
//! At inference it computes Burn's function up to float rounding (a test holds it to that);
//! in training the dropout masks are a different random stream than Burn's.

use burn::nn::activation::Activation;
use burn::nn::attention::MultiHeadAttention;
use burn::nn::transformer::TransformerEncoder;
use burn::tensor::{Bool, Tensor};

use crate::dropout::DropoutMasks;

/// Run `encoder` (built with `norm_first`, as `AutoencoderConfig::init` builds it) over `x`,
/// `[batch, len, d_model]`. `pad` is true at padding positions (`None`: no padding in this
/// batch); `dropout` is `Some` only for a training step.
pub fn encode(
    encoder: &TransformerEncoder,
    mut x: Tensor<3>,
    pad: Option<&Tensor<2, Bool>>,
    mut dropout: Option<&mut DropoutMasks>,
) -> Tensor<3> {
    for layer in &encoder.layers {
        debug_assert!(
            layer.norm_first,
            "the detector's encoder is built norm-first"
        );
        let h = layer.norm_2.forward(x.clone());
        let attended = attention(&layer.mha, h, pad, &mut dropout);
        x = x + drop(&mut dropout, attended, layer.dropout.prob);

        let h = layer.norm_1.forward(x.clone());
        let h = layer.pwff.linear_inner.forward(h);
        let h = match &layer.pwff.activation {
            Activation::Gelu(gelu) if !gelu.approximate => super::gelu::gelu(h),
            other => other.forward(h),
        };
        let h = layer
            .pwff
            .linear_outer
            .forward(drop(&mut dropout, h, layer.pwff.dropout.prob));
        x = x + drop(&mut dropout, h, layer.dropout.prob);
    }
    x
}

/// `t` after dropout with the step's masks; unchanged without them (inference).
fn drop<const D: usize>(
    masks: &mut Option<&mut DropoutMasks>,
    t: Tensor<D>,
    prob: f64,
) -> Tensor<D> {
    match masks {
        Some(masks) => masks.apply(t, prob),
        None => t,
    }
}

/// Multi-head self-attention with Burn's parameters and masking value.
fn attention(
    mha: &MultiHeadAttention,
    x: Tensor<3>,
    pad: Option<&Tensor<2, Bool>>,
    dropout: &mut Option<&mut DropoutMasks>,
) -> Tensor<3> {
    let [batch, len, d_model] = x.dims();
    let heads = |t: Tensor<3>| {
        t.reshape([batch, len, mha.n_heads, mha.d_k])
            .swap_dims(1, 2)
    };
    let query = heads(mha.query.forward(x.clone()) * (1.0 / (mha.d_k as f64).sqrt()));
    let key = heads(mha.key.forward(x.clone()));
    let value = heads(mha.value.forward(x));
    let mut scores = query.matmul(key.transpose());
    if let Some(pad) = pad {
        scores = scores.mask_fill(pad.clone().reshape([batch, 1, 1, len]), mha.min_float);
    }
    let weights = super::fused::softmax(scores, 3);
    // Attention dropout, as Burn's MultiHeadAttention applies it after the softmax.
    let weights = drop(dropout, weights, mha.dropout.prob);
    let context = weights
        .matmul(value)
        .swap_dims(1, 2)
        .reshape([batch, len, d_model]);
    mha.output.forward(context)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::transformer::{TransformerEncoderConfig, TransformerEncoderInput};
    use burn::tensor::{Device, Distribution, TensorData};

    fn encoder(device: &Device, dropout: f64) -> TransformerEncoder {
        TransformerEncoderConfig::new(32, 64, 4, 2)
            .with_dropout(dropout)
            .with_norm_first(true)
            .init(device)
    }

    fn inputs(device: &Device) -> (Tensor<3>, Tensor<2, Bool>) {
        let x = Tensor::<3>::random([3, 16, 32], Distribution::Normal(0.0, 1.0), device);
        let lens = [16usize, 9, 12];
        let pad: Vec<bool> = lens
            .iter()
            .flat_map(|&l| (0..16).map(move |i| i >= l))
            .collect();
        (x, Tensor::from_data(TensorData::new(pad, [3, 16]), device))
    }

    fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    #[test]
    fn computes_burns_encoder_at_inference() {
        let device = Device::flex();
        let enc = encoder(&device, 0.1);
        let (x, pad) = inputs(&device);
        let burn = enc.forward(TransformerEncoderInput::new(x.clone()).mask_pad(pad.clone()));
        let ours = encode(&enc, x.clone(), Some(&pad), None);
        // Padding rows' outputs too: Burn masks keys only, and so do we.
        assert!(max_abs_diff(burn, ours) < 1e-5);
        // Without padding, no mask is the same as an all-false mask.
        let none = Tensor::<2, Bool>::from_data(TensorData::new(vec![false; 48], [3, 16]), &device);
        let burn = enc.forward(TransformerEncoderInput::new(x.clone()).mask_pad(none));
        assert!(max_abs_diff(burn, encode(&enc, x, None, None)) < 1e-5);
    }

    #[test]
    fn gradients_match_burns_without_dropout() {
        let device = Device::flex().autodiff();
        let enc = encoder(&device, 0.0);
        let (x, pad) = inputs(&device);
        let x = x.require_grad();
        let burn = enc.forward(TransformerEncoderInput::new(x.clone()).mask_pad(pad.clone()));
        let grads_burn = (burn.clone() * burn).sum().backward();
        let mut masks = DropoutMasks::new(7);
        let ours = encode(&enc, x.clone(), Some(&pad), Some(&mut masks));
        let grads_ours = (ours.clone() * ours).sum().backward();
        let gx = |g| x.grad(g).expect("x has a gradient");
        let diff = max_abs_diff(gx(&grads_burn), gx(&grads_ours));
        assert!(diff < 1e-4, "input gradients differ by {diff}");
        let w = &enc.layers[0].mha.query.weight;
        let gw = |g| w.grad(g).expect("query weight has a gradient");
        let diff = max_abs_diff(gw(&grads_burn), gw(&grads_ours));
        assert!(diff < 1e-4, "query weight gradients differ by {diff}");
    }
}
