//! The incremental parser against the offline validator on the same stream. The executor
//! reads tags with the incremental parser while tokens arrive; rewards and trace filtering
//! judge whole texts offline. If the two ever disagreed, a rollout could be rewarded for a
//! structure the executor never ran. The property test (tests/protocol_fuzz.rs) and the
//! cargo-fuzz target (fuzz/) both drive this one check.

use super::{Event, Mode, ProtocolError, ProtocolLimits, ProtocolTags, Role, StreamParser};

/// What one parser made of a whole stream.
type Verdict = (Vec<Event>, Result<(), ProtocolError>);

fn whole(text: &str, tags: &ProtocolTags, limits: &ProtocolLimits, role: Role) -> Verdict {
    let Ok(mut p) = StreamParser::new(tags, limits.clone(), role, Mode::Transcript) else {
        return (
            Vec::new(),
            Err(ProtocolError::InvalidTags("tag set".into())),
        );
    };
    match p.push(text) {
        Ok(events) => (events, p.finish()),
        Err(e) => (Vec::new(), Err(e)),
    }
}

/// Where to end each pushed piece: the cuts on char boundaries, the extra offsets, the end.
fn stops(text: &str, cuts: &[usize], extra: &[usize]) -> Vec<usize> {
    let mut stops: Vec<usize> = cuts
        .iter()
        .map(|&c| c.min(text.len()))
        .filter(|&c| text.is_char_boundary(c))
        .chain(extra.iter().copied())
        .chain([text.len()])
        .collect();
    stops.sort_unstable();
    stops.dedup();
    stops
}

fn pieces(
    text: &str,
    cuts: &[usize],
    tags: &ProtocolTags,
    limits: &ProtocolLimits,
    role: Role,
) -> Verdict {
    let Ok(mut p) = StreamParser::new(tags, limits.clone(), role, Mode::Transcript) else {
        return (
            Vec::new(),
            Err(ProtocolError::InvalidTags("tag set".into())),
        );
    };
    let mut events = Vec::new();
    let mut pos = 0;
    for stop in stops(text, cuts, &[]) {
        match p.push(&text[pos..stop]) {
            Ok(ev) => events.extend(ev),
            Err(e) => return (Vec::new(), Err(e)),
        }
        pos = stop;
    }
    (events, p.finish())
}

/// The live replay of a valid organizer transcript: model text is pushed in pieces, and at
/// each join payload the executor's injection is used instead, as during decoding.
fn live(
    text: &str,
    cuts: &[usize],
    offline: &[Event],
    tags: &ProtocolTags,
    limits: &ProtocolLimits,
) -> Verdict {
    let Ok(mut p) = StreamParser::new(tags, limits.clone(), Role::Organizer, Mode::Live) else {
        return (
            Vec::new(),
            Err(ProtocolError::InvalidTags("tag set".into())),
        );
    };
    let payloads: Vec<(usize, usize, u32, &str)> = offline
        .iter()
        .filter_map(|e| match e {
            Event::JoinPayload { id, payload, span } => {
                Some((span.start, span.end, *id, payload.as_str()))
            }
            _ => None,
        })
        .collect();
    let starts: Vec<usize> = payloads.iter().map(|p| p.0).collect();
    let mut events = Vec::new();
    let mut pos = 0;
    for stop in stops(text, cuts, &starts) {
        if stop < pos {
            continue;
        }
        match p.push(&text[pos..stop]) {
            Ok(ev) => events.extend(ev),
            Err(e) => return (events, Err(e)),
        }
        pos = stop;
        if let Some(&(_, end, id, payload)) = payloads.iter().find(|p| p.0 == pos) {
            if let Err(e) = p.inject_join(id, payload) {
                return (events, Err(e));
            }
            events.push(Event::JoinPayload {
                id,
                payload: payload.to_string(),
                span: pos..end,
            });
            pos = end;
        }
    }
    (events, p.finish())
}

/// Checks that feeding `text` in the pieces cut at `cuts` (byte offsets; those off a char
/// boundary are skipped) gives the same events and the same verdict as one whole push, for
/// both roles; and that a valid organizer transcript replayed live, with its join payloads
/// injected, gives the offline events. Returns a description of the first disagreement.
pub fn check_incremental_agrees_with_offline(
    text: &str,
    cuts: &[usize],
    tags: &ProtocolTags,
    limits: &ProtocolLimits,
) -> Result<(), String> {
    for role in [Role::Organizer, Role::Worker] {
        let offline = whole(text, tags, limits, role);
        let incremental = pieces(text, cuts, tags, limits, role);
        if offline != incremental {
            return Err(format!(
                "{role:?} on {text:?} cut at {cuts:?}: offline {offline:?}, incremental {incremental:?}"
            ));
        }
        if role == Role::Organizer && offline.1.is_ok() {
            let replay = live(text, cuts, &offline.0, tags, limits);
            if replay != offline {
                return Err(format!(
                    "live replay of {text:?} cut at {cuts:?}: offline {offline:?}, live {replay:?}"
                ));
            }
        }
    }
    Ok(())
}
