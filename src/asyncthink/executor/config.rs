//! What an executor run needs to know besides the model: the pool, the tags, budgets,
//! sampling, and the instructions each role is given.

use crate::asyncthink::protocol::{ProtocolLimits, ProtocolTags};
use crate::asyncthink::traces::{WORKER_INSTRUCTION, organizer_instruction};
use crate::engine::SamplingParams;

#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Agents in the pool, organizer included (at most capacity − 1 workers at once).
    pub capacity: usize,
    pub tags: ProtocolTags,
    /// Parser limits (forks per episode, bytes per tag, bytes per stream).
    pub limits: ProtocolLimits,
    /// Sampling of organizers; `max_new_tokens` is the organizer's token budget.
    pub organizer: SamplingParams,
    /// Sampling of workers; `max_new_tokens` is each worker's token budget.
    pub worker: SamplingParams,
    pub organizer_system: String,
    pub worker_system: String,
    /// Engine steps after which every unfinished episode ends as a failure (never hang).
    pub max_steps: usize,
}

impl ExecutorConfig {
    /// Defaults matching the instructions the cold-start traces were synthesized with.
    pub fn new(capacity: usize) -> Self {
        let tags = ProtocolTags::default();
        let budget = |n| SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            max_new_tokens: n,
            ..Default::default()
        };
        ExecutorConfig {
            capacity,
            organizer_system: organizer_instruction(capacity, &tags),
            worker_system: WORKER_INSTRUCTION.to_string(),
            limits: ProtocolLimits {
                capacity,
                ..ProtocolLimits::default()
            },
            tags,
            organizer: budget(512),
            worker: budget(256),
            max_steps: 4096,
        }
    }

    /// Every literal tag the model writes (indexed ones for workers 1..capacity).
    pub fn tag_strings(&self) -> Vec<String> {
        let t = &self.tags;
        let mut out = vec![
            t.answer_open.clone(),
            t.answer_close.clone(),
            t.return_open.clone(),
            t.return_close.clone(),
        ];
        for i in 1..self.capacity.max(2) {
            for template in [&t.fork_open, &t.fork_close, &t.join_open, &t.join_close] {
                out.push(template.replace("{i}", &i.to_string()));
            }
        }
        out
    }
}
