//! Offline validation of whole traces (SFT data, logged episodes), driven through the same
//! [`StreamParser`] as live decoding so the two can never disagree on what is valid.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{Event, Mode, ProtocolError, ProtocolLimits, ProtocolTags, Role, StreamParser};

/// A valid organizer trace and its fork/join structure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrganizerTrace {
    pub events: Vec<Event>,
    pub answer: String,
    /// `(id, sub-query)` in fork order.
    pub forks: Vec<(u32, String)>,
    pub join_order: Vec<u32>,
    /// Executor-inserted text (payload + `</JOIN-i>`), as byte ranges of the trace.
    pub inserted_byte_spans: Vec<Range<usize>>,
    /// The same ranges counted in Unicode scalar values (Python string indices).
    pub inserted_char_spans: Vec<Range<usize>>,
    /// Most workers active at once.
    pub max_active: usize,
    /// Joins preceded by organizer thinking written while that worker was running:
    /// non-whitespace organizer text between the worker's fork and its join that is not
    /// a tag or a payload.
    pub overlapped_joins: usize,
}

/// How the joins are ordered relative to the forks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum JoinOrder {
    /// No forks: sequential thinking.
    None,
    /// One fork.
    Single,
    /// Joined in fork order.
    Fifo,
    /// Joined in reverse fork order.
    Lifo,
    /// Anything else.
    Mixed,
}

impl OrganizerTrace {
    pub fn join_order_kind(&self) -> JoinOrder {
        let forked: Vec<u32> = self.forks.iter().map(|(id, _)| *id).collect();
        match forked.len() {
            0 => JoinOrder::None,
            1 => JoinOrder::Single,
            _ if self.join_order == forked => JoinOrder::Fifo,
            _ if self.join_order.iter().eq(forked.iter().rev()) => JoinOrder::Lifo,
            _ => JoinOrder::Mixed,
        }
    }

    /// True when some fork comes after some join (forks and joins interleave rather than
    /// all forks first, then all joins).
    pub fn interleaved(&self) -> bool {
        let mut joined = false;
        for e in &self.events {
            match e {
                Event::Join { .. } => joined = true,
                Event::Fork { .. } if joined => return true,
                _ => {}
            }
        }
        false
    }
}

/// A valid worker trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTrace {
    pub takeaways: String,
    pub span: Range<usize>,
}

/// Validates a finished organizer trace that includes the executor's join payloads.
pub fn validate_organizer(
    text: &str,
    tags: &ProtocolTags,
    limits: ProtocolLimits,
) -> Result<OrganizerTrace, ProtocolError> {
    let mut p = StreamParser::new(tags, limits, Role::Organizer, Mode::Transcript)?;
    let events = p.push(text)?;
    p.finish()?;

    let mut forks = Vec::new();
    let mut join_order = Vec::new();
    let mut answer = String::new();
    let mut inserted_byte_spans = Vec::new();
    let mut active = 0usize;
    let mut max_active = 0usize;
    let mut overlapped_joins = 0usize;
    // Whether the organizer wrote thinking since each active worker was forked.
    let mut thought_since: Vec<(u32, bool)> = Vec::new();
    let mut last_end = 0usize;
    for e in &events {
        let start = event_start(e);
        let gap = text.get(last_end..start).unwrap_or("");
        if !gap.trim().is_empty() {
            for (_, t) in thought_since.iter_mut() {
                *t = true;
            }
        }
        match e {
            Event::Fork { id, query, span } => {
                forks.push((*id, query.clone()));
                active += 1;
                max_active = max_active.max(active);
                thought_since.push((*id, false));
                last_end = span.end;
            }
            Event::Join { id, span } => {
                join_order.push(*id);
                active = active.saturating_sub(1);
                if let Some(pos) = thought_since.iter().position(|(w, _)| w == id) {
                    if thought_since[pos].1 {
                        overlapped_joins += 1;
                    }
                    thought_since.remove(pos);
                }
                last_end = span.end;
            }
            Event::JoinPayload { span, .. } => {
                inserted_byte_spans.push(span.clone());
                last_end = span.end;
            }
            Event::Answer { text: a, span } => {
                answer = a.clone();
                last_end = span.end;
            }
            Event::Return { span, .. } => last_end = span.end,
        }
    }
    let inserted_char_spans = inserted_byte_spans
        .iter()
        .map(|r| char_index(text, r.start)..char_index(text, r.end))
        .collect();
    Ok(OrganizerTrace {
        events,
        answer,
        forks,
        join_order,
        inserted_byte_spans,
        inserted_char_spans,
        max_active,
        overlapped_joins,
    })
}

/// Validates a finished worker trace (thinking, then `<RETURN>…</RETURN>`).
pub fn validate_worker(
    text: &str,
    tags: &ProtocolTags,
    limits: ProtocolLimits,
) -> Result<WorkerTrace, ProtocolError> {
    let mut p = StreamParser::new(tags, limits, Role::Worker, Mode::Transcript)?;
    let events = p.push(text)?;
    p.finish()?;
    events
        .into_iter()
        .find_map(|e| match e {
            Event::Return { text, span } => Some(WorkerTrace {
                takeaways: text,
                span,
            }),
            _ => None,
        })
        .ok_or(ProtocolError::MissingReturn)
}

fn event_start(e: &Event) -> usize {
    match e {
        Event::Fork { span, .. }
        | Event::Join { span, .. }
        | Event::JoinPayload { span, .. }
        | Event::Answer { span, .. }
        | Event::Return { span, .. } => span.start,
    }
}

fn char_index(text: &str, byte: usize) -> usize {
    text.get(..byte).map_or(0, |s| s.chars().count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRACE: &str = "plan <FORK-1>q1</FORK-1><FORK-2>q2</FORK-2> wait \
        <JOIN-2>two</JOIN-2> ok <FORK-3>q3</FORK-3><JOIN-1>ünë</JOIN-1><JOIN-3>three</JOIN-3> \
        <ANSWER>done</ANSWER>";

    fn check(text: &str) -> Result<OrganizerTrace, ProtocolError> {
        validate_organizer(
            text,
            &ProtocolTags::default(),
            ProtocolLimits::with_capacity(3),
        )
    }

    #[test]
    fn structure_and_spans() {
        let t = check(TRACE).unwrap();
        assert_eq!(t.answer, "done");
        assert_eq!(t.join_order, vec![2, 1, 3]);
        assert_eq!(t.forks.len(), 3);
        assert_eq!(t.max_active, 2);
        assert_eq!(t.join_order_kind(), JoinOrder::Mixed);
        assert!(t.interleaved());
        // " wait " runs alongside 1 and 2 (JOIN-2), " ok " alongside 1 (JOIN-1); worker 3
        // is joined with no organizer thinking since its fork.
        assert_eq!(t.overlapped_joins, 2);
        let inserted: Vec<&str> = t
            .inserted_byte_spans
            .iter()
            .map(|r| &TRACE[r.clone()])
            .collect();
        assert_eq!(
            inserted,
            vec!["two</JOIN-2>", "ünë</JOIN-1>", "three</JOIN-3>"]
        );
        let chars: Vec<char> = TRACE.chars().collect();
        let via_chars: Vec<String> = t
            .inserted_char_spans
            .iter()
            .map(|r| chars[r.clone()].iter().collect())
            .collect();
        assert_eq!(via_chars, inserted);
    }

    #[test]
    fn join_order_kinds() {
        let fifo = "<FORK-1>a</FORK-1><FORK-2>b</FORK-2><JOIN-1>x</JOIN-1><JOIN-2>y</JOIN-2><ANSWER>z</ANSWER>";
        assert_eq!(check(fifo).unwrap().join_order_kind(), JoinOrder::Fifo);
        assert_eq!(check(fifo).unwrap().overlapped_joins, 0);
        let lifo = "<FORK-1>a</FORK-1><FORK-2>b</FORK-2><JOIN-2>x</JOIN-2><JOIN-1>y</JOIN-1><ANSWER>z</ANSWER>";
        assert_eq!(check(lifo).unwrap().join_order_kind(), JoinOrder::Lifo);
        assert_eq!(
            check("<ANSWER>z</ANSWER>").unwrap().join_order_kind(),
            JoinOrder::None
        );
    }

    #[test]
    fn transcript_errors() {
        assert!(matches!(
            check("<FORK-1>a</FORK-1><JOIN-1>x</JOIN-2>"),
            Err(ProtocolError::MismatchedClose { .. })
        ));
        assert!(matches!(
            check("<FORK-1>a</FORK-1><JOIN-1>x"),
            Err(ProtocolError::UnclosedTag { .. })
        ));
        assert!(matches!(
            check("x</JOIN-1>"),
            Err(ProtocolError::UnexpectedClose { .. })
        ));
        assert!(matches!(
            validate_worker("no", &ProtocolTags::default(), ProtocolLimits::default()),
            Err(ProtocolError::MissingReturn)
        ));
    }

    proptest! {
        // The live parser fed in arbitrary pieces, with the payloads injected, must agree
        // with the offline validator on every event.
        #[test]
        fn chunking_never_changes_events(cuts in proptest::collection::vec(0usize..200, 0..20)) {
            let offline = check(TRACE).unwrap();
            let mut live = StreamParser::organizer(
                &ProtocolTags::default(), ProtocolLimits::with_capacity(3)).unwrap();
            let mut events = Vec::new();
            let mut pos = 0;
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| TRACE.is_char_boundary(*c) && *c < TRACE.len()).collect();
            cuts.sort_unstable();
            let payloads: Vec<(usize, usize, u32, String)> = offline.events.iter().filter_map(|e| match e {
                Event::JoinPayload { id, payload, span } => Some((span.start, span.end, *id, payload.clone())),
                _ => None,
            }).collect();
            let mut stops: Vec<usize> = cuts.into_iter().chain(payloads.iter().map(|p| p.0)).collect();
            stops.push(TRACE.len());
            stops.sort_unstable();
            stops.dedup();
            for stop in stops {
                if stop < pos { continue; }
                events.extend(live.push(&TRACE[pos..stop]).unwrap());
                pos = stop;
                if let Some((_, end, id, payload)) = payloads.iter().find(|p| p.0 == pos) {
                    live.inject_join(*id, payload).unwrap();
                    events.push(Event::JoinPayload { id: *id, payload: payload.clone(), span: pos..*end });
                    pos = *end;
                }
            }
            live.finish().unwrap();
            prop_assert_eq!(events, offline.events);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,80}", cut in 0usize..80) {
            let tags = ProtocolTags::default();
            let _ = validate_organizer(&s, &tags, ProtocolLimits::default());
            let _ = validate_worker(&s, &tags, ProtocolLimits::default());
            let mut p = StreamParser::organizer(&tags, ProtocolLimits::default()).unwrap();
            let cut = (0..=cut.min(s.len())).rev().find(|c| s.is_char_boundary(*c)).unwrap_or(0);
            let _ = p.push(&s[..cut]);
            let _ = p.push(&s[cut..]);
            let _ = p.finish();
        }
    }
}
