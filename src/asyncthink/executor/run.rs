//! The executor loop: every episode's organizer and workers are sequences of one engine;
//! each engine step decodes all of them together, and the executor turns the tags they
//! complete into new workers (FORK), paused organizers (JOIN) and injected takeaways.

use std::collections::HashMap;

use super::config::ExecutorConfig;
use super::ended::{Ended, Limits, ended_error};
use super::episode::{
    Agent, AgentRollout, Episode, EpisodeOutcome, EventKind, TimelineEvent, Worker,
};
use crate::asyncthink::protocol::{Event, ProtocolError, StreamParser};
use crate::backend::Backend;
use crate::engine::{Engine, FinishReason, SamplingParams, SeqId, StepOutput};
use crate::tokenizer::{ChatMessage, ChatTemplateOptions, Tokenizer};
use crate::{Error, Result};

/// A scripted policy: texts the organizer and each worker "generate", replayed as forced
/// tokens through the real engine (tests, benchmarks).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub organizer: String,
    pub workers: HashMap<u32, String>,
}

#[derive(Clone, Copy)]
enum Role {
    Organizer,
    Worker(u32),
}

/// The executor between engine steps: its episodes and which engine sequence plays which
/// role in which of them. `run_episodes` drives one to the end on an engine of its own; the
/// server advances one per request, one engine step at a time, beside other requests'
/// sequences in the same batch.
pub struct Driver {
    episodes: Vec<Episode>,
    owner: HashMap<SeqId, (usize, Role)>,
    step: usize,
    seed: u64,
}

/// A driver with what one call needs: the engine, the tokenizer, the settings.
struct Run<'r, 'm, B: Backend> {
    engine: &'r mut Engine<'m, B>,
    tokenizer: &'r Tokenizer,
    cfg: &'r ExecutorConfig,
    scripts: Option<&'r [Script]>,
    d: &'r mut Driver,
}

fn check_config(cfg: &ExecutorConfig) -> Result<()> {
    if cfg.capacity < 1 {
        return Err(Error::InvalidInput(
            "capacity must be at least 1 (the organizer)".into(),
        ));
    }
    for (role, p) in [("organizer", &cfg.organizer), ("worker", &cfg.worker)] {
        p.validate()
            .map_err(|e| Error::InvalidInput(format!("{role} sampling: {e}")))?;
    }
    Ok(())
}

/// Runs one episode per question to the end (answer, format failure, or budget) and
/// returns their outcomes in order. With `scripts`, agents replay those texts instead
/// of sampling.
pub fn run_episodes<B: Backend>(
    engine: &mut Engine<'_, B>,
    tokenizer: &Tokenizer,
    cfg: &ExecutorConfig,
    questions: &[String],
    scripts: Option<&[Script]>,
    seed: u64,
) -> Result<Vec<EpisodeOutcome>> {
    if scripts.is_some_and(|s| s.len() != questions.len()) {
        return Err(Error::InvalidInput("one script per question".into()));
    }
    check_config(cfg)?;
    let mut driver = Driver::new(seed);
    let mut run = Run {
        engine,
        tokenizer,
        cfg,
        scripts,
        d: &mut driver,
    };
    for (i, q) in questions.iter().enumerate() {
        run.start_episode(i, q)?;
    }
    run.drive()?;
    Ok(driver.outcomes(cfg.capacity))
}

impl Driver {
    pub fn new(seed: u64) -> Self {
        Driver {
            episodes: Vec::new(),
            owner: HashMap::new(),
            step: 0,
            seed,
        }
    }

    fn run<'r, 'm, B: Backend>(
        &'r mut self,
        engine: &'r mut Engine<'m, B>,
        tokenizer: &'r Tokenizer,
        cfg: &'r ExecutorConfig,
    ) -> Run<'r, 'm, B> {
        Run {
            engine,
            tokenizer,
            cfg,
            scripts: None,
            d: self,
        }
    }

    /// Starts an episode for `question` (its organizer joins the engine's queue) and
    /// returns its index.
    pub fn start<B: Backend>(
        &mut self,
        engine: &mut Engine<'_, B>,
        tokenizer: &Tokenizer,
        cfg: &ExecutorConfig,
        question: &str,
    ) -> Result<usize> {
        check_config(cfg)?;
        let index = self.episodes.len();
        self.run(engine, tokenizer, cfg)
            .start_episode(index, question)?;
        Ok(index)
    }

    /// Takes in one engine step's outputs (those of other sequences are ignored), then
    /// ends as failures the episodes past `cfg.max_steps` or left with nothing to run.
    pub fn advance<B: Backend>(
        &mut self,
        engine: &mut Engine<'_, B>,
        tokenizer: &Tokenizer,
        cfg: &ExecutorConfig,
        outputs: &[StepOutput],
    ) -> Result<()> {
        let mut run = self.run(engine, tokenizer, cfg);
        run.take_step(outputs)?;
        for i in 0..run.d.episodes.len() {
            if run.d.episodes[i].done {
                continue;
            }
            let why = if run.d.step >= cfg.max_steps {
                "executor steps"
            } else if !run.d.episodes[i]
                .live_seqs()
                .iter()
                .any(|&s| run.is_live(s))
            {
                "runnable sequences"
            } else {
                continue;
            };
            run.fail(
                i,
                ProtocolError::BudgetExceeded {
                    what: why.into(),
                    limit: cfg.max_steps,
                },
            )?;
        }
        Ok(())
    }

    /// Ends every unfinished episode (its client went away, the server shuts down): each
    /// records `why` and its sequences leave the engine, freeing their blocks.
    pub fn abort<B: Backend>(
        &mut self,
        engine: &mut Engine<'_, B>,
        tokenizer: &Tokenizer,
        cfg: &ExecutorConfig,
        why: &str,
    ) -> Result<()> {
        let mut run = self.run(engine, tokenizer, cfg);
        for i in 0..run.d.episodes.len() {
            if !run.d.episodes[i].done {
                run.fail(i, ProtocolError::Aborted { why: why.into() })?;
            }
        }
        Ok(())
    }

    pub fn episodes(&self) -> &[Episode] {
        &self.episodes
    }

    pub fn is_done(&self) -> bool {
        self.episodes.iter().all(|e| e.done)
    }

    pub fn owns(&self, seq: SeqId) -> bool {
        self.owner.contains_key(&seq)
    }

    pub fn outcomes(&self, capacity: usize) -> Vec<EpisodeOutcome> {
        self.episodes.iter().map(|e| e.outcome(capacity)).collect()
    }
}

fn chat(tokenizer: &Tokenizer, system: &str, user: &str) -> Result<Vec<u32>> {
    let msgs = [
        ChatMessage::new("system", system),
        ChatMessage::new("user", user),
    ];
    tokenizer.encode_chat(
        &msgs,
        &ChatTemplateOptions {
            add_generation_prompt: true,
            ..Default::default()
        },
    )
}

impl<B: Backend> Run<'_, '_, B> {
    fn params(&self, base: &SamplingParams, salt: u64, script: Option<&[u32]>) -> SamplingParams {
        let mut p = base.clone();
        p.seed = self.d.seed.wrapping_mul(0x9E37_79B9).wrapping_add(salt);
        if let Some(s) = script {
            // A script ends where its text ends (no free sampling after it), or at the
            // budget if that comes first.
            p.max_new_tokens = p.max_new_tokens.min(s.len());
            p.ignore_eos = true;
        }
        p
    }

    fn start_episode(&mut self, index: usize, question: &str) -> Result<()> {
        let prompt = chat(self.tokenizer, &self.cfg.organizer_system, question)?;
        let script = match self.scripts {
            Some(s) => Some(self.encode_script(&s[index].organizer)?),
            None => None,
        };
        if script.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::InvalidInput(format!(
                "script {index}: the organizer's text is empty"
            )));
        }
        let params = self.params(&self.cfg.organizer, index as u64 * 1000, script.as_deref());
        let seq = self.engine.add_request(prompt, params)?;
        if let Some(s) = &script {
            self.engine.force_tokens(seq, s)?;
        }
        let parser = StreamParser::organizer(&self.cfg.tags, self.cfg.limits.clone())?;
        self.d.owner.insert(seq, (index, Role::Organizer));
        self.d.episodes.push(Episode::new(
            question.to_string(),
            Agent::new(seq, parser, self.d.step),
        ));
        Ok(())
    }

    /// Tokenizes a scripted organizer text in pieces that end right after each JOIN tag,
    /// so a tag never shares a token with the text that follows the injected takeaways.
    fn encode_script(&self, text: &str) -> Result<Vec<u32>> {
        let (prefix, suffix) = self
            .cfg
            .tags
            .join_open
            .split_once("{i}")
            .unwrap_or((self.cfg.tags.join_open.as_str(), ""));
        let mut ids = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(prefix) {
            let after = &rest[start + prefix.len()..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let end = if digits > 0 && after[digits..].starts_with(suffix) {
                start + prefix.len() + digits + suffix.len()
            } else {
                start + prefix.len()
            };
            ids.extend(self.tokenizer.encode(&rest[..end])?);
            rest = &rest[end..];
        }
        ids.extend(self.tokenizer.encode(rest)?);
        Ok(ids)
    }

    fn drive(&mut self) -> Result<()> {
        while self.d.episodes.iter().any(|e| !e.done) {
            if self.d.step >= self.cfg.max_steps || !self.engine.has_unfinished() {
                let why = if self.d.step >= self.cfg.max_steps {
                    "executor steps"
                } else {
                    "runnable sequences"
                };
                for i in 0..self.d.episodes.len() {
                    if !self.d.episodes[i].done {
                        self.fail(
                            i,
                            ProtocolError::BudgetExceeded {
                                what: why.into(),
                                limit: self.cfg.max_steps,
                            },
                        )?;
                    }
                }
                break;
            }
            let outputs = self.engine.step()?;
            self.take_step(&outputs)?;
        }
        Ok(())
    }

    /// One engine step's outputs: tokens to parsers, tags to forks and joins.
    fn take_step(&mut self, outputs: &[StepOutput]) -> Result<()> {
        // A step in which none of an episode's agents produced a token (its prompt still
        // prefilling in a chunk, or every agent waiting) is not a step of its critical
        // path: counting it made η of a lone agent fall below 1.
        let live: Vec<usize> = (0..self.d.episodes.len())
            .filter(|&i| !self.d.episodes[i].done)
            .collect();
        for &i in &live {
            self.d.episodes[i].activity.push(0);
        }
        for out in outputs {
            let Some(&(ep, role)) = self.d.owner.get(&out.seq) else {
                continue;
            };
            if self.d.episodes[ep].done {
                continue;
            }
            if let Some(token) = out.token {
                self.on_token(ep, role, out.seq, token)?;
            }
            // The token may have ended the episode (its answer, or a format error).
            if let (Some(reason), false) = (&out.finish, self.d.episodes[ep].done) {
                self.on_finish(ep, role, reason.clone())?;
            }
        }
        for i in live {
            let activity = &mut self.d.episodes[i].activity;
            if activity.last() == Some(&0) {
                activity.pop();
            }
        }
        self.d.step += 1;
        Ok(())
    }

    fn agent(&mut self, ep: usize, role: Role) -> Option<&mut Agent> {
        let e = &mut self.d.episodes[ep];
        match role {
            Role::Organizer => Some(&mut e.organizer),
            Role::Worker(id) => e.workers.get_mut(&id).map(|w| &mut w.agent),
        }
    }

    fn on_token(&mut self, ep: usize, role: Role, seq: SeqId, _token: u32) -> Result<()> {
        {
            let e = &mut self.d.episodes[ep];
            if let Some(a) = e.activity.last_mut() {
                *a += 1;
            }
            if matches!(role, Role::Organizer) {
                e.latency += 1;
            }
        }
        let tokenizer = self.tokenizer;
        let generated = match self.engine.sequence(seq) {
            Some(s) => s.generated.as_slice(),
            None => &[],
        };
        let Some(agent) = (match role {
            Role::Organizer => Some(&mut self.d.episodes[ep].organizer),
            Role::Worker(id) => self.d.episodes[ep]
                .workers
                .get_mut(&id)
                .map(|w| &mut w.agent),
        }) else {
            return Ok(());
        };
        agent.tokens += 1;
        // "" while a multi-byte character is split across tokens: it waits for its last byte.
        let new = agent.decoder.step(tokenizer, generated)?;
        if new.is_empty() {
            return Ok(());
        }
        agent.text.push_str(&new);
        let events = match agent.parser.push(&new) {
            Ok(ev) => ev,
            Err(e) => return self.fail(ep, e),
        };
        if matches!(role, Role::Organizer) {
            self.d.episodes[ep].context.push_str(&new);
        }
        for event in events {
            if self.d.episodes[ep].done {
                break;
            }
            self.on_event(ep, role, event)?;
        }
        Ok(())
    }

    fn on_event(&mut self, ep: usize, role: Role, event: Event) -> Result<()> {
        let step = self.d.step;
        match (role, event) {
            (Role::Organizer, Event::Fork { id, query, .. }) => self.fork(ep, id, query),
            (Role::Organizer, Event::Join { id, .. }) => {
                let e = &mut self.d.episodes[ep];
                e.waiting_on = Some(id);
                e.events.push(TimelineEvent {
                    kind: EventKind::Join,
                    worker: Some(id),
                    step,
                });
                let org = e.organizer.seq;
                let returned = e.workers.get(&id).is_some_and(|w| w.takeaway.is_some());
                if !self.is_live(org) {
                    // The token that completed the JOIN was the organizer's last: the JOIN
                    // stays pending and the organizer's finish reports it.
                    Ok(())
                } else if returned {
                    self.join(ep, id)
                } else {
                    self.engine.set_paused(org, true)
                }
            }
            (Role::Organizer, Event::Answer { text, .. }) => {
                let e = &mut self.d.episodes[ep];
                e.final_answer = Some(text);
                e.events.push(TimelineEvent {
                    kind: EventKind::Answer,
                    worker: None,
                    step,
                });
                self.end(ep)
            }
            (Role::Worker(id), Event::Return { text, .. }) => {
                let e = &mut self.d.episodes[ep];
                let Some(w) = e.workers.get_mut(&id) else {
                    return Ok(());
                };
                w.takeaway = Some(text);
                w.agent.end_step = Some(step + 1);
                let seq = w.agent.seq;
                self.stop(seq);
                if self.d.episodes[ep].waiting_on == Some(id) {
                    self.join(ep, id)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn fork(&mut self, ep: usize, id: u32, query: String) -> Result<()> {
        let prompt = chat(self.tokenizer, &self.cfg.worker_system, &query)?;
        let script = match self.scripts {
            Some(s) => Some(
                self.tokenizer
                    .encode(s[ep].workers.get(&id).map_or("", String::as_str))?,
            ),
            None => None,
        };
        let salt = ep as u64 * 1000 + id as u64;
        let params = self.params(&self.cfg.worker, salt, script.as_deref());
        if params.max_new_tokens == 0 {
            return self.fail(ep, ProtocolError::MissingReturn);
        }
        // A sub-query the model wrote can make a prompt the engine refuses (longer than
        // the context or the whole KV cache): that is this episode's failure, not the run's.
        let seq = match self.engine.add_request(prompt, params) {
            Ok(seq) => seq,
            Err(e @ (Error::InvalidInput(_) | Error::KvCacheFull(_))) => {
                let msg = e.to_string();
                return self.fail(ep, ProtocolError::WorkerNotStarted { id, msg });
            }
            Err(e) => return Err(e),
        };
        if let Some(s) = &script {
            self.engine.force_tokens(seq, s)?;
        }
        let parser = StreamParser::worker(&self.cfg.tags, self.cfg.limits.clone())?;
        self.d.owner.insert(seq, (ep, Role::Worker(id)));
        let step = self.d.step;
        let e = &mut self.d.episodes[ep];
        e.events.push(TimelineEvent {
            kind: EventKind::Fork,
            worker: Some(id),
            step,
        });
        e.workers.insert(
            id,
            Worker {
                agent: Agent::new(seq, parser, step + 1),
                query,
                fork_latency: e.latency,
                fork_step: step,
                join_step: None,
                takeaway: None,
            },
        );
        Ok(())
    }

    /// Appends worker `id`'s takeaways and the closing tag to the organizer and resumes it.
    fn join(&mut self, ep: usize, id: u32) -> Result<()> {
        let step = self.d.step;
        if !self.is_live(self.d.episodes[ep].organizer.seq) {
            // Left pending: the organizer's finish ends the episode.
            return Ok(());
        }
        let e = &mut self.d.episodes[ep];
        let Some(w) = e.workers.get_mut(&id) else {
            return Ok(());
        };
        let payload = w.takeaway.clone().unwrap_or_default();
        w.join_step = Some(step);
        e.latency = e.latency.max(w.fork_latency + w.agent.tokens);
        let text = match e.organizer.parser.inject_join(id, &payload) {
            Ok(t) => t,
            Err(err) => return self.fail(ep, err),
        };
        e.context.push_str(&text);
        e.waiting_on = None;
        let org = e.organizer.seq;
        let ids = self.tokenizer.encode(&text)?;
        self.engine.append_tokens(org, &ids)?;
        self.engine.set_paused(org, false)
    }

    fn on_finish(&mut self, ep: usize, role: Role, reason: FinishReason) -> Result<()> {
        let step = self.d.step;
        let scripted = self.scripts.is_some();
        let kv_blocks = self.engine.config().num_blocks;
        let max_positions = self.engine.model().config.max_position_embeddings;
        let e = &mut self.d.episodes[ep];
        let (who, agent, tokens) = match role {
            Role::Organizer => (
                Ended::Organizer {
                    waiting_on: e.waiting_on,
                },
                &mut e.organizer,
                self.cfg.organizer.max_new_tokens,
            ),
            Role::Worker(id) => {
                let Some(w) = e.workers.get_mut(&id) else {
                    return Ok(());
                };
                if w.takeaway.is_some() {
                    return Ok(());
                }
                (
                    Ended::Worker(id),
                    &mut w.agent,
                    self.cfg.worker.max_new_tokens,
                )
            }
        };
        agent.end_step = Some(step + 1);
        let limits = Limits {
            generated: agent.tokens,
            tokens,
            max_positions,
            kv_blocks,
            scripted,
        };
        let parser = &mut agent.parser;
        let fallback = match role {
            Role::Organizer => ProtocolError::MissingAnswer,
            Role::Worker(_) => ProtocolError::MissingReturn,
        };
        let err = ended_error(who, &reason, limits, || {
            parser.finish().err().unwrap_or(fallback)
        });
        self.fail(ep, err)
    }

    /// Whether the engine still runs `seq`: it may have finished it inside the last step.
    fn is_live(&self, seq: SeqId) -> bool {
        self.engine
            .sequence(seq)
            .is_some_and(|s| s.finish_reason.is_none())
    }

    /// Ends a sequence (if still running) and keeps what the trainer needs of it.
    fn stop(&mut self, seq: SeqId) {
        // Already finished sequences are fine to "stop" again.
        let _ = self.engine.abort(seq);
        let Some(s) = self.engine.take_finished(seq) else {
            return;
        };
        let Some(&(ep, role)) = self.d.owner.get(&seq) else {
            return;
        };
        if let Some(agent) = self.agent(ep, role) {
            agent.rollout = Some(AgentRollout {
                ids: s.tokens,
                generated: s.generated_positions,
                logprobs: s.logprobs,
            });
        }
    }

    /// Records a format failure and ends the episode.
    fn fail(&mut self, ep: usize, err: ProtocolError) -> Result<()> {
        self.d.episodes[ep].errors.push(err);
        self.end(ep)
    }

    /// Ends the episode: every sequence of it stops and frees its blocks.
    fn end(&mut self, ep: usize) -> Result<()> {
        let step = self.d.step;
        let e = &mut self.d.episodes[ep];
        e.done = true;
        e.wall_seconds = e.started.elapsed().as_secs_f64();
        // Every sequence of the episode, running or already ended by the engine.
        let live: Vec<SeqId> = std::iter::once(e.organizer.seq)
            .chain(e.workers.values().map(|w| w.agent.seq))
            .filter(|s| e.live_seqs().contains(s) || self.engine.sequence(*s).is_some())
            .collect();
        if e.organizer.end_step.is_none() {
            e.organizer.end_step = Some(step + 1);
        }
        for w in e.workers.values_mut() {
            if w.agent.end_step.is_none() {
                w.agent.end_step = Some(step + 1);
            }
        }
        for seq in live {
            self.stop(seq);
        }
        Ok(())
    }
}
