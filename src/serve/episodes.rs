//! AsyncThink requests inside the engine loop: each holds an executor `Driver` whose
//! organizers and workers are sequences of the one engine, batched with every other
//! request's. After each engine step the loop hands the step's outputs to every driver; the
//! organizer's new text goes to the client as it decodes, and each finished episode's
//! outcome (answer, graph, metrics) as it ends.

use std::time::Instant;

use tokio::sync::mpsc;

use super::asyncthink_mode::EpisodeJob;
use super::engine_loop::Event;
use crate::Result;
use crate::asyncthink::executor::{Driver, EpisodeOutcome, ExecutorConfig};
use crate::backend::Backend;
use crate::engine::{Engine, SeqId, StepOutput};
use crate::tokenizer::Tokenizer;

/// What one step changed in one episode.
#[derive(Debug, Clone)]
pub struct EpisodeUpdate {
    pub index: usize,
    /// The organizer's new text (its own tokens and the payloads joined into it).
    pub text: String,
    /// Set once, when the episode has ended.
    pub outcome: Option<Box<EpisodeOutcome>>,
}

pub struct EpisodeRequest {
    pub events: mpsc::UnboundedSender<Event>,
    pub arrived: Instant,
    pub first_token: Option<Instant>,
    driver: Driver,
    config: ExecutorConfig,
    /// Bytes of each episode's organizer text already sent.
    sent: Vec<usize>,
    reported: Vec<bool>,
    /// When each episode's last delta was sent.
    last_delta: Vec<Option<Instant>>,
    /// Gaps between consecutive deltas of one episode since the last `take_delta_gaps`.
    delta_gaps: Vec<f64>,
}

impl EpisodeRequest {
    /// Starts the job's episodes; if one cannot start, those that did are ended again.
    pub fn start<B: Backend>(
        engine: &mut Engine<'_, B>,
        tokenizer: &Tokenizer,
        job: &EpisodeJob,
        events: mpsc::UnboundedSender<Event>,
        arrived: Instant,
    ) -> Result<Self> {
        let mut driver = Driver::new(job.seed);
        for _ in 0..job.n {
            if let Err(e) = driver.start(engine, tokenizer, &job.config, &job.question) {
                driver.abort(engine, tokenizer, &job.config, "the request was refused")?;
                return Err(e);
            }
        }
        Ok(EpisodeRequest {
            events,
            arrived,
            first_token: None,
            driver,
            config: job.config.clone(),
            sent: vec![0; job.n],
            reported: vec![false; job.n],
            last_delta: vec![None; job.n],
            delta_gaps: Vec::new(),
        })
    }

    /// Takes in one engine step; returns whether every episode has ended (and been sent).
    pub fn advance<B: Backend>(
        &mut self,
        engine: &mut Engine<'_, B>,
        tokenizer: &Tokenizer,
        outputs: &[StepOutput],
    ) -> Result<bool> {
        if self.first_token.is_none()
            && outputs
                .iter()
                .any(|o| o.token.is_some() && self.driver.owns(o.seq))
        {
            self.first_token = Some(Instant::now());
        }
        // Every step counts toward the episodes' max_steps, ours in it or not, as in
        // `run_episodes`.
        self.driver
            .advance(engine, tokenizer, &self.config, outputs)?;
        self.send_updates();
        Ok(self.driver.is_done())
    }

    /// Ends every unfinished episode with `why`; their outcomes are sent as usual.
    pub fn abort<B: Backend>(
        &mut self,
        engine: &mut Engine<'_, B>,
        tokenizer: &Tokenizer,
        why: &str,
    ) -> Result<()> {
        self.driver.abort(engine, tokenizer, &self.config, why)?;
        self.send_updates();
        Ok(())
    }

    /// Sequences of this request the engine may still run.
    pub fn live_seqs(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.driver.episodes().iter().flat_map(|e| e.live_seqs())
    }

    /// The inter-token latencies a streaming client of this request saw since the last call.
    pub fn take_delta_gaps(&mut self) -> Vec<f64> {
        std::mem::take(&mut self.delta_gaps)
    }

    fn send_updates(&mut self) {
        let now = Instant::now();
        for (i, e) in self.driver.episodes().iter().enumerate() {
            let text = e.context[self.sent[i]..].to_string();
            let outcome =
                (e.done && !self.reported[i]).then(|| Box::new(e.outcome(self.config.capacity)));
            if text.is_empty() && outcome.is_none() {
                continue;
            }
            if !text.is_empty()
                && let Some(prev) = self.last_delta[i].replace(now)
            {
                self.delta_gaps.push((now - prev).as_secs_f64());
            }
            self.sent[i] = e.context.len();
            self.reported[i] |= outcome.is_some();
            let _ = self.events.send(Event::Episode(EpisodeUpdate {
                index: i,
                text,
                outcome,
            }));
        }
    }
}
