//! Batches of similar length: most command lines are 30-80 bytes, and padding a batch of
//! 40-byte lines to the longest line of the epoch is wasted compute on every backend.

/// Group item indices into batches of similar length. Each batch holds at most `max_batch`
/// items and at most `batch_tokens` padded positions. Deterministic: sorted by (length, index).
pub fn bucket_by_length(lens: &[usize], max_batch: usize, batch_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| (lens[i], i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        let padded = padded_len(lens[i]);
        if !current.is_empty()
            && ((current.len() + 1) * padded > batch_tokens || current.len() >= max_batch)
        {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Sequence lengths are rounded up to a multiple of 8 so that GPU kernels see few shapes.
pub fn padded_len(len: usize) -> usize {
    len.max(1).div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_respect_limits_and_group_similar_lengths() {
        let lens: Vec<usize> = (0..1000).map(|i| 10 + (i * 37) % 120).collect();
        let batches = bucket_by_length(&lens, 64, 2048);
        let mut seen: Vec<usize> = batches.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..1000).collect::<Vec<_>>());
        for b in &batches {
            let max = b.iter().map(|&i| padded_len(lens[i])).max().unwrap();
            assert!(b.len() <= 64 && (b.len() * max <= 2048 || b.len() == 1));
            let min = b.iter().map(|&i| lens[i]).min().unwrap();
            assert!(max - min <= 16, "a batch mixes lengths {min}..{max}");
        }
    }
}
