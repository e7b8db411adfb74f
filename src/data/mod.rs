//! Shared data handling that no stage owns: length-bucketed batching, text-hash train /
//! validation splits, rank fusion of scores, union-find, and the placeholder rule. Stages
//! depend on this layer; it depends on no stage.

pub mod batching;
pub mod minhash;
pub mod placeholder;
pub mod rank;
pub mod split;
pub mod union_find;

pub use batching::{bucket_by_length, padded_len};
pub use minhash::{MinHashConfig, near_duplicate_clusters};
pub use placeholder::has_placeholder;
pub use rank::{mean_rank_fusion, normalized_ranks};
pub use split::split_train_val;
pub use union_find::UnionFind;
