//! Why an agent's protocol failed when the engine ended its sequence first.
//!
//! The engine finishes a sequence (budget, stop string, EOS, KV exhaustion, abort) inside
//! `step`, before the executor sees the token that step produced, so that token may
//! still complete a tag whose action needs the sequence to go on: a JOIN pauses the
//! organizer or injects into it. The executor then keeps the action pending instead of
//! touching the finished sequence, and the episode ends with the reason from here.

use crate::asyncthink::protocol::ProtocolError;
use crate::engine::FinishReason;

/// The agent whose sequence ended, and what the executor still waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The organizer, possibly with a JOIN of this worker not yet served.
    Organizer {
        waiting_on: Option<u32>,
    },
    Worker(u32),
}

/// What the agent used and the budgets the reasons quote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Tokens the agent generated.
    pub generated: usize,
    /// The agent's `max_new_tokens`.
    pub tokens: usize,
    /// The model's context length (the other way to finish with "length").
    pub max_positions: usize,
    /// KV blocks in the whole cache.
    pub kv_blocks: usize,
    /// A scripted agent's "length" short of its budget is its script running out.
    pub scripted: bool,
}

impl Ended {
    fn name(self) -> String {
        match self {
            Ended::Organizer { .. } => "organizer".into(),
            Ended::Worker(id) => format!("worker {id}"),
        }
    }

    fn waiting(self) -> String {
        match self {
            Ended::Organizer {
                waiting_on: Some(id),
            } => format!(" while waiting on JOIN-{id}"),
            _ => String::new(),
        }
    }
}

/// The failure to record. `protocol` is what the agent's parser says of its stream so far
/// (an unclosed tag, a missing answer or return); it explains an early end only when
/// nothing more specific does.
pub fn ended_error(
    who: Ended,
    reason: &FinishReason,
    limits: Limits,
    protocol: impl FnOnce() -> ProtocolError,
) -> ProtocolError {
    match (reason, who) {
        (FinishReason::Length, _) if limits.generated >= limits.tokens => {
            ProtocolError::BudgetExceeded {
                what: format!("{} tokens{}", who.name(), who.waiting()),
                limit: limits.tokens,
            }
        }
        (FinishReason::Length, _) if !limits.scripted => ProtocolError::BudgetExceeded {
            what: format!("context length of the {}{}", who.name(), who.waiting()),
            limit: limits.max_positions,
        },
        (FinishReason::Error, _) => ProtocolError::NonFiniteLogits {
            who: format!("{}{}", who.name(), who.waiting()),
        },
        (FinishReason::CacheFull, _) => ProtocolError::BudgetExceeded {
            what: format!(
                "KV cache: the {} context needs more blocks than the whole cache{}",
                who.name(),
                who.waiting()
            ),
            limit: limits.kv_blocks,
        },
        (
            _,
            Ended::Organizer {
                waiting_on: Some(id),
            },
        ) => ProtocolError::EndedBeforeJoin {
            id,
            reason: finish_name(reason).into(),
        },
        _ => protocol(),
    }
}

fn finish_name(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos => "end-of-sequence token",
        FinishReason::Stop => "stop string",
        FinishReason::Length => "end of its script",
        FinishReason::Aborted => "aborted",
        FinishReason::CacheFull => "KV cache full",
        FinishReason::Error => "non-finite logits",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        generated: 128,
        tokens: 128,
        max_positions: 40960,
        kv_blocks: 32,
        scripted: false,
    };

    fn err(who: Ended, reason: FinishReason, limits: Limits) -> String {
        ended_error(who, &reason, limits, || ProtocolError::MissingAnswer).to_string()
    }

    #[test]
    fn every_finish_reason_while_a_join_is_pending_names_the_join() {
        let who = Ended::Organizer {
            waiting_on: Some(2),
        };
        let cases = [
            (
                FinishReason::Length,
                "budget exceeded: organizer tokens while waiting on JOIN-2 (limit 128)",
            ),
            (
                FinishReason::CacheFull,
                "budget exceeded: KV cache: the organizer context needs more blocks than the whole cache while waiting on JOIN-2 (limit 32)",
            ),
            (
                FinishReason::Eos,
                "organizer ended (end-of-sequence token) while waiting on JOIN-2",
            ),
            (
                FinishReason::Stop,
                "organizer ended (stop string) while waiting on JOIN-2",
            ),
            (
                FinishReason::Aborted,
                "organizer ended (aborted) while waiting on JOIN-2",
            ),
        ];
        for (reason, want) in cases {
            assert_eq!(err(who, reason.clone(), LIMITS), want, "{reason:?}");
        }
        let scripted = Limits {
            generated: 20,
            scripted: true,
            ..LIMITS
        };
        assert_eq!(
            err(who, FinishReason::Length, scripted),
            "organizer ended (end of its script) while waiting on JOIN-2"
        );
    }

    #[test]
    fn without_a_pending_join_the_parser_explains_all_but_budgets() {
        let idle = Ended::Organizer { waiting_on: None };
        assert_eq!(
            err(idle, FinishReason::Length, LIMITS),
            "budget exceeded: organizer tokens (limit 128)"
        );
        assert_eq!(
            err(Ended::Worker(3), FinishReason::Length, LIMITS),
            "budget exceeded: worker 3 tokens (limit 128)"
        );
        assert!(
            err(Ended::Worker(3), FinishReason::CacheFull, LIMITS).contains("worker 3 context")
        );
        let short = Limits {
            generated: 5,
            ..LIMITS
        };
        assert_eq!(
            err(idle, FinishReason::Length, short),
            "budget exceeded: context length of the organizer (limit 40960)"
        );
        for reason in [FinishReason::Eos, FinishReason::Stop, FinishReason::Aborted] {
            assert_eq!(
                err(idle, reason.clone(), LIMITS),
                "organizer stopped without a final answer"
            );
        }
    }
}
