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
//! - in training, the attention softmax runs the backend's fused kernel ([`super::fused`]).
//!
//! At inference it computes Burn's function up to float rounding (a test holds it to that);
//! in training the dropout masks are a different random stream than Burn's.

use burn::nn::attention::MultiHeadAttention;
use burn::nn::transformer::TransformerEncoder;
use burn::tensor::{Bool, Device, Distribution, Tensor, TensorData};
use rayon::prelude::*;

/// Elements per independently seeded block of a mask: large enough to amortise seeding, small
/// enough to spread one attention mask over every core.
const BLOCK: usize = 1 << 14;

/// Dropout masks for one training step: `0` or `1 / keep` per element, from a keyed hash of
/// (seed, mask number, block, position): SplitMix64 keys each block, MurmurHash3's 32-bit
/// finaliser mixes the position. The masks are a function of the seed alone, whatever
/// the number of threads, so a run (and a resumed run) repeats exactly.
pub struct DropoutMasks {
    seed: u64,
    drawn: u64,
}

impl DropoutMasks {
    pub fn new(seed: u64) -> Self {
        Self { seed, drawn: 0 }
    }

    /// `x` with each element zeroed with probability `prob`, the rest scaled by
    /// `1 / (1 - prob)`. `prob = 0` returns `x` unchanged.
    ///
    /// On flex the mask is built here; on a GPU it is drawn on the device by Burn's generator
    /// (seeded by `--seed`), since a host-built mask would cross the bus at every step.
    pub fn apply<const D: usize>(&mut self, x: Tensor<D>, prob: f64) -> Tensor<D> {
        if prob <= 0.0 {
            return x;
        }
        let device = x.device();
        let mask = if device == Device::flex() {
            self.mask(x.dims(), prob, &device)
        } else {
            x.random_like(Distribution::Bernoulli(1.0 - prob))
                .mul_scalar(1.0 / (1.0 - prob))
        };
        x * mask
    }

    fn mask<const D: usize>(&mut self, shape: [usize; D], prob: f64, device: &Device) -> Tensor<D> {
        let n: usize = shape.iter().product();
        let keep = 1.0 - prob;
        // Keep when a uniform 32-bit draw falls below keep * 2^32.
        let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32;
        let scale = (1.0 / keep) as f32;
        let key = splitmix64(self.seed ^ splitmix64(self.drawn));
        self.drawn += 1;
        let mut values = vec![0f32; n];
        values
            .par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(block, chunk)| {
                let k = splitmix64(key ^ (block as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                fill_mask(chunk, [k as u32, (k >> 32) as u32], threshold, scale);
            });
        Tensor::from_data(TensorData::new(values, shape), device)
    }
}

/// SplitMix64 (Steele, Lea and Flood 2014): one step from `x`, a well-mixed 64-bit key.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `chunk[i] = scale` where a keyed hash of `i` falls below `threshold`, else 0; vectorised
/// where the CPU allows (the default x86-64 target lacks 32-bit lane multiplies).
fn fill_mask(chunk: &mut [f32], key: [u32; 2], threshold: u32, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { fill_mask_avx2(chunk, key, threshold, scale) };
            return;
        }
    }
    fill_mask_kernel(chunk, key, threshold, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_mask_avx2(chunk: &mut [f32], key: [u32; 2], threshold: u32, scale: f32) {
    fill_mask_kernel(chunk, key, threshold, scale)
}

#[inline(always)]
fn fill_mask_kernel(chunk: &mut [f32], [k1, k2]: [u32; 2], threshold: u32, scale: f32) {
    for (i, v) in chunk.iter_mut().enumerate() {
        let bits = fmix32(fmix32(i as u32 ^ k1) ^ k2);
        *v = if bits < threshold { scale } else { 0.0 };
    }
}

/// MurmurHash3's 32-bit finaliser: a bijection that spreads every input bit.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}

/// Run `encoder` (built with `norm_first`, as `AutoencoderConfig::init` builds it) over `x`,
/// `[batch, len, d_model]`. `pad` is true at padding positions (`None`: no padding in this
/// batch); `dropout` is `Some` only for a training step.
pub fn encode(
    encoder: &TransformerEncoder,
    mut x: Tensor<3>,
    pad: Option<&Tensor<2, Bool>>,
    mut dropout: Option<&mut DropoutMasks>,
) -> Tensor<3> {
    let mut drop = |t: Tensor<3>, prob: f64| match dropout.as_deref_mut() {
        Some(masks) => masks.apply(t, prob),
        None => t,
    };
    for layer in &encoder.layers {
        debug_assert!(
            layer.norm_first,
            "the detector's encoder is built norm-first"
        );
        let h = layer.norm_2.forward(x.clone());
        let attended = attention(&layer.mha, h, pad, &mut drop);
        x = x + drop(attended, layer.dropout.prob);

        let h = layer.norm_1.forward(x.clone());
        let h = layer
            .pwff
            .activation
            .forward(layer.pwff.linear_inner.forward(h));
        let h = layer
            .pwff
            .linear_outer
            .forward(drop(h, layer.pwff.dropout.prob));
        x = x + drop(h, layer.dropout.prob);
    }
    x
}

/// Multi-head self-attention with Burn's parameters and masking value.
fn attention(
    mha: &MultiHeadAttention,
    x: Tensor<3>,
    pad: Option<&Tensor<2, Bool>>,
    drop: &mut impl FnMut(Tensor<3>, f64) -> Tensor<3>,
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
    // Attention dropout, as Burn's MultiHeadAttention applies it after the softmax; the
    // weights are [batch, heads, len, len], seen as 3-D for the mask.
    let [_, n_heads, _, _] = weights.dims();
    let weights = drop(
        weights.reshape([batch * n_heads, len, len]),
        mha.dropout.prob,
    )
    .reshape([batch, n_heads, len, len]);
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

    #[test]
    fn masks_drop_the_right_share_and_repeat_for_a_seed() {
        let device = Device::flex();
        let draw_on = |seed, device: &Device| {
            let mut masks = DropoutMasks::new(seed);
            let ones = Tensor::<3>::ones([4, 100, 257], device);
            let mut draw = || {
                let mask = masks.apply(ones.clone(), 0.25).into_data();
                mask.try_to_vec::<f32>().unwrap()
            };
            (draw(), draw())
        };
        let draw = |seed| draw_on(seed, &device);
        let (a, b) = draw(1);
        // Training runs on flex's autodiff device: it must take the same (fast) path.
        assert_eq!(a, draw_on(1, &device.clone().autodiff()).0);
        assert_eq!(a, draw(1).0, "the same seed gives the same masks");
        assert_ne!(a, b, "consecutive masks differ");
        assert_ne!(a, draw(2).0, "another seed gives other masks");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        let dropped = a.iter().filter(|&&v| v == 0.0).count() as f64 / a.len() as f64;
        // 102,800 draws: the standard error of the share is 0.0014.
        assert!((dropped - 0.25).abs() < 0.01, "dropped {dropped}");
        // Blocks are seeded apart: the second block is not a copy of the first.
        assert_ne!(a[..BLOCK], a[BLOCK..2 * BLOCK]);
    }
}
