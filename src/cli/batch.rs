//! `asyncthink batch`: a JSONL file of requests through the batching engine.
//!
//! Each input line is `{"id": any, "prompt": "..."}` or `{"messages": [...]}` or
//! `{"prompt_ids": [...]}`, with an optional `"sampling": {...}` object (the fields of
//! `SamplingParams`). Output lines keep input order and ids; a bad line or a request the
//! engine refuses gets an `"error"` of its own while the others complete. A line whose
//! sampling asks for `top_logprobs: k` also gets, per output token, its `logprobs` and its
//! `top_logprobs` (k `[token_id, logprob]` pairs, most likely first).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde::Deserialize;
use serde_json::{Value, json};

use super::generate::SamplingArgs;
use super::{CudaGraphArgs, Device, KvMemoryArgs, ModelArgs};
use crate::backend::Backend;
use crate::engine::{Engine, EngineConfig, SamplingParams, SeqId};
use crate::tokenizer::{ChatMessage, ChatTemplateOptions, Tokenizer};
use crate::util::{prepare_output, write_atomic};
use crate::{Error, Result};

#[derive(Args, Debug)]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL of requests.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL of results, in input order (written atomically at the end).
    #[arg(long)]
    pub output: PathBuf,
    /// Sampling for lines that give no "sampling" object.
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Feed "prompt" as raw text instead of a chat user message.
    #[arg(long)]
    pub raw: bool,
    /// Also write the summary as JSON here.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Where the model runs: cpu, or cuda (GPU 0).
    #[arg(long, value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    #[command(flatten)]
    pub graphs: CudaGraphArgs,
}

#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    #[command(flatten)]
    pub kv: KvMemoryArgs,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Tokens per step (prefill chunks + decodes).
    #[arg(long, default_value_t = 512)]
    pub max_batched_tokens: usize,
    /// Sequences decoding at once.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    #[arg(long)]
    pub no_chunked_prefill: bool,
    #[arg(long)]
    pub no_prefix_caching: bool,
}

impl EngineArgs {
    pub fn config<B: crate::backend::Backend>(
        &self,
        model: &crate::model::Qwen3<B>,
    ) -> Result<EngineConfig> {
        let cfg = EngineConfig {
            block_size: self.block_size,
            max_batched_tokens: self.max_batched_tokens,
            max_num_seqs: self.max_num_seqs,
            chunked_prefill: !self.no_chunked_prefill,
            prefix_caching: !self.no_prefix_caching,
            ..EngineConfig::default()
        };
        self.kv.apply(cfg, model)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestLine {
    #[serde(default)]
    id: Value,
    prompt: Option<String>,
    messages: Option<Vec<ChatMessage>>,
    prompt_ids: Option<Vec<u32>>,
    sampling: Option<SamplingParams>,
}

/// One request line. Anything but a JSON object is refused by its shape first: serde's own
/// complaint about an array (`invalid type: integer 2, expected a string`) does not say
/// what a line should be.
fn parse_request(line: &str) -> std::result::Result<RequestLine, String> {
    let shape = match serde_json::from_str::<Value>(line).map_err(|e| e.to_string())? {
        Value::Object(_) => None,
        Value::Array(_) => Some("an array"),
        Value::String(_) => Some("a string"),
        Value::Number(_) => Some("a number"),
        Value::Bool(_) => Some("a boolean"),
        Value::Null => Some("null"),
    };
    if let Some(got) = shape {
        return Err(format!(
            "a request must be a JSON object with \"prompt\", \"messages\" or \"prompt_ids\", \
             got {got}"
        ));
    }
    serde_json::from_str(line).map_err(|e| e.to_string())
}

fn prompt_ids(line: &RequestLine, tokenizer: &Tokenizer, raw: bool) -> Result<Vec<u32>> {
    let chat = |msgs: &[ChatMessage]| tokenizer.encode_chat(msgs, &ChatTemplateOptions::default());
    match (&line.prompt, &line.messages, &line.prompt_ids) {
        (Some(p), None, None) if raw => tokenizer.encode(p),
        (Some(p), None, None) => chat(&[ChatMessage::new("user", p)]),
        (None, Some(m), None) => chat(m),
        (None, None, Some(ids)) => Ok(ids.clone()),
        _ => Err(Error::InvalidInput(
            "give exactly one of \"prompt\", \"messages\", \"prompt_ids\"".into(),
        )),
    }
}

pub fn run(args: BatchArgs) -> Result<()> {
    args.model.validate()?;
    args.sampling.validate()?;
    args.engine.validate()?;
    args.graphs.validate()?;
    args.model.init_threads()?;
    on_device!(args.device, args.model.precision, args.graphs, backend => run_on(args, backend))
}

fn run_on<B: Backend>(args: BatchArgs, backend: B) -> Result<()> {
    let default_params = args.sampling.params();
    default_params.validate()?;
    // Before the work, not after it: a bad path must not cost a whole batch.
    for p in std::iter::once(&args.output).chain(&args.summary) {
        prepare_output(p)?;
    }
    let text = std::fs::read(&args.input).map_err(|e| Error::io(&args.input, e))?;
    let (model, tokenizer) = args.model.source().load(backend)?;
    let mut engine = Engine::new(&model, Some(&tokenizer), args.engine.config(&model)?)?;

    // One result slot per non-empty input line, in order.
    let mut results: Vec<Value> = Vec::new();
    let mut pending: HashMap<SeqId, usize> = HashMap::new();
    // Split bytes, not text: a line that is not UTF-8 is that line's error, not the file's.
    for (lineno, raw) in text.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(raw).map(|l| l.strip_suffix('\r').unwrap_or(l));
        if line.is_ok_and(|l| l.trim().is_empty()) {
            continue;
        }
        let index = results.len();
        let at = |msg: String| Error::InvalidInput(format!("line {}: {msg}", lineno + 1));
        let outcome = line
            .map_err(|e| at(format!("not valid UTF-8 ({e})")))
            .and_then(|l| parse_request(l).map_err(at))
            .and_then(|req| {
                let ids = prompt_ids(&req, &tokenizer, args.raw)?;
                let params = req
                    .sampling
                    .clone()
                    .unwrap_or_else(|| default_params.clone());
                Ok((req.id, engine.add_request(ids, params)?))
            });
        match outcome {
            Ok((id, seq)) => {
                pending.insert(seq, index);
                results.push(json!({ "index": index, "id": id }));
            }
            Err(e) => {
                let id = line
                    .ok()
                    .and_then(|l| serde_json::from_str::<Value>(l).ok())
                    .and_then(|v| v.get("id").cloned());
                results.push(json!({ "index": index, "id": id, "error": e.to_string() }));
            }
        }
    }

    let bar = super::progress::bar(pending.len() as u64, "requests")?;
    let started = Instant::now();
    // A step that fails as a whole (a backend error) ends the run, but the requests that
    // finished before it still get their lines written.
    let mut failure = None;
    while engine.has_unfinished() {
        let outputs = match engine.step() {
            Ok(outputs) => outputs,
            Err(e) => {
                failure = Some(e);
                break;
            }
        };
        for out in outputs {
            if out.finish.is_none() {
                continue;
            }
            let Some(&index) = pending.get(&out.seq) else {
                continue;
            };
            let Some(seq) = engine.take_finished(out.seq) else {
                continue;
            };
            let slot = &mut results[index];
            // A request whose logits went NaN/Inf ends alone, with its own error.
            if let Some(e) = &seq.error {
                slot["error"] = json!(e);
            }
            slot["text"] = json!(seq.output_text(&tokenizer)?);
            slot["token_ids"] = json!(seq.output_ids());
            if seq.params.top_logprobs > 0 {
                // Index-aligned with the output ids (a final eos is not among them).
                let n = seq.output_ids().len();
                slot["logprobs"] = json!(seq.logprobs[..n]);
                slot["top_logprobs"] = json!(seq.top_logprobs[..n]);
            }
            slot["finish_reason"] = json!(seq.finish_reason);
            slot["prompt_tokens"] = json!(seq.prompt_len);
            slot["cached_prompt_tokens"] = json!(seq.cached_prompt_tokens);
            bar.inc(1);
        }
        let secs = started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "{:.1} tok/s out",
            engine.stats.generated_tokens as f64 / secs
        ));
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if let Some(e) = &failure {
        for &index in pending.values() {
            let slot = &mut results[index];
            if slot.get("text").is_none() && slot.get("error").is_none() {
                slot["error"] = json!(format!("not finished: the engine failed: {e}"));
            }
        }
    }

    let mut out = String::new();
    for r in &results {
        out.push_str(&serde_json::to_string(r)?);
        out.push('\n');
    }
    write_atomic(&args.output, out.as_bytes())?;

    let s = &engine.stats;
    let failed = results.iter().filter(|r| r.get("error").is_some()).count();
    let summary = json!({
        "requests": results.len(),
        "failed": failed,
        "prompt_tokens": s.prompt_tokens,
        "generated_tokens": s.generated_tokens,
        "computed_tokens": s.computed_tokens,
        "seconds": seconds,
        "output_tokens_per_second": s.generated_tokens as f64 / seconds.max(1e-9),
        "total_tokens_per_second": (s.prompt_tokens + s.generated_tokens) as f64 / seconds.max(1e-9),
        "prefix_cache_hit_rate": s.prefix_hit_rate(),
        "preemptions": s.preemptions,
        "steps": s.steps,
    });
    eprintln!(
        "{} requests ({} failed), {} tokens in, {} out, {:.1} s, {:.1} tok/s out, prefix-cache hit rate {:.1}%, {} preemptions",
        results.len(),
        failed,
        s.prompt_tokens,
        s.generated_tokens,
        seconds,
        summary["output_tokens_per_second"].as_f64().unwrap_or(0.0),
        100.0 * s.prefix_hit_rate(),
        s.preemptions
    );
    if let Some(path) = &args.summary {
        write_atomic(path, serde_json::to_string_pretty(&summary)?.as_bytes())?;
    }
    failure.map_or(Ok(()), Err)
}
