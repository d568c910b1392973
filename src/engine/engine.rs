//! The batching engine: requests in, one batched forward per step, tokens out.
//!
//! Every step mixes decode tokens of running sequences with (chunks of) prompts, under
//! a token budget and a cap on sequences (`scheduler.rs`), then samples for each
//! sequence whose known tokens are all computed. Sequences share KV blocks through the
//! prefix cache and through `fork`.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Serialize;

use super::sampling::{SamplingParams, TokenChoice};
use super::sequence::{FinishReason, SeqId, Sequence, Status};
use crate::backend::Backend;
use crate::kv::{BlockManager, block_hash};
use crate::model::{ForwardBatch, Logits, Qwen3};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Token positions per KV block.
    pub block_size: usize,
    pub num_blocks: usize,
    /// Tokens one step may run through the model (prefill chunks + decodes).
    pub max_batched_tokens: usize,
    /// Sequences running at once.
    pub max_num_seqs: usize,
    /// Split long prompts across steps so decodes keep flowing beside them.
    pub chunked_prefill: bool,
    /// Reuse KV blocks of earlier requests whose prompts start the same way.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            num_blocks: 1024,
            max_batched_tokens: 512,
            max_num_seqs: 64,
            chunked_prefill: true,
            prefix_caching: true,
        }
    }
}

impl EngineConfig {
    /// Names the setting (by the flag that sets it) rather than dumping the struct.
    fn validate(&self) -> Result<()> {
        let sizes = [
            ("--block-size", self.block_size),
            ("--max-batched-tokens", self.max_batched_tokens),
            ("--max-num-seqs", self.max_num_seqs),
        ];
        if let Some((flag, v)) = sizes.iter().find(|(_, v)| *v == 0) {
            return Err(Error::InvalidInput(format!(
                "{flag} {v}: must be at least 1"
            )));
        }
        if self.num_blocks == 0 {
            return Err(Error::KvCacheFull(
                "0 KV blocks: give the cache at least one block (--kv-cache-mb)".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineStats {
    pub steps: u64,
    pub requests: u64,
    pub prompt_tokens: u64,
    /// Tokens run through the model (prompt chunks, decodes, recomputation).
    pub computed_tokens: u64,
    /// Prompt tokens whose K/V came from the prefix cache.
    pub prefix_hit_tokens: u64,
    pub generated_tokens: u64,
    pub preemptions: u64,
    pub forward_seconds: f64,
}

impl EngineStats {
    pub fn prefix_hit_rate(&self) -> f64 {
        self.prefix_hit_tokens as f64 / (self.prompt_tokens as f64).max(1.0)
    }
}

/// What one step produced for one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutput {
    pub seq: SeqId,
    /// The token sampled this step (None when the sequence ended without sampling).
    pub token: Option<u32>,
    pub finish: Option<FinishReason>,
}

pub struct Engine<'m, B: Backend> {
    pub(super) model: &'m Qwen3<B>,
    pub(super) tokenizer: Option<&'m Tokenizer>,
    pub(super) eos: Vec<u32>,
    pub(super) cfg: EngineConfig,
    pub(super) kv: B::KvCache,
    pub(super) blocks: BlockManager,
    pub(super) seqs: HashMap<SeqId, Sequence>,
    pub(super) waiting: VecDeque<SeqId>,
    /// Admission order, oldest first.
    pub(super) running: Vec<SeqId>,
    next_id: SeqId,
    next_arrival: u64,
    pub stats: EngineStats,
}

impl<'m, B: Backend> Engine<'m, B> {
    pub fn new(
        model: &'m Qwen3<B>,
        tokenizer: Option<&'m Tokenizer>,
        cfg: EngineConfig,
    ) -> Result<Self> {
        cfg.validate()?;
        let kv = model
            .backend
            .alloc_kv(model.kv_layout(cfg.num_blocks, cfg.block_size))?;
        let eos =
            tokenizer.map_or_else(|| model.config.eos_token_ids.clone(), |t| t.eos_ids.clone());
        Ok(Engine {
            model,
            tokenizer,
            eos,
            blocks: BlockManager::new(cfg.num_blocks),
            cfg,
            kv,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            next_id: 0,
            next_arrival: 0,
            stats: EngineStats::default(),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn model(&self) -> &'m Qwen3<B> {
        self.model
    }

    /// Checks `prompt` and that it fits with `extra` more positions: 1 for a request (room
    /// to decode at least once), 0 for `logits_all` (nothing follows the prompt).
    fn check_prompt(&self, prompt: &[u32], extra: usize) -> Result<()> {
        let c = &self.model.config;
        if prompt.is_empty() {
            return Err(Error::InvalidInput("empty prompt".into()));
        }
        if let Some(t) = prompt.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary (size {})",
                c.vocab_size
            )));
        }
        if prompt.len() + extra > c.max_position_embeddings {
            return Err(Error::InvalidInput(format!(
                "prompt of {} tokens leaves no room under max_position_embeddings {}",
                prompt.len(),
                c.max_position_embeddings
            )));
        }
        let capacity = self.cfg.num_blocks * self.cfg.block_size;
        if prompt.len() + extra > capacity {
            return Err(Error::KvCacheFull(format!(
                "prompt of {} tokens does not fit the whole cache ({capacity} token slots)",
                prompt.len()
            )));
        }
        Ok(())
    }

    /// Queues a request; it is admitted by a later `step`.
    pub fn add_request(&mut self, prompt: Vec<u32>, params: SamplingParams) -> Result<SeqId> {
        self.check_prompt(&prompt, 1)?;
        let id = self.next_id;
        let seq = Sequence::new(id, prompt, params, self.next_arrival)?;
        self.next_id += 1;
        self.next_arrival += 1;
        self.stats.requests += 1;
        self.stats.prompt_tokens += seq.prompt_len as u64;
        self.seqs.insert(id, seq);
        self.waiting.push_back(id);
        Ok(id)
    }

    fn live(&mut self, id: SeqId) -> Result<&mut Sequence> {
        match self.seqs.get_mut(&id) {
            Some(s) if s.status != Status::Finished => Ok(s),
            Some(_) => Err(Error::InvalidInput(format!("sequence {id} has finished"))),
            None => Err(Error::InvalidInput(format!("no sequence {id}"))),
        }
    }

    /// A child that shares every computed block of `parent`; the partly filled last
    /// block is copied on the first write to it. `params` (e.g. another seed) default to
    /// the parent's.
    pub fn fork(&mut self, parent: SeqId, params: Option<SamplingParams>) -> Result<SeqId> {
        let (id, arrival) = (self.next_id, self.next_arrival);
        let p = self.live(parent)?;
        let params = params.unwrap_or_else(|| p.params.clone());
        let mut child = Sequence::new(id, p.tokens[..p.prompt_len].to_vec(), params, arrival)?;
        child.tokens = p.tokens.clone();
        child.generated = p.generated.clone();
        child.logprobs = p.logprobs.clone();
        child.top_logprobs = p.top_logprobs.clone();
        child.generated_positions = p.generated_positions.clone();
        child.num_computed = p.num_computed;
        child.block_table = p.block_table.clone();
        child.block_hashes = p.block_hashes.clone();
        child.status = p.status;
        child.paused = p.paused;
        for &b in &child.block_table {
            self.blocks.retain(b);
        }
        match child.status {
            Status::Running => self.running.push(id),
            _ => self.waiting.push_back(id),
        }
        self.seqs.insert(id, child);
        self.next_id += 1;
        self.next_arrival += 1;
        self.stats.requests += 1;
        Ok(id)
    }

    /// Ends a sequence now and frees its blocks.
    pub fn abort(&mut self, id: SeqId) -> Result<()> {
        self.live(id)?;
        self.finish(id, FinishReason::Aborted);
        Ok(())
    }

    /// Adds tokens the model did not sample (an executor's injected text); they are
    /// prefilled by the next step that schedules the sequence.
    pub fn append_tokens(&mut self, id: SeqId, tokens: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        self.live(id)?.tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// The next tokens this sequence "samples" are `tokens`, in order; sampling resumes
    /// after them.
    pub fn force_tokens(&mut self, id: SeqId, tokens: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            )));
        }
        self.live(id)?.forced.extend(tokens.iter().copied());
        Ok(())
    }

    /// A paused sequence keeps its blocks but is not scheduled.
    pub fn set_paused(&mut self, id: SeqId, paused: bool) -> Result<()> {
        self.live(id)?.paused = paused;
        Ok(())
    }

    pub fn sequence(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }

    /// Removes a finished sequence and hands it over.
    pub fn take_finished(&mut self, id: SeqId) -> Option<Sequence> {
        match self.seqs.get(&id) {
            Some(s) if s.status == Status::Finished => self.seqs.remove(&id),
            _ => None,
        }
    }

    pub fn has_unfinished(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.blocks.num_free()
    }

    pub(super) fn release_blocks(&mut self, id: SeqId) {
        if let Some(s) = self.seqs.get_mut(&id) {
            for b in s.block_table.drain(..) {
                self.blocks.release(b);
            }
            s.block_hashes.clear();
            s.num_computed = 0;
        }
    }

    pub(super) fn finish(&mut self, id: SeqId, reason: FinishReason) {
        self.release_blocks(id);
        self.running.retain(|&r| r != id);
        self.waiting.retain(|&w| w != id);
        if let Some(s) = self.seqs.get_mut(&id) {
            s.status = Status::Finished;
            s.finish_reason = Some(reason);
        }
    }

    /// One scheduling round and one batched forward. Returns what each sequence produced.
    pub fn step(&mut self) -> Result<Vec<StepOutput>> {
        let plan = self.schedule()?;
        let mut outputs: Vec<StepOutput> = plan
            .cache_full
            .iter()
            .map(|&seq| StepOutput {
                seq,
                token: None,
                finish: Some(FinishReason::CacheFull),
            })
            .collect();
        if plan.chunks.is_empty() {
            return Ok(outputs);
        }

        let mut batch = ForwardBatch::default();
        let mut samples = Vec::new();
        for &(id, n) in &plan.chunks {
            let s = &self.seqs[&id];
            let (start, end) = (s.num_computed, s.num_computed + n);
            let logits = if end == s.tokens.len() {
                Logits::Last
            } else {
                Logits::None
            };
            if logits == Logits::Last {
                samples.push(id);
            }
            batch.push(
                &s.tokens[start..end],
                start,
                &s.block_table,
                self.cfg.block_size,
                logits,
            );
        }
        let started = Instant::now();
        let logits = self.model.forward(&batch, &mut self.kv)?;
        // Only the chosen ids and their log-probs come back from the backend (the CUDA
        // backend samples on the device); this is also where a device step synchronises.
        let chosen = {
            let choices = samples
                .iter()
                .map(|id| {
                    let s = self.seqs.get(id).ok_or_else(|| {
                        Error::InvalidInput(format!("sequence {id} vanished mid-step"))
                    })?;
                    Ok(TokenChoice {
                        params: &s.params,
                        step: s.generated.len() as u64,
                        history: &s.tokens,
                        forced: s.forced.front().copied(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            self.model.backend.select_tokens(&logits, &choices)?
        };
        self.stats.forward_seconds += started.elapsed().as_secs_f64();
        self.stats.steps += 1;
        self.stats.computed_tokens += batch.num_tokens() as u64;

        for &(id, n) in &plan.chunks {
            if let Some(s) = self.seqs.get_mut(&id) {
                s.num_computed += n;
            }
            if self.cfg.prefix_caching {
                self.register_full_blocks(id);
            }
        }
        let max_positions = self.model.config.max_position_embeddings;
        for (id, c) in samples.into_iter().zip(chosen) {
            let Some(s) = self.seqs.get_mut(&id) else {
                continue;
            };
            // Non-finite logits end this sequence alone: its batch-mates' rows are
            // independent of it (per-token matmuls, per-sequence attention) and go on.
            let c = match c {
                Ok(c) => c,
                Err(bad) => {
                    s.error = Some(format!(
                        "sequence {id}, after {} tokens: {bad}",
                        s.tokens.len()
                    ));
                    self.finish(id, FinishReason::Error);
                    outputs.push(StepOutput {
                        seq: id,
                        token: None,
                        finish: Some(FinishReason::Error),
                    });
                    continue;
                }
            };
            // The front forced token (if any) was this row's choice.
            s.forced.pop_front();
            let token = c.token;
            s.generated_positions.push(s.tokens.len());
            s.tokens.push(token);
            s.generated.push(token);
            s.logprobs.push(c.logprob);
            s.top_logprobs.push(c.top);
            self.stats.generated_tokens += 1;
            let finish = s.stop_reason(&self.eos, max_positions, self.tokenizer)?;
            if let Some(reason) = &finish {
                self.finish(id, reason.clone());
            }
            outputs.push(StepOutput {
                seq: id,
                token: Some(token),
                finish,
            });
        }
        Ok(outputs)
    }

    fn register_full_blocks(&mut self, id: SeqId) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        while (s.block_hashes.len() + 1) * bs <= s.num_computed {
            let i = s.block_hashes.len();
            let tokens = &s.tokens[i * bs..(i + 1) * bs];
            let hash = block_hash(s.block_hashes.last().copied(), tokens);
            self.blocks.register(s.block_table[i], hash, tokens);
            s.block_hashes.push(hash);
        }
    }

    /// Logits at every position of `ids` in one forward, outside the request queue
    /// (parity checks). Uses free blocks and returns them.
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_prompt(ids, 0)?;
        let bs = self.cfg.block_size;
        let mut table = Vec::new();
        for _ in 0..ids.len().div_ceil(bs) {
            match self.blocks.allocate() {
                Ok(b) => table.push(b),
                Err(e) => {
                    table.iter().for_each(|&b| {
                        self.blocks.release(b);
                    });
                    return Err(e);
                }
            }
        }
        let mut batch = ForwardBatch::default();
        batch.push(ids, 0, &table, bs, Logits::All);
        let out = self
            .model
            .forward(&batch, &mut self.kv)
            .and_then(|t| self.model.backend.to_host(&t));
        for b in table {
            self.blocks.release(b);
        }
        let vocab = self.model.config.vocab_size;
        let rows: Vec<Vec<f32>> = out?.chunks(vocab).map(<[f32]>::to_vec).collect();
        // Never hand back NaN as numbers (JSON would print them as null).
        for (pos, row) in rows.iter().enumerate() {
            if let Some(token) = row.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite(format!(
                    "position {pos} (token id {}): {}",
                    ids[pos],
                    super::sampling::NonFinite { token }
                )));
            }
        }
        Ok(rows)
    }

    /// Checks the block bookkeeping: every block's count equals the number of block-table
    /// entries pointing at it, and free blocks are exactly those with no holder.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let mut holders = vec![0u32; self.blocks.num_blocks()];
        for s in self.seqs.values() {
            if s.status == Status::Finished && !s.block_table.is_empty() {
                return Err(format!("finished sequence {} still holds blocks", s.id));
            }
            if s.status == Status::Waiting && !s.block_table.is_empty() {
                return Err(format!("waiting sequence {} holds blocks", s.id));
            }
            if s.block_table.len() * self.cfg.block_size < s.num_computed {
                return Err(format!(
                    "sequence {} computed {} tokens beyond its blocks",
                    s.id, s.num_computed
                ));
            }
            for &b in &s.block_table {
                holders[b as usize] += 1;
            }
        }
        for (b, &h) in holders.iter().enumerate() {
            let rc = self.blocks.ref_count(b as u32);
            if rc != h {
                return Err(format!("block {b}: ref count {rc} but {h} table entries"));
            }
        }
        let free = holders.iter().filter(|&&h| h == 0).count();
        if free != self.blocks.num_free() {
            return Err(format!(
                "{} blocks have no holder but {} are free",
                free,
                self.blocks.num_free()
            ));
        }
        Ok(())
    }
}
