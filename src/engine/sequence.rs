//! A request's life in the engine: its tokens, how many have K/V in the cache, its
//! block table, its sampling settings and stop conditions.

use serde::Serialize;

use super::sampling::SamplingParams;
use crate::Result;
use crate::tokenizer::Tokenizer;

pub type SeqId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was sampled (it is not part of the output).
    Eos,
    /// A stop string appeared; the text is cut before it.
    Stop,
    /// max_new_tokens, or the model's max_position_embeddings.
    Length,
    Aborted,
    /// The sequence alone needs more KV blocks than the whole cache has.
    CacheFull,
    /// The model's logits for it went NaN or infinite; `Sequence::error` says where.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Waiting,
    Running,
    Finished,
}

pub struct Sequence {
    pub id: SeqId,
    /// Prompt, then generated and injected tokens, in context order.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens sampled by the model (injected tokens excluded).
    pub generated: Vec<u32>,
    /// log p of each generated token under the model (temperature 1, before any
    /// filtering): what a policy-gradient trainer recomputes and compares against.
    pub logprobs: Vec<f32>,
    /// Beside each entry of `logprobs`: the `params.top_logprobs` most likely tokens and their
    /// log-probs under that same distribution (empty when none were asked for; an empty Vec
    /// does not allocate, so the two stay index-aligned at no cost).
    pub top_logprobs: Vec<Vec<(u32, f32)>>,
    /// Where each generated token sits in `tokens` (injected tokens fall between them).
    pub generated_positions: Vec<usize>,
    /// Tokens to emit instead of sampling, in order (a scripted policy replaying a text
    /// through the real engine: KV, batching and block accounting stay real).
    pub forced: std::collections::VecDeque<u32>,
    /// Leading tokens whose K/V are in the cache.
    pub num_computed: usize,
    pub block_table: Vec<u32>,
    /// Chained hashes of the full blocks registered so far.
    pub block_hashes: Vec<u64>,
    /// Sampling settings; the draw counter is `generated.len()` (engine/sampling.rs).
    pub params: SamplingParams,
    pub status: Status,
    /// Not scheduled while paused (an organizer waiting on a JOIN); keeps its blocks.
    pub paused: bool,
    pub finish_reason: Option<FinishReason>,
    /// Why it ended with `FinishReason::Error`: this request's own failure, which does not
    /// stop the others in the batch.
    pub error: Option<String>,
    /// Admission order; the youngest running sequence is preempted first.
    pub arrival: u64,
    /// Prompt tokens served from the prefix cache instead of computed.
    pub cached_prompt_tokens: usize,
    pub num_preemptions: usize,
}

impl Sequence {
    pub fn new(id: SeqId, prompt: Vec<u32>, params: SamplingParams, arrival: u64) -> Result<Self> {
        params.validate()?;
        Ok(Sequence {
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            generated: Vec::new(),
            logprobs: Vec::new(),
            top_logprobs: Vec::new(),
            generated_positions: Vec::new(),
            forced: Default::default(),
            num_computed: 0,
            block_table: Vec::new(),
            block_hashes: Vec::new(),
            params,
            status: Status::Waiting,
            paused: false,
            finish_reason: None,
            error: None,
            arrival,
            cached_prompt_tokens: 0,
            num_preemptions: 0,
        })
    }

    /// Tokens still to run through the model before the next sample.
    pub fn num_pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// After a sampled token: why to stop now, if at all.
    pub fn stop_reason(
        &self,
        eos: &[u32],
        max_positions: usize,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Option<FinishReason>> {
        let last = *self.generated.last().unwrap_or(&u32::MAX);
        if !self.params.ignore_eos && eos.contains(&last) {
            return Ok(Some(FinishReason::Eos));
        }
        if let (false, Some(tok)) = (self.params.stop.is_empty(), tokenizer) {
            let text = tok.decode(&self.generated, false)?;
            if self.params.stop.iter().any(|s| text.contains(s.as_str())) {
                return Ok(Some(FinishReason::Stop));
            }
        }
        if self.generated.len() >= self.params.max_new_tokens || self.tokens.len() >= max_positions
        {
            return Ok(Some(FinishReason::Length));
        }
        Ok(None)
    }

    /// The generated tokens a caller sees: a final eos is dropped.
    pub fn output_ids(&self) -> &[u32] {
        match self.finish_reason {
            Some(FinishReason::Eos) => &self.generated[..self.generated.len().saturating_sub(1)],
            _ => &self.generated,
        }
    }

    /// Output text, cut before the first stop string.
    pub fn output_text(&self, tokenizer: &Tokenizer) -> Result<String> {
        let mut text = tokenizer.decode(self.output_ids(), false)?;
        if let Some(cut) = self
            .params
            .stop
            .iter()
            .filter_map(|s| text.find(s.as_str()))
            .min()
        {
            text.truncate(cut);
        }
        Ok(text)
    }
}
