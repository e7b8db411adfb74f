//! Near-duplicate clusters: MinHash signatures over byte shingles, LSH banding to find
//! candidate pairs, each candidate verified by its estimated Jaccard similarity, and
//! union-find over the verified pairs.
//!
//! Details, all deterministic for a given input order and config:
//! - Shingles are the overlapping `shingle_bytes`-byte windows of the UTF-8 text (a text
//!   shorter than that is one shingle). Each is hashed once to 32 bits; the `num_perm` MinHash
//!   functions are `h_i(x) = a_i·x + b_i mod 2^32` with odd `a_i`, drawn from `seed`. The
//!   inner loop is a branch-free minimum over all functions at once, so it vectorises (AVX2
//!   when the CPU has it).
//! - Signatures keep the top 16 bits of each minimum ("b-bit MinHash"): half the memory of
//!   32 bits, and a chance agreement of 2^-16 per slot, negligible against the threshold.
//! - LSH: `bands × rows ≤ num_perm`. Unless `bands` is given, `rows` is the largest for which
//!   a pair at exactly the threshold becomes a candidate with probability ≥ 0.95
//!   (`1 - (1 - t^rows)^bands`); for t = 0.8 and 128 hashes that is 18 bands of 7 rows.
//! - A candidate pair joins a cluster only if the share of equal signature slots is
//!   ≥ threshold. Clusters are the connected components (single linkage), so a chain of
//!   near-duplicates can join lines that are less similar end to end.
//! - Cluster ids are dense, numbered by each cluster's first line in input order.

use crate::data::UnionFind;
use crate::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Parameters of near-duplicate clustering.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MinHashConfig {
    /// Estimated Jaccard similarity at or above which two lines are near-duplicates, in (0, 1].
    pub threshold: f64,
    /// Number of MinHash functions (signature length).
    pub num_perm: usize,
    /// Shingle width in bytes.
    pub shingle_bytes: usize,
    /// LSH bands; `None` chooses them from the threshold (see the module docs).
    pub bands: Option<usize>,
    /// Seed of the hash functions.
    pub seed: u64,
    /// Worker threads; 0 = all available cores.
    pub threads: usize,
    /// Show progress bars.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        Self {
            threshold: 0.8,
            num_perm: 128,
            shingle_bytes: 5,
            bands: None,
            seed: 42,
            threads: 0,
            progress: false,
        }
    }
}

/// Probability that a pair with Jaccard similarity `s` shares at least one of `bands` bands of
/// `rows` rows.
pub fn candidate_probability(s: f64, bands: usize, rows: usize) -> f64 {
    1.0 - (1.0 - s.powi(rows as i32)).powi(bands as i32)
}

impl MinHashConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(Error::input(format!(
                "the near-duplicate threshold must be in (0, 1], got {}",
                self.threshold
            )));
        }
        if self.num_perm == 0 || self.num_perm > 4096 {
            return Err(Error::input(format!(
                "the number of MinHash functions must be 1..=4096, got {}",
                self.num_perm
            )));
        }
        if self.shingle_bytes == 0 || self.shingle_bytes > 64 {
            return Err(Error::input(format!(
                "the shingle width must be 1..=64 bytes, got {}",
                self.shingle_bytes
            )));
        }
        if let Some(b) = self.bands
            && (b == 0 || b > self.num_perm)
        {
            return Err(Error::input(format!(
                "LSH bands must be 1..={} (the number of MinHash functions), got {b}",
                self.num_perm
            )));
        }
        Ok(())
    }

    /// `(bands, rows)` of the LSH index.
    pub fn bands_rows(&self) -> (usize, usize) {
        let p = self.num_perm.max(1);
        if let Some(b) = self.bands {
            let b = b.clamp(1, p);
            return (b, p / b);
        }
        let t = self.threshold.clamp(1e-6, 1.0);
        let mut best = 1;
        for rows in 1..=p {
            if candidate_probability(t, p / rows, rows) >= 0.95 {
                best = rows;
            }
        }
        (p / best, best)
    }

    /// Minimum number of equal signature slots for a verified pair.
    fn needed_matches(&self) -> usize {
        ((self.threshold * self.num_perm as f64) - 1e-9)
            .ceil()
            .max(1.0) as usize
    }

    fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// The MinHash functions: `h_i(x) = a_i·x + b_i (mod 2^32)`.
struct Hashers {
    a: Vec<u32>,
    b: Vec<u32>,
    shingle: usize,
    seed: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Finaliser of MurmurHash3: a strong 64-bit mix.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl Hashers {
    fn new(cfg: &MinHashConfig) -> Self {
        let mut state = cfg.seed ^ 0x6d69_6e68_6173_6821;
        let mut a = Vec::with_capacity(cfg.num_perm);
        let mut b = Vec::with_capacity(cfg.num_perm);
        for _ in 0..cfg.num_perm {
            let r = splitmix(&mut state);
            a.push((r as u32) | 1);
            b.push((r >> 32) as u32);
        }
        Self {
            a,
            b,
            shingle: cfg.shingle_bytes,
            seed: splitmix(&mut state),
        }
    }

    /// 32-bit hashes of every shingle of `text`.
    fn shingles(&self, text: &[u8], out: &mut Vec<u32>) {
        out.clear();
        let k = self.shingle;
        if text.len() <= k {
            let mut w = self.seed ^ (text.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if k <= 8 {
                for &byte in text {
                    w = (w << 8) | byte as u64;
                }
                out.push((fmix64(w ^ self.seed) >> 32) as u32);
            } else {
                out.push(xxhash_rust::xxh3::xxh3_64_with_seed(text, self.seed) as u32);
            }
            return;
        }
        if k <= 8 {
            // Rolling window of the last k bytes in a u64.
            let mask = if k == 8 {
                u64::MAX
            } else {
                (1u64 << (8 * k)) - 1
            };
            let mut w = 0u64;
            for &byte in &text[..k - 1] {
                w = (w << 8) | byte as u64;
            }
            out.reserve(text.len() - k + 1);
            for &byte in &text[k - 1..] {
                w = ((w << 8) | byte as u64) & mask;
                out.push((fmix64(w ^ self.seed) >> 32) as u32);
            }
        } else {
            out.extend(
                text.windows(k)
                    .map(|win| xxhash_rust::xxh3::xxh3_64_with_seed(win, self.seed) as u32),
            );
        }
    }

    /// Signature of one text into `sig` (len num_perm), using `scratch` buffers.
    fn signature(
        &self,
        text: &[u8],
        sig: &mut [u16],
        shingles: &mut Vec<u32>,
        mins: &mut Vec<u32>,
    ) {
        self.shingles(text, shingles);
        mins.clear();
        mins.resize(self.a.len(), u32::MAX);
        min_hashes(shingles, &self.a, &self.b, mins);
        for (s, m) in sig.iter_mut().zip(mins.iter()) {
            *s = (m >> 16) as u16;
        }
    }
}

crate::simd::avx2_dispatch! {
    /// `mins[i] = min(mins[i], min over x of a[i]·x + b[i])`, vectorised where the CPU allows.
    fn min_hashes(shingles: &[u32], a: &[u32], b: &[u32], mins: &mut [u32]) => min_hashes_kernel
}

#[inline(always)]
fn min_hashes_kernel(shingles: &[u32], a: &[u32], b: &[u32], mins: &mut [u32]) {
    for &x in shingles {
        for ((m, &ai), &bi) in mins.iter_mut().zip(a).zip(b) {
            *m = (*m).min(ai.wrapping_mul(x).wrapping_add(bi));
        }
    }
}

/// Number of equal slots of two signatures.
#[inline]
fn matches(x: &[u16], y: &[u16]) -> usize {
    x.iter().zip(y).map(|(a, b)| (a == b) as usize).sum()
}

/// Hash of one band of a signature, 32 bits.
#[inline]
fn band_key(band: &[u16], band_index: usize) -> u32 {
    let mut h = (band_index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &v in band {
        h = (h ^ v as u64)
            .wrapping_mul(0x0000_0100_0000_01b3)
            .rotate_left(23);
    }
    (fmix64(h) >> 32) as u32
}

/// MinHash signatures of many texts (row-major, `num_perm` u16 per text), in parallel.
pub fn signatures(lines: &[&str], cfg: &MinHashConfig) -> Result<Vec<u16>> {
    cfg.validate()?;
    let p = cfg.num_perm;
    let hashers = Hashers::new(cfg);
    let mut sigs = vec![0u16; lines.len() * p];
    const CHUNK: usize = 2048;
    let bar = cfg
        .progress
        .then(|| crate::progress::bar(lines.len() as u64, "minhash", "lines"));
    // Each chunk owns its slice of the output, so the result does not depend on scheduling.
    in_pool(cfg.threads, || {
        sigs.par_chunks_mut(CHUNK * p).enumerate().for_each_init(
            || (Vec::new(), Vec::new()),
            |(shingles, mins), (chunk_index, out)| {
                let start = chunk_index * CHUNK;
                for (i, sig) in out.chunks_mut(p).enumerate() {
                    hashers.signature(lines[start + i].as_bytes(), sig, shingles, mins);
                }
                if let Some(bar) = &bar {
                    bar.inc((out.len() / p) as u64);
                }
            },
        )
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(sigs)
}

/// Estimated Jaccard similarity of two texts' shingle sets (share of equal MinHash slots).
pub fn estimated_jaccard(a: &str, b: &str, cfg: &MinHashConfig) -> Result<f64> {
    let sigs = signatures(&[a, b], cfg)?;
    let (x, y) = sigs.split_at(cfg.num_perm);
    Ok(matches(x, y) as f64 / cfg.num_perm as f64)
}

/// Exact Jaccard similarity of two texts' sets of `k`-byte shingles (for checks and tests).
pub fn exact_jaccard(a: &str, b: &str, k: usize) -> f64 {
    fn set(s: &str, k: usize) -> std::collections::HashSet<&[u8]> {
        let bytes = s.as_bytes();
        if bytes.len() <= k {
            [bytes].into_iter().collect()
        } else {
            bytes.windows(k).collect()
        }
    }
    let (x, y) = (set(a, k), set(b, k));
    let inter = x.intersection(&y).count();
    let union = x.len() + y.len() - inter;
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Signature `i` of a row-major signature matrix with `p` slots per row.
#[inline]
fn sig_of(sigs: &[u16], p: usize, i: u32) -> &[u16] {
    &sigs[i as usize * p..(i as usize + 1) * p]
}

/// At most this many distinct clusters are tried per LSH bucket, so a bucket of many
/// dissimilar lines costs linear, not quadratic, time.
const MAX_REPS_PER_BUCKET: usize = 16;

/// Near-duplicate cluster id of every line (dense, `0..clusters`, numbered by first
/// appearance). Identical lines always share a cluster. See the module docs for the method.
pub fn near_duplicate_clusters(lines: &[&str], cfg: &MinHashConfig) -> Result<Vec<u32>> {
    cfg.validate()?;
    if lines.len() >= u32::MAX as usize {
        return Err(Error::input(
            "near-duplicate clustering takes at most 2^32-1 lines at once",
        ));
    }
    let t = std::time::Instant::now();
    let sigs = signatures(lines, cfg)?;
    let t_sig = t.elapsed().as_secs_f64();
    let ids = clusters_from_signatures(&sigs, lines.len(), cfg);
    tracing::debug!(
        "near-dup: {} lines, signatures {t_sig:.2} s, LSH + union-find {:.2} s",
        lines.len(),
        t.elapsed().as_secs_f64() - t_sig
    );
    Ok(ids)
}

/// Cluster ids from precomputed [`signatures`].
pub fn clusters_from_signatures(sigs: &[u16], n: usize, cfg: &MinHashConfig) -> Vec<u32> {
    let p = cfg.num_perm;
    let (bands, rows) = cfg.bands_rows();
    let need = cfg.needed_matches();
    let sig = |i: u32| sig_of(sigs, p, i);
    let mut uf = UnionFind::new(n);
    let threads = cfg.threads().max(1);
    let bar = cfg
        .progress
        .then(|| crate::progress::bar(bands as u64, "LSH", "bands"));
    let mut reps: Vec<u32> = Vec::with_capacity(MAX_REPS_PER_BUCKET);
    // Bands are keyed and sorted in parallel, a group at a time (memory: threads × 8 bytes ×
    // lines), then scanned in band order so the result does not depend on scheduling.
    for group_start in (0..bands).step_by(threads) {
        let group: Vec<usize> = (group_start..(group_start + threads).min(bands)).collect();
        let keyed: Vec<Vec<u64>> = in_pool(cfg.threads, || {
            group
                .par_iter()
                .map(|&band| {
                    let mut keys: Vec<u64> = (0..n as u32)
                        .map(|i| {
                            let s = &sig_of(sigs, p, i)[band * rows..(band + 1) * rows];
                            ((band_key(s, band) as u64) << 32) | i as u64
                        })
                        .collect();
                    keys.sort_unstable();
                    keys
                })
                .collect()
        });
        for keys in keyed {
            let mut start = 0;
            while start < keys.len() {
                let bucket = keys[start] >> 32;
                let mut end = start + 1;
                while end < keys.len() && keys[end] >> 32 == bucket {
                    end += 1;
                }
                if end - start > 1 {
                    reps.clear();
                    for &key in &keys[start..end] {
                        let id = key as u32;
                        let root = uf.find(id);
                        let mut placed = false;
                        for &rep in &reps {
                            let rep_root = uf.find(rep);
                            if rep_root == root {
                                placed = true;
                                break;
                            }
                            if matches(sig(id), sig(rep)) >= need {
                                uf.union_roots(root, rep_root);
                                placed = true;
                                break;
                            }
                        }
                        if !placed && reps.len() < MAX_REPS_PER_BUCKET {
                            reps.push(id);
                        }
                    }
                }
                start = end;
            }
            if let Some(bar) = &bar {
                bar.inc(1);
            }
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    // Dense ids by first appearance.
    let mut id_of_root = vec![u32::MAX; n];
    let mut next = 0u32;
    (0..n as u32)
        .map(|i| {
            let root = uf.find(i) as usize;
            if id_of_root[root] == u32::MAX {
                id_of_root[root] = next;
                next += 1;
            }
            id_of_root[root]
        })
        .collect()
}

/// Run `work` on rayon's global pool (`threads` = 0: all cores) or on a pool of `threads`.
fn in_pool<R: Send>(threads: usize, work: impl FnOnce() -> R + Send) -> R {
    if threads == 0 {
        return work();
    }
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(work),
        // A pool that cannot start (no threads left) still gets the work done, on the global one.
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mutate(s: &str, seed: u64, edits: usize) -> String {
        let mut state = seed;
        let mut bytes = s.as_bytes().to_vec();
        for _ in 0..edits {
            let pos = (splitmix(&mut state) as usize) % bytes.len();
            bytes[pos] = b'a' + (splitmix(&mut state) % 26) as u8;
        }
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn bands_for_default_threshold() {
        let cfg = MinHashConfig::default();
        assert_eq!(cfg.bands_rows(), (18, 7));
        assert!(candidate_probability(0.8, 18, 7) >= 0.95);
        let strict = MinHashConfig {
            threshold: 0.95,
            ..Default::default()
        };
        let (b, r) = strict.bands_rows();
        assert!(r > 7 && b * r <= 128, "{b}x{r}");
    }

    #[test]
    fn estimate_tracks_exact_jaccard() {
        let cfg = MinHashConfig::default();
        let base = "powershell.exe -NoProfile -ExecutionPolicy Bypass -Command Get-ChildItem C:\\Windows\\Temp -Recurse | Remove-Item -Force";
        let mut total_err = 0.0;
        let mut bias = 0.0;
        let trials = 60;
        for t in 0..trials {
            let other = mutate(base, t, 1 + (t as usize % 12));
            let exact = exact_jaccard(base, &other, 5);
            let est = estimated_jaccard(base, &other, &cfg).unwrap();
            total_err += (est - exact).abs();
            bias += est - exact;
        }
        let (mae, bias) = (total_err / trials as f64, bias / trials as f64);
        assert!(mae < 0.05, "mean absolute error {mae}");
        assert!(bias.abs() < 0.02, "bias {bias}");
    }

    #[test]
    fn clusters_group_near_duplicates_only() {
        let a = "cmd.exe /c reg add HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Run /v Updater /t REG_SZ /d C:\\Users\\Public\\upd.exe";
        let a2 = "cmd.exe /c reg add HKLM\\Software\\Microsoft\\Windows\\CurrentVersion\\Run /v Updater /t REG_SZ /d C:\\Users\\Public\\upx.exe";
        let b = "find . -name '*.log' -mtime +7 -exec rm {} \\;";
        let b2 = "find . -name '*.log' -mtime +7 -exec rm {} +";
        let c = "git clone https://github.com/example/project.git && cd project && make -j4";
        let lines = [a, b, a2, c, b2, a];
        let ids = near_duplicate_clusters(&lines, &MinHashConfig::default()).unwrap();
        assert_eq!(ids[0], 0);
        assert_eq!(ids[2], ids[0]);
        assert_eq!(ids[5], ids[0]);
        assert_ne!(ids[1], ids[0]);
        assert_ne!(ids[3], ids[0]);
        assert_ne!(ids[3], ids[1]);
        assert_eq!(
            ids,
            near_duplicate_clusters(
                &lines,
                &MinHashConfig {
                    threads: 1,
                    ..Default::default()
                }
            )
            .unwrap()
        );
        // b and b2 differ by 3 of ~45 bytes: Jaccard about 0.8, near the threshold; a lower
        // threshold must join them.
        let loose = MinHashConfig {
            threshold: 0.5,
            ..Default::default()
        };
        let ids = near_duplicate_clusters(&lines, &loose).unwrap();
        assert_eq!(ids[1], ids[4]);
        assert_ne!(ids[1], ids[3]);
    }

    #[test]
    fn short_and_empty_lines() {
        let ids = near_duplicate_clusters(&["", "", "ls", "ls", "pwd"], &MinHashConfig::default())
            .unwrap();
        assert_eq!(ids, vec![0, 0, 1, 1, 2]);
        assert!(
            near_duplicate_clusters(&[], &MinHashConfig::default())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn invalid_config_is_an_error() {
        let bad = MinHashConfig {
            threshold: 1.5,
            ..Default::default()
        };
        assert!(near_duplicate_clusters(&["x"], &bad).is_err());
        let bad = MinHashConfig {
            num_perm: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }
}
