//! tokenizer.json through the `tokenizers` crate, plus what a checkpoint adds around it:
//! its chat template and the end-of-sequence ids from generation_config.json.

pub mod chat;
mod incremental;
mod template;
mod template_env;
mod template_json;
mod template_spans;

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

pub use chat::{AssistantSpan, ChatMessage, ChatTemplateOptions};
pub use incremental::IncrementalDecoder;
pub use template::{ChatTemplate, RESERVED_KWARGS};

/// A token's [start, end) byte offsets in the encoded text.
pub type ByteRange = (usize, usize);

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids that end generation: generation_config.json's eos_token_id when present,
    /// else tokenizer_config.json's eos_token, else Qwen's `<|im_end|>`/`<|endoftext|>`.
    pub eos_ids: Vec<u32>,
    chat_template: ChatTemplate,
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let config_path = dir.join("tokenizer_config.json");
        let config = read_json(&config_path)?;
        let jinja_path = dir.join("chat_template.jinja");
        let chat_template = match std::fs::read_to_string(&jinja_path) {
            Ok(text) => {
                ChatTemplate::from_source(text, &jinja_path.display().to_string(), config.as_ref())?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ChatTemplate::from_config(config.as_ref(), &config_path.display().to_string())?
            }
            Err(e) => return Err(Error::io(&jinja_path, e)),
        };
        Self::with_template(
            &bytes,
            read_json(&dir.join("generation_config.json"))?,
            config,
            chat_template,
        )
        .map_err(|e| match e {
            Error::Tokenizer(m) => Error::Tokenizer(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// `tokenizer_json` is the file's bytes; the configs are optional parsed JSON (the
    /// chat template is tokenizer_config's).
    pub fn from_parts(
        tokenizer_json: &[u8],
        generation_config: Option<Value>,
        tokenizer_config: Option<Value>,
    ) -> Result<Self> {
        let chat_template =
            ChatTemplate::from_config(tokenizer_config.as_ref(), "tokenizer_config.json")?;
        Self::with_template(
            tokenizer_json,
            generation_config,
            tokenizer_config,
            chat_template,
        )
    }

    fn with_template(
        tokenizer_json: &[u8],
        generation_config: Option<Value>,
        tokenizer_config: Option<Value>,
        chat_template: ChatTemplate,
    ) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut eos_ids: Vec<u32> = match generation_config
            .as_ref()
            .and_then(|g| g.get("eos_token_id"))
        {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            _ => Vec::new(),
        };
        if eos_ids.is_empty() {
            let named = tokenizer_config
                .as_ref()
                .and_then(|t| t.get("eos_token"))
                .and_then(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Object(o) => {
                        o.get("content").and_then(Value::as_str).map(str::to_string)
                    }
                    _ => None,
                });
            let candidates = named
                .into_iter()
                .chain(["<|im_end|>".to_string(), "<|endoftext|>".to_string()]);
            for tok in candidates {
                if let Some(id) = inner.token_to_id(&tok)
                    && !eos_ids.contains(&id)
                {
                    eos_ids.push(id);
                }
            }
        }
        Ok(Tokenizer {
            inner,
            eos_ids,
            chat_template,
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Ids and each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<ByteRange>)> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(format!("encode: {e}")))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Tokenizer(format!("decode: {e}")))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Registers `tokens` as special tokens (one id each, never split) when the tokenizer
    /// lacks them and they fit under `max_vocab` (the model's embedding rows). Returns how
    /// many were added; 0 with an error message when they would not fit.
    pub fn add_special_tokens(&mut self, tokens: &[String], max_vocab: usize) -> Result<usize> {
        let missing: Vec<&String> = tokens
            .iter()
            .filter(|t| self.inner.token_to_id(t).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(0);
        }
        let size = self.vocab_size();
        if size + missing.len() > max_vocab {
            return Err(Error::Tokenizer(format!(
                "{} tags do not fit as special tokens: tokenizer has {size} ids, the model {max_vocab} rows",
                missing.len()
            )));
        }
        let added: Vec<tokenizers::AddedToken> = missing
            .iter()
            .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
            .collect();
        self.inner
            .add_special_tokens(added)
            .map_err(|e| Error::Tokenizer(format!("add special tokens: {e}")))
    }

    /// tokenizer.json's text, added tokens included (what `from_dir` reads back).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("serialize tokenizer.json: {e}")))
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }

    /// The checkpoint's chat template (or the built-in Qwen3 one).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.chat_template
    }

    /// Renders messages with the chat template and tokenizes the result.
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        opts: &ChatTemplateOptions,
    ) -> Result<Vec<u32>> {
        self.encode(&self.chat_template.render(messages, opts)?)
    }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Tokenizer(format!("{}: not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}
