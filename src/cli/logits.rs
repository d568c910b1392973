//! `asyncthink logits`: logits of every position as JSON, for parity checks.

use clap::Args;
use serde_json::json;

use super::{CudaGraphArgs, Device, ModelArgs, parse_ids};
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Token ids, comma-separated.
    #[arg(long, conflicts_with = "text")]
    pub ids: Option<String>,
    /// Raw text to tokenize (no chat template).
    #[arg(long)]
    pub text: Option<String>,
    /// Where the model runs: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    #[command(flatten)]
    pub graphs: CudaGraphArgs,
}

impl LogitsArgs {
    /// Every flag, before the model loads.
    fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.graphs.validate()?;
        match (&self.ids, &self.text) {
            (Some(s), _) if parse_ids(s)?.is_empty() => Err(Error::InvalidInput(
                "--ids: give at least one token id".into(),
            )),
            (None, None) => Err(Error::InvalidInput(
                "give --ids 1,2,3 or --text TEXT".into(),
            )),
            _ => Ok(()),
        }
    }
}

pub fn run(args: LogitsArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    on_device!(args.device, args.model.precision, args.graphs, backend => run_on(args, backend))
}

fn run_on<B: Backend>(args: LogitsArgs, backend: B) -> Result<()> {
    let (model, tokenizer) = args.model.source().load(backend)?;
    let ids = match (&args.ids, &args.text) {
        (Some(s), _) => parse_ids(s)?,
        (None, Some(t)) => tokenizer.encode(t)?,
        (None, None) => {
            return Err(Error::InvalidInput(
                "give --ids 1,2,3 or --text TEXT".into(),
            ));
        }
    };
    // Exactly the blocks `logits_all` takes: the prompt's positions, nothing after them.
    let defaults = EngineConfig::default();
    let cfg = EngineConfig {
        num_blocks: ids.len().div_ceil(defaults.block_size).max(1),
        ..defaults
    };
    let mut engine = Engine::new(&model, Some(&tokenizer), cfg)?;
    let logits = engine.logits_all(&ids)?;
    println!(
        "{}",
        serde_json::to_string(&json!({ "ids": ids, "logits": logits }))?
    );
    Ok(())
}
