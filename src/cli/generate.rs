//! `asyncthink generate`: one prompt, streamed to stdout or reported as JSON.

use std::io::Write;

use clap::Args;
use serde_json::json;

use super::{CudaGraphArgs, Device, KvMemoryArgs, ModelArgs, parse_ids};
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig, SamplingParams};
use crate::tokenizer::{ChatMessage, ChatTemplateOptions};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The user message (or raw text with --raw).
    #[arg(long, conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Token ids to feed directly, comma-separated.
    #[arg(long)]
    pub ids: Option<String>,
    /// An optional system message.
    #[arg(long)]
    pub system: Option<String>,
    /// Feed the prompt as is, without the chat template.
    #[arg(long)]
    pub raw: bool,
    /// Pre-fill an empty think block (Qwen3's enable_thinking=false).
    #[arg(long)]
    pub no_think: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub kv: KvMemoryArgs,
    /// Print one JSON object (text, token ids, timing) instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Where the model runs: cpu, or cuda (GPU 0; needs the CUDA driver and NVRTC).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    #[command(flatten)]
    pub graphs: CudaGraphArgs,
}

#[derive(Args, Debug, Clone)]
pub struct SamplingArgs {
    #[arg(long, default_value_t = 64, value_parser = super::token_budget())]
    pub max_new_tokens: usize,
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the output contains this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            ignore_eos: self.ignore_eos,
            top_logprobs: 0,
        }
    }
}

impl GenerateArgs {
    /// Every flag, before the model loads.
    fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.sampling.validate()?;
        self.kv.validate()?;
        self.graphs.validate()?;
        match (&self.ids, &self.prompt) {
            (Some(ids), _) => parse_ids(ids).map(drop),
            (None, Some(_)) => Ok(()),
            (None, None) => Err(Error::InvalidInput(
                "give --prompt TEXT or --ids 1,2,3".into(),
            )),
        }
    }
}

pub fn run(args: GenerateArgs) -> Result<()> {
    args.validate()?;
    args.model.init_threads()?;
    args.sampling.params().validate()?;
    on_device!(args.device, args.model.precision, args.graphs, backend => run_on(args, backend))
}

fn run_on<B: Backend>(args: GenerateArgs, backend: B) -> Result<()> {
    let params = args.sampling.params();
    let source = args.model.source();
    let (model, tokenizer) = source.load(backend)?;

    let prompt_ids = match (&args.ids, &args.prompt) {
        (Some(ids), _) => parse_ids(ids)?,
        (None, Some(p)) if args.raw => tokenizer.encode(p)?,
        (None, Some(p)) => {
            let mut msgs = Vec::new();
            if let Some(s) = &args.system {
                msgs.push(ChatMessage::new("system", s));
            }
            msgs.push(ChatMessage::new("user", p));
            let opts = ChatTemplateOptions {
                add_generation_prompt: true,
                enable_thinking: args.no_think.then_some(false),
                ..Default::default()
            };
            tokenizer.encode_chat(&msgs, &opts)?
        }
        (None, None) => {
            return Err(Error::InvalidInput(
                "give --prompt TEXT or --ids 1,2,3".into(),
            ));
        }
    };

    let cfg = args.kv.apply(EngineConfig::default(), &model)?;
    let mut engine = Engine::new(&model, Some(&tokenizer), cfg)?;
    let stream = !args.json;
    let mut printed = 0usize;
    let mut so_far = Vec::new();
    let out = engine.generate(&prompt_ids, &params, |id| {
        if stream {
            // Re-decode the tail so multi-byte characters split across tokens print whole.
            so_far.push(id);
            if let Ok(text) = tokenizer.decode(&so_far, false)
                && text.len() > printed
                && text.is_char_boundary(printed)
                && !text.ends_with('\u{fffd}')
            {
                print!("{}", &text[printed..]);
                let _ = std::io::stdout().flush();
                printed = text.len();
            }
        }
    })?;

    if args.json {
        let report = json!({
            "model": source.describe(),
            "prompt_ids": out.prompt_ids,
            "token_ids": out.token_ids,
            "text": out.text,
            "finish_reason": out.finish_reason,
            "timing": {
                "prefill_seconds": out.prefill_seconds,
                "decode_seconds": out.decode_seconds,
                "prefill_tokens_per_second": out.prefill_tokens_per_second(),
                "decode_tokens_per_second": out.decode_tokens_per_second(),
            },
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        if out.text.len() > printed && out.text.is_char_boundary(printed) {
            print!("{}", &out.text[printed..]);
        }
        println!();
        eprintln!(
            "[{} prompt + {} new tokens, {:?}; prefill {:.1} tok/s, decode {:.1} tok/s]",
            out.prompt_ids.len(),
            out.token_ids.len(),
            out.finish_reason,
            out.prefill_tokens_per_second(),
            out.decode_tokens_per_second()
        );
    }
    Ok(())
}
