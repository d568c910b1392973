//! `asyncthink serve`: the OpenAI-compatible HTTP server (src/serve/). Parses flags, starts
//! the server, prints the address it listens on, and waits for SIGTERM.

use std::io::Write;
use std::time::Duration;

use clap::Args;

use super::batch::EngineArgs;
use super::{CudaGraphArgs, Device, ModelArgs};
use crate::serve::{Loaded, ServeConfig};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Where the model runs: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    #[command(flatten)]
    pub graphs: CudaGraphArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed as "listening on http://HOST:PORT").
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1 routes (also read from ASYNCTHINK_API_KEY).
    #[arg(long, env = "ASYNCTHINK_API_KEY")]
    pub api_key: Option<String>,
    /// The model name clients send and /v1/models lists (default: the model's source).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Requests in flight at most (queued and running); more are answered 503.
    #[arg(long, default_value_t = 256)]
    pub max_pending: usize,
    /// Seconds in-flight requests may run on after SIGTERM before they are aborted.
    #[arg(long, default_value_t = 30.0)]
    pub shutdown_grace: f64,
    /// Stream tokens in chunks of this many (the first and the last at once): fewer chunks
    /// to frame and write when the server's CPU is the limit, coarser inter-token timing.
    #[arg(long, default_value_t = 1)]
    pub stream_interval: usize,
}

pub fn run(args: ServeArgs) -> Result<()> {
    // The engine thread, not this one, drives the engine: it joins the pool itself.
    crate::model::checkpoint::set_weight_check(!args.model.skip_weight_check);
    let threads = args.model.threads;
    if threads == Some(0) {
        return Err(Error::InvalidInput("--threads must be at least 1".into()));
    }
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        return Err(Error::InvalidInput(format!(
            "--shutdown-grace must be a number of seconds >= 0, got {}",
            args.shutdown_grace
        )));
    }
    let source = args.model.source();
    let cfg = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        served_model_name: args
            .served_model_name
            .clone()
            .unwrap_or_else(|| source.describe()),
        max_pending: args.max_pending,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        handle_signals: true,
        stream_interval: args.stream_interval,
    };
    let engine = args.engine.clone();
    let cpu = args.model.cpu_backend();
    let server = match args.device {
        Device::Cpu => crate::serve::start(cfg, move || {
            crate::backend::cpu::threads::drive_from_this_thread(threads)?;
            let (model, tokenizer) = source.load(cpu)?;
            let engine = engine.config(&model)?;
            Ok(Loaded {
                model,
                tokenizer,
                engine,
            })
        })?,
        #[cfg(feature = "cuda")]
        Device::Cuda => {
            let graphs: CudaGraphArgs = args.graphs.clone();
            crate::serve::start(cfg, move || {
                crate::backend::cpu::threads::drive_from_this_thread(threads)?;
                let (model, tokenizer) = source.load(graphs.cuda_backend()?)?;
                let engine = engine.config(&model)?;
                Ok(Loaded {
                    model,
                    tokenizer,
                    engine,
                })
            })?
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda => {
            let _ = &args.graphs;
            return Err(Error::InvalidInput(
                "--device cuda: this binary was built without the `cuda` feature".into(),
            ));
        }
    };
    println!("listening on http://{}", server.addr());
    let _ = std::io::stdout().flush();
    let report = server.wait()?;
    eprintln!(
        "stopped: {} of {} KV blocks free, {} requests aborted at shutdown",
        report.free_blocks, report.num_blocks, report.aborted
    );
    if !report.is_clean() {
        return Err(Error::InvalidInput(format!(
            "KV blocks leaked at shutdown: {} of {} free ({:?})",
            report.free_blocks, report.num_blocks, report.invariants
        )));
    }
    Ok(())
}
