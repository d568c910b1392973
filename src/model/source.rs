//! Where a model comes from: a Hugging Face directory on disk, or the small trained checkpoint
//! compiled into the binary so the CLI runs on a fresh machine with nothing downloaded.

use std::path::{Path, PathBuf};

use super::{Checkpoint, Qwen3, Qwen3Config};
use crate::Result;
use crate::backend::Backend;
use crate::tokenizer::Tokenizer;

/// Files compiled into the binary, so the CLI runs on a fresh machine with nothing downloaded.
macro_rules! embed {
    ($dir:literal, $file:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/", $dir, "/", $file))
    };
}

/// The embedded default: the AsyncThink experiment's trained model (models/README.md), so
/// `think`, `eval`, `generate` and `serve` answer products questions out of the box.
mod embedded {
    pub const NAME: &str = "embedded:asyncthink-products";
    pub const CONFIG: &[u8] = embed!("models/asyncthink-products", "config.json");
    pub const WEIGHTS: &[u8] = embed!("models/asyncthink-products", "model.safetensors");
    pub const TOKENIZER: &[u8] = embed!("models/asyncthink-products", "tokenizer.json");
    pub const TOKENIZER_CONFIG: &[u8] =
        embed!("models/asyncthink-products", "tokenizer_config.json");
    pub const GENERATION_CONFIG: &[u8] =
        embed!("models/asyncthink-products", "generation_config.json");
}

/// The tokenizer fresh models start from: the fixture BPE (tests/fixtures/tokenizer, made by
/// the fixture script) without the protocol tags, which `model::fresh` adds as it needs.
pub(super) mod base_tokenizer {
    pub const TOKENIZER: &[u8] = embed!("tests/fixtures/models/tiny-gqa4-tied", "tokenizer.json");
    pub const TOKENIZER_CONFIG: &[u8] = embed!(
        "tests/fixtures/models/tiny-gqa4-tied",
        "tokenizer_config.json"
    );
    pub const GENERATION_CONFIG: &[u8] = embed!(
        "tests/fixtures/models/tiny-gqa4-tied",
        "generation_config.json"
    );
}

/// The tokenizer files every saved checkpoint carries, in this order.
pub(super) const TOKENIZER_FILES: [&str; 3] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Dir(PathBuf),
    Embedded,
}

impl ModelSource {
    pub fn from_arg(dir: Option<&Path>) -> Self {
        dir.map_or(ModelSource::Embedded, |d| ModelSource::Dir(d.to_path_buf()))
    }

    pub fn describe(&self) -> String {
        match self {
            ModelSource::Dir(d) => d.display().to_string(),
            ModelSource::Embedded => embedded::NAME.to_string(),
        }
    }

    /// The model with f32 master weights, for training.
    pub fn load_for_training<B: crate::backend::TrainBackend>(
        &self,
        backend: B,
    ) -> Result<(Qwen3<B>, Tokenizer)> {
        match self {
            ModelSource::Dir(dir) => Ok((
                Qwen3::load_for_training(backend, dir)?,
                Tokenizer::from_dir(dir)?,
            )),
            ModelSource::Embedded => {
                let (config, ckpt, tokenizer) = embedded_parts()?;
                let model = Qwen3::from_checkpoint_with(backend, config, &ckpt, |b, t| {
                    b.load_master_weight(t)
                })?;
                Ok((model, tokenizer))
            }
        }
    }

    /// Tokenizer and generation files to copy into a checkpoint saved from this model.
    pub fn tokenizer_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        match self {
            ModelSource::Dir(dir) => {
                let mut out = Vec::new();
                // transformers 5 saves the chat template beside the config, not in it.
                for f in TOKENIZER_FILES.iter().chain(&["chat_template.jinja"]) {
                    let path = dir.join(f);
                    if path.exists() {
                        out.push((
                            f.to_string(),
                            std::fs::read(&path).map_err(|e| crate::Error::io(&path, e))?,
                        ));
                    }
                }
                Ok(out)
            }
            ModelSource::Embedded => Ok(TOKENIZER_FILES
                .iter()
                .zip([
                    embedded::TOKENIZER,
                    embedded::TOKENIZER_CONFIG,
                    embedded::GENERATION_CONFIG,
                ])
                .map(|(f, b)| (f.to_string(), b.to_vec()))
                .collect()),
        }
    }

    pub fn load<B: Backend>(&self, backend: B) -> Result<(Qwen3<B>, Tokenizer)> {
        match self {
            ModelSource::Dir(dir) => Ok((Qwen3::load(backend, dir)?, Tokenizer::from_dir(dir)?)),
            ModelSource::Embedded => {
                let (config, ckpt, tokenizer) = embedded_parts()?;
                Ok((Qwen3::from_checkpoint(backend, config, &ckpt)?, tokenizer))
            }
        }
    }
}

fn embedded_parts() -> Result<(Qwen3Config, Checkpoint, Tokenizer)> {
    let text = String::from_utf8_lossy(embedded::CONFIG);
    let config = Qwen3Config::from_json_str(&text, Path::new(embedded::NAME))?;
    let ckpt = Checkpoint::from_static(embedded::NAME, embedded::WEIGHTS)?;
    let tokenizer = Tokenizer::from_parts(
        embedded::TOKENIZER,
        serde_json::from_slice(embedded::GENERATION_CONFIG).ok(),
        serde_json::from_slice(embedded::TOKENIZER_CONFIG).ok(),
    )?;
    Ok((config, ckpt, tokenizer))
}
