//! The byte-level transformer autoencoder.
//!
//! Two objectives share one network (see `docs/detector.md` for the measured comparison):
//! - `masked`: masked-byte denoising. Training hides a fraction of the bytes; scoring hides
//!   every k-th byte in k interleaved passes, so each byte is predicted exactly once from
//!   its context (a pseudo-likelihood).
//! - `bottleneck`: encoder -> mean-pooled code of a few dimensions -> decoder that sees only
//!   the code and the positions. Rare structure does not fit through the code.

use super::encoder::encode;
use crate::dropout::DropoutMasks;
use burn::module::Module;
use burn::nn::transformer::{TransformerEncoder, TransformerEncoderConfig};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

/// Token ids: 0..=255 are bytes; then the two special tokens.
pub const PAD: i64 = 256;
pub const MASK: i64 = 257;
pub const VOCAB: usize = 258;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Predict randomly masked bytes from both sides (BERT-style).
    Masked,
    /// Reconstruct every byte through a narrow bottleneck.
    Bottleneck,
}

crate::vocab::named_enum!(Objective { Masked => "masked", Bottleneck => "bottleneck" });

/// Architecture and scoring settings; saved as `config.json` beside the weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoencoderConfig {
    pub objective: Objective,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    pub d_ff: usize,
    /// Context in bytes; longer lines are cut into overlapping chunks.
    pub max_len: usize,
    /// Bytes shared by consecutive chunks of a long line.
    pub chunk_overlap: usize,
    pub dropout: f64,
    /// `masked`: fraction of bytes hidden in training; scoring uses round(1/mask_prob) passes.
    pub mask_prob: f64,
    /// `bottleneck`: size of the code and depth of the decoder.
    pub bottleneck_dim: usize,
    pub decoder_layers: usize,
    /// Width in bytes of the sliding window behind `score_window` and the explanations.
    pub window: usize,
}

impl Default for AutoencoderConfig {
    fn default() -> Self {
        Self {
            // Equal detection quality to `masked` in docs/detector.md, at a quarter of the
            // scoring cost (one pass instead of round(1/mask_prob)).
            objective: Objective::Bottleneck,
            d_model: 64,
            n_heads: 4,
            n_layers: 2,
            d_ff: 128,
            max_len: 128,
            chunk_overlap: 32,
            dropout: 0.1,
            mask_prob: 0.25,
            bottleneck_dim: 32,
            decoder_layers: 1,
            window: 12,
        }
    }
}

impl AutoencoderConfig {
    /// Number of interleaved masking passes used when scoring a `masked` model.
    pub fn score_passes(&self) -> usize {
        match self.objective {
            Objective::Masked => (1.0 / self.mask_prob).round().max(1.0) as usize,
            Objective::Bottleneck => 1,
        }
    }

    pub fn validate(&self) -> crate::Result<()> {
        let bad = |m: &str| Err(crate::Error::input(format!("detector config: {m}")));
        if self.d_model == 0 || self.n_heads == 0 || !self.d_model.is_multiple_of(self.n_heads) {
            return bad("d_model must be a positive multiple of n_heads");
        }
        if self.max_len < 16 || self.chunk_overlap >= self.max_len / 2 {
            return bad("max_len must be >= 16 and chunk_overlap < max_len / 2");
        }
        if !(0.01..=0.9).contains(&self.mask_prob) {
            return bad("mask_prob must be in [0.01, 0.9]");
        }
        if self.window == 0 || self.n_layers == 0 || self.d_ff == 0 {
            return bad("window, n_layers and d_ff must be positive");
        }
        if self.objective == Objective::Bottleneck
            && (self.bottleneck_dim == 0 || self.decoder_layers == 0)
        {
            return bad("bottleneck objective needs bottleneck_dim > 0 and decoder_layers > 0");
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> ByteAutoencoder {
        let layers = |n| {
            TransformerEncoderConfig::new(self.d_model, self.d_ff, self.n_heads, n)
                .with_dropout(self.dropout)
                .with_norm_first(true)
                .init(device)
        };
        let bottleneck = self.objective == Objective::Bottleneck;
        ByteAutoencoder {
            byte_embed: EmbeddingConfig::new(VOCAB, self.d_model)
                .with_initializer(burn::nn::Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            pos_embed: EmbeddingConfig::new(self.max_len, self.d_model)
                .with_initializer(burn::nn::Initializer::Normal {
                    mean: 0.0,
                    std: 0.02,
                })
                .init(device),
            encoder: layers(self.n_layers),
            to_code: bottleneck
                .then(|| LinearConfig::new(self.d_model, self.bottleneck_dim).init(device)),
            from_code: bottleneck
                .then(|| LinearConfig::new(self.bottleneck_dim, self.d_model).init(device)),
            decoder: bottleneck.then(|| layers(self.decoder_layers)),
            norm: LayerNormConfig::new(self.d_model).init(device),
            head: LinearConfig::new(self.d_model, 256).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct ByteAutoencoder {
    byte_embed: Embedding,
    pos_embed: Embedding,
    encoder: TransformerEncoder,
    to_code: Option<Linear>,
    from_code: Option<Linear>,
    decoder: Option<TransformerEncoder>,
    norm: LayerNorm,
    head: Linear,
}

impl ByteAutoencoder {
    /// Logits over the 256 byte values, `[batch, len, 256]`.
    /// `inputs` may contain MASK and PAD; `pad` is true where the position is padding (`None`:
    /// the batch has none). `dropout` is `Some` for a training step only.
    pub fn forward(
        &self,
        inputs: Tensor<2, Int>,
        pad: Option<Tensor<2, Bool>>,
        mut dropout: Option<&mut DropoutMasks>,
    ) -> Tensor<3> {
        let [batch, len] = inputs.dims();
        let device = inputs.device();
        let positions = Tensor::<1, Int>::arange(0..len as i64, &device)
            .reshape([1, len])
            .expand([batch, len]);
        let pos = self.pos_embed.forward(positions);
        let x = self.byte_embed.forward(inputs) + pos.clone();
        let mut h = encode(&self.encoder, x, pad.as_ref(), dropout.as_deref_mut());
        if let (Some(to_code), Some(from_code), Some(decoder)) =
            (&self.to_code, &self.from_code, &self.decoder)
        {
            // Mean over real bytes only, so padding does not dilute the code.
            let pooled = match &pad {
                Some(pad) => {
                    let keep = pad.clone().bool_not().float().reshape([batch, len, 1]);
                    (h * keep.clone()).sum_dim(1) / keep.sum_dim(1).clamp_min(1.0)
                }
                None => h.mean_dim(1),
            };
            let code = to_code.forward(pooled).tanh();
            let z = from_code.forward(code); // [batch, 1, d_model], broadcast over positions
            h = encode(decoder, pos + z, pad.as_ref(), dropout);
        }
        self.head.forward(self.norm.forward(h))
    }

    /// Negative log-likelihood of each target byte, `[batch, len]` (nats).
    pub fn byte_nll(
        &self,
        inputs: Tensor<2, Int>,
        pad: Option<Tensor<2, Bool>>,
        targets: Tensor<2, Int>,
        dropout: Option<&mut DropoutMasks>,
    ) -> Tensor<2> {
        super::fused::nll(self.forward(inputs, pad, dropout), targets)
    }
}
