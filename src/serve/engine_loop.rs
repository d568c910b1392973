//! The one thread that owns the engine. Requests arrive over a channel; every step serves
//! all live sequences of all clients (continuous batching); each choice's tokens and text
//! go back over its request's own channel. A request whose receiver is gone (the client
//! disconnected) has its sequences aborted before the next step, so its blocks return to
//! the pool at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::asyncthink_mode::EpisodeJob;
use super::episodes::{EpisodeRequest, EpisodeUpdate};
use super::error::ApiError;
use super::metrics::{Metrics, Outcome};
use super::stream_text::StreamText;
use crate::backend::Backend;
use crate::engine::sequence::Status;
use crate::engine::{Engine, FinishReason, SamplingParams, SeqId, StepOutput};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What one step produced for one choice.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    pub index: usize,
    /// Text safe to send (never past a stop string).
    pub text: String,
    /// Tokens sampled this step with their log-probs (a final eos is left out).
    pub tokens: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
}

/// One sampled token as a response reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    pub logprob: f32,
    /// The request's top alternatives (`Sequence::top_logprobs`); empty when it asked for none.
    pub top: Vec<(u32, f32)>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Update(Update),
    /// An AsyncThink episode's progress (the `asyncthink` request mode).
    Episode(EpisodeUpdate),
    /// The engine failed; the request is over.
    Failed(String),
}

pub struct Submission {
    pub prompt: Vec<u32>,
    /// One sequence per entry.
    pub choices: Vec<SamplingParams>,
    pub events: mpsc::UnboundedSender<Event>,
    /// Run `choices.len()` AsyncThink episodes instead (`prompt` is then unused).
    pub asyncthink: Option<Box<EpisodeJob>>,
    /// Answered once the engine took the request (or refused it).
    pub accepted: oneshot::Sender<std::result::Result<(), ApiError>>,
    pub arrived: Instant,
}

pub enum Command {
    Submit(Submission),
    /// Refuse new requests; abort what is still running after `grace`.
    Shutdown {
        grace: Duration,
    },
}

/// The engine's state when the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    pub num_blocks: usize,
    pub free_blocks: usize,
    /// Requests aborted because the grace period ran out.
    pub aborted: usize,
    /// `Engine::check_invariants`' verdict.
    pub invariants: std::result::Result<(), String>,
}

impl ShutdownReport {
    pub fn is_clean(&self) -> bool {
        self.free_blocks == self.num_blocks && self.invariants.is_ok()
    }
}

struct Request {
    events: mpsc::UnboundedSender<Event>,
    seqs: Vec<SeqId>,
    open: usize,
}

struct Choice {
    request: u64,
    index: usize,
    text: StreamText,
    stop: Vec<String>,
    arrived: Instant,
    last_token: Option<Instant>,
    /// Tokens and text not sent yet (`--stream-interval` > 1).
    held: Option<Update>,
    /// An update has gone out.
    sent: bool,
}

struct Loop<'e, 'm, B: Backend> {
    engine: &'e mut Engine<'m, B>,
    tokenizer: &'m Tokenizer,
    metrics: Arc<Mutex<Metrics>>,
    requests: HashMap<u64, Request>,
    choices: HashMap<SeqId, Choice>,
    /// AsyncThink requests, in the same id space as `requests`.
    episodes: HashMap<u64, EpisodeRequest>,
    next_request: u64,
    deadline: Option<Instant>,
    aborted_at_shutdown: usize,
    /// Send a choice's update once this many tokens are pending (the first and the last at
    /// once): fewer chunks for the HTTP side to frame and write, at coarser inter-token
    /// timing. vLLM's `--stream-interval`.
    stream_interval: usize,
}

/// Runs until shutdown (or every sender is gone) and no request is live.
pub fn run<'m, B: Backend>(
    engine: &mut Engine<'m, B>,
    tokenizer: &'m Tokenizer,
    mut commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<Mutex<Metrics>>,
    stream_interval: usize,
) -> Result<ShutdownReport> {
    let mut lp = Loop {
        engine,
        tokenizer,
        metrics,
        requests: HashMap::new(),
        choices: HashMap::new(),
        episodes: HashMap::new(),
        next_request: 0,
        deadline: None,
        aborted_at_shutdown: 0,
        stream_interval: stream_interval.max(1),
    };
    lp.publish();
    loop {
        // Take in what arrived: block only when there is nothing to run.
        if lp.requests.is_empty() && lp.episodes.is_empty() {
            if lp.deadline.is_some() {
                break;
            }
            match commands.blocking_recv() {
                Some(c) => lp.command(c),
                None => break,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(c) => lp.command(c),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    lp.command(Command::Shutdown {
                        grace: Duration::ZERO,
                    });
                    break;
                }
            }
        }
        lp.drop_disconnected();
        if lp.deadline.is_some_and(|d| Instant::now() >= d) {
            lp.abort_all();
        }
        if lp.engine.has_unfinished() {
            match lp.engine.step() {
                Ok(outputs) => {
                    lp.dispatch(&outputs)?;
                    lp.advance_episodes(&outputs);
                }
                Err(e) => lp.fail_all(&e),
            }
        } else if !lp.episodes.is_empty() {
            // Nothing left to run yet an episode is open: its driver ends it as stuck.
            lp.advance_episodes(&[]);
        }
        lp.publish();
    }
    let report = ShutdownReport {
        num_blocks: lp.engine.config().num_blocks,
        free_blocks: lp.engine.num_free_blocks(),
        aborted: lp.aborted_at_shutdown,
        invariants: lp.engine.check_invariants(),
    };
    Ok(report)
}

impl<B: Backend> Loop<'_, '_, B> {
    fn command(&mut self, c: Command) {
        match c {
            Command::Shutdown { grace } => {
                let d = Instant::now() + grace;
                self.deadline = Some(self.deadline.map_or(d, |old| old.min(d)));
            }
            Command::Submit(s) => {
                if self.deadline.is_some() {
                    let _ = s.accepted.send(Err(ApiError::shutting_down()));
                    return;
                }
                let answer = self.admit(&s);
                let ok = answer.is_ok();
                if s.accepted.send(answer).is_err() && ok {
                    // The handler is gone already: the next disconnect sweep aborts it.
                }
            }
        }
    }

    fn admit(&mut self, s: &Submission) -> std::result::Result<(), ApiError> {
        let id = self.next_request;
        if let Some(job) = &s.asyncthink {
            let started = EpisodeRequest::start(
                self.engine,
                self.tokenizer,
                job,
                s.events.clone(),
                s.arrived,
            )
            .map_err(refusal)?;
            self.next_request += 1;
            self.episodes.insert(id, started);
            return Ok(());
        }
        let mut seqs = Vec::new();
        for (index, params) in s.choices.iter().enumerate() {
            match self.engine.add_request(s.prompt.clone(), params.clone()) {
                Ok(seq) => {
                    seqs.push(seq);
                    self.choices.insert(
                        seq,
                        Choice {
                            request: id,
                            index,
                            text: StreamText::default(),
                            stop: params.stop.clone(),
                            arrived: s.arrived,
                            last_token: None,
                            held: None,
                            sent: false,
                        },
                    );
                }
                Err(e) => {
                    for seq in seqs {
                        self.forget(seq);
                    }
                    return Err(refusal(e));
                }
            }
        }
        self.next_request += 1;
        self.requests.insert(
            id,
            Request {
                events: s.events.clone(),
                open: seqs.len(),
                seqs,
            },
        );
        Ok(())
    }

    /// Aborts `seq` if it still runs and drops it from the engine and from `choices`.
    fn forget(&mut self, seq: SeqId) {
        let _ = self.engine.abort(seq);
        let _ = self.engine.take_finished(seq);
        self.choices.remove(&seq);
    }

    fn end_request(&mut self, id: u64, outcome: Outcome) {
        if let Some(r) = self.requests.remove(&id) {
            for seq in r.seqs {
                self.forget(seq);
            }
            lock(&self.metrics).count(outcome);
        }
    }

    fn drop_disconnected(&mut self) {
        for id in closed(&self.requests, |r| &r.events) {
            self.end_request(id, Outcome::Disconnected);
        }
        for id in closed(&self.episodes, |r| &r.events) {
            self.end_episodes(id, "the client disconnected", Outcome::Disconnected);
        }
    }

    /// Ends AsyncThink request `id`'s open episodes with `why` (their outcomes are sent) and
    /// drops it; its sequences leave the engine.
    fn end_episodes(&mut self, id: u64, why: &str, outcome: Outcome) {
        if let Some(mut r) = self.episodes.remove(&id) {
            if let Err(e) = r.abort(self.engine, self.tokenizer, why) {
                let _ = r
                    .events
                    .send(Event::Failed(format!("ending the episodes failed: {e}")));
            }
            let mut m = lock(&self.metrics);
            for gap in r.take_delta_gaps() {
                m.episode_itl.observe(gap);
            }
            m.count(outcome);
        }
    }

    /// One engine step's outputs to every AsyncThink request; those whose episodes have all
    /// ended are done. A failure is that request's alone.
    fn advance_episodes(&mut self, outputs: &[StepOutput]) {
        let ids: Vec<u64> = self.episodes.keys().copied().collect();
        for id in ids {
            let Some(r) = self.episodes.get_mut(&id) else {
                continue;
            };
            let had_token = r.first_token.is_some();
            match r.advance(self.engine, self.tokenizer, outputs) {
                Ok(done) => {
                    let mut m = lock(&self.metrics);
                    if let (false, Some(t)) = (had_token, r.first_token) {
                        m.ttft.observe((t - r.arrived).as_secs_f64());
                    }
                    for gap in r.take_delta_gaps() {
                        m.episode_itl.observe(gap);
                    }
                    if done {
                        m.count(Outcome::Completed);
                        drop(m);
                        self.episodes.remove(&id);
                    }
                }
                Err(e) => {
                    let _ = r
                        .events
                        .send(Event::Failed(format!("the executor failed: {e}")));
                    self.end_episodes(id, "the executor failed", Outcome::Failed);
                }
            }
        }
    }

    /// The grace period is over: every live choice ends as aborted.
    fn abort_all(&mut self) {
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.requests.get(&id) {
                for &seq in &r.seqs {
                    if let Some(c) = self.choices.get_mut(&seq) {
                        // What was held back still goes out, with the abort.
                        let held = c.held.take();
                        let _ = r.events.send(Event::Update(Update {
                            index: c.index,
                            text: held.as_ref().map(|h| h.text.clone()).unwrap_or_default(),
                            tokens: held.map(|h| h.tokens).unwrap_or_default(),
                            finish: Some(FinishReason::Aborted),
                        }));
                    }
                }
            }
            self.aborted_at_shutdown += 1;
            self.end_request(id, Outcome::ShutdownAborted);
        }
        let ids: Vec<u64> = self.episodes.keys().copied().collect();
        for id in ids {
            self.aborted_at_shutdown += 1;
            self.end_episodes(id, "the server shut down", Outcome::ShutdownAborted);
        }
    }

    fn fail_all(&mut self, e: &Error) {
        let ids: Vec<u64> = self.requests.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.requests.get(&id) {
                let _ = r
                    .events
                    .send(Event::Failed(format!("engine step failed: {e}")));
            }
            self.end_request(id, Outcome::Failed);
        }
        let ids: Vec<u64> = self.episodes.keys().copied().collect();
        for id in ids {
            if let Some(r) = self.episodes.get(&id) {
                let _ = r
                    .events
                    .send(Event::Failed(format!("engine step failed: {e}")));
            }
            self.end_episodes(id, "the engine step failed", Outcome::Failed);
        }
    }

    fn dispatch(&mut self, outputs: &[StepOutput]) -> Result<()> {
        let now = Instant::now();
        let mut failed: Vec<(u64, String)> = Vec::new();
        for out in outputs {
            let Some(choice) = self.choices.get_mut(&out.seq) else {
                continue;
            };
            let Some(seq) = self.engine.sequence(out.seq) else {
                continue;
            };
            let finished = out.finish.is_some();
            let ids = if finished {
                seq.output_ids()
            } else {
                &seq.generated[..]
            };
            let mut tokens = Vec::new();
            if let Some(t) = out.token {
                let mut m = lock(&self.metrics);
                match choice.last_token {
                    None => m.ttft.observe((now - choice.arrived).as_secs_f64()),
                    Some(prev) => m.itl.observe((now - prev).as_secs_f64()),
                }
                choice.last_token = Some(now);
                if out.finish != Some(FinishReason::Eos) {
                    tokens.push(TokenLogprob {
                        id: t,
                        logprob: seq.logprobs.last().copied().unwrap_or(0.0),
                        top: seq.top_logprobs.last().cloned().unwrap_or_default(),
                    });
                }
            }
            // A decoding failure is this request's alone: it ends with the error and the
            // engine goes on serving everyone else.
            let text = match choice
                .text
                .push(self.tokenizer, ids, &choice.stop, finished)
            {
                Ok(text) => text,
                Err(e) => {
                    failed.push((choice.request, e.to_string()));
                    continue;
                }
            };
            let (request, index) = (choice.request, choice.index);
            let Some(r) = self.requests.get_mut(&request) else {
                continue;
            };
            let mut update = choice.held.take().unwrap_or(Update {
                index,
                text: String::new(),
                tokens: Vec::new(),
                finish: None,
            });
            update.text.push_str(&text);
            update.tokens.extend(tokens);
            update.finish = out.finish.clone();
            // The first token goes at once, so TTFT is not delayed by the interval.
            if finished || !choice.sent || update.tokens.len() >= self.stream_interval {
                choice.sent = true;
                let _ = r.events.send(Event::Update(update));
            } else {
                choice.held = Some(update);
            }
            if finished {
                r.open -= 1;
                let _ = self.engine.take_finished(out.seq);
                self.choices.remove(&out.seq);
                if r.open == 0 {
                    self.end_request(request, Outcome::Completed);
                }
            }
        }
        for (request, e) in failed {
            if let Some(r) = self.requests.get(&request) {
                let _ = r
                    .events
                    .send(Event::Failed(format!("decoding the output failed: {e}")));
            }
            self.end_request(request, Outcome::Failed);
        }
        Ok(())
    }

    /// The gauges /metrics shows, after every step.
    fn publish(&self) {
        let (mut running, mut waiting) = (0, 0);
        let episode_seqs = self.episodes.values().flat_map(EpisodeRequest::live_seqs);
        for seq in self.choices.keys().copied().chain(episode_seqs) {
            match self.engine.sequence(seq).map(|s| s.status) {
                Some(Status::Running) => running += 1,
                Some(Status::Waiting) => waiting += 1,
                _ => {}
            }
        }
        let s = &self.engine.stats;
        let mut m = lock(&self.metrics);
        m.running_seqs = running;
        m.waiting_seqs = waiting;
        m.live_requests = self.requests.len() + self.episodes.len();
        m.kv_blocks_total = self.engine.config().num_blocks;
        m.kv_blocks_free = self.engine.num_free_blocks();
        m.prefix_cache_hit_rate = s.prefix_hit_rate();
        m.preemptions = s.preemptions;
        m.prompt_tokens = s.prompt_tokens;
        m.generated_tokens = s.generated_tokens;
        m.engine_steps = s.steps;
    }
}

/// Ids of the requests whose client has gone (its event receiver dropped).
fn closed<R>(
    requests: &HashMap<u64, R>,
    events: impl Fn(&R) -> &mpsc::UnboundedSender<Event>,
) -> Vec<u64> {
    requests
        .iter()
        .filter(|(_, r)| events(r).is_closed())
        .map(|(&id, _)| id)
        .collect()
}

/// An engine refusal of a request's prompt as the client's 400; anything else is ours.
fn refusal(e: Error) -> ApiError {
    match e {
        Error::InvalidInput(m) | Error::KvCacheFull(m) => ApiError::invalid("prompt", m),
        other => ApiError::internal(other.to_string()),
    }
}

/// The metrics lock; a panic elsewhere while holding it leaves plain counters, still usable.
pub fn lock(m: &Mutex<Metrics>) -> std::sync::MutexGuard<'_, Metrics> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
