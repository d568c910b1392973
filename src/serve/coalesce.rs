//! A stream that falls behind the engine (the client or the socket is slower than the
//! steps) has several updates of one choice waiting; they go out as one chunk, so a slow
//! reader costs one JSON chunk and one write per catch-up rather than per token. A reader
//! that keeps up still gets every token in its own chunk.

use tokio::sync::mpsc::UnboundedReceiver;

use super::engine_loop::Event;

/// `first` merged with the events already waiting behind it for the same choice. The first
/// waiting event that cannot be merged is left in `held`, to be taken before the channel.
pub fn merge_waiting(
    first: Event,
    events: &mut UnboundedReceiver<Event>,
    held: &mut Option<Event>,
) -> Event {
    let mut merged = first;
    while held.is_none() {
        let Ok(next) = events.try_recv() else {
            break;
        };
        if let Some(unmerged) = absorb(&mut merged, next) {
            *held = Some(unmerged);
        }
    }
    merged
}

/// Appends `next` to `into` when both are updates of one choice and `into` has not
/// finished; otherwise hands `next` back.
fn absorb(into: &mut Event, next: Event) -> Option<Event> {
    match (into, next) {
        (Event::Update(a), Event::Update(b)) if a.index == b.index && a.finish.is_none() => {
            a.text.push_str(&b.text);
            a.tokens.extend(b.tokens);
            a.finish = b.finish;
            None
        }
        (Event::Episode(a), Event::Episode(b)) if a.index == b.index && a.outcome.is_none() => {
            a.text.push_str(&b.text);
            a.outcome = b.outcome;
            None
        }
        (_, next) => Some(next),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::FinishReason;
    use crate::serve::engine_loop::{TokenLogprob, Update};

    fn update(index: usize, text: &str, token: u32, finish: Option<FinishReason>) -> Event {
        Event::Update(Update {
            index,
            text: text.into(),
            tokens: vec![TokenLogprob {
                id: token,
                logprob: -0.5,
                top: Vec::new(),
            }],
            finish,
        })
    }

    #[test]
    fn waiting_updates_of_one_choice_merge_up_to_a_finish() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for e in [
            update(0, "b", 2, None),
            update(0, "c", 3, Some(FinishReason::Length)),
            update(0, "d", 4, None),
        ] {
            tx.send(e).unwrap();
        }
        let mut held = None;
        let Event::Update(u) = merge_waiting(update(0, "a", 1, None), &mut rx, &mut held) else {
            panic!("an update");
        };
        assert_eq!(u.text, "abc");
        assert_eq!(u.tokens.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(u.finish, Some(FinishReason::Length));
        // After a finish nothing more is merged: the next event waits its turn.
        assert!(matches!(held, Some(Event::Update(ref d)) if d.text == "d"));
    }

    #[test]
    fn another_choice_or_a_failure_is_held_not_merged() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(update(1, "x", 9, None)).unwrap();
        tx.send(update(0, "b", 2, None)).unwrap();
        let mut held = None;
        let Event::Update(u) = merge_waiting(update(0, "a", 1, None), &mut rx, &mut held) else {
            panic!("an update");
        };
        assert_eq!(u.text, "a");
        assert!(matches!(held, Some(Event::Update(ref x)) if x.index == 1));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Event::Failed("boom".into())).unwrap();
        let mut held = None;
        merge_waiting(update(0, "a", 1, None), &mut rx, &mut held);
        assert!(matches!(held, Some(Event::Failed(_))));
    }
}
