//! Token ids the classifier sees: raw bytes, or byte-level BPE pieces trained with the
//! `tokenizers` crate on the training lines and saved as `tokenizer.json` beside the weights.
//!
//! The BPE tokenizer maps every byte of the line to one of 256 symbols (GPT-2's byte-level
//! alphabet, so no line is ever unknown) and treats the whole line as one word: merges may
//! cross spaces (`" -"`, `"| grep "`), which suits command lines better than word splitting
//! and keeps the scheme simple enough for `scripts/load_classifier.py` to reimplement.

use crate::error::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerBuilder,
    TokenizerImpl,
};

/// File name of a trained BPE vocabulary in a model directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Longest BPE piece, in bytes: longer pieces would memorise whole frequent commands.
const MAX_PIECE_BYTES: usize = 16;

/// Which tokens the model reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// One token per byte (256 ids).
    #[default]
    Bytes,
    /// Byte-level BPE pieces (`vocab_size` ids, trained on the training lines).
    Bpe,
}

impl TokenKind {
    pub fn name(self) -> &'static str {
        match self {
            TokenKind::Bytes => "bytes",
            TokenKind::Bpe => "bpe",
        }
    }
}

/// Turns a line into token ids below the model's vocabulary size.
#[derive(Clone)]
pub enum Tokens {
    Bytes,
    Bpe(Box<Tokenizer>),
}

impl Tokens {
    pub fn kind(&self) -> TokenKind {
        match self {
            Tokens::Bytes => TokenKind::Bytes,
            Tokens::Bpe(_) => TokenKind::Bpe,
        }
    }

    /// Learn a BPE vocabulary of at most `vocab_size` ids (256 byte symbols + merges) from
    /// `lines`. Pairs seen fewer than twice are not merged.
    pub fn train_bpe<'a>(
        lines: impl Iterator<Item = &'a str> + Send,
        vocab_size: usize,
    ) -> Result<Self> {
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .max_token_length(Some(MAX_PIECE_BYTES))
            .build();
        let mut tokenizer: TokenizerImpl<
            BPE,
            NormalizerWrapper,
            ByteLevel,
            PostProcessorWrapper,
            DecoderWrapper,
        > = TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::new(false, false, false)))
            .with_post_processor(None)
            .with_decoder(None)
            .build()
            .map_err(|e| Error::runtime(format!("cannot build a BPE tokenizer: {e}")))?;
        tokenizer
            .train(&mut trainer, lines)
            .map_err(|e| Error::runtime(format!("BPE training failed: {e}")))?;
        let tokenizer: Tokenizer = tokenizer.into();
        let got = tokenizer.get_vocab_size(true);
        if got > vocab_size {
            return Err(Error::runtime(format!(
                "the BPE trainer produced {got} tokens for vocab_size {vocab_size}"
            )));
        }
        Ok(Tokens::Bpe(Box::new(tokenizer)))
    }

    /// The tokenizer of a model directory: bytes, or `dir/tokenizer.json` for BPE models,
    /// checked against the model's vocabulary size.
    pub fn load(dir: &Path, kind: TokenKind, vocab_size: usize) -> Result<Self> {
        match kind {
            TokenKind::Bytes => Ok(Tokens::Bytes),
            TokenKind::Bpe => {
                let path = dir.join(TOKENIZER_FILE);
                let bytes = std::fs::read(&path).input_ctx(|| {
                    format!(
                        "cannot read {} (a BPE classifier needs the tokenizer it was trained \
                         with; export copies it)",
                        path.display()
                    )
                })?;
                let tokenizer = Tokenizer::from_bytes(&bytes).map_err(|e| {
                    Error::input(format!("invalid tokenizer {}: {e}", path.display()))
                })?;
                let got = tokenizer.get_vocab_size(true);
                if got > vocab_size {
                    return Err(Error::input(format!(
                        "{} has {got} tokens but the model embeds only {vocab_size}: the \
                         tokenizer does not belong to this model",
                        path.display()
                    )));
                }
                Ok(Tokens::Bpe(Box::new(tokenizer)))
            }
        }
    }

    /// Write `dir/tokenizer.json` atomically (nothing for byte tokens).
    pub fn save(&self, dir: &Path) -> Result<()> {
        match self {
            Tokens::Bytes => Ok(()),
            Tokens::Bpe(t) => {
                let text = t
                    .to_string(true)
                    .map_err(|e| Error::runtime(format!("cannot serialise the tokenizer: {e}")))?;
                crate::io::table::write_atomic(&dir.join(TOKENIZER_FILE), text.as_bytes())
            }
        }
    }

    /// Token ids of one line.
    pub fn encode(&self, line: &str) -> Vec<u32> {
        match self {
            Tokens::Bytes => line.bytes().map(u32::from).collect(),
            Tokens::Bpe(t) => t
                .encode_fast(line, false)
                .map(|e| e.get_ids().to_vec())
                // A byte-level BPE covers every byte, so encoding cannot fail on text; if
                // it ever did, falling back to nothing would hide it, so say so loudly.
                .unwrap_or_else(|e| panic!("byte-level BPE failed to encode a line: {e}")),
        }
    }

    /// Token ids of many lines (in parallel for BPE).
    pub fn encode_all(&self, lines: &[&str]) -> Vec<Vec<u32>> {
        match self {
            Tokens::Bytes => lines.iter().map(|l| self.encode(l)).collect(),
            Tokens::Bpe(t) => match t.encode_batch_fast(lines.to_vec(), false) {
                Ok(encodings) => encodings
                    .into_iter()
                    .map(|e| e.get_ids().to_vec())
                    .collect(),
                Err(_) => lines.iter().map(|l| self.encode(l)).collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpe_learns_frequent_pieces_covers_every_byte_and_round_trips_through_json() {
        let lines: Vec<String> = (0..200)
            .map(|i| {
                format!(
                    "sudo apt-get install -y package{i} && ls -la /tmp/dir{}",
                    i % 7
                )
            })
            .collect();
        let tok = Tokens::train_bpe(lines.iter().map(String::as_str), 300).unwrap();
        let Tokens::Bpe(t) = &tok else { panic!() };
        assert!(t.get_vocab_size(true) <= 300 && t.get_vocab_size(true) > 256);
        let line = "sudo apt-get install -y package3 && ls -la /tmp/dir3";
        let ids = tok.encode(line);
        assert!(ids.len() < line.len() / 2, "{} pieces", ids.len());
        // Bytes never seen in training still encode (one id each), below the vocabulary size.
        let odd = "\u{1F600}\x01 é";
        let odd_ids = tok.encode(odd);
        assert_eq!(odd_ids.len(), odd.len());
        assert!(odd_ids.iter().all(|&i| i < 300));
        let dir = tempfile::tempdir().unwrap();
        tok.save(dir.path()).unwrap();
        let back = Tokens::load(dir.path(), TokenKind::Bpe, 300).unwrap();
        assert_eq!(back.encode(line), ids);
        assert_eq!(back.encode_all(&[line, odd]), vec![ids, odd_ids]);
        assert!(Tokens::load(dir.path(), TokenKind::Bpe, 257).is_err());
        assert_eq!(Tokens::Bytes.encode("ab"), vec![97, 98]);
    }
}
