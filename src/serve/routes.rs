//! The HTTP routes: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics.
//! A generation handler checks the body, takes a queue slot (503 when none is left), hands
//! the request to the engine loop and answers whole or as a stream.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::api::parse_body;
use super::engine_loop::{Command, Event, Submission, lock};
use super::error::ApiError;
use super::metrics::{Metrics, Outcome};
use super::reasoning::ReasoningSplitter;
use super::request::{Endpoint, ModelInfo, prepare};
use super::response::{Finished, Meta, whole_body};
use crate::tokenizer::Tokenizer;

#[derive(Clone)]
pub struct AppState {
    pub commands: mpsc::UnboundedSender<Command>,
    pub tokenizer: Arc<Tokenizer>,
    pub info: Arc<ModelInfo>,
    pub metrics: Arc<Mutex<Metrics>>,
    /// One permit per request accepted and not yet answered.
    pub queue: Arc<Semaphore>,
    pub queue_limit: usize,
    pub api_key: Option<Arc<str>>,
    pub started: u64,
}

impl AppState {
    pub fn count(&self, outcome: Outcome) {
        lock(&self.metrics).count(outcome);
    }
}

pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            super::auth::require_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

/// 200 while the engine thread takes requests; 503 once it has stopped (shut down, or
/// failed), so a load balancer stops sending work to a server that can only refuse it.
async fn health(State(st): State<AppState>) -> StatusCode {
    if st.commands.is_closed() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route", "not_found")
}

async fn metrics(State(st): State<AppState>) -> Response {
    let text = lock(&st.metrics).render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn models(State(st): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({
        "object": "list",
        "data": [{
            "id": st.info.name,
            "object": "model",
            "created": st.started,
            "owned_by": "asyncthink",
            "max_model_len": st.info.max_positions,
        }],
    }))
}

async fn completions(State(st): State<AppState>, body: Bytes) -> Response {
    generate(st, body, Endpoint::Completions).await
}

async fn chat(State(st): State<AppState>, body: Bytes) -> Response {
    generate(st, body, Endpoint::Chat).await
}

async fn generate(st: AppState, body: Bytes, endpoint: Endpoint) -> Response {
    match try_generate(&st, &body, endpoint).await {
        Ok(r) => r,
        Err(e) => {
            st.count(if e.status == StatusCode::SERVICE_UNAVAILABLE {
                Outcome::Rejected
            } else if e.status.is_server_error() {
                Outcome::Failed
            } else {
                Outcome::Invalid
            });
            e.into_response()
        }
    }
}

async fn try_generate(
    st: &AppState,
    body: &[u8],
    endpoint: Endpoint,
) -> Result<Response, ApiError> {
    let req = prepare(parse_body(body)?, endpoint, &st.info, &st.tokenizer)?;
    let permit = st.queue.clone().try_acquire_owned().map_err(|_| {
        ApiError::overloaded(format!(
            "the server is at its limit of {} requests in flight; retry later",
            st.queue_limit
        ))
    })?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (accepted_tx, accepted) = oneshot::channel();
    st.commands
        .send(Command::Submit(Submission {
            prompt: req.prompt.clone(),
            choices: req.choices.clone(),
            events: events_tx,
            asyncthink: req.asyncthink.clone().map(Box::new),
            accepted: accepted_tx,
            arrived: std::time::Instant::now(),
        }))
        .map_err(|_| ApiError::shutting_down())?;
    accepted.await.map_err(|_| ApiError::shutting_down())??;

    let meta = Meta::new(endpoint, &st.info.name);
    if req.stream {
        return Ok(super::sse::respond(
            meta,
            req,
            st.tokenizer.clone(),
            events,
            permit,
        ));
    }
    let mut choices = vec![Finished::default(); req.choices.len()];
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Update(u) => {
                if let Some(c) = choices.get_mut(u.index) {
                    c.text.push_str(&u.text);
                    c.tokens.extend(u.tokens);
                    c.finish = u.finish.or(c.finish.take());
                }
            }
            Event::Episode(u) => {
                if let Some(c) = choices.get_mut(u.index) {
                    c.reasoning.push_str(&u.text);
                    if let Some(o) = u.outcome {
                        c.text = o.record.final_answer.clone().unwrap_or_default();
                        c.episode = Some(o);
                    }
                }
            }
            Event::Failed(m) => return Err(ApiError::internal(m)),
        }
    }
    drop(permit);
    if endpoint == Endpoint::Chat && req.asyncthink.is_none() {
        for c in &mut choices {
            let split = ReasoningSplitter::default().push(&c.text, true);
            c.text = split.content;
            c.reasoning = split.reasoning;
        }
    }
    Ok(Json(whole_body(&meta, &req, &st.tokenizer, &choices)).into_response())
}
