//! Rank transforms: scores of different detectors live on different scales, so they are
//! fused by rank, not by value.

/// Normalised ranks in (0, 1]; ties share their mean rank.
pub fn normalized_ranks(values: &[f64]) -> Vec<f64> {
    let n = values.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = mean_rank / n as f64;
        }
        i = j + 1;
    }
    ranks
}

/// The mean of each line's normalised ranks under several scores: the `combined` detector.
/// Every score vector must have the same length.
pub fn mean_rank_fusion(scores: &[&[f64]]) -> Vec<f64> {
    let n = scores.first().map_or(0, |s| s.len());
    let mut fused = vec![0.0; n];
    for s in scores {
        assert_eq!(s.len(), n, "rank fusion of scores of different lengths");
        for (f, r) in fused.iter_mut().zip(normalized_ranks(s)) {
            *f += r;
        }
    }
    let k = scores.len().max(1) as f64;
    fused.iter_mut().for_each(|f| *f /= k);
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_their_mean_rank_and_fusion_averages() {
        assert_eq!(
            normalized_ranks(&[3.0, 1.0, 3.0, 2.0]),
            vec![0.875, 0.25, 0.875, 0.5]
        );
        let fused = mean_rank_fusion(&[&[1.0, 2.0, 3.0], &[30.0, 20.0, 10.0]]);
        assert_eq!(fused, vec![2.0 / 3.0; 3]);
        let fused = mean_rank_fusion(&[&[1.0, 2.0, 3.0], &[1.0, 5.0, 9.0]]);
        assert_eq!(fused, vec![1.0 / 3.0, 2.0 / 3.0, 1.0]);
    }
}
