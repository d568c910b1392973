//! One question's organizer and workers while they run, and what they leave behind.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::asyncthink::episode::{EpisodeRecord, WorkerRecord, logical_concurrency};
use crate::asyncthink::protocol::{ProtocolError, StreamParser};
use crate::engine::SeqId;
use crate::tokenizer::IncrementalDecoder;

/// What a policy-gradient trainer needs of one finished sequence.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRollout {
    /// Prompt, generated and injected tokens in context order.
    pub ids: Vec<u32>,
    /// Indices into `ids` of the tokens the model sampled.
    pub generated: Vec<usize>,
    /// The sampler's log-prob of each of them.
    pub logprobs: Vec<f32>,
}

/// A sequence of the engine playing one role, and the text the parser has seen from it.
pub struct Agent {
    pub seq: SeqId,
    pub parser: StreamParser,
    /// Model-written text so far (decoded generated tokens).
    pub text: String,
    pub decoder: IncrementalDecoder,
    pub tokens: usize,
    pub start_step: usize,
    pub end_step: Option<usize>,
    /// Filled when the sequence leaves the engine.
    pub rollout: Option<AgentRollout>,
}

impl Agent {
    pub fn new(seq: SeqId, parser: StreamParser, start_step: usize) -> Self {
        Agent {
            seq,
            parser,
            text: String::new(),
            decoder: IncrementalDecoder::new(),
            tokens: 0,
            start_step,
            end_step: None,
            rollout: None,
        }
    }
}

pub struct Worker {
    pub agent: Agent,
    pub query: String,
    /// The organizer's critical-path latency when the fork completed.
    pub fork_latency: usize,
    pub fork_step: usize,
    pub join_step: Option<usize>,
    /// The RETURN content, once written.
    pub takeaway: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Fork,
    Join,
    Answer,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEvent {
    pub kind: EventKind,
    pub worker: Option<u32>,
    pub step: usize,
}

pub struct Episode {
    pub question: String,
    pub organizer: Agent,
    pub workers: BTreeMap<u32, Worker>,
    pub waiting_on: Option<u32>,
    /// The organizer's context after its prompt: its own text and the inserted payloads.
    pub context: String,
    pub errors: Vec<ProtocolError>,
    pub final_answer: Option<String>,
    pub done: bool,
    /// Critical-path latency in tokens so far (the paper's count: a JOIN-k completes at the
    /// later of the organizer's own position and FORK-k's position plus worker k's length).
    pub latency: usize,
    /// Agents of this episode that produced a token at each step since it started.
    pub activity: Vec<usize>,
    pub events: Vec<TimelineEvent>,
    pub started: std::time::Instant,
    pub wall_seconds: f64,
}

/// A finished episode: the record rewards read, plus timing and the graph.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeOutcome {
    pub question: String,
    pub record: EpisodeRecord,
    /// Critical-path latency in generated tokens.
    pub critical_path_tokens: usize,
    pub wall_seconds: f64,
    pub total_tokens: usize,
    pub forks: usize,
    /// η / c.
    pub concurrency_ratio: f64,
    pub organizer: AgentSpan,
    pub workers: Vec<AgentSpan>,
    pub events: Vec<TimelineEvent>,
    /// Organizer first, then workers by id: the unit GRPO trains with one advantage.
    #[serde(skip)]
    pub rollouts: Vec<AgentRollout>,
}

/// An agent's lane in the timeline: the steps it ran and the tokens it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentSpan {
    pub worker: Option<u32>,
    pub start_step: usize,
    pub end_step: usize,
    pub tokens: usize,
}

impl Episode {
    pub fn new(question: String, organizer: Agent) -> Self {
        Episode {
            question,
            organizer,
            workers: BTreeMap::new(),
            waiting_on: None,
            context: String::new(),
            errors: Vec::new(),
            final_answer: None,
            done: false,
            latency: 0,
            activity: Vec::new(),
            events: Vec::new(),
            started: std::time::Instant::now(),
            wall_seconds: 0.0,
        }
    }

    /// Sequences of this episode the engine may still be running.
    pub fn live_seqs(&self) -> Vec<SeqId> {
        let mut out = Vec::new();
        if self.organizer.end_step.is_none() {
            out.push(self.organizer.seq);
        }
        out.extend(
            self.workers
                .values()
                .filter(|w| w.agent.end_step.is_none())
                .map(|w| w.agent.seq),
        );
        out
    }

    pub fn outcome(&self, capacity: usize) -> EpisodeOutcome {
        let end = |a: &Agent| a.end_step.unwrap_or(a.start_step + self.activity.len());
        let start = self.organizer.start_step;
        let total_tokens =
            self.organizer.tokens + self.workers.values().map(|w| w.agent.tokens).sum::<usize>();
        let eta = logical_concurrency(total_tokens, self.latency);
        let workers: Vec<WorkerRecord> = self
            .workers
            .iter()
            .map(|(&id, w)| WorkerRecord {
                id,
                query: w.query.clone(),
                output: w.agent.text.clone(),
                takeaways: w.takeaway.clone(),
                start_step: w.agent.start_step - start,
                end_step: end(&w.agent) - start,
            })
            .collect();
        let record = EpisodeRecord {
            organizer_text: self.context.clone(),
            final_answer: self.final_answer.clone(),
            workers,
            format_errors: self.errors.clone(),
            concurrency: eta,
            capacity,
            wall_clock_steps: self.activity.len(),
        };
        let span = |a: &Agent, worker| AgentSpan {
            worker,
            start_step: a.start_step - start,
            end_step: end(a) - start,
            tokens: a.tokens,
        };
        EpisodeOutcome {
            question: self.question.clone(),
            critical_path_tokens: self.latency,
            wall_seconds: self.wall_seconds,
            total_tokens,
            forks: self.workers.len(),
            concurrency_ratio: eta / capacity.max(1) as f64,
            organizer: span(&self.organizer, None),
            workers: self
                .workers
                .iter()
                .map(|(&id, w)| span(&w.agent, Some(id)))
                .collect(),
            events: self
                .events
                .iter()
                .map(|e| TimelineEvent {
                    step: e.step - start,
                    ..e.clone()
                })
                .collect(),
            rollouts: std::iter::once(&self.organizer)
                .chain(self.workers.values().map(|w| &w.agent))
                .filter_map(|a| a.rollout.clone())
                .collect(),
            record,
        }
    }
}
