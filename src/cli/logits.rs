//! `asyncthink logits`: logits of every position as JSON, for parity checks.

use clap::Args;
use serde_json::json;

use super::{ModelArgs, parse_ids};
use crate::backend::cpu::CpuBackend;
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
}

pub fn run(args: LogitsArgs) -> Result<()> {
    args.model.init_threads()?;
    let (model, tokenizer) = args.model.source().load(CpuBackend)?;
    let ids = match (&args.ids, &args.text) {
        (Some(s), _) => parse_ids(s)?,
        (None, Some(t)) => tokenizer.encode(t)?,
        (None, None) => {
            return Err(Error::InvalidInput(
                "give --ids 1,2,3 or --text TEXT".into(),
            ));
        }
    };
    let cfg = EngineConfig {
        num_blocks: ids.len().div_ceil(16).max(1),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(&model, Some(&tokenizer), cfg)?;
    let logits = engine.logits_all(&ids)?;
    println!(
        "{}",
        serde_json::to_string(&json!({ "ids": ids, "logits": logits }))?
    );
    Ok(())
}
