//! Checks a request body and turns it into what the engine loop needs: prompt ids and one
//! `SamplingParams` per choice. Every refusal is a 400 naming the field.

use std::sync::atomic::{AtomicU64, Ordering};

use super::api::{Content, LogprobsField, Message, PromptField, RequestBody};
use super::asyncthink_mode::{self, EpisodeJob};
use super::error::ApiError;
use crate::engine::SamplingParams;
use crate::engine::sampling::MAX_TOP_LOGPROBS;
use crate::tokenizer::{ChatMessage, ChatTemplateOptions, RESERVED_KWARGS, Tokenizer};

/// Most choices one request may ask for.
pub const MAX_N: u64 = 16;

/// What the routes need to know about the served model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// The name clients send as `model` and see in /v1/models.
    pub name: String,
    pub max_positions: usize,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Completions,
    Chat,
}

/// A checked request, ready for the engine loop.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub prompt: Vec<u32>,
    /// One per choice (`n`), each with its own seed.
    pub choices: Vec<SamplingParams>,
    pub stream: bool,
    pub include_usage: bool,
    /// Whether each token's log-prob is returned, and with how many top alternatives.
    pub logprobs: Option<usize>,
    pub return_token_ids: bool,
    /// Set when the request asked for the AsyncThink mode: `prompt` is then the organizer's
    /// and each choice is one episode.
    pub asyncthink: Option<EpisodeJob>,
}

pub fn prepare(
    body: RequestBody,
    endpoint: Endpoint,
    info: &ModelInfo,
    tokenizer: &Tokenizer,
) -> Result<Prepared, ApiError> {
    if let Some(m) = &body.model
        && m != &info.name
    {
        return Err(ApiError::not_found(
            format!(
                "the model `{m}` does not exist; this server serves `{}`",
                info.name
            ),
            "model_not_found",
        ));
    }
    refuse_unsupported(&body, endpoint)?;
    // `null` and `false` mean the plain mode, as leaving the field out does.
    if let Some(field) = body
        .asyncthink
        .as_ref()
        .filter(|v| !v.is_null() && **v != serde_json::Value::Bool(false))
    {
        let (job, prompt, base) = asyncthink_mode::job(&body, endpoint, info, tokenizer, field)?;
        return Ok(Prepared {
            prompt,
            choices: vec![base; job.n],
            stream: body.stream.unwrap_or(false),
            include_usage: include_usage(&body),
            logprobs: None,
            return_token_ids: false,
            asyncthink: Some(job),
        });
    }
    let prompt = match endpoint {
        Endpoint::Completions => completion_prompt(&body, tokenizer)?,
        Endpoint::Chat => chat_prompt(&body, tokenizer)?,
    };
    if prompt.is_empty() {
        let field = if endpoint == Endpoint::Chat {
            "messages"
        } else {
            "prompt"
        };
        return Err(ApiError::invalid(field, "the prompt is empty"));
    }
    if let Some(t) = prompt.iter().find(|&&t| t as usize >= info.vocab_size) {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "token id {t} is outside the vocabulary (size {})",
                info.vocab_size
            ),
        ));
    }
    let prompt_field = if endpoint == Endpoint::Chat {
        "messages"
    } else {
        "prompt"
    };
    // OpenAI's default for completions is 16 tokens; chat runs to the end of the context.
    let max_new_tokens = token_budget(&body, info, prompt.len(), prompt_field, |room| {
        if endpoint == Endpoint::Completions {
            16.min(room)
        } else {
            room
        }
    })?;
    let logprobs = logprobs(&body, endpoint)?;
    let base = SamplingParams {
        top_logprobs: logprobs.unwrap_or(0),
        ..sampling(&body, max_new_tokens)?
    };
    let n = choice_count(&body)?;
    let seed = request_seed(&body);
    let choices = (0..n as u64)
        .map(|i| SamplingParams {
            seed: seed.wrapping_add(i),
            ..base.clone()
        })
        .collect();
    Ok(Prepared {
        prompt,
        choices,
        stream: body.stream.unwrap_or(false),
        include_usage: include_usage(&body),
        logprobs,
        return_token_ids: body.return_token_ids.unwrap_or(false),
        asyncthink: None,
    })
}

fn refuse_unsupported(body: &RequestBody, endpoint: Endpoint) -> Result<(), ApiError> {
    let unsupported = |field: &str, what: &str| {
        Err(ApiError::invalid(
            field,
            format!("{field}: {what} is not supported"),
        ))
    };
    match endpoint {
        Endpoint::Completions if body.messages.is_some() => {
            return Err(ApiError::invalid(
                "messages",
                "/v1/completions takes `prompt`; send `messages` to /v1/chat/completions",
            ));
        }
        Endpoint::Chat if body.prompt.is_some() => {
            return Err(ApiError::invalid(
                "prompt",
                "/v1/chat/completions takes `messages`; send `prompt` to /v1/completions",
            ));
        }
        _ => {}
    }
    if body.echo == Some(true) {
        return unsupported("echo", "echoing the prompt");
    }
    if body.suffix.is_some() {
        return unsupported("suffix", "a suffix (insertion)");
    }
    if body.presence_penalty.is_some_and(|p| p != 0.0) {
        return unsupported(
            "presence_penalty",
            "a presence penalty (use repetition_penalty)",
        );
    }
    if body.frequency_penalty.is_some_and(|p| p != 0.0) {
        return unsupported(
            "frequency_penalty",
            "a frequency penalty (use repetition_penalty)",
        );
    }
    if body.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return unsupported("tools", "tool calling");
    }
    if body
        .response_format
        .as_ref()
        .is_some_and(|f| !f.is_null() && f.get("type").and_then(|t| t.as_str()) != Some("text"))
    {
        return unsupported("response_format", "a structured output format");
    }
    Ok(())
}

fn completion_prompt(body: &RequestBody, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    let encode = |text: &str| {
        tokenizer
            .encode(text)
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))
    };
    match &body.prompt {
        None => Err(ApiError::invalid("prompt", "prompt is required")),
        Some(PromptField::Text(t)) => encode(t),
        Some(PromptField::Ids(ids)) => Ok(ids.clone()),
        Some(PromptField::Texts(v)) if v.len() == 1 => encode(&v[0]),
        Some(PromptField::IdLists(v)) if v.len() == 1 => Ok(v[0].clone()),
        Some(_) => Err(ApiError::invalid(
            "prompt",
            "give one prompt per request (a string or a list of token ids)",
        )),
    }
}

fn chat_prompt(body: &RequestBody, tokenizer: &Tokenizer) -> Result<Vec<u32>, ApiError> {
    let Some(messages) = &body.messages else {
        return Err(ApiError::invalid("messages", "messages is required"));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let msgs = messages
        .iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let mut kwargs = body.chat_template_kwargs.clone().unwrap_or_default();
    if let Some(k) = kwargs
        .keys()
        .find(|k| RESERVED_KWARGS.contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("chat_template_kwargs.{k}"),
            format!("chat_template_kwargs.{k} is set by the server, not by a kwarg"),
        ));
    }
    let enable_thinking = match kwargs.remove("enable_thinking") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(b),
        Some(_) => {
            return Err(ApiError::invalid(
                "chat_template_kwargs.enable_thinking",
                "chat_template_kwargs.enable_thinking must be a boolean",
            ));
        }
    };
    // Every other kwarg goes to the template, which may read any (as vLLM does).
    let opts = ChatTemplateOptions {
        add_generation_prompt: true,
        enable_thinking,
        kwargs,
    };
    tokenizer
        .encode_chat(&msgs, &opts)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))
}

pub(super) fn chat_message(i: usize, m: &Message) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "messages[{i}].role {other:?}: expected system, developer, user or assistant"
                ),
            ));
        }
    };
    let content = match &m.content {
        None if role == "assistant" => String::new(),
        None => {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("messages[{i}].content is required"),
            ));
        }
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}]"),
                            format!(
                                "messages[{i}].content[{j}]: only text parts ({{\"type\": \"text\", \"text\": …}}) are supported"
                            ),
                        ));
                    }
                }
            }
            text
        }
    };
    let _ = &m.name;
    Ok(ChatMessage {
        role: role.to_string(),
        content,
        reasoning_content: m.reasoning_content.clone(),
    })
}

pub(super) fn sampling(
    body: &RequestBody,
    max_new_tokens: usize,
) -> Result<SamplingParams, ApiError> {
    let temperature = body.temperature.unwrap_or(1.0);
    if !(temperature.is_finite() && (0.0..=2.0).contains(&temperature)) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = body.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match body.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k > 0 => k as usize,
        k => {
            return Err(ApiError::invalid(
                "top_k",
                format!("top_k must be -1 or 0 (off) or positive, got {k}"),
            ));
        }
    };
    let min_p = body.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::invalid(
            "min_p",
            format!("min_p must be in [0, 1], got {min_p}"),
        ));
    }
    let repetition_penalty = body.repetition_penalty.unwrap_or(1.0);
    if !(repetition_penalty.is_finite() && repetition_penalty > 0.0) {
        return Err(ApiError::invalid(
            "repetition_penalty",
            format!("repetition_penalty must be > 0, got {repetition_penalty}"),
        ));
    }
    let stop = match &body.stop {
        None => Vec::new(),
        Some(s) => match s {
            super::api::StopField::One(x) => vec![x.clone()],
            super::api::StopField::Many(v) => v.clone(),
        },
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop strings must not be empty"));
    }
    let params = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        seed: 0,
        max_new_tokens,
        stop,
        ignore_eos: body.ignore_eos.unwrap_or(false),
        // Set by `prepare` from the endpoint's log-prob fields.
        top_logprobs: 0,
    };
    params
        .validate()
        .map_err(|e| ApiError::invalid("", e.to_string()))?;
    Ok(params)
}

/// Whether each token's log-prob is returned (`Some`) and how many top alternatives go with
/// it. Both endpoints allow up to `MAX_TOP_LOGPROBS` (20) alternatives: OpenAI's chat cap, and
/// vLLM's for completions too (OpenAI's legacy completions stopped at 5).
fn logprobs(body: &RequestBody, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
    match (endpoint, &body.logprobs) {
        (Endpoint::Chat, flag) => {
            let on = match flag {
                None | Some(LogprobsField::Flag(false)) => false,
                Some(LogprobsField::Flag(true)) => true,
                Some(LogprobsField::Count(_)) => {
                    return Err(ApiError::invalid(
                        "logprobs",
                        "logprobs must be a boolean on /v1/chat/completions (top_logprobs gives the count)",
                    ));
                }
            };
            let k = top_count("top_logprobs", body.top_logprobs.unwrap_or(0))?;
            if k > 0 && !on {
                // As OpenAI and vLLM: alternatives come only with the log-probs they extend.
                return Err(ApiError::invalid(
                    "top_logprobs",
                    format!("top_logprobs = {k} needs logprobs: true"),
                ));
            }
            Ok(on.then_some(k))
        }
        (Endpoint::Completions, None) => Ok(None),
        (Endpoint::Completions, Some(LogprobsField::Count(k))) => {
            Ok(Some(top_count("logprobs", *k)?))
        }
        (Endpoint::Completions, Some(LogprobsField::Flag(_))) => Err(ApiError::invalid(
            "logprobs",
            "logprobs must be an integer on /v1/completions",
        )),
    }
}

/// A count of top alternatives, checked against the engine's cap.
fn top_count(field: &str, k: u64) -> Result<usize, ApiError> {
    match usize::try_from(k) {
        Ok(k) if k <= MAX_TOP_LOGPROBS => Ok(k),
        _ => Err(ApiError::invalid(
            field,
            format!("{field} must be in 0..={MAX_TOP_LOGPROBS}, got {k}"),
        )),
    }
}

/// The tokens a choice may generate: `max_completion_tokens` or `max_tokens`, which must fit
/// the context after the prompt, or `default(room)` when neither is given.
pub(super) fn token_budget(
    body: &RequestBody,
    info: &ModelInfo,
    prompt_len: usize,
    prompt_field: &str,
    default: impl FnOnce(usize) -> usize,
) -> Result<usize, ApiError> {
    let room = info.max_positions.saturating_sub(prompt_len);
    if room == 0 {
        return Err(ApiError::invalid(
            prompt_field,
            format!(
                "this model's maximum context length is {} tokens; the prompt has {prompt_len}",
                info.max_positions
            ),
        ));
    }
    let (field, asked) = match (body.max_completion_tokens, body.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    match asked {
        Some(0) => Err(ApiError::invalid(
            field,
            format!("{field} must be at least 1"),
        )),
        Some(m) if m as usize > room => Err(ApiError::invalid(
            field,
            format!(
                "this model's maximum context length is {} tokens; the prompt has {prompt_len} and {field} asks for {m} more",
                info.max_positions
            ),
        )),
        Some(m) => Ok(m as usize),
        None => Ok(default(room)),
    }
}

fn include_usage(body: &RequestBody) -> bool {
    body.stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false)
}

/// `n`, checked.
pub(super) fn choice_count(body: &RequestBody) -> Result<usize, ApiError> {
    let n = body.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("n must be in 1..={MAX_N}, got {n}"),
        ));
    }
    Ok(n as usize)
}

/// The request's `seed`, or a fresh one.
pub(super) fn request_seed(body: &RequestBody) -> u64 {
    body.seed.map_or_else(fresh_seed, |s| s as u64)
}

/// A seed for a request that gave none: distinct per request.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
