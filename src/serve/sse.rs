//! A streamed response: engine events in, OpenAI chunks out as server-sent events, then
//! usage (when `stream_options.include_usage`) and `data: [DONE]`. A task does the
//! conversion; when the client goes away its output channel closes, the task ends and drops
//! the engine's event receiver, which the engine loop takes as the signal to abort.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::coalesce::merge_waiting;
use super::engine_loop::{Event, Update};
use super::episodes::EpisodeUpdate;
use super::reasoning::ReasoningSplitter;
use super::request::{Endpoint, Prepared};
use super::response::{Meta, episode_finish, episode_summary, finish_reason, logprobs, usage};
use crate::tokenizer::Tokenizer;

pub fn respond(
    meta: Meta,
    req: Prepared,
    tokenizer: Arc<Tokenizer>,
    events: mpsc::UnboundedReceiver<Event>,
    permit: OwnedSemaphorePermit,
) -> Response {
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    tokio::spawn(pump(meta, req, tokenizer, events, tx, permit));
    Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

struct ChoiceState {
    splitter: ReasoningSplitter,
    /// Bytes of text sent (completions' `text_offset`).
    sent: usize,
    tokens: usize,
}

async fn pump(
    meta: Meta,
    req: Prepared,
    tokenizer: Arc<Tokenizer>,
    mut events: mpsc::UnboundedReceiver<Event>,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
    _permit: OwnedSemaphorePermit,
) {
    let n = req.choices.len();
    let mut state: Vec<ChoiceState> = (0..n)
        .map(|_| ChoiceState {
            splitter: ReasoningSplitter::default(),
            sent: 0,
            tokens: 0,
        })
        .collect();
    let send = |v: Value| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(SseEvent::default().data(v.to_string())))
                .await
                .is_ok()
        }
    };
    let with_usage = |mut v: Value| {
        if req.include_usage {
            v["usage"] = Value::Null;
        }
        v
    };
    if meta.endpoint == Endpoint::Chat {
        let first = (0..n)
            .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
            .collect();
        if !send(with_usage(meta.wrap(true, first))).await {
            return;
        }
    }
    let mut held = None;
    loop {
        let ev = match held.take() {
            Some(ev) => Some(ev),
            None => tokio::select! {
                ev = events.recv() => ev,
                () = tx.closed() => return,
            },
        };
        let ev = ev.map(|first| merge_waiting(first, &mut events, &mut held));
        let u: Update = match ev {
            None => break,
            Some(Event::Update(u)) => u,
            Some(Event::Episode(u)) => {
                let Some(st) = state.get_mut(u.index) else {
                    continue;
                };
                if !send(with_usage(meta.wrap(true, vec![episode_chunk(&u, st)]))).await {
                    return;
                }
                continue;
            }
            Some(Event::Failed(m)) => {
                let _ = send(json!({"error": {"message": m, "type": "server_error", "param": null, "code": null}})).await;
                return;
            }
        };
        let Some(st) = state.get_mut(u.index) else {
            continue;
        };
        if u.text.is_empty() && u.tokens.is_empty() && u.finish.is_none() {
            continue;
        }
        st.tokens += u.tokens.len();
        let lp = match req.logprobs {
            Some(top) => logprobs(meta.endpoint, &tokenizer, &u.tokens, top, st.sent),
            None => Value::Null,
        };
        st.sent += u.text.len();
        let finish = json!(u.finish.as_ref().map(finish_reason));
        let mut choice = match meta.endpoint {
            Endpoint::Completions => {
                json!({"index": u.index, "text": u.text, "logprobs": lp, "finish_reason": finish})
            }
            Endpoint::Chat => {
                let split = st.splitter.push(&u.text, u.finish.is_some());
                let mut delta = json!({});
                if !split.reasoning.is_empty() {
                    delta["reasoning_content"] = json!(split.reasoning);
                }
                if !split.content.is_empty() {
                    delta["content"] = json!(split.content);
                }
                json!({"index": u.index, "delta": delta, "logprobs": lp, "finish_reason": finish})
            }
        };
        if req.return_token_ids {
            choice["token_ids"] = json!(u.tokens.iter().map(|t| t.id).collect::<Vec<_>>());
        }
        if !send(with_usage(meta.wrap(true, vec![choice]))).await {
            return;
        }
    }
    if req.include_usage {
        let completion = state.iter().map(|s| s.tokens).sum();
        let mut last = meta.wrap(true, Vec::new());
        last["usage"] = usage(req.prompt.len(), completion);
        if !send(last).await {
            return;
        }
    }
    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
}

/// An AsyncThink episode's chunk: the organizer's new text as `reasoning_content`; when the
/// episode ends, its answer as `content`, the finish reason and the `asyncthink` field.
fn episode_chunk(u: &EpisodeUpdate, st: &mut ChoiceState) -> Value {
    let mut delta = json!({});
    if !u.text.is_empty() {
        delta["reasoning_content"] = json!(u.text);
    }
    let mut choice =
        json!({"index": u.index, "delta": delta, "logprobs": null, "finish_reason": null});
    if let Some(o) = &u.outcome {
        st.tokens += o.total_tokens;
        if let Some(answer) = &o.record.final_answer {
            choice["delta"]["content"] = json!(answer);
        }
        choice["finish_reason"] = json!(episode_finish(o));
        choice["asyncthink"] = episode_summary(o);
    }
    choice
}
