//! The AsyncThink executor: organizer and workers as sequences of one batching engine.

pub mod config;
mod ended;
pub mod episode;
pub mod modes;
pub mod run;
pub mod svg;

pub use config::ExecutorConfig;
pub use episode::{AgentSpan, EpisodeOutcome, EventKind, TimelineEvent};
pub use modes::{QuestionOutcome, ThinkingMode, run_mode};
pub use run::{Driver, Script, run_episodes};
