//! SFT data: JSONL chat conversations → token ids with a loss weight per next-token
//! prediction: 1 on assistant tokens (their `<|im_end|>` included), 0 on the prompt and
//! on text the executor inserted into a trace (`meta.inserted_byte_spans`, offsets into
//! the last assistant message's content), which the model must read but never write.
//! Then a seeded, resumable order over the examples, packed into token-budget batches.

use std::path::Path;

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::batch::TrainBatch;
use crate::tokenizer::{ChatMessage, ChatTemplateOptions, Tokenizer};
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    /// One per next-token prediction: `weights[t]` weighs predicting `ids[t + 1]`.
    pub weights: Vec<f32>,
    /// Tokens cut off the end to fit `max_len` (0 when the conversation fit).
    pub cut: usize,
}

/// What `max_len` cut from `examples`, for the user to hear about; None when nothing was.
pub fn describe_cuts(what: &Path, examples: &[SftExample], max_len: usize) -> Option<String> {
    let cut: Vec<usize> = examples.iter().map(|e| e.cut).filter(|&c| c > 0).collect();
    if cut.is_empty() {
        return None;
    }
    Some(format!(
        "{}: {} of {} conversations are longer than --max-len {max_len} and were cut \
         ({} tokens dropped from their ends)",
        what.display(),
        cut.len(),
        examples.len(),
        cut.iter().sum::<usize>()
    ))
}

#[derive(Deserialize)]
struct Line {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default)]
    inserted_byte_spans: Vec<(usize, usize)>,
}

/// Tokenizes one conversation with its loss weights; longer ones are cut to `max_len`.
pub fn encode_conversation(
    tokenizer: &Tokenizer,
    messages: &[ChatMessage],
    inserted: &[(usize, usize)],
    max_len: usize,
) -> Result<SftExample> {
    let opts = ChatTemplateOptions {
        add_generation_prompt: false,
        ..Default::default()
    };
    let (text, spans) = tokenizer
        .chat_template()
        .render_with_spans(messages, &opts)?;
    if spans.is_empty() {
        return Err(Error::InvalidInput(
            "conversation has no assistant message to train on".into(),
        ));
    }
    // Inserted spans are relative to the last assistant message's content as written.
    let mut masked: Vec<(usize, usize)> = Vec::new();
    if let Some(last) = spans.last() {
        let content = &messages[last.message].content;
        if !inserted.is_empty() && !text[last.content_start..].starts_with(content.as_str()) {
            return Err(Error::InvalidInput(
                "inserted spans given but the template rewrote the assistant content".into(),
            ));
        }
        for &(s, e) in inserted {
            if s > e || e > content.len() {
                return Err(Error::InvalidInput(format!(
                    "inserted span {s}..{e} outside the assistant content ({} bytes)",
                    content.len()
                )));
            }
            masked.push((last.content_start + s, last.content_start + e));
        }
    }
    let (ids, offsets) = tokenizer.encode_with_offsets(&text)?;
    let trained = |&(s, e): &(usize, usize)| {
        spans.iter().any(|sp| s >= sp.start && e <= sp.end)
            && !masked.iter().any(|&(ms, me)| s < me && e > ms)
    };
    let n = ids.len().min(max_len);
    if n < 2 {
        return Err(Error::InvalidInput(
            "conversation is shorter than two tokens".into(),
        ));
    }
    let weights: Vec<f32> = offsets[1..n]
        .iter()
        .map(|o| if trained(o) { 1.0 } else { 0.0 })
        .collect();
    Ok(SftExample {
        cut: ids.len() - n,
        ids: ids[..n].to_vec(),
        weights,
    })
}

/// Reads a JSONL file of `{"messages": [...], "meta": {...}}` lines.
pub fn load_jsonl(path: &Path, tokenizer: &Tokenizer, max_len: usize) -> Result<Vec<SftExample>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let at = |msg: String| Error::InvalidInput(format!("{}:{}: {msg}", path.display(), i + 1));
        let parsed: Line = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        // A checkpoint's Jinja template may skip a role it does not know; in training data
        // that would drop a turn silently, so a role outside these is this line's error.
        if let Some((j, m)) = parsed
            .messages
            .iter()
            .enumerate()
            .find(|(_, m)| !["system", "user", "assistant"].contains(&m.role.as_str()))
        {
            return Err(at(format!(
                "messages[{j}] has role {:?}; expected system, user or assistant",
                m.role
            )));
        }
        let inserted = parsed
            .meta
            .map(|m| m.inserted_byte_spans)
            .unwrap_or_default();
        let ex = encode_conversation(tokenizer, &parsed.messages, &inserted, max_len)
            .map_err(|e| at(e.to_string()))?;
        if ex.weights.iter().all(|&w| w == 0.0) {
            return Err(at("no trainable token survives truncation".into()));
        }
        out.push(ex);
    }
    if out.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{}: no examples",
            path.display()
        )));
    }
    Ok(out)
}

/// Where the data stream is: enough to resume it exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub cursor: usize,
}

/// Epochs of the examples in a seeded order, each epoch shuffled anew.
pub struct SftLoader {
    examples: Vec<SftExample>,
    seed: u64,
    order: Vec<usize>,
    pub position: DataPosition,
}

impl SftLoader {
    pub fn new(examples: Vec<SftExample>, seed: u64, position: DataPosition) -> Self {
        let mut loader = SftLoader {
            examples,
            seed,
            order: Vec::new(),
            position,
        };
        loader.shuffle();
        loader
    }

    fn shuffle(&mut self) {
        self.order = (0..self.examples.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ self.position.epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        self.order.shuffle(&mut rng);
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Whole examples, in order, until the next would exceed `batch_tokens` (at least one).
    pub fn next_batch(&mut self, batch_tokens: usize) -> Result<TrainBatch> {
        let mut seqs: Vec<(Vec<u32>, Vec<f32>)> = Vec::new();
        let mut tokens = 0;
        loop {
            if self.position.cursor >= self.order.len() {
                self.position = DataPosition {
                    epoch: self.position.epoch + 1,
                    cursor: 0,
                };
                self.shuffle();
            }
            let ex = &self.examples[self.order[self.position.cursor]];
            if !seqs.is_empty() && tokens + ex.ids.len() > batch_tokens {
                break;
            }
            tokens += ex.ids.len();
            seqs.push((ex.ids.clone(), ex.weights.clone()));
            self.position.cursor += 1;
            if tokens >= batch_tokens {
                break;
            }
        }
        TrainBatch::pack(&seqs)
    }

    /// Every example once, packed, in file order (evaluation).
    pub fn all_batches(&self, batch_tokens: usize) -> Result<Vec<TrainBatch>> {
        let mut out = Vec::new();
        let mut seqs: Vec<(Vec<u32>, Vec<f32>)> = Vec::new();
        let mut tokens = 0;
        for ex in &self.examples {
            if !seqs.is_empty() && tokens + ex.ids.len() > batch_tokens {
                out.push(TrainBatch::pack(&seqs)?);
                seqs.clear();
                tokens = 0;
            }
            tokens += ex.ids.len();
            seqs.push((ex.ids.clone(), ex.weights.clone()));
        }
        if !seqs.is_empty() {
            out.push(TrainBatch::pack(&seqs)?);
        }
        Ok(out)
    }
}
