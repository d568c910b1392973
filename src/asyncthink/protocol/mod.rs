//! The organizer/worker protocol: tag strings, the incremental parser the executor drives
//! while decoding, and the offline validator for whole traces (see docs/protocol.md).

mod differential;
mod parser;
mod tags;
mod validate;

pub use differential::check_incremental_agrees_with_offline;
pub use parser::{Mode, StreamParser};
pub use tags::{INDEX_PLACEHOLDER, ProtocolTags, TagKind};
pub use validate::{JoinOrder, OrganizerTrace, WorkerTrace, validate_organizer, validate_worker};

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// Which side of the protocol a text stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Organizer,
    Worker,
}

/// Limits that keep one runaway episode from eating the pool; exceeding any is a format error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtocolLimits {
    /// Agents in the pool, organizer included: at most `capacity - 1` active workers.
    pub capacity: usize,
    /// Forks per organizer episode.
    pub max_forks: usize,
    /// Bytes inside one tag pair (a sub-query, an answer, a return, a join payload).
    pub max_tag_bytes: usize,
    /// Bytes of the whole stream, injected payloads included.
    pub max_total_bytes: usize,
}

impl Default for ProtocolLimits {
    fn default() -> Self {
        Self {
            capacity: 4,
            max_forks: 32,
            max_tag_bytes: 16 * 1024,
            max_total_bytes: 1 << 20,
        }
    }
}

impl ProtocolLimits {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }
}

/// What the parser reports the moment a tag completes. Spans are byte ranges in the
/// full stream (model text plus injected payloads).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// `<FORK-i>query</FORK-i>` completed; span covers both tags.
    Fork {
        id: u32,
        query: String,
        span: Range<usize>,
    },
    /// `<JOIN-i>` completed; the organizer now waits for worker `i`.
    Join { id: u32, span: Range<usize> },
    /// Executor-inserted text after `<JOIN-i>`: the payload and the closing `</JOIN-i>`.
    /// The span covers both, since neither was written by the model.
    JoinPayload {
        id: u32,
        payload: String,
        span: Range<usize>,
    },
    /// `<ANSWER>text</ANSWER>` completed.
    Answer { text: String, span: Range<usize> },
    /// `<RETURN>text</RETURN>` completed (workers).
    Return { text: String, span: Range<usize> },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ProtocolError {
    #[error("invalid tag set: {0}")]
    InvalidTags(String),
    #[error("worker {id} forked twice")]
    DuplicateFork { id: u32 },
    #[error("fork of worker {id} while {active} workers are active (capacity {capacity})")]
    CapacityExceeded {
        id: u32,
        active: usize,
        capacity: usize,
    },
    #[error("join of worker {id}, which was never forked")]
    JoinUnknown { id: u32 },
    #[error("worker {id} joined twice")]
    JoinTwice { id: u32 },
    #[error("organizer stopped without a final answer")]
    MissingAnswer,
    #[error("worker stopped without a return")]
    MissingReturn,
    #[error("unclosed tag {tag}")]
    UnclosedTag { tag: String },
    /// Where the stray text starts (a stream byte offset) and its first character: both
    /// are the same however the stream was chunked, unlike an excerpt.
    #[error("text after the final tag at byte {at}, starting with {first:?}")]
    TextAfterFinal { at: usize, first: char },
    #[error("tag {inner} inside {outer}")]
    Nesting { outer: String, inner: String },
    #[error("{role:?} may not write {tag}")]
    ForbiddenTag { role: Role, tag: String },
    #[error("closing tag {tag} without an open tag")]
    UnexpectedClose { tag: String },
    #[error("{found} does not close {expected}")]
    MismatchedClose { expected: String, found: String },
    #[error("malformed tag {text:?}")]
    MalformedTag { text: String },
    #[error("final answer while workers {ids:?} were never joined")]
    UnjoinedForks { ids: Vec<u32> },
    #[error("budget exceeded: {what} (limit {limit})")]
    BudgetExceeded { what: String, limit: usize },
    /// The engine ended the organizer (a stop string, end-of-sequence, an abort) on or
    /// after the token that completed `<JOIN-id>`, before the payload could be injected.
    #[error("organizer ended ({reason}) while waiting on JOIN-{id}")]
    EndedBeforeJoin { id: u32, reason: String },
    /// The engine refused worker `id`'s prompt (longer than the context or the KV cache).
    #[error(
        "the {who}'s logits went NaN or infinite: a numeric failure of the model, not of the format"
    )]
    NonFiniteLogits { who: String },
    #[error("worker {id} could not start: {msg}")]
    WorkerNotStarted { id: u32, msg: String },
    #[error("model text after JOIN-{id} before the executor injected the payload")]
    TextWhileAwaitingJoin { id: u32 },
    #[error("executor injected a payload for worker {got} but the parser waits for {expected:?}")]
    UnexpectedInjection { expected: Option<u32>, got: u32 },
    /// Ended from outside before it finished (a server's client went away, shutdown).
    #[error("aborted: {why}")]
    Aborted { why: String },
}
