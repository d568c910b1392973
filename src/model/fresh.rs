//! A Qwen3 to train from scratch: a chosen shape, random weights, and the base tokenizer
//! with extra tokens (the AsyncThink tags) that each get an embedding row of their own, so
//! a tag costs the organizer one decoding step instead of several.

use std::path::Path;

use serde_json::json;

use super::random::random_checkpoint;
use super::save::{ExtraFiles, save_checkpoint};
use super::{Qwen3, Qwen3Config};
use crate::backend::TrainBackend;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The dimensions of a fresh model; the vocabulary follows from the tokenizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub max_positions: usize,
}

impl Shape {
    /// Rejects shapes the model cannot be built with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::InvalidInput(format!("model shape: {what}")));
        if [
            self.hidden,
            self.layers,
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.intermediate,
            self.max_positions,
        ]
        .contains(&0)
        {
            return bad("every dimension must be at least 1");
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return bad("heads must be a multiple of kv_heads");
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad("head_dim must be even (rotary embeddings)");
        }
        Ok(())
    }
}

/// The base tokenizer (the fixture BPE, embedded) with `extra` registered as special tokens,
/// and the vocabulary size (rounded up to 16) that holds them.
pub fn tokenizer_with(extra: &[String]) -> Result<(Tokenizer, ExtraFiles, usize)> {
    use super::source::{TOKENIZER_FILES, base_tokenizer as base};
    let mut tokenizer = Tokenizer::from_parts(
        base::TOKENIZER,
        serde_json::from_slice(base::GENERATION_CONFIG).ok(),
        serde_json::from_slice(base::TOKENIZER_CONFIG).ok(),
    )?;
    let vocab = (tokenizer.vocab_size() + extra.len()).next_multiple_of(16);
    tokenizer.add_special_tokens(extra, vocab)?;
    let files = TOKENIZER_FILES
        .iter()
        .zip([
            tokenizer.to_json()?.into_bytes(),
            base::TOKENIZER_CONFIG.to_vec(),
            base::GENERATION_CONFIG.to_vec(),
        ])
        .map(|(name, bytes)| (name.to_string(), bytes))
        .collect();
    Ok((tokenizer, files, vocab))
}

/// A model of `shape` with random weights (seeded) on `backend`, with f32 master weights for
/// training, and the tokenizer files to save beside it.
pub fn fresh_model<B: TrainBackend>(
    backend: B,
    shape: &Shape,
    extra_tokens: &[String],
    seed: u64,
) -> Result<(Qwen3<B>, Tokenizer, ExtraFiles)> {
    shape.validate()?;
    let (tokenizer, files, vocab) = tokenizer_with(extra_tokens)?;
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| Error::Tokenizer(format!("base tokenizer has no {t}")))
    };
    let text = json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10_000,
        "rope_scaling": null,
        "vocab_size": vocab,
        "tie_word_embeddings": true,
        "max_position_embeddings": shape.max_positions,
        "torch_dtype": "float32",
        "bos_token_id": id("<|endoftext|>")?,
        "eos_token_id": id("<|im_end|>")?,
    })
    .to_string();
    let config = Qwen3Config::from_json_str(&text, Path::new("fresh model"))?;
    let ckpt = random_checkpoint(&config, seed)?;
    let model =
        Qwen3::from_checkpoint_with(backend, config, &ckpt, |b, t| b.load_master_weight(t))?;
    Ok((model, tokenizer, files))
}

/// `fresh_model` written to `dir` as a Hugging Face checkpoint.
pub fn save_fresh<B: TrainBackend>(model: &Qwen3<B>, files: &ExtraFiles, dir: &Path) -> Result<()> {
    save_checkpoint(model, dir, files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;

    #[test]
    fn extra_tokens_are_single_ids_and_the_model_round_trips() {
        let shape = Shape {
            hidden: 32,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 16,
            intermediate: 64,
            max_positions: 128,
        };
        let tags = vec!["<FORK-1>".to_string(), "</FORK-1>".to_string()];
        let (model, tok, files) = fresh_model(CpuBackend::default(), &shape, &tags, 3).unwrap();
        assert_eq!(model.config.vocab_size % 16, 0);
        assert!(model.config.vocab_size >= tok.vocab_size());
        let ids = tok.encode("a<FORK-1>7*6</FORK-1>").unwrap();
        let fork = tok.token_to_id("<FORK-1>").unwrap();
        assert!(ids.contains(&fork));
        let dir = std::env::temp_dir().join(format!("fresh-{}", std::process::id()));
        save_fresh(&model, &files, &dir).unwrap();
        let back = Tokenizer::from_dir(&dir).unwrap();
        assert_eq!(back.encode("a<FORK-1>7*6</FORK-1>").unwrap(), ids);
        let loaded = Qwen3::load_for_training(CpuBackend::default(), &dir).unwrap();
        assert_eq!(loaded.config, model.config);
        std::fs::remove_dir_all(&dir).unwrap();
        let mut bad = shape;
        bad.kv_heads = 3;
        assert!(fresh_model(CpuBackend::default(), &bad, &tags, 3).is_err());
    }
}
