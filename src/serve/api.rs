//! The request bodies of /v1/completions and /v1/chat/completions as they arrive: OpenAI's
//! fields plus vLLM's extras, every one optional here. `request.rs` checks them and turns
//! them into engine inputs; unknown fields are ignored, as OpenAI-compatible servers do.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;

/// One body type for both endpoints: each route refuses the other's fields.
#[derive(Debug, Default, Deserialize)]
pub struct RequestBody {
    pub model: Option<String>,
    pub prompt: Option<PromptField>,
    pub messages: Option<Vec<Message>>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub n: Option<u64>,
    /// Chat: a bool; completions: how many top alternatives per token (an integer).
    pub logprobs: Option<LogprobsField>,
    pub top_logprobs: Option<u64>,
    pub user: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub tools: Option<Value>,
    pub response_format: Option<Value>,
    // vLLM's extras.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub ignore_eos: Option<bool>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// Return the prompt's and each choice's token ids (vLLM's `return_token_ids`).
    pub return_token_ids: Option<bool>,
    /// The AsyncThink request mode (`asyncthink_mode.rs`): `{"capacity": 4}` runs the
    /// question through the organizer/worker executor.
    pub asyncthink: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum LogprobsField {
    Flag(bool),
    Count(u64),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub reasoning_content: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

/// Parses a body, naming the field at fault in the 400 (`messages[0].content`, `n`, …).
pub fn parse_body(bytes: &[u8]) -> Result<RequestBody, ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::invalid(
                "",
                "the request body is empty; send a JSON object",
            ));
        }
        // serde would read a struct from an array too; the body must be an object.
        Some(b'[') => {
            return Err(ApiError::invalid(
                "",
                "the request body must be a JSON object, not an array",
            ));
        }
        Some(_) => {}
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // A syntax error has no field; serde_path_to_error writes "." or "?" for none.
        let param = if inner.is_syntax() || inner.is_eof() || path == "." || path == "?" {
            String::new()
        } else {
            path
        };
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("the request body is not valid JSON: {inner}")
        } else if param.is_empty() {
            format!("the request body must be a JSON object: {inner}")
        } else {
            format!("{param}: {inner}")
        };
        ApiError::invalid(param, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_field_is_named() {
        let e = parse_body(br#"{"temperature": "hot"}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = parse_body(br#"{"messages": [{"role": "user", "content": 3}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e = parse_body(b"{not json").unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        let e = parse_body(b"[1, 2]").unwrap_err();
        assert_eq!(e.param, None);
    }
}
