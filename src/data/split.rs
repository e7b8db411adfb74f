//! Train / validation splits that depend on the text alone, not on input order or a seed.

/// Split unique lines into train and validation by a hash of the text, so the split does not
/// depend on input order and near-identical reruns keep the same split.
pub fn split_train_val<T: AsRef<[u8]>>(lines: &[T], val_fraction: f64) -> (Vec<usize>, Vec<usize>) {
    let cut = (val_fraction.clamp(0.0, 0.5) * u64::MAX as f64) as u64;
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, l) in lines.iter().enumerate() {
        if xxhash_rust::xxh3::xxh3_64_with_seed(l.as_ref(), 0x5eed) < cut {
            val.push(i)
        } else {
            train.push(i)
        }
    }
    if train.is_empty() {
        std::mem::swap(&mut train, &mut val);
    }
    (train, val)
}
