//! Where each assistant turn lies in a conversation rendered by a template we cannot look
//! inside (a checkpoint's Jinja template), found by rendering prefixes of the conversation:
//! the turn starts where the messages before it, rendered with a generation prompt, end;
//! it ends where the messages through it end, or, for a template that renders a turn
//! differently once later messages follow (Qwen3 drops the reasoning of turns before the
//! last user query), at the end-of-sequence text the template closes the turn with.

use super::chat::{AssistantSpan, ChatMessage};
use crate::{Error, Result};

/// `render(messages, add_generation_prompt)` is the template with every other option fixed;
/// `full` is its render of all of `messages`. `eos` is the tokenizer's eos_token text.
pub fn assistant_spans(
    messages: &[ChatMessage],
    full: &str,
    eos: Option<&str>,
    source: &str,
    render: impl Fn(&[ChatMessage], bool) -> Result<String>,
) -> Result<Vec<AssistantSpan>> {
    let fail = |i: usize, why: &str| {
        Error::InvalidInput(format!(
            "chat template {source}: cannot find assistant message {i} in the rendered \
             conversation: {why}"
        ))
    };
    let mut spans = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&messages[..i], true)?;
        if !full.starts_with(&before) {
            return Err(fail(
                i,
                "the messages before it, rendered with a generation prompt, are not a \
                 prefix of the whole conversation's text",
            ));
        }
        let start = before.len();
        let through = render(&messages[..=i], false)?;
        let (body_end, end) = if through.len() >= start && full.starts_with(&through) {
            let region = &full[start..through.len()];
            match eos.map(|e| (e, region.rfind(e))) {
                Some((e, Some(p))) => (start + p, start + p + e.len()),
                // A template that appends the eos only when another message follows.
                Some((e, None)) if full[through.len()..].starts_with(e) => {
                    (through.len(), through.len() + e.len())
                }
                _ => (through.len(), through.len()),
            }
        } else {
            let Some(e) = eos else {
                return Err(fail(
                    i,
                    "the template renders it differently once later messages follow, and \
                     the tokenizer has no eos_token to mark where it ends",
                ));
            };
            if m.content.contains(e) {
                return Err(fail(
                    i,
                    &format!("its content holds the eos_token {e:?} that marks a turn's end"),
                ));
            }
            match full[start..].find(e) {
                Some(p) => (start + p, start + p + e.len()),
                None => {
                    return Err(fail(
                        i,
                        &format!(
                            "the template renders it differently once later messages follow, \
                             and no eos_token {e:?} closes it"
                        ),
                    ));
                }
            }
        };
        spans.push(AssistantSpan {
            message: i,
            start,
            content_start: content_start(m, &full[start..body_end]) + start,
            end,
        });
    }
    Ok(spans)
}

/// Offset in the turn's text (up to its end marker) where the visible content begins: after
/// a think block when the template rendered one, else where the content, as written, ends
/// the turn; the turn's start when the template rewrote the content beyond recognition.
fn content_start(m: &ChatMessage, body: &str) -> usize {
    let visible = m
        .content
        .rsplit_once("</think>")
        .map_or(m.content.as_str(), |(_, after)| after)
        .trim_start_matches('\n');
    let think_first = body.contains("</think>");
    let candidates = [
        think_first.then_some(visible),
        Some(m.content.as_str()),
        Some(visible),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|c| body.ends_with(c))
        .map_or(0, |c| body.len() - c.len())
}

#[cfg(test)]
mod tests {
    use super::super::chat::{ChatTemplateOptions, render_with_spans};
    use super::*;

    fn native_spans(msgs: &[ChatMessage]) -> Vec<AssistantSpan> {
        let opts = ChatTemplateOptions {
            add_generation_prompt: false,
            ..Default::default()
        };
        let (full, expected) = render_with_spans(msgs, &opts).unwrap();
        let found = assistant_spans(msgs, &full, Some("<|im_end|>"), "test", |m, g| {
            let o = ChatTemplateOptions {
                add_generation_prompt: g,
                ..Default::default()
            };
            render_with_spans(m, &o).map(|(t, _)| t)
        })
        .unwrap();
        assert_eq!(found, expected);
        found
    }

    #[test]
    fn prefix_renders_find_the_native_spans() {
        let with = |role: &str, c: &str, r: Option<&str>| ChatMessage {
            reasoning_content: r.map(str::to_string),
            ..ChatMessage::new(role, c)
        };
        let spans = native_spans(&[
            ChatMessage::new("system", "s"),
            ChatMessage::new("user", "a"),
            with("assistant", "<think>\nr1\n</think>\n\nx", None),
            ChatMessage::new("user", "b"),
            with("assistant", "y", Some("r2")),
            ChatMessage::new("user", "c"),
            ChatMessage::new("assistant", ""),
        ]);
        assert_eq!(spans.len(), 3);
        native_spans(&[
            ChatMessage::new("user", "a"),
            with("assistant", "\n<think>r</think>\n\nz", None),
        ]);
    }

    #[test]
    fn a_template_without_the_prefix_property_is_an_error() {
        let msgs = [
            ChatMessage::new("user", "a"),
            ChatMessage::new("assistant", "b"),
        ];
        // A template that numbers turns from the end changes every earlier turn's text.
        let render = |m: &[ChatMessage], _g: bool| -> Result<String> {
            Ok(m.iter()
                .enumerate()
                .map(|(i, x)| format!("{}:{}|", m.len() - i, x.content))
                .collect())
        };
        let full = render(&msgs, false).unwrap();
        let err = assistant_spans(&msgs, &full, None, "t.json", render).unwrap_err();
        assert!(err.to_string().contains("assistant message 1"), "{err}");
        assert!(err.to_string().contains("t.json"), "{err}");
    }
}
