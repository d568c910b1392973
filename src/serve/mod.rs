//! `asyncthink serve`: an OpenAI-compatible HTTP server over the batching engine.
//!
//! One thread owns the engine (`engine_loop.rs`); axum handlers on a small tokio runtime
//! check requests (`api.rs`, `request.rs`), send them over a channel and answer whole
//! (`response.rs`) or as server-sent events (`sse.rs`). `start` returns once the model is
//! loaded and the port bound; `Server::wait` returns the engine's state at exit.

pub mod api;
pub mod asyncthink_mode;
mod auth;
mod coalesce;
pub mod engine_loop;
pub mod episodes;
pub mod error;
pub mod metrics;
pub mod reasoning;
pub mod request;
pub mod response;
mod routes;
mod sse;
pub mod stream_text;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

pub use engine_loop::ShutdownReport;
pub use request::ModelInfo;

use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig};
use crate::model::Qwen3;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    /// 0 picks a free port; `Server::addr` tells which.
    pub port: u16,
    /// Required as `Authorization: Bearer <key>` on /v1 routes when set.
    pub api_key: Option<String>,
    pub served_model_name: String,
    /// Requests accepted and not yet answered, at most; more get a 503.
    pub max_pending: usize,
    /// After SIGTERM (or `Server::shutdown`): how long in-flight requests may run on.
    pub shutdown_grace: Duration,
    /// Shut down on SIGTERM and SIGINT.
    pub handle_signals: bool,
    /// Stream a choice's tokens in chunks of this many (the first and last at once).
    pub stream_interval: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            api_key: None,
            served_model_name: "asyncthink".into(),
            max_pending: 256,
            shutdown_grace: Duration::from_secs(30),
            handle_signals: false,
            stream_interval: 1,
        }
    }
}

/// What the engine thread builds before serving: the model, its tokenizer, and the engine's
/// sizes (which may depend on the model, e.g. KV blocks from a memory budget).
pub struct Loaded<B: Backend> {
    pub model: Qwen3<B>,
    pub tokenizer: Tokenizer,
    pub engine: EngineConfig,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    http: JoinHandle<Result<()>>,
    engine: JoinHandle<Result<ShutdownReport>>,
}

/// Loads the model on a new engine thread (through `load`, so a backend that cannot move
/// between threads is made there), binds the port and starts serving.
pub fn start<B, F>(cfg: ServeConfig, load: F) -> Result<Server>
where
    B: Backend,
    F: FnOnce() -> Result<Loaded<B>> + Send + 'static,
{
    if cfg.max_pending == 0 {
        return Err(Error::InvalidInput(
            "--max-pending must be at least 1".into(),
        ));
    }
    let metrics = Arc::new(Mutex::new(metrics::Metrics::default()));
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let name = cfg.served_model_name.clone();
    let engine_metrics = metrics.clone();
    if cfg.stream_interval == 0 {
        return Err(Error::InvalidInput(
            "--stream-interval must be at least 1".into(),
        ));
    }
    let stream_interval = cfg.stream_interval;
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || -> Result<ShutdownReport> {
            let built = load().map(|loaded| {
                let tokenizer = Arc::new(loaded.tokenizer);
                (loaded.model, tokenizer, loaded.engine)
            });
            let (model, tokenizer, engine_cfg) = match built {
                Ok(b) => b,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Err(Error::InvalidInput("the model did not load".into()));
                }
            };
            let mut engine = match Engine::new(&model, Some(&tokenizer), engine_cfg) {
                Ok(e) => e,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Err(Error::InvalidInput("the engine did not start".into()));
                }
            };
            let info = ModelInfo {
                name,
                max_positions: model.config.max_position_embeddings,
                vocab_size: model.config.vocab_size,
            };
            let _ = ready_tx.send(Ok((tokenizer.clone(), info)));
            engine_loop::run(
                &mut engine,
                &tokenizer,
                commands_rx,
                engine_metrics,
                stream_interval,
            )
        })
        .map_err(|e| Error::InvalidInput(format!("cannot start the engine thread: {e}")))?;
    let (tokenizer, info) = ready_rx
        .recv()
        .map_err(|_| Error::InvalidInput("the engine thread died while loading".into()))??;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::InvalidInput(format!("cannot start the HTTP runtime: {e}")))?;
    let bind = format!("{}:{}", cfg.host, cfg.port);
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&bind))
        .map_err(|e| Error::io(&bind, e))?;
    let addr = listener.local_addr().map_err(|e| Error::io(&bind, e))?;
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = routes::AppState {
        commands: commands.clone(),
        tokenizer,
        info: Arc::new(info),
        metrics,
        queue: Arc::new(Semaphore::new(cfg.max_pending)),
        queue_limit: cfg.max_pending,
        api_key: cfg.api_key.as_deref().map(Arc::from),
        started,
    };
    let (stop, stop_rx) = oneshot::channel::<()>();
    let http = std::thread::Builder::new()
        .name("http".into())
        .spawn(move || runtime.block_on(serve(listener, state, commands, stop_rx, cfg)))
        .map_err(|e| Error::InvalidInput(format!("cannot start the HTTP thread: {e}")))?;
    Ok(Server {
        addr,
        stop: Some(stop),
        http,
        engine,
    })
}

async fn serve(
    listener: tokio::net::TcpListener,
    state: routes::AppState,
    commands: mpsc::UnboundedSender<engine_loop::Command>,
    stop: oneshot::Receiver<()>,
    cfg: ServeConfig,
) -> Result<()> {
    let began = Arc::new(Notify::new());
    let notify = began.clone();
    let grace = cfg.shutdown_grace;
    let shutdown = async move {
        tokio::select! {
            _ = stop => {}
            () = signal(cfg.handle_signals) => {}
        }
        let _ = commands.send(engine_loop::Command::Shutdown { grace });
        notify.notify_one();
    };
    let server = axum::serve(listener, routes::router(state)).with_graceful_shutdown(shutdown);
    // Connections get the grace period and a little more to finish; then they are dropped.
    let bound = async {
        began.notified().await;
        tokio::time::sleep(grace + Duration::from_secs(5)).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| Error::io("http server", e)),
        () = bound => Ok(()),
    }
}

/// SIGTERM or SIGINT when `enabled`; never otherwise.
async fn signal(enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts a graceful shutdown, as SIGTERM does.
    pub fn shutdown(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits for the server to stop (after `shutdown` or a signal) and returns the engine's
    /// state at exit.
    pub fn wait(self) -> Result<ShutdownReport> {
        let http = self
            .http
            .join()
            .map_err(|_| Error::InvalidInput("the HTTP thread panicked".into()))?;
        let report = self
            .engine
            .join()
            .map_err(|_| Error::InvalidInput("the engine thread panicked".into()))?;
        http?;
        report
    }
}
