//! Where a model comes from: a Hugging Face directory on disk, or the tiny checkpoint
//! compiled into the binary so the CLI runs on a fresh machine with nothing downloaded.

use std::path::{Path, PathBuf};

use super::{Checkpoint, Qwen3, Qwen3Config};
use crate::Result;
use crate::backend::Backend;
use crate::tokenizer::Tokenizer;

/// The embedded default: tests/fixtures/models/tiny-gqa4-tied, made by the fixture script.
mod embedded {
    macro_rules! fixture {
        ($file:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/models/tiny-gqa4-tied/",
                $file
            ))
        };
    }
    pub const NAME: &str = "embedded:tiny-gqa4-tied";
    pub const CONFIG: &[u8] = fixture!("config.json");
    pub const WEIGHTS: &[u8] = fixture!("model.safetensors");
    pub const TOKENIZER: &[u8] = fixture!("tokenizer.json");
    pub const TOKENIZER_CONFIG: &[u8] = fixture!("tokenizer_config.json");
    pub const GENERATION_CONFIG: &[u8] = fixture!("generation_config.json");
}

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

    pub fn load<B: Backend>(&self, backend: B) -> Result<(Qwen3<B>, Tokenizer)> {
        match self {
            ModelSource::Dir(dir) => Ok((Qwen3::load(backend, dir)?, Tokenizer::from_dir(dir)?)),
            ModelSource::Embedded => {
                let name = Path::new(embedded::NAME);
                let text = String::from_utf8_lossy(embedded::CONFIG);
                let config = Qwen3Config::from_json_str(&text, name)?;
                let ckpt = Checkpoint::from_static(embedded::NAME, embedded::WEIGHTS)?;
                let model = Qwen3::from_checkpoint(backend, config, &ckpt)?;
                let tokenizer = Tokenizer::from_parts(
                    embedded::TOKENIZER,
                    serde_json::from_slice(embedded::GENERATION_CONFIG).ok(),
                    serde_json::from_slice(embedded::TOKENIZER_CONFIG).ok(),
                )?;
                Ok((model, tokenizer))
            }
        }
    }
}
