//! The AsyncThink request mode: `"asyncthink": {"capacity": 4}` on a chat request runs its
//! question through the executor (an organizer forking workers) instead of plain decoding.
//! This checks the field and the request around it and builds the executor's settings; the
//! engine loop runs the episodes beside every other request's sequences.

use serde_json::{Map, Value};

use super::api::RequestBody;
use super::error::ApiError;
use super::request::{Endpoint, ModelInfo};
use crate::asyncthink::executor::ExecutorConfig;
use crate::engine::SamplingParams;
use crate::tokenizer::{ChatMessage, ChatTemplateOptions, Tokenizer};

/// Most agents one episode may use (organizer included).
pub const MAX_CAPACITY: u64 = 16;
/// Budgets and capacity as `asyncthink think` has them (capacity: the embedded model's);
/// sampling follows the request and OpenAI's defaults (temperature 1), not `think`'s 0.7.
const DEFAULT_CAPACITY: u64 = 4;
const DEFAULT_ORGANIZER_TOKENS: usize = 512;
const DEFAULT_WORKER_TOKENS: u64 = 256;
const DEFAULT_MAX_STEPS: u64 = 4096;

/// What the engine loop needs to run one AsyncThink request: `n` episodes of one question.
#[derive(Debug, Clone)]
pub struct EpisodeJob {
    pub question: String,
    pub config: ExecutorConfig,
    pub seed: u64,
    pub n: usize,
}

/// The question (one user message) and the executor settings of a request that asked for
/// the mode; `base` is the request's sampling (temperature, top-p, …) with the organizer's
/// budget. Returns the job and the organizer's prompt ids (its usage and length checks).
pub fn job(
    body: &RequestBody,
    endpoint: Endpoint,
    info: &ModelInfo,
    tokenizer: &Tokenizer,
    field: &Value,
) -> Result<(EpisodeJob, Vec<u32>, SamplingParams), ApiError> {
    if endpoint != Endpoint::Chat {
        return Err(ApiError::invalid(
            "asyncthink",
            "asyncthink: the AsyncThink mode is served on /v1/chat/completions",
        ));
    }
    refuse_with_mode(body)?;
    let settings = settings(field)?;
    let question = question(body)?;
    let mut config = ExecutorConfig::new(settings.capacity);
    config.max_steps = settings.max_steps;
    let prompt = tokenizer
        .encode_chat(
            &[
                ChatMessage::new("system", &config.organizer_system),
                ChatMessage::new("user", &question),
            ],
            &ChatTemplateOptions::default(),
        )
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let organizer_tokens =
        super::request::token_budget(body, info, prompt.len(), "messages", |room| {
            DEFAULT_ORGANIZER_TOKENS.min(room)
        })?;
    let base = super::request::sampling(body, organizer_tokens)?;
    config.organizer = base.clone();
    config.worker = SamplingParams {
        max_new_tokens: settings.worker_tokens,
        ..base.clone()
    };
    let n = super::request::choice_count(body)?;
    let seed = super::request::request_seed(body);
    let job = EpisodeJob {
        question,
        config,
        seed,
        n,
    };
    Ok((job, prompt, base))
}

struct Settings {
    capacity: usize,
    worker_tokens: usize,
    max_steps: usize,
}

/// `{"capacity": c, "worker_tokens": w, "max_steps": s}`, every key optional; `true` and `{}`
/// take the defaults.
fn settings(field: &Value) -> Result<Settings, ApiError> {
    let empty = Map::new();
    let obj = match field {
        Value::Bool(true) => &empty,
        Value::Object(o) => o,
        _ => {
            return Err(ApiError::invalid(
                "asyncthink",
                "asyncthink must be an object such as {\"capacity\": 4} (or true for the defaults)",
            ));
        }
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !["capacity", "worker_tokens", "max_steps"].contains(&k.as_str()))
    {
        return Err(ApiError::invalid(
            format!("asyncthink.{k}"),
            format!(
                "asyncthink.{k}: unknown setting; the settings are capacity, worker_tokens and max_steps"
            ),
        ));
    }
    let int = |key: &str, default: u64, range: std::ops::RangeInclusive<u64>| {
        let v = match obj.get(key) {
            None | Some(Value::Null) => default,
            Some(v) => v.as_u64().ok_or_else(|| {
                ApiError::invalid(
                    format!("asyncthink.{key}"),
                    format!("asyncthink.{key} must be a positive integer, got {v}"),
                )
            })?,
        };
        if !range.contains(&v) {
            return Err(ApiError::invalid(
                format!("asyncthink.{key}"),
                format!(
                    "asyncthink.{key} must be in {}..={}, got {v}",
                    range.start(),
                    range.end()
                ),
            ));
        }
        Ok(v as usize)
    };
    Ok(Settings {
        capacity: int("capacity", DEFAULT_CAPACITY, 1..=MAX_CAPACITY)?,
        worker_tokens: int("worker_tokens", DEFAULT_WORKER_TOKENS, 1..=1 << 20)?,
        max_steps: int("max_steps", DEFAULT_MAX_STEPS, 1..=1 << 20)?,
    })
}

/// Fields whose meaning the executor cannot give: each is a 400 rather than ignored.
fn refuse_with_mode(body: &RequestBody) -> Result<(), ApiError> {
    let refuse = |field: &str, why: &str| {
        Err(ApiError::invalid(
            field,
            format!("{field} cannot be combined with asyncthink: {why}"),
        ))
    };
    if body.stop.is_some() {
        return refuse("stop", "the organizer ends at its ANSWER tag");
    }
    if !matches!(
        body.logprobs,
        None | Some(super::api::LogprobsField::Flag(false))
    ) || body.top_logprobs.is_some_and(|k| k > 0)
    {
        return refuse("logprobs", "an episode's tokens come from several agents");
    }
    if body
        .chat_template_kwargs
        .as_ref()
        .is_some_and(|k| !k.is_empty())
    {
        return refuse(
            "chat_template_kwargs",
            "the organizer's and workers' prompts are the executor's own",
        );
    }
    if body.ignore_eos == Some(true) {
        return refuse("ignore_eos", "the organizer must be able to end");
    }
    if body.return_token_ids == Some(true) {
        return refuse(
            "return_token_ids",
            "an episode's tokens come from several agents",
        );
    }
    Ok(())
}

/// The question: the text of the request's one user message (the organizer has its own
/// system prompt, so a client's system message or a longer conversation is refused).
fn question(body: &RequestBody) -> Result<String, ApiError> {
    let Some(messages) = &body.messages else {
        return Err(ApiError::invalid("messages", "messages is required"));
    };
    let [m] = messages.as_slice() else {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "with asyncthink, send exactly one user message (the question); got {} messages",
                messages.len()
            ),
        ));
    };
    if m.role != "user" {
        return Err(ApiError::invalid(
            "messages[0].role",
            format!(
                "with asyncthink, the one message must be the user's question, not {:?}",
                m.role
            ),
        ));
    }
    let text = super::request::chat_message(0, m)?.content;
    if text.trim().is_empty() {
        return Err(ApiError::invalid(
            "messages[0].content",
            "the question is empty",
        ));
    }
    Ok(text)
}
