//! AsyncThink: the organizer/worker protocol, episode records and cold-start traces.

pub mod episode;
pub mod executor;
pub mod protocol;
pub mod traces;
