//! Turning command lines into padded byte batches: chunking long lines with overlap, and
//! bucketing by length so a batch of 40-byte lines is not padded to 128 (most command lines
//! are 30-80 bytes; padding is wasted compute on every backend).

use super::model::{MASK, PAD};
use crate::data::batching::padded_len;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

/// A contiguous piece of a line that fits the model's context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub line: usize,
    pub start: usize,
    pub end: usize,
    /// Positions [own_from, own_to) of the line take their score from this chunk: the middle
    /// of the overlap is the boundary, so every byte is scored with context on both sides.
    pub own_from: usize,
    pub own_to: usize,
}

/// Chunks of a line of `len` bytes for a context of `max_len` with `overlap` shared bytes.
pub fn chunk_line(line: usize, len: usize, max_len: usize, overlap: usize) -> Vec<Chunk> {
    if len <= max_len {
        return vec![Chunk {
            line,
            start: 0,
            end: len,
            own_from: 0,
            own_to: len,
        }];
    }
    let stride = max_len - overlap;
    let half = overlap / 2;
    let mut starts = vec![0];
    while starts.last().unwrap() + max_len < len {
        starts.push(starts.last().unwrap() + stride);
    }
    let n = starts.len();
    (0..n)
        .map(|k| {
            let start = starts[k];
            Chunk {
                line,
                start,
                end: (start + max_len).min(len),
                own_from: if k == 0 { 0 } else { start + half },
                own_to: if k + 1 < n { starts[k + 1] + half } else { len },
            }
        })
        .collect()
}

/// A host-side batch: token ids, padding flags, target bytes and per-position loss weights.
#[derive(Clone, Debug)]
pub struct HostBatch {
    pub batch: usize,
    pub len: usize,
    pub inputs: Vec<i64>,
    pub targets: Vec<i64>,
    pub pad: Vec<bool>,
    pub weight: Vec<f32>,
}

impl HostBatch {
    pub fn new(batch: usize, len: usize) -> Self {
        let n = batch * len;
        Self {
            batch,
            len,
            inputs: vec![PAD; n],
            targets: vec![0; n],
            pad: vec![true; n],
            weight: vec![0.0; n],
        }
    }

    /// An empty batch sized for the items `group` (indices into `lens`): one row each, padded
    /// to the longest item's rounded length.
    pub fn for_group(group: &[usize], lens: &[usize]) -> Self {
        let len = group
            .iter()
            .map(|&i| padded_len(lens[i]))
            .max()
            .unwrap_or(8);
        Self::new(group.len(), len)
    }

    /// Fill row `row` with `bytes`; `masked(i)` says whether position i is hidden (replaced
    /// by MASK); `weighted(i)` whether it counts in the loss.
    pub fn set_row(
        &mut self,
        row: usize,
        bytes: &[u8],
        masked: impl Fn(usize) -> bool,
        weighted: impl Fn(usize) -> bool,
    ) {
        let base = row * self.len;
        for (i, &b) in bytes.iter().enumerate() {
            self.inputs[base + i] = if masked(i) { MASK } else { b as i64 };
            self.targets[base + i] = b as i64;
            self.pad[base + i] = false;
            self.weight[base + i] = if weighted(i) { 1.0 } else { 0.0 };
        }
    }

    /// Rows `start..end`, as a batch of their own (the same padded length).
    pub fn rows(&self, start: usize, end: usize) -> HostBatch {
        let (a, b) = (start * self.len, end * self.len);
        HostBatch {
            batch: end - start,
            len: self.len,
            inputs: self.inputs[a..b].to_vec(),
            targets: self.targets[a..b].to_vec(),
            pad: self.pad[a..b].to_vec(),
            weight: self.weight[a..b].to_vec(),
        }
    }

    pub fn to_device(&self, device: &Device) -> DeviceBatch {
        let shape = [self.batch, self.len];
        DeviceBatch {
            inputs: Tensor::<2, Int>::from_data(
                TensorData::new(self.inputs.clone(), shape),
                device,
            ),
            targets: Tensor::<2, Int>::from_data(
                TensorData::new(self.targets.clone(), shape),
                device,
            ),
            pad: self.pad.iter().any(|&p| p).then(|| {
                Tensor::<2, Bool>::from_data(TensorData::new(self.pad.clone(), shape), device)
            }),
            weight: Tensor::<2>::from_data(TensorData::new(self.weight.clone(), shape), device),
        }
    }
}

pub struct DeviceBatch {
    pub inputs: Tensor<2, Int>,
    pub targets: Tensor<2, Int>,
    /// `None` when no row is padded: the model then skips its masks.
    pub pad: Option<Tensor<2, Bool>>,
    pub weight: Tensor<2>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_byte_once() {
        for len in [1, 50, 128, 129, 200, 1000, 4097] {
            let chunks = chunk_line(0, len, 128, 32);
            let mut owned = vec![0u8; len];
            for c in &chunks {
                assert!(c.end - c.start <= 128);
                assert!(c.start <= c.own_from && c.own_to <= c.end, "{c:?}");
                for n in &mut owned[c.own_from..c.own_to] {
                    *n += 1;
                }
            }
            assert!(owned.iter().all(|&n| n == 1), "len {len}");
        }
    }
}
