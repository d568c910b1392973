//! OpenAI's response shapes: whole completions, stream chunks, usage and log-probs.

use serde_json::{Value, json};

use super::engine_loop::TokenLogprob;
use super::request::{Endpoint, Prepared};
use crate::asyncthink::executor::EpisodeOutcome;
use crate::asyncthink::protocol::ProtocolError;
use crate::engine::FinishReason;
use crate::tokenizer::Tokenizer;

/// What every body and chunk of one response repeats.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
    pub endpoint: Endpoint,
}

impl Meta {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let prefix = match endpoint {
            Endpoint::Completions => "cmpl",
            Endpoint::Chat => "chatcmpl",
        };
        Meta {
            id: format!(
                "{prefix}-{:016x}{:08x}",
                rand::random::<u64>(),
                rand::random::<u32>()
            ),
            created,
            model: model.to_string(),
            endpoint,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.endpoint, chunk) {
            (Endpoint::Completions, _) => "text_completion",
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
        }
    }

    /// The envelope of a body or chunk around `choices`.
    pub fn wrap(&self, chunk: bool, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

pub fn finish_reason(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::CacheFull => "length",
        FinishReason::Aborted => "abort",
        // Non-finite logits ended this request alone (as `batch` reports it).
        FinishReason::Error => "error",
    }
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// Log-probs of `tokens` in the endpoint's shape, each with its `top` top alternatives;
/// `offset` is the text length before them (completions' `text_offset`).
pub fn logprobs(
    endpoint: Endpoint,
    tokenizer: &Tokenizer,
    tokens: &[TokenLogprob],
    top: usize,
    offset: usize,
) -> Value {
    let piece = |t: u32| tokenizer.decode(&[t], false).unwrap_or_default();
    let pieces: Vec<String> = tokens.iter().map(|t| piece(t.id)).collect();
    match endpoint {
        Endpoint::Chat => json!({
            "content": pieces.iter().zip(tokens).map(|(p, t)| json!({
                "token": p,
                "logprob": t.logprob,
                "bytes": p.as_bytes(),
                "top_logprobs": t.top.iter().map(|&(id, lp)| {
                    let p = piece(id);
                    json!({"token": p, "logprob": lp, "bytes": p.as_bytes()})
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }),
        Endpoint::Completions => {
            let mut at = offset;
            let offsets: Vec<usize> = pieces
                .iter()
                .map(|p| {
                    let o = at;
                    at += p.len();
                    o
                })
                .collect();
            json!({
                "tokens": pieces,
                "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": (top > 0).then(|| completion_tops(tokens, piece)),
                "text_offset": offsets,
            })
        }
    }
}

/// Completions' `top_logprobs`: a `{text: logprob}` dict per position. Two ids that decode to
/// the same text share a key, and the more likely one (listed first) keeps it, as OpenAI's
/// legacy shape cannot say more.
fn completion_tops(tokens: &[TokenLogprob], piece: impl Fn(u32) -> String) -> Vec<Value> {
    tokens
        .iter()
        .map(|t| {
            let mut dict = serde_json::Map::new();
            for &(id, lp) in &t.top {
                dict.entry(piece(id)).or_insert(json!(lp));
            }
            Value::Object(dict)
        })
        .collect()
}

/// One choice of a whole (non-streaming) response.
#[derive(Debug, Default, Clone)]
pub struct Finished {
    pub text: String,
    pub reasoning: String,
    pub tokens: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    /// An AsyncThink choice's episode, once it ended.
    pub episode: Option<Box<EpisodeOutcome>>,
}

/// How an AsyncThink episode ended, as a `finish_reason`: its answer ("stop"), a budget
/// ("length"), an abort, or a format error ("error", the error in `asyncthink.format_error`).
pub fn episode_finish(o: &EpisodeOutcome) -> &'static str {
    match o.record.format_errors.first() {
        None if o.record.final_answer.is_some() => "stop",
        Some(ProtocolError::BudgetExceeded { .. }) => "length",
        Some(ProtocolError::Aborted { .. }) => "abort",
        _ => "error",
    }
}

/// The `asyncthink` field of a choice: the episode as `asyncthink think --trace` writes it
/// (texts, workers, fork/join events, per-agent timeline, critical path, η), with its first
/// format error in words.
pub fn episode_summary(o: &EpisodeOutcome) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    v["format_error"] = json!(o.record.format_errors.first().map(|e| e.to_string()));
    v
}

pub fn whole_body(
    meta: &Meta,
    req: &Prepared,
    tokenizer: &Tokenizer,
    choices: &[Finished],
) -> Value {
    let completion: usize = choices
        .iter()
        .map(|c| {
            c.episode
                .as_ref()
                .map_or(c.tokens.len(), |e| e.total_tokens)
        })
        .sum();
    let body_choices = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let logprobs = match req.logprobs {
                Some(top) => logprobs(meta.endpoint, tokenizer, &c.tokens, top, 0),
                None => Value::Null,
            };
            let mut choice = match meta.endpoint {
                Endpoint::Completions => json!({"index": i, "text": c.text}),
                Endpoint::Chat => json!({"index": i, "message": {
                    "role": "assistant",
                    "content": c.text,
                    "reasoning_content": (!c.reasoning.is_empty()).then_some(&c.reasoning),
                }}),
            };
            choice["logprobs"] = logprobs;
            choice["finish_reason"] = json!(c.finish.as_ref().map(finish_reason));
            if let Some(e) = &c.episode {
                choice["finish_reason"] = json!(episode_finish(e));
                choice["asyncthink"] = episode_summary(e);
            }
            if req.return_token_ids {
                choice["token_ids"] = json!(c.tokens.iter().map(|t| t.id).collect::<Vec<_>>());
            }
            choice
        })
        .collect();
    let mut body = meta.wrap(false, body_choices);
    body["usage"] = usage(req.prompt.len(), completion);
    if req.return_token_ids {
        body["prompt_token_ids"] = json!(req.prompt);
    }
    body
}
