//! Dropout masks for training steps, from a keyed hash instead of the device's generator.
//!
//! Burn's `Dropout` draws each mask from the backend's one global generator (on flex a
//! ChaCha20 stream behind a mutex, drawn on the host: 28 % of a detector training step in the
//! profile of docs/benchmarks.md). [`DropoutMasks`] fills a mask in parallel from a hash of
//! (seed, mask number, block, position), so a mask depends on the seed alone: not on the
//! thread count, nor on which thread asks first, which lets one training step run as
//! concurrent shards ([`crate::train::Task::shards`]) and still repeat exactly.

use burn::tensor::{Device, Distribution, Tensor, TensorData};
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
    /// `(offset, total)`: the masks are for rows `offset..` of a batch of `total` rows.
    rows: Option<(usize, usize)>,
}

impl DropoutMasks {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            drawn: 0,
            rows: None,
        }
    }

    /// Masks for rows `offset..offset + n` of a batch of `total` rows (dimension 0), for a
    /// shard of a training step: each mask is drawn for the whole batch and cut to these
    /// rows, so the shards of a step drop exactly what the whole batch would. (Only flex's
    /// masks are keyed; elsewhere steps are not sharded: `device::batches_in_flight`.)
    pub fn for_rows(seed: u64, offset: usize, total: usize) -> Self {
        Self {
            rows: Some((offset, total)),
            ..Self::new(seed)
        }
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
            match self.rows {
                Some((offset, total)) => {
                    let mut shape = x.dims();
                    let rows = shape[0];
                    assert!(offset + rows <= total, "rows {offset}..+{rows} of {total}");
                    shape[0] = total;
                    self.mask(shape, prob, &device).narrow(0, offset, rows)
                }
                None => self.mask(x.dims(), prob, &device),
            }
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

crate::simd::avx2_dispatch! {
    /// `chunk[i] = scale` where a keyed hash of `i` falls below `threshold`, else 0; vectorised
    /// where the CPU allows (the default x86-64 target lacks 32-bit lane multiplies).
    fn fill_mask(chunk: &mut [f32], key: [u32; 2], threshold: u32, scale: f32) => fill_mask_kernel
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_masks_of_row_shards_are_rows_of_the_whole_batchs() {
        let device = Device::flex();
        let ones = Tensor::<2>::ones([10, 3000], &device);
        let whole = |seed| {
            let mut masks = DropoutMasks::new(seed);
            [
                masks.apply(ones.clone(), 0.5),
                masks.apply(ones.clone(), 0.5),
            ]
        };
        let [first, second] = whole(7);
        let mut shards = [(0, 4), (4, 6)].map(|(offset, rows)| {
            let mut masks = DropoutMasks::for_rows(7, offset, 10);
            let x = ones.clone().narrow(0, offset, rows);
            [masks.apply(x.clone(), 0.5), masks.apply(x, 0.5)]
        });
        let [[a1, a2], [b1, b2]] = &mut shards;
        let cat = |a: &Tensor<2>, b: &Tensor<2>| Tensor::cat(vec![a.clone(), b.clone()], 0);
        assert_eq!(cat(a1, b1).into_data(), first.into_data());
        assert_eq!(cat(a2, b2).into_data(), second.clone().into_data());
        assert_ne!(whole(8)[1].clone().into_data(), second.into_data());
    }
}
