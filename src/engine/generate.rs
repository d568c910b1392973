//! The simplest use of the engine: one prompt, run to completion, with timing.

use std::time::Instant;

use serde::Serialize;

use super::engine::Engine;
use super::sampling::SamplingParams;
use super::sequence::FinishReason;
use crate::backend::Backend;
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct GenerationOutput {
    pub prompt_ids: Vec<u32>,
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish_reason: FinishReason,
    /// Until the first token was sampled.
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

impl<B: Backend> Engine<'_, B> {
    /// Runs one request to completion; `on_token` sees each sampled id (streaming).
    pub fn generate(
        &mut self,
        prompt: &[u32],
        params: &SamplingParams,
        mut on_token: impl FnMut(u32),
    ) -> Result<GenerationOutput> {
        if self.has_unfinished() {
            return Err(Error::InvalidInput("generate needs an idle engine".into()));
        }
        let started = Instant::now();
        let id = self.add_request(prompt.to_vec(), params.clone())?;
        let mut first_token_at = None;
        while self.has_unfinished() {
            for out in self.step()? {
                if let Some(t) = out.token {
                    first_token_at.get_or_insert_with(|| started.elapsed().as_secs_f64());
                    on_token(t);
                }
            }
        }
        let total = started.elapsed().as_secs_f64();
        let seq = self
            .take_finished(id)
            .ok_or_else(|| Error::InvalidInput(format!("sequence {id} vanished")))?;
        if let Some(e) = seq.error {
            return Err(Error::NonFinite(e));
        }
        let text = match self.tokenizer {
            Some(t) => seq.output_text(t)?,
            None => String::new(),
        };
        let prefill_seconds = first_token_at.unwrap_or(total);
        Ok(GenerationOutput {
            prompt_ids: prompt.to_vec(),
            token_ids: seq.output_ids().to_vec(),
            text,
            finish_reason: seq.finish_reason.unwrap_or(FinishReason::Length),
            prefill_seconds,
            decode_seconds: total - prefill_seconds,
        })
    }
}
