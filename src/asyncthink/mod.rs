//! AsyncThink: the organizer/worker protocol, episode records and cold-start traces.

pub mod protocol;
