//! Isolation Forest (Liu, Ting & Zhou, 2008) over the expert features.
//!
//! Written here rather than taken from a crate because the crate available
//! (`extended-isolation-forest`) draws from `thread_rng`, so its forests could not be
//! reproduced under `--seed`; this one is seeded, serialisable, and small.

use super::features::{N_FEATURES, features};
use rand::prelude::*;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IForestConfig {
    pub n_trees: usize,
    /// Points per tree (the original paper's psi; 256 is its recommended default).
    pub sample_size: usize,
}

impl Default for IForestConfig {
    fn default() -> Self {
        Self {
            n_trees: 200,
            sample_size: 256,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Node {
    Split {
        feature: u16,
        threshold: f32,
        left: u32,
        right: u32,
    },
    Leaf {
        size: u32,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    pub config: IForestConfig,
    trees: Vec<Vec<Node>>,
    /// Average path length of an unsuccessful BST search over `sample_size` points.
    c_norm: f64,
}

/// c(n): the average path length of an unsuccessful search in a binary search tree of n points.
fn c_factor(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

fn build(
    points: &mut [usize],
    data: &[[f32; N_FEATURES]],
    depth: usize,
    max_depth: usize,
    rng: &mut StdRng,
    tree: &mut Vec<Node>,
) -> u32 {
    let id = tree.len() as u32;
    tree.push(Node::Leaf {
        size: points.len() as u32,
    });
    if points.len() <= 1 || depth >= max_depth {
        return id;
    }
    // Features that still vary among these points; pick one at random.
    let varying: Vec<(usize, f32, f32)> = (0..N_FEATURES)
        .filter_map(|f| {
            let (lo, hi) = points
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &p| {
                    (lo.min(data[p][f]), hi.max(data[p][f]))
                });
            (hi > lo).then_some((f, lo, hi))
        })
        .collect();
    let Some(&(feature, lo, hi)) = varying.choose(rng) else {
        return id; // all points identical: cannot be isolated further
    };
    let threshold = rng.random_range(lo..hi);
    let mid = itertools_partition(points, |p| data[p][feature] < threshold);
    let (left_pts, right_pts) = points.split_at_mut(mid);
    let left = build(left_pts, data, depth + 1, max_depth, rng, tree);
    let right = build(right_pts, data, depth + 1, max_depth, rng, tree);
    tree[id as usize] = Node::Split {
        feature: feature as u16,
        threshold,
        left,
        right,
    };
    id
}

/// In-place partition; returns the number of elements for which `pred` holds (moved first).
fn itertools_partition(v: &mut [usize], pred: impl Fn(usize) -> bool) -> usize {
    let mut k = 0;
    for i in 0..v.len() {
        if pred(v[i]) {
            v.swap(i, k);
            k += 1;
        }
    }
    k
}

impl IsolationForest {
    /// Fit on feature vectors; `weights` (e.g. stream counts) bias which points trees sample.
    pub fn fit(
        data: &[[f32; N_FEATURES]],
        weights: &[f64],
        config: &IForestConfig,
        seed: u64,
    ) -> crate::Result<Self> {
        if data.len() < 2 {
            return Err(crate::Error::input(
                "isolation forest needs at least 2 distinct lines",
            ));
        }
        let psi = config.sample_size.min(data.len());
        let max_depth = (psi as f64).log2().ceil() as usize;
        let sampler =
            rand::distr::weighted::WeightedIndex::new(weights.iter().map(|w| w.max(1e-12)))
                .map_err(|e| crate::Error::input(format!("bad sampling weights: {e}")))?;
        let mut rng = StdRng::seed_from_u64(seed);
        let trees = (0..config.n_trees)
            .map(|_| {
                let mut points: Vec<usize> = (0..psi).map(|_| sampler.sample(&mut rng)).collect();
                let mut tree = Vec::new();
                build(&mut points, data, 0, max_depth, &mut rng, &mut tree);
                tree
            })
            .collect();
        Ok(Self {
            config: IForestConfig {
                sample_size: psi,
                ..config.clone()
            },
            trees,
            c_norm: c_factor(psi),
        })
    }

    fn path_length(tree: &[Node], x: &[f32; N_FEATURES]) -> f64 {
        let (mut node, mut depth) = (0usize, 0.0);
        loop {
            match tree[node] {
                Node::Split {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    node = if x[feature as usize] < threshold {
                        left
                    } else {
                        right
                    } as usize;
                    depth += 1.0;
                }
                Node::Leaf { size } => return depth + c_factor(size as usize),
            }
        }
    }

    /// Anomaly score in (0, 1]: 2^(-E[h(x)] / c(psi)); above ~0.6 is isolated unusually fast.
    pub fn score_features(&self, x: &[f32; N_FEATURES]) -> f64 {
        let mean = self
            .trees
            .iter()
            .map(|t| Self::path_length(t, x))
            .sum::<f64>()
            / self.trees.len() as f64;
        2f64.powf(-mean / self.c_norm.max(1e-9))
    }

    pub fn score(&self, cmd: &str) -> f64 {
        self.score_features(&features(cmd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolates_the_outlier_and_is_seeded() {
        let mut cmds: Vec<String> = (0..500)
            .map(|i| format!("ls -la /home/user{}", i % 50))
            .collect();
        cmds.push(
            "powershell -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQA && echo http://evil.com"
                .into(),
        );
        let data: Vec<_> = cmds.iter().map(|c| features(c)).collect();
        let w = vec![1.0; data.len()];
        let forest = IsolationForest::fit(&data, &w, &IForestConfig::default(), 7).unwrap();
        let outlier = forest.score(&cmds[500]);
        let typical = forest.score(&cmds[3]);
        assert!(
            outlier > 0.6 && typical < 0.5,
            "outlier {outlier}, typical {typical}"
        );
        let again = IsolationForest::fit(&data, &w, &IForestConfig::default(), 7).unwrap();
        assert_eq!(forest, again);
        let other = IsolationForest::fit(&data, &w, &IForestConfig::default(), 8).unwrap();
        assert_ne!(forest, other);
    }
}
