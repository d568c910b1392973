//! Incremental parser over a decoding text stream. It holds back only the tail that
//! could still become a tag, so events fire the moment a closing `>` arrives.

use std::collections::BTreeMap;

use super::tags::{Pattern, TagKind};
use super::{Event, ProtocolError, ProtocolLimits, ProtocolTags, Role};

/// How join payloads reach the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live model output: after `<JOIN-i>` the model stops and the executor calls
    /// [`StreamParser::inject_join`].
    Live,
    /// A finished transcript: the text between `<JOIN-i>` and `</JOIN-i>` is the payload
    /// the executor inserted.
    Transcript,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Thinking,
    InFork {
        id: u32,
        start: usize,
        content: String,
    },
    InAnswer {
        start: usize,
        content: String,
    },
    InReturn {
        start: usize,
        content: String,
    },
    AwaitingJoin {
        id: u32,
    },
    InJoinPayload {
        id: u32,
        start: usize,
        content: String,
    },
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkerState {
    Active,
    Joined,
}

#[derive(Debug, Clone)]
pub struct StreamParser {
    tags: ProtocolTags,
    patterns: Vec<Pattern>,
    limits: ProtocolLimits,
    role: Role,
    mode: Mode,
    state: State,
    /// Unclassified tail of the stream (may be the start of a tag).
    pending: String,
    /// Stream byte offset of `pending[0]`.
    offset: usize,
    workers: BTreeMap<u32, WorkerState>,
    failed: Option<ProtocolError>,
}

enum Scan {
    /// No tag starts in the text.
    Clean,
    /// A tag may start here but the text ends first.
    Partial(usize),
    Tag {
        start: usize,
        end: usize,
        kind: TagKind,
        id: Option<u32>,
    },
    Malformed {
        start: usize,
        end: usize,
    },
}

const MAX_INDEX_DIGITS: usize = 9;

fn scan(patterns: &[Pattern], s: &str) -> Scan {
    for (i, _) in s.char_indices() {
        let rest = &s[i..];
        for p in patterns {
            if !rest.starts_with(p.prefix.as_str()) {
                // No two prefixes are prefixes of each other, so a partial match here
                // cannot be the start of a different, complete tag.
                if p.prefix.starts_with(rest) {
                    return Scan::Partial(i);
                }
                continue;
            }
            let after_prefix = i + p.prefix.len();
            let Some(suffix) = &p.suffix else {
                return Scan::Tag {
                    start: i,
                    end: after_prefix,
                    kind: p.kind,
                    id: None,
                };
            };
            let after = &s[after_prefix..];
            let nd = after.bytes().take_while(u8::is_ascii_digit).count();
            let malformed = Scan::Malformed {
                start: i,
                end: (after_prefix + nd + 1).min(s.len()),
            };
            let leading_zero = nd > 1 && after.starts_with('0');
            // The excerpt must not depend on how much of the stream has arrived: an
            // over-long index is cut after MAX_INDEX_DIGITS + 1 digits, a leading zero
            // after the digit that follows it.
            if leading_zero {
                return Scan::Malformed {
                    start: i,
                    end: after_prefix + 2,
                };
            }
            if nd > MAX_INDEX_DIGITS {
                return Scan::Malformed {
                    start: i,
                    end: after_prefix + MAX_INDEX_DIGITS + 1,
                };
            }
            if nd == after.len() {
                return Scan::Partial(i);
            }
            if nd == 0 {
                return malformed;
            }
            let tail = &after[nd..];
            if tail.starts_with(suffix.as_str()) {
                return match after[..nd].parse::<u32>() {
                    Ok(id) => Scan::Tag {
                        start: i,
                        end: after_prefix + nd + suffix.len(),
                        kind: p.kind,
                        id: Some(id),
                    },
                    Err(_) => malformed,
                };
            }
            if suffix.starts_with(tail) {
                return Scan::Partial(i);
            }
            return malformed;
        }
    }
    Scan::Clean
}

/// Safe slice end: `end` clamped to a char boundary (malformed-tag excerpts may cut a char).
fn floor_boundary(s: &str, mut end: usize) -> usize {
    end = end.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

impl StreamParser {
    pub fn new(
        tags: &ProtocolTags,
        limits: ProtocolLimits,
        role: Role,
        mode: Mode,
    ) -> Result<Self, ProtocolError> {
        Ok(Self {
            patterns: tags.compile()?,
            tags: tags.clone(),
            limits,
            role,
            mode,
            state: State::Thinking,
            pending: String::new(),
            offset: 0,
            workers: BTreeMap::new(),
            failed: None,
        })
    }

    pub fn organizer(tags: &ProtocolTags, limits: ProtocolLimits) -> Result<Self, ProtocolError> {
        Self::new(tags, limits, Role::Organizer, Mode::Live)
    }

    pub fn worker(tags: &ProtocolTags, limits: ProtocolLimits) -> Result<Self, ProtocolError> {
        Self::new(tags, limits, Role::Worker, Mode::Live)
    }

    /// Bytes of stream seen so far (model text and injected payloads).
    pub fn len(&self) -> usize {
        self.offset + self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True once the final answer (organizer) or return (worker) has closed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done && self.failed.is_none()
    }

    /// The worker the organizer is blocked on, if it just wrote `<JOIN-i>` (live mode).
    pub fn awaiting_join(&self) -> Option<u32> {
        match self.state {
            State::AwaitingJoin { id } => Some(id),
            _ => None,
        }
    }

    /// Workers forked and not yet joined.
    pub fn active_workers(&self) -> Vec<u32> {
        self.workers
            .iter()
            .filter(|(_, s)| **s == WorkerState::Active)
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn error(&self) -> Option<&ProtocolError> {
        self.failed.as_ref()
    }

    fn fail<T>(&mut self, e: ProtocolError) -> Result<T, ProtocolError> {
        self.failed = Some(e.clone());
        Err(e)
    }

    /// Feeds decoded model text; returns the events completed by it.
    pub fn push(&mut self, chunk: &str) -> Result<Vec<Event>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let room = self.limits.max_total_bytes.saturating_sub(self.len());
        if chunk.len() > room {
            // Parse up to the limit first: an error earlier in the text is the one to
            // report, whatever the chunking (the offline validator sees one big chunk).
            self.push(&chunk[..floor_boundary(chunk, room)])?;
            return self.fail(ProtocolError::BudgetExceeded {
                what: "stream bytes".into(),
                limit: self.limits.max_total_bytes,
            });
        }
        self.pending.push_str(chunk);
        let mut events = Vec::new();
        loop {
            if let State::AwaitingJoin { id } = self.state
                && !self.pending.is_empty()
            {
                return self.fail(ProtocolError::TextWhileAwaitingJoin { id });
            }
            match scan(&self.patterns, &self.pending) {
                Scan::Clean => {
                    let all = std::mem::take(&mut self.pending);
                    self.text(&all)?;
                    self.offset += all.len();
                    return Ok(events);
                }
                Scan::Partial(start) => {
                    let head: String = self.pending.drain(..start).collect();
                    self.text(&head)?;
                    self.offset += head.len();
                    return Ok(events);
                }
                Scan::Malformed { start, end } => {
                    let head = self.pending[..start].to_string();
                    self.text(&head)?;
                    let end = floor_boundary(&self.pending, end);
                    let text = self.pending[start..end].to_string();
                    if self.state == State::Done {
                        return self.fail(ProtocolError::TextAfterFinal {
                            at: self.offset + start,
                            first: '<',
                        });
                    }
                    return self.fail(ProtocolError::MalformedTag { text });
                }
                Scan::Tag {
                    start,
                    end,
                    kind,
                    id,
                } => {
                    let head = self.pending[..start].to_string();
                    self.text(&head)?;
                    let tag = self.pending[start..end].to_string();
                    let span = self.offset + start..self.offset + end;
                    self.pending.drain(..end);
                    self.offset += end;
                    if let Some(ev) = self.tag(kind, id, tag, span)? {
                        events.push(ev);
                    }
                }
            }
        }
    }

    /// Feeds the executor's payload after `<JOIN-id>` (live mode) and returns the exact
    /// text to append to the organizer's context: the payload and `</JOIN-id>`.
    pub fn inject_join(&mut self, id: u32, payload: &str) -> Result<String, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let expected = self.awaiting_join();
        if expected != Some(id) {
            return self.fail(ProtocolError::UnexpectedInjection { expected, got: id });
        }
        match scan(&self.patterns, payload) {
            Scan::Tag { start, end, .. } | Scan::Malformed { start, end } => {
                let end = floor_boundary(payload, end);
                return self.fail(ProtocolError::Nesting {
                    outer: self.tags.join_open(id),
                    inner: payload[start..end].to_string(),
                });
            }
            Scan::Clean | Scan::Partial(_) => {}
        }
        if payload.len() > self.limits.max_tag_bytes {
            return self.fail(ProtocolError::BudgetExceeded {
                what: "join payload bytes".into(),
                limit: self.limits.max_tag_bytes,
            });
        }
        let inserted = format!("{payload}{}", self.tags.join_close(id));
        if self.len() + inserted.len() > self.limits.max_total_bytes {
            return self.fail(ProtocolError::BudgetExceeded {
                what: "stream bytes".into(),
                limit: self.limits.max_total_bytes,
            });
        }
        self.offset += inserted.len();
        self.state = State::Thinking;
        Ok(inserted)
    }

    /// The stream has ended: reports a missing answer/return or a tag left open.
    pub fn finish(&mut self) -> Result<(), ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        // A partial tag at the very end never completed: it is plain text.
        let rest = std::mem::take(&mut self.pending);
        self.text(&rest)?;
        self.offset += rest.len();
        let err = match &self.state {
            State::Done => return Ok(()),
            State::Thinking => match self.role {
                Role::Organizer => ProtocolError::MissingAnswer,
                Role::Worker => ProtocolError::MissingReturn,
            },
            State::InFork { id, .. } => ProtocolError::UnclosedTag {
                tag: self.tags.fork_open(*id),
            },
            State::AwaitingJoin { id } | State::InJoinPayload { id, .. } => {
                ProtocolError::UnclosedTag {
                    tag: self.tags.join_open(*id),
                }
            }
            State::InAnswer { .. } => ProtocolError::UnclosedTag {
                tag: self.tags.answer_open.clone(),
            },
            State::InReturn { .. } => ProtocolError::UnclosedTag {
                tag: self.tags.return_open.clone(),
            },
        };
        self.fail(err)
    }

    /// Plain (non-tag) text in the current state.
    fn text(&mut self, text: &str) -> Result<(), ProtocolError> {
        if text.is_empty() {
            return Ok(());
        }
        let limit = self.limits.max_tag_bytes;
        let content = match &mut self.state {
            State::Thinking => return Ok(()),
            State::Done => {
                let Some((i, first)) = text.char_indices().find(|(_, c)| !c.is_whitespace()) else {
                    return Ok(());
                };
                let at = self.offset + i;
                return self.fail(ProtocolError::TextAfterFinal { at, first });
            }
            State::AwaitingJoin { id } => {
                let id = *id;
                return self.fail(ProtocolError::TextWhileAwaitingJoin { id });
            }
            State::InFork { content, .. }
            | State::InAnswer { content, .. }
            | State::InReturn { content, .. }
            | State::InJoinPayload { content, .. } => content,
        };
        content.push_str(text);
        if content.len() > limit {
            return self.fail(ProtocolError::BudgetExceeded {
                what: "bytes inside one tag".into(),
                limit,
            });
        }
        Ok(())
    }

    fn tag(
        &mut self,
        kind: TagKind,
        id: Option<u32>,
        tag: String,
        span: std::ops::Range<usize>,
    ) -> Result<Option<Event>, ProtocolError> {
        use TagKind::*;
        let idx = id.unwrap_or(0);
        let state = std::mem::replace(&mut self.state, State::Thinking);
        let (next, event) = match (state, kind) {
            (State::Done, _) => {
                return self.fail(ProtocolError::TextAfterFinal {
                    at: span.start,
                    first: '<',
                });
            }
            (State::Thinking, k) => match (self.role, k) {
                (Role::Organizer, ForkOpen) => {
                    self.open_fork(idx)?;
                    (
                        State::InFork {
                            id: idx,
                            start: span.start,
                            content: String::new(),
                        },
                        None,
                    )
                }
                (Role::Organizer, JoinOpen) => {
                    match self.workers.get(&idx) {
                        None => return self.fail(ProtocolError::JoinUnknown { id: idx }),
                        Some(WorkerState::Joined) => {
                            return self.fail(ProtocolError::JoinTwice { id: idx });
                        }
                        Some(WorkerState::Active) => {}
                    }
                    self.workers.insert(idx, WorkerState::Joined);
                    let next = match self.mode {
                        Mode::Live => State::AwaitingJoin { id: idx },
                        Mode::Transcript => State::InJoinPayload {
                            id: idx,
                            start: span.end,
                            content: String::new(),
                        },
                    };
                    (next, Some(Event::Join { id: idx, span }))
                }
                (Role::Organizer, AnswerOpen) => {
                    let ids = self.active_workers();
                    if !ids.is_empty() {
                        return self.fail(ProtocolError::UnjoinedForks { ids });
                    }
                    (
                        State::InAnswer {
                            start: span.start,
                            content: String::new(),
                        },
                        None,
                    )
                }
                (Role::Worker, ReturnOpen) => (
                    State::InReturn {
                        start: span.start,
                        content: String::new(),
                    },
                    None,
                ),
                (Role::Organizer, JoinClose) if self.mode == Mode::Live => {
                    return self.fail(ProtocolError::ForbiddenTag {
                        role: self.role,
                        tag,
                    });
                }
                (Role::Organizer, ForkClose | AnswerClose | JoinClose)
                | (Role::Worker, ReturnClose) => {
                    return self.fail(ProtocolError::UnexpectedClose { tag });
                }
                (role, _) => return self.fail(ProtocolError::ForbiddenTag { role, tag }),
            },
            (State::InFork { id, start, content }, ForkClose) if idx == id => (
                State::Thinking,
                Some(Event::Fork {
                    id,
                    query: content,
                    span: start..span.end,
                }),
            ),
            (State::InAnswer { start, content }, AnswerClose) => (
                State::Done,
                Some(Event::Answer {
                    text: content,
                    span: start..span.end,
                }),
            ),
            (State::InReturn { start, content }, ReturnClose) => (
                State::Done,
                Some(Event::Return {
                    text: content,
                    span: start..span.end,
                }),
            ),
            (State::InJoinPayload { id, start, content }, JoinClose) if idx == id => (
                State::Thinking,
                Some(Event::JoinPayload {
                    id,
                    payload: content,
                    span: start..span.end,
                }),
            ),
            (State::InFork { id, .. }, ForkClose) => {
                return self.fail(ProtocolError::MismatchedClose {
                    expected: self.tags.fork_open(id),
                    found: tag,
                });
            }
            (State::InJoinPayload { id, .. }, JoinClose) => {
                return self.fail(ProtocolError::MismatchedClose {
                    expected: self.tags.join_open(id),
                    found: tag,
                });
            }
            (outer, _) => {
                let outer = match outer {
                    State::InFork { id, .. } => self.tags.fork_open(id),
                    State::InJoinPayload { id, .. } | State::AwaitingJoin { id } => {
                        self.tags.join_open(id)
                    }
                    State::InAnswer { .. } => self.tags.answer_open.clone(),
                    State::InReturn { .. } => self.tags.return_open.clone(),
                    State::Thinking | State::Done => String::new(),
                };
                return self.fail(ProtocolError::Nesting { outer, inner: tag });
            }
        };
        self.state = next;
        Ok(event)
    }

    fn open_fork(&mut self, id: u32) -> Result<(), ProtocolError> {
        if self.workers.contains_key(&id) {
            return self.fail(ProtocolError::DuplicateFork { id });
        }
        if self.workers.len() >= self.limits.max_forks {
            return self.fail(ProtocolError::BudgetExceeded {
                what: "forks".into(),
                limit: self.limits.max_forks,
            });
        }
        let active = self.active_workers().len();
        if active + 1 >= self.limits.capacity {
            return self.fail(ProtocolError::CapacityExceeded {
                id,
                active,
                capacity: self.limits.capacity,
            });
        }
        self.workers.insert(id, WorkerState::Active);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(capacity: usize) -> StreamParser {
        StreamParser::organizer(
            &ProtocolTags::default(),
            ProtocolLimits::with_capacity(capacity),
        )
        .unwrap()
    }

    fn feed_all(p: &mut StreamParser, chunks: &[&str]) -> Result<Vec<Event>, ProtocolError> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c)?);
        }
        Ok(out)
    }

    #[test]
    fn events_fire_when_the_tag_completes_even_across_chunks() {
        let mut p = org(3);
        assert_eq!(p.push("think <FO").unwrap(), vec![]);
        assert_eq!(p.push("RK-1>sub").unwrap(), vec![]);
        assert_eq!(p.push("query</FORK-").unwrap(), vec![]);
        let ev = p.push("1> more").unwrap();
        assert_eq!(
            ev,
            vec![Event::Fork {
                id: 1,
                query: "subquery".into(),
                span: 6..31
            }]
        );
        assert_eq!(p.active_workers(), vec![1]);
        let ev = p.push(" <JOIN-1").unwrap();
        assert!(ev.is_empty());
        let ev = p.push(">").unwrap();
        assert!(matches!(ev.as_slice(), [Event::Join { id: 1, .. }]));
        assert_eq!(p.awaiting_join(), Some(1));
        let inserted = p.inject_join(1, "it is 7").unwrap();
        assert_eq!(inserted, "it is 7</JOIN-1>");
        assert!(p.active_workers().is_empty());
        let ev = p.push(" so <ANSWER>7</ANSWER>\n").unwrap();
        assert!(matches!(ev.as_slice(), [Event::Answer { text, .. }] if text == "7"));
        assert!(p.finish().is_ok());
        assert!(p.is_done());
    }

    #[test]
    fn byte_at_a_time_equals_one_chunk() {
        let text = "a<FORK-1>x</FORK-1>b<FORK-2>y</FORK-2>c<JOIN-2>";
        let mut whole = org(4);
        let a = whole.push(text).unwrap();
        let mut bytes = org(4);
        let mut b = Vec::new();
        for ch in text.chars() {
            b.extend(bytes.push(&ch.to_string()).unwrap());
        }
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn sequential_trace_without_forks_is_valid() {
        let mut p = org(1);
        feed_all(&mut p, &["just thinking ", "<ANSWER>42</ANSWER>"]).unwrap();
        assert!(p.finish().is_ok());
    }

    fn first_err(capacity: usize, text: &str) -> ProtocolError {
        let mut p = org(capacity);
        match p.push(text) {
            Err(e) => e,
            Ok(_) => p.finish().err().unwrap_or(ProtocolError::MissingAnswer),
        }
    }

    #[test]
    fn each_format_error_is_reported() {
        use ProtocolError as E;
        assert_eq!(
            first_err(4, "<FORK-1>a</FORK-1><JOIN-1>"),
            E::UnclosedTag {
                tag: "<JOIN-1>".into()
            }
        );
        assert_eq!(
            first_err(4, "<FORK-1>a</FORK-1><FORK-1>b</FORK-1>"),
            E::DuplicateFork { id: 1 }
        );
        assert_eq!(
            first_err(3, "<FORK-1>a</FORK-1><FORK-2>b</FORK-2><FORK-3>"),
            E::CapacityExceeded {
                id: 3,
                active: 2,
                capacity: 3
            }
        );
        assert!(matches!(
            first_err(1, "<FORK-1>"),
            E::CapacityExceeded { .. }
        ));
        assert_eq!(first_err(4, "<JOIN-5>"), E::JoinUnknown { id: 5 });
        assert_eq!(first_err(4, "no answer"), E::MissingAnswer);
        assert_eq!(
            first_err(4, "<ANSWER>1"),
            E::UnclosedTag {
                tag: "<ANSWER>".into()
            }
        );
        assert_eq!(
            first_err(4, "<FORK-1>half a query"),
            E::UnclosedTag {
                tag: "<FORK-1>".into()
            }
        );
        assert_eq!(
            first_err(4, "<ANSWER>1</ANSWER> and more"),
            E::TextAfterFinal { at: 19, first: 'a' }
        );
        assert!(matches!(
            first_err(4, "<ANSWER>1</ANSWER><FORK-1>"),
            E::TextAfterFinal { .. }
        ));
        assert_eq!(
            first_err(4, "<FORK-1>a<FORK-2>b</FORK-2></FORK-1>"),
            E::Nesting {
                outer: "<FORK-1>".into(),
                inner: "<FORK-2>".into()
            }
        );
        assert!(matches!(
            first_err(4, "<ANSWER><JOIN-1></ANSWER>"),
            E::Nesting { .. }
        ));
        assert_eq!(
            first_err(4, "<FORK-1>a</FORK-2>"),
            E::MismatchedClose {
                expected: "<FORK-1>".into(),
                found: "</FORK-2>".into()
            }
        );
        assert_eq!(
            first_err(4, "x</ANSWER>"),
            E::UnexpectedClose {
                tag: "</ANSWER>".into()
            }
        );
        assert!(matches!(first_err(4, "<FORK-x>"), E::MalformedTag { .. }));
        assert!(matches!(first_err(4, "<FORK-01>"), E::MalformedTag { .. }));
        assert!(matches!(first_err(4, "<FORK-1]"), E::MalformedTag { .. }));
        assert!(matches!(
            first_err(4, "<FORK-1234567890>"),
            E::MalformedTag { .. }
        ));
        assert_eq!(
            first_err(4, "<FORK-1>a</FORK-1><ANSWER>"),
            E::UnjoinedForks { ids: vec![1] }
        );
        assert!(matches!(
            first_err(4, "<RETURN>x</RETURN>"),
            E::ForbiddenTag {
                role: Role::Organizer,
                ..
            }
        ));
        // In live mode the model must not write the executor's closing join tag.
        assert!(matches!(first_err(4, "</JOIN-1>"), E::ForbiddenTag { .. }));
        assert_eq!(
            first_err(4, "<FORK-1>a</FORK-1><JOIN-1>model keeps talking"),
            E::TextWhileAwaitingJoin { id: 1 }
        );
    }

    #[test]
    fn join_twice_and_bad_injection() {
        let mut p = org(4);
        p.push("<FORK-1>a</FORK-1><JOIN-1>").unwrap();
        assert_eq!(
            p.clone().inject_join(2, "x"),
            Err(ProtocolError::UnexpectedInjection {
                expected: Some(1),
                got: 2
            })
        );
        assert!(matches!(
            p.clone().inject_join(1, "sneaky <FORK-9>"),
            Err(ProtocolError::Nesting { .. })
        ));
        p.inject_join(1, "ok").unwrap();
        assert_eq!(p.push("<JOIN-1>"), Err(ProtocolError::JoinTwice { id: 1 }));
        // Poisoned: the same error again.
        assert_eq!(p.push("<ANSWER>"), Err(ProtocolError::JoinTwice { id: 1 }));
    }

    #[test]
    fn budgets() {
        let tags = ProtocolTags::default();
        let limits = ProtocolLimits {
            capacity: 8,
            max_forks: 2,
            max_tag_bytes: 5,
            max_total_bytes: 200,
        };
        let mut p = StreamParser::organizer(&tags, limits.clone()).unwrap();
        let r = p.push("<FORK-1>a</FORK-1><JOIN-1>");
        assert!(r.is_ok());
        p.inject_join(1, "").unwrap();
        assert!(p.push("<FORK-2>b</FORK-2><FORK-3>").is_err());
        let mut p = StreamParser::organizer(&tags, limits.clone()).unwrap();
        assert!(matches!(
            p.push("<ANSWER>123456"),
            Err(ProtocolError::BudgetExceeded { .. })
        ));
        let mut p = StreamParser::organizer(&tags, limits).unwrap();
        assert!(matches!(
            p.push(&"x".repeat(201)),
            Err(ProtocolError::BudgetExceeded { .. })
        ));
    }

    #[test]
    fn worker_rules() {
        let tags = ProtocolTags::default();
        let w = || StreamParser::worker(&tags, ProtocolLimits::default()).unwrap();
        let mut p = w();
        let ev = p.push("hmm <RETURN>takeaway</RETURN>  ").unwrap();
        assert!(matches!(ev.as_slice(), [Event::Return { text, .. }] if text == "takeaway"));
        assert!(p.finish().is_ok());
        let mut p = w();
        p.push("no return").unwrap();
        assert_eq!(p.finish(), Err(ProtocolError::MissingReturn));
        assert!(matches!(
            w().push("<FORK-1>x</FORK-1>"),
            Err(ProtocolError::ForbiddenTag {
                role: Role::Worker,
                ..
            })
        ));
        assert!(matches!(
            w().push("<RETURN>a</RETURN>b"),
            Err(ProtocolError::TextAfterFinal { .. })
        ));
        let mut p = w();
        p.push("<RETURN>open").unwrap();
        assert!(matches!(p.finish(), Err(ProtocolError::UnclosedTag { .. })));
    }

    #[test]
    fn partial_tag_at_end_is_plain_text() {
        let mut p = org(4);
        p.push("<ANSWER>a < b</ANSWER> ").unwrap();
        assert!(p.finish().is_ok());
        let mut p = org(4);
        p.push("<ANSWER>a</ANSWER> <").unwrap();
        assert!(matches!(
            p.finish(),
            Err(ProtocolError::TextAfterFinal { .. })
        ));
        let mut p = org(4);
        p.push("a <FOR").unwrap();
        assert_eq!(p.finish(), Err(ProtocolError::MissingAnswer));
    }

    #[test]
    fn multibyte_text_is_fine() {
        let mut p = org(4);
        p.push("Größe ≤ 3 — <FORK-1>ü</FORK-1><JOIN-1>").unwrap();
        p.inject_join(1, "é").unwrap();
        p.push("<ANSWER>π</ANSWER>").unwrap();
        assert!(p.finish().is_ok());
    }
}
