//! The CNN command-line classifier: token embedding -> parallel Conv1d of several widths ->
//! ReLU -> max-pool (optionally also mean-pool) over the real (unpadded) positions -> dropout
//! -> optionally a hidden ReLU layer -> one logit.
//!
//! A line's score does not depend on what else is in its batch: a window of width `k` counts
//! only when it starts at a position `t < max(len - k + 1, 1)`, so padding never reaches the
//! pool except for lines shorter than `k`, whose single window sees the line then PAD tokens
//! (exactly what `scripts/load_classifier.py` does).

use burn::module::Module;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Dropout, DropoutConfig, Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::tokens::TokenKind;
use crate::dropout::DropoutMasks;

/// Architecture; saved in `config.json` beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CnnConfig {
    /// Tokens: `bytes` (256 ids) or `bpe` (a byte-level BPE vocabulary of `vocab_size` ids
    /// trained on the training lines, saved as tokenizer.json).
    pub tokenizer: TokenKind,
    /// BPE vocabulary size, the 256 byte symbols included (ignored for bytes).
    pub vocab_size: usize,
    /// Size of each token's embedding.
    pub embed_dim: usize,
    /// Convolution filters per kernel width.
    pub filters: usize,
    /// Kernel widths in tokens, one parallel convolution each.
    pub widths: Vec<usize>,
    /// Dropout on the pooled features during training.
    pub dropout: f64,
    /// Tokens seen per line; a longer line keeps its first and last `max_len / 2` tokens
    /// (the payload of an attack is often at the end).
    pub max_len: usize,
    /// How each filter's outputs over the line become one feature: `max` (does the pattern
    /// occur anywhere), or `max_mean` (also how much of the line it covers: long scripts and
    /// one-line payloads differ there).
    pub pooling: Pooling,
    /// Units of a hidden ReLU layer between the pooled features and the logit (0 = none: the
    /// logit is linear in the features).
    pub hidden: usize,
}

/// Pooling over a line's positions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    Max,
    MaxMean,
}

impl Pooling {
    /// Features per filter.
    pub fn features(self) -> usize {
        match self {
            Pooling::Max => 1,
            Pooling::MaxMean => 2,
        }
    }
}

impl Default for CnnConfig {
    fn default() -> Self {
        Self {
            tokenizer: TokenKind::Bytes,
            vocab_size: 2048,
            embed_dim: 32,
            filters: 64,
            widths: vec![2, 3, 4, 5],
            dropout: 0.2,
            max_len: 256,
            pooling: Pooling::Max,
            hidden: 0,
        }
    }
}

impl CnnConfig {
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::input(format!("classifier config: {m}")));
        if self.embed_dim == 0 || self.filters == 0 {
            return bad("embed_dim and filters must be positive");
        }
        if self.widths.is_empty() || self.widths.contains(&0) {
            return bad("widths must list at least one positive kernel width");
        }
        if self.max_len < 8 || self.max_len < self.max_width() {
            return bad("max_len must be at least 8 and at least the widest kernel");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout must be in [0, 1)");
        }
        if self.tokenizer == TokenKind::Bpe && !(257..=65_536).contains(&self.vocab_size) {
            return bad("vocab_size must be in 257..=65536 for bpe (256 byte symbols + merges)");
        }
        Ok(())
    }

    /// Number of token ids; the padding id is this number.
    pub fn vocab(&self) -> usize {
        match self.tokenizer {
            TokenKind::Bytes => 256,
            TokenKind::Bpe => self.vocab_size,
        }
    }

    pub fn pad(&self) -> i64 {
        self.vocab() as i64
    }

    /// Pooled features feeding the head (or the hidden layer).
    pub fn features(&self) -> usize {
        self.filters * self.widths.len() * self.pooling.features()
    }

    pub fn max_width(&self) -> usize {
        self.widths.iter().copied().max().unwrap_or(1)
    }

    /// The token embedding and the convolutions, freshly initialised (the first draws of
    /// [`CnnConfig::init`], in the same order).
    pub fn init_encoder(&self, device: &Device) -> CnnEncoder {
        CnnEncoder {
            embed: EmbeddingConfig::new(self.vocab() + 1, self.embed_dim)
                .with_initializer(burn::nn::Initializer::Normal {
                    mean: 0.0,
                    std: 0.1,
                })
                .init(device),
            convs: self
                .widths
                .iter()
                .map(|&k| Conv1dConfig::new(self.embed_dim, self.filters, k).init(device))
                .collect(),
        }
    }

    pub fn init(&self, device: &Device) -> CnnClassifier {
        let CnnEncoder { embed, convs } = self.init_encoder(device);
        CnnClassifier {
            embed,
            convs,
            dropout: DropoutConfig::new(self.dropout).init(),
            hidden: (self.hidden > 0)
                .then(|| LinearConfig::new(self.features(), self.hidden).init(device)),
            head: LinearConfig::new(
                if self.hidden > 0 {
                    self.hidden
                } else {
                    self.features()
                },
                1,
            )
            .init(device),
            pooling: self.pooling as usize,
        }
    }

    /// The tokens the model sees of a line: all of them, or the head and tail.
    pub fn clip<'a, T: Clone>(&self, line: &'a [T]) -> std::borrow::Cow<'a, [T]> {
        if line.len() <= self.max_len {
            return line.into();
        }
        let head = self.max_len / 2;
        let tail = self.max_len - head;
        let mut v = Vec::with_capacity(self.max_len);
        v.extend_from_slice(&line[..head]);
        v.extend_from_slice(&line[line.len() - tail..]);
        v.into()
    }

    /// Padded sequence length of a batch whose longest (clipped) line has `len` bytes:
    /// a multiple of 8 (few kernel shapes) and at least the widest kernel.
    pub fn batch_len(&self, len: usize) -> usize {
        (len.max(1).div_ceil(8) * 8).max(self.max_width())
    }
}

/// The classifier's encoder: its token embedding and parallel convolutions, under the
/// classifier's own parameter names (`embed.weight`, `convs.K.weight`, `convs.K.bias`), so
/// that weights saved from it load into a [`CnnClassifier`] (pretraining trains it,
/// `classify::pretrain`).
#[derive(Module, Debug)]
pub struct CnnEncoder {
    pub embed: Embedding,
    pub convs: Vec<Conv1d>,
}

#[derive(Module, Debug)]
pub struct CnnClassifier {
    embed: Embedding,
    convs: Vec<Conv1d>,
    dropout: Dropout,
    /// `None` without a hidden layer: the weights then have the names of earlier versions.
    hidden: Option<Linear>,
    head: Linear,
    /// [`Pooling`] as a number (a module field must be a module or a constant).
    pooling: usize,
}

impl CnnClassifier {
    /// A copy of the embedding and the convolutions.
    pub fn encoder(&self) -> CnnEncoder {
        CnnEncoder {
            embed: self.embed.clone(),
            convs: self.convs.clone(),
        }
    }

    /// The same classifier with `encoder`'s embedding and convolutions (its own dropout,
    /// hidden layer and head kept).
    pub fn with_encoder(self, encoder: CnnEncoder) -> Self {
        CnnClassifier {
            embed: encoder.embed,
            convs: encoder.convs,
            ..self
        }
    }

    /// Logits `[batch]` for token ids `[batch, len]` whose rows hold `lens[i]` real tokens
    /// (no dropout).
    pub fn forward(&self, tokens: Tensor<2, Int>, lens: Tensor<1, Int>) -> Tensor<1> {
        self.forward_with(tokens, lens, None)
    }

    /// [`CnnClassifier::forward`] for a training step: dropout on the pooled features (and
    /// the hidden layer) with masks from `masks`, a keyed hash instead of the device's one
    /// global generator, so that the shards of a step can run concurrently and repeat.
    pub fn forward_train(
        &self,
        tokens: Tensor<2, Int>,
        lens: Tensor<1, Int>,
        masks: &mut DropoutMasks,
    ) -> Tensor<1> {
        self.forward_with(tokens, lens, Some(masks))
    }

    fn forward_with(
        &self,
        tokens: Tensor<2, Int>,
        lens: Tensor<1, Int>,
        mut masks: Option<&mut DropoutMasks>,
    ) -> Tensor<1> {
        let batch = tokens.dims()[0];
        let device = tokens.device();
        let x = ConvInput::new(&self.convs, self.embed.forward(tokens));
        let axis = x.axis();
        let pooled: Vec<Tensor<2>> = self
            .convs
            .iter()
            .map(|conv| {
                let y = x.relu_conv(conv);
                let k = conv.kernel_size;
                let out_len = y.dims()[axis];
                // Window t counts when t < max(len_i - k + 1, 1) (<= len + 1 - k, so this also
                // drops what the GEMM kernel holds past the batch's last window).
                let limit = lens
                    .clone()
                    .sub_scalar(k as i64 - 1)
                    .clamp_min(1)
                    .reshape([batch, 1])
                    .expand([batch, out_len]);
                let positions = Tensor::<1, Int>::arange(0..out_len as i64, &device)
                    .reshape([1, out_len])
                    .expand([batch, out_len]);
                // After ReLU every value is >= 0, so zeroing the windows that start in the
                // padding leaves the maximum over the real windows unchanged.
                let mut keep_shape = [batch, 1, 1];
                keep_shape[axis] = out_len;
                let keep = positions.lower(limit).float().reshape(keep_shape);
                let filters = conv.weight.dims()[0];
                let kept = y * keep.clone();
                let max = kept.clone().max_dim(axis).reshape([batch, filters]);
                if self.pooling == Pooling::MaxMean as usize {
                    // The mean over the real windows only: their count is the kept mask's sum.
                    let windows = keep.sum_dim(axis).reshape([batch, 1]);
                    let mean = kept.sum_dim(axis).reshape([batch, filters]) / windows;
                    Tensor::cat(vec![max, mean], 1)
                } else {
                    max
                }
            })
            .collect();
        let prob = self.dropout.prob;
        let mut dropout = |h: Tensor<2>| match masks.as_deref_mut() {
            Some(masks) => masks.apply(h, prob),
            None => h,
        };
        let mut h = dropout(Tensor::cat(pooled, 1));
        if let Some(hidden) = &self.hidden {
            h = dropout(relu(hidden.forward(h)));
        }
        self.head.forward(h).reshape([batch])
    }
}

/// A batch of token vectors `[batch, len, embed]` prepared for the convolutions, which run on
/// one of two kernels; [`ConvInput::relu_conv`] gives `relu(conv(x))` with its positions on
/// [`ConvInput::axis`]: 1 for `[batch, len, filters]` (the GEMM kernel, whose positions past
/// `len - k` are not windows of a line and must be masked or cut off), 2 for
/// `[batch, filters, len + 1 - k]` (Burn's `Conv1d`). One convolution at a time, so that only
/// one output is alive while the caller pools it.
///
/// Which kernel: on flex, while training (the batch is tracked by autodiff), one GEMM over
/// the windows ([`conv_windows`]), because flex's conv1d backward is slow: it computes the
/// weight gradient as a convolution over swapped dimensions and the input gradient as a
/// transposed convolution, each with strided copies (docs/benchmarks.md, "Where the time
/// goes, per op"); the GEMM's gradients are two GEMMs and a scatter-add. Everywhere else
/// Burn's `Conv1d`: flex's forward conv1d (per-line GEMMs on strided input, no im2col
/// buffer) is faster than the windows GEMM, and wgpu has its own conv kernels both ways.
/// The two kernels compute the same sums in a different order.
pub enum ConvInput {
    Windows(WindowRows),
    Channels(Tensor<3>),
}

impl ConvInput {
    pub fn new(convs: &[Conv1d], x: Tensor<3>) -> Self {
        if x.is_tracked() && x.device() == Device::flex() {
            let max_width = convs.iter().map(|c| c.kernel_size).max().unwrap_or(1);
            ConvInput::Windows(WindowRows::new(x, max_width))
        } else {
            let [batch, len, embed] = x.dims();
            // [batch, embed, len]. The reshape to the same shape makes the swapped (strided)
            // view contiguous once: flex's conv1d would otherwise copy it into contiguous
            // memory in each of the convolutions (docs/benchmarks.md).
            ConvInput::Channels(x.swap_dims(1, 2).reshape([batch, embed, len]))
        }
    }

    /// The axis of [`ConvInput::relu_conv`]'s output that holds the positions.
    pub fn axis(&self) -> usize {
        match self {
            ConvInput::Windows(_) => 1,
            ConvInput::Channels(_) => 2,
        }
    }

    pub fn relu_conv(&self, conv: &Conv1d) -> Tensor<3> {
        match self {
            ConvInput::Windows(rows) => relu(conv_windows(conv, rows)),
            ConvInput::Channels(x) => relu(conv.forward(x.clone())),
        }
    }
}

/// A batch of token vectors `[batch, len, channels]` laid out for [`conv_windows`]: the batch
/// as one contiguous sequence of `batch * len` rows, then `max_width - 1` zero rows, so that
/// window `r` of any width `k <= max_width` is rows `r..r + k`. Built once per forward and
/// shared by the convolutions (each would otherwise copy the strided embedding output).
pub struct WindowRows {
    rows: Tensor<2>,
    batch: usize,
    len: usize,
}

impl WindowRows {
    pub fn new(x: Tensor<3>, max_width: usize) -> Self {
        let [batch, len, channels] = x.dims();
        let mut rows = x.reshape([batch * len, channels]);
        if max_width > 1 {
            let tail = Tensor::zeros([max_width - 1, channels], &rows.device());
            rows = Tensor::cat(vec![rows, tail], 0);
        }
        Self { rows, batch, len }
    }
}

/// `conv` over `x`, as `[batch, len, filters]`: position `t < len + 1 - k` holds what
/// `conv.forward(x.swap_dims(1, 2))` gives there (the same weights and result, up to the
/// order of the sums); later positions hold windows that run into the next line (or the zero
/// rows after the last) and must be masked or cut off by the caller.
///
/// Computed as one GEMM over the windows (im2col), gathered as rows `r..r + k` of the whole
/// batch taken as one sequence ([`ConvInput`] says when and why).
///
/// Only the convolutions longtail builds: stride 1, no dilation, one group, no padding.
pub fn conv_windows(conv: &Conv1d, x: &WindowRows) -> Tensor<3> {
    let [filters, channels, k] = conv.weight.dims();
    debug_assert!(conv.stride == 1 && conv.dilation == 1 && conv.groups == 1);
    let rows = x.batch * x.len;
    let max_width = x.rows.dims()[0] - rows + 1;
    assert!(k <= max_width, "kernel width {k} > WindowRows' {max_width}");
    // Column j * channels + c of window r is row r + j, channel c: one row gather (flex
    // copies whole rows; the gradient is one scatter-add).
    let windows = if k == 1 {
        x.rows.clone().narrow(0, 0, rows)
    } else {
        let at: Vec<i64> = (0..rows as i64).flat_map(|r| r..r + k as i64).collect();
        let at = Tensor::<1, Int>::from_data(TensorData::new(at, [rows * k]), &x.rows.device());
        x.rows.clone().select(0, at).reshape([rows, k * channels])
    };
    // weight[f, c, j] at row j * channels + c.
    let weight = conv
        .weight
        .val()
        .permute([2, 1, 0])
        .reshape([k * channels, filters]);
    let mut y = windows.matmul(weight);
    if let Some(bias) = &conv.bias {
        y = y + bias.val().reshape([1, filters]);
    }
    y.reshape([x.batch, x.len, filters])
}

/// Token ids and lengths of a batch, on the host.
#[derive(Clone, Debug)]
pub struct HostBatch {
    pub batch: usize,
    pub len: usize,
    pub tokens: Vec<i64>,
    pub lens: Vec<i64>,
    /// 1 = malicious (training only).
    pub targets: Vec<f32>,
    /// Loss weight per line (training only).
    pub weights: Vec<f32>,
    /// Seed of the step's dropout masks (training only).
    pub dropout_seed: u64,
    /// This batch is rows `offset..offset + batch` of a training step of `step_lines` lines
    /// (the whole step unless it is a shard: [`HostBatch::shards`]).
    pub offset: usize,
    pub step_lines: usize,
}

impl HostBatch {
    /// Rows from already clipped token ids.
    pub fn new(cfg: &CnnConfig, rows: &[&[u32]]) -> Self {
        let longest = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let len = cfg.batch_len(longest);
        let mut tokens = vec![cfg.pad(); rows.len() * len];
        for (r, ids) in rows.iter().enumerate() {
            for (i, &t) in ids.iter().enumerate() {
                tokens[r * len + i] = t as i64;
            }
        }
        Self {
            batch: rows.len(),
            len,
            tokens,
            lens: rows.iter().map(|r| r.len() as i64).collect(),
            targets: vec![0.0; rows.len()],
            weights: vec![1.0; rows.len()],
            dropout_seed: 0,
            offset: 0,
            step_lines: rows.len(),
        }
    }

    /// The batch cut into at most `n` shards of consecutive lines, each at least
    /// `min_lines` long (none when that leaves fewer than two): the same padded length, seed
    /// and step, so that the shards' losses and gradients sum to the whole batch's.
    pub fn shards(&self, n: usize, min_lines: usize) -> Vec<HostBatch> {
        crate::train::shard_ranges(self.batch, n, min_lines)
            .into_iter()
            .map(|rows| HostBatch {
                batch: rows.len(),
                len: self.len,
                tokens: self.tokens[rows.start * self.len..rows.end * self.len].to_vec(),
                lens: self.lens[rows.clone()].to_vec(),
                targets: self.targets[rows.clone()].to_vec(),
                weights: self.weights[rows.clone()].to_vec(),
                dropout_seed: self.dropout_seed,
                offset: self.offset + rows.start,
                step_lines: self.step_lines,
            })
            .collect()
    }

    /// The dropout masks of this batch's rows of its step.
    pub fn dropout_masks(&self) -> DropoutMasks {
        DropoutMasks::for_rows(self.dropout_seed, self.offset, self.step_lines)
    }

    pub fn tokens(&self, device: &Device) -> Tensor<2, Int> {
        Tensor::from_data(
            TensorData::new(self.tokens.clone(), [self.batch, self.len]),
            device,
        )
    }

    pub fn lens(&self, device: &Device) -> Tensor<1, Int> {
        Tensor::from_data(TensorData::new(self.lens.clone(), [self.batch]), device)
    }

    pub fn targets(&self, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(self.targets.clone(), [self.batch]), device)
    }

    pub fn weights(&self, device: &Device) -> Tensor<1> {
        Tensor::from_data(TensorData::new(self.weights.clone(), [self.batch]), device)
    }
}

/// Numerically stable binary cross-entropy on logits, per line:
/// `max(z, 0) - y z + log(1 + exp(-|z|))`.
pub fn bce_with_logits(logits: Tensor<1>, targets: Tensor<1>) -> Tensor<1> {
    logits.clone().clamp_min(0.0) - logits.clone() * targets + logits.abs().neg().exp().log1p()
}

pub fn sigmoid(logit: f32) -> f64 {
    1.0 / (1.0 + (-(logit as f64)).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_keep_head_and_tail() {
        let cfg = CnnConfig {
            max_len: 8,
            widths: vec![2, 3],
            ..Default::default()
        };
        assert_eq!(&*cfg.clip(&b"abc"[..]), b"abc");
        assert_eq!(&*cfg.clip(&b"0123456789AB"[..]), b"012389AB");
        assert_eq!(cfg.batch_len(3), 8);
        assert_eq!(cfg.batch_len(9), 16);
    }

    /// Largest absolute difference between two tensors of the same shape.
    fn max_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
        (a - b).abs().max().into_scalar::<f32>()
    }

    #[test]
    fn the_gemm_kernel_computes_burns_conv1d_and_its_gradients() {
        use burn::tensor::Distribution;
        let device = Device::flex().autodiff();
        let cfg = CnnConfig {
            embed_dim: 6,
            filters: 4,
            widths: vec![1, 2, 5],
            ..Default::default()
        };
        let encoder = cfg.init_encoder(&device);
        let (batch, len) = (3, 9);
        let normal = Distribution::Normal(0.0, 1.0);
        let x = Tensor::<3>::random([batch, len, 6], normal, &device).require_grad();
        for conv in &encoder.convs {
            let k = conv.kernel_size;
            let out_len = len + 1 - k;
            // A loss that weighs every output differently, so every gradient entry is tested.
            let weights = Tensor::<3>::random([batch, out_len, 4], normal, &device);
            let rows = WindowRows::new(x.clone(), cfg.max_width());
            let gemm = conv_windows(conv, &rows).narrow(1, 0, out_len);
            let burn = conv.forward(x.clone().swap_dims(1, 2)).swap_dims(1, 2);
            assert!(
                max_diff(gemm.clone(), burn.clone()) < 1e-5,
                "forward, width {k}"
            );

            let grads_gemm = (gemm * weights.clone()).sum().backward();
            let grads_burn = (burn * weights).sum().backward();
            let grad = |t: &Tensor<3>, g| t.grad(g).expect("a gradient");
            let d_x = max_diff(grad(&x, &grads_gemm), grad(&x, &grads_burn));
            let w = conv.weight.val();
            let d_w = max_diff(grad(&w, &grads_gemm), grad(&w, &grads_burn));
            let b = conv.bias.as_ref().expect("a bias").val();
            let d_b = max_diff(b.grad(&grads_gemm).unwrap(), b.grad(&grads_burn).unwrap());
            assert!(
                d_x < 1e-4 && d_w < 1e-4 && d_b < 1e-4,
                "width {k}: {d_x} {d_w} {d_b}"
            );
        }
    }

    #[test]
    fn training_and_inference_kernels_give_the_same_logits() {
        let device = Device::flex();
        let cfg = CnnConfig {
            widths: vec![2, 3, 7],
            pooling: Pooling::MaxMean,
            hidden: 8,
            dropout: 0.0,
            ..Default::default()
        };
        let ad = device.clone().autodiff();
        let model = cfg.init(&ad);
        let rows: Vec<&[u32]> = vec![&[1, 2, 3], &[5; 20], &[9, 8, 7, 6, 5, 4, 3, 2, 1]];
        let hb = HostBatch::new(&cfg, &rows);
        // On the autodiff device the embedding output is tracked: the GEMM kernel.
        let train = model.forward(hb.tokens(&ad), hb.lens(&ad));
        assert!(train.is_tracked());
        let infer = model.valid().forward(hb.tokens(&device), hb.lens(&device));
        let (train, infer) = (train.into_data(), infer.into_data());
        let (train, infer) = (
            train.as_slice::<f32>().unwrap(),
            infer.as_slice::<f32>().unwrap(),
        );
        for (a, b) in train.iter().zip(infer) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn bce_matches_the_formula() {
        let device = Device::flex();
        let z = Tensor::<1>::from_data(TensorData::new(vec![-3.0f32, 0.0, 2.5], [3]), &device);
        let y = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 1.0, 1.0], [3]), &device);
        let got = bce_with_logits(z, y)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want = [
            -(1.0 - sigmoid(-3.0)).ln(),
            -(sigmoid(0.0)).ln(),
            -(sigmoid(2.5)).ln(),
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}
