//! The AsyncThink executor: organizer and workers as sequences of one batching engine.

pub mod config;
pub mod episode;
pub mod run;

pub use config::ExecutorConfig;
pub use episode::{AgentSpan, EpisodeOutcome, EventKind, TimelineEvent};
pub use run::{Script, run_episodes};
