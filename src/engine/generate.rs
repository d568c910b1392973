//! One sequence at a time: prefill the prompt in one forward, then decode token by token
//! over the paged cache, stopping on eos, a stop string, or the token budget.
//! (The batching engine drives many sequences through the same `Qwen3::forward`.)

use std::time::Instant;

use serde::Serialize;

use super::sampling::{Sampler, SamplingParams};
use crate::backend::Backend;
use crate::kv::{BlockAllocator, SequenceBlocks};
use crate::model::{ForwardBatch, Qwen3};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

pub const DEFAULT_BLOCK_SIZE: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationOutput {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
}

impl GenerationOutput {
    pub fn prefill_tokens_per_second(&self) -> f64 {
        self.prompt_ids.len() as f64 / self.prefill_seconds.max(1e-12)
    }

    /// Tokens after the first (which the prefill produced) over decode time.
    pub fn decode_tokens_per_second(&self) -> f64 {
        self.token_ids.len().saturating_sub(1) as f64 / self.decode_seconds.max(1e-12)
    }
}

pub struct Generator<'m, B: Backend> {
    model: &'m Qwen3<B>,
    kv: B::KvCache,
    alloc: BlockAllocator,
    block_size: usize,
}

impl<'m, B: Backend> Generator<'m, B> {
    /// A cache holding up to `max_tokens` positions.
    pub fn new(model: &'m Qwen3<B>, max_tokens: usize) -> Result<Self> {
        let block_size = DEFAULT_BLOCK_SIZE;
        let num_blocks = max_tokens.div_ceil(block_size).max(1);
        let kv = model
            .backend
            .alloc_kv(model.kv_layout(num_blocks, block_size))?;
        Ok(Generator {
            model,
            kv,
            alloc: BlockAllocator::new(num_blocks),
            block_size,
        })
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.config.vocab_size;
        if ids.is_empty() {
            return Err(Error::InvalidInput("empty prompt".into()));
        }
        match ids.iter().find(|&&t| t as usize >= vocab) {
            Some(t) => Err(Error::InvalidInput(format!(
                "token id {t} is outside the vocabulary (size {vocab})"
            ))),
            None => Ok(()),
        }
    }

    /// Logits at every position of `ids`, `[len][vocab]`, from one prefill forward.
    pub fn logits(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.check_ids(ids)?;
        let mut seq = SequenceBlocks::default();
        seq.reserve(&mut self.alloc, self.block_size, ids.len())?;
        let mut batch = ForwardBatch::default();
        batch.push(ids, 0, &seq.table, self.block_size, true);
        let out = self.model.forward(&batch, &mut self.kv);
        seq.release_all(&mut self.alloc);
        let flat = self.model.backend.to_host(&out?)?;
        Ok(flat
            .chunks(self.model.config.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Generates from `prompt`. `on_token` sees each new id as it is chosen (streaming).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        tokenizer: Option<&Tokenizer>,
        mut on_token: impl FnMut(u32),
    ) -> Result<GenerationOutput> {
        self.check_ids(prompt)?;
        let mut sampler = Sampler::new(params.clone())?;
        if !params.stop.is_empty() && tokenizer.is_none() {
            return Err(Error::InvalidInput("stop strings need a tokenizer".into()));
        }
        let eos: &[u32] = match tokenizer {
            Some(t) if !params.ignore_eos => &t.eos_ids,
            _ if !params.ignore_eos => &self.model.config.eos_token_ids,
            _ => &[],
        };

        let mut seq = SequenceBlocks::default();
        let result = self.run(
            prompt,
            params,
            tokenizer,
            eos,
            &mut sampler,
            &mut seq,
            &mut on_token,
        );
        seq.release_all(&mut self.alloc);
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn run(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        tokenizer: Option<&Tokenizer>,
        eos: &[u32],
        sampler: &mut Sampler,
        seq: &mut SequenceBlocks,
        on_token: &mut impl FnMut(u32),
    ) -> Result<GenerationOutput> {
        let vocab = self.model.config.vocab_size;
        let mut history = prompt.to_vec();
        let mut output = Vec::new();
        let mut finish = FinishReason::Length;
        let mut text = String::new();
        let mut step_input = prompt.to_vec();
        let started = Instant::now();
        let mut prefill_seconds = 0.0;

        while output.len() < params.max_new_tokens {
            let cached = seq.num_tokens;
            seq.reserve(&mut self.alloc, self.block_size, step_input.len())?;
            let mut batch = ForwardBatch::default();
            batch.push(&step_input, cached, &seq.table, self.block_size, false);
            let logits = self
                .model
                .backend
                .to_host(&self.model.forward(&batch, &mut self.kv)?)?;
            seq.num_tokens += step_input.len();
            if output.is_empty() {
                prefill_seconds = started.elapsed().as_secs_f64();
            }
            let next = sampler.sample(&logits[..vocab], &history)?;
            if eos.contains(&next) {
                finish = FinishReason::Eos;
                break;
            }
            output.push(next);
            history.push(next);
            on_token(next);
            if let (false, Some(tok)) = (params.stop.is_empty(), tokenizer) {
                text = tok.decode(&output, false)?;
                if let Some(cut) = params
                    .stop
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    text.truncate(cut);
                    finish = FinishReason::Stop;
                    break;
                }
            }
            step_input = vec![next];
        }
        let total = started.elapsed().as_secs_f64();
        if finish != FinishReason::Stop {
            text = match tokenizer {
                Some(t) => t.decode(&output, false)?,
                None => String::new(),
            };
        }
        Ok(GenerationOutput {
            prompt_ids: prompt.to_vec(),
            token_ids: output,
            text,
            finish_reason: finish,
            prefill_seconds,
            decode_seconds: total - prefill_seconds,
        })
    }
}
