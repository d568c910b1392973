//! Qwen3's chat template, rendered natively (no Jinja engine): `<|im_start|>role\n…<|im_end|>\n`
//! per message. Like the template shipped with Qwen3, reasoning (`<think>…</think>`) is
//! kept only for assistant turns after the last user query, and `enable_thinking=false`
//! pre-fills an empty think block in the generation prompt. Tool calls are not supported.
//! The fallback for a checkpoint without a `chat_template` (see template.rs), and the
//! reference its Jinja rendering of Qwen3's template is tested against.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// Reasoning given separately rather than inline as `<think>…</think>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.to_string(),
            content: content.to_string(),
            reasoning_content: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatTemplateOptions {
    pub add_generation_prompt: bool,
    /// None: the template's default (thinking allowed); Some(false) adds the empty think block.
    pub enable_thinking: Option<bool>,
    /// Other `chat_template_kwargs`, globals of a Jinja template (which may read any of
    /// them); the native renderer has no use for them. `enable_thinking` above wins over
    /// a key of the same name here.
    pub kwargs: serde_json::Map<String, serde_json::Value>,
}

impl Default for ChatTemplateOptions {
    fn default() -> Self {
        ChatTemplateOptions {
            add_generation_prompt: true,
            enable_thinking: None,
            kwargs: serde_json::Map::new(),
        }
    }
}

pub fn render(messages: &[ChatMessage], opts: &ChatTemplateOptions) -> Result<String> {
    render_with_spans(messages, opts).map(|(text, _)| text)
}

/// Where one assistant turn landed in the rendered text (byte offsets): what SFT trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssistantSpan {
    pub message: usize,
    /// Start of the turn's text after `<|im_start|>assistant\n` (think block included).
    pub start: usize,
    /// Start of the message's visible content within the text.
    pub content_start: usize,
    /// End of the closing `<|im_end|>` (the model must learn to stop).
    pub end: usize,
}

/// `render`, plus the byte span of every assistant turn.
pub fn render_with_spans(
    messages: &[ChatMessage],
    opts: &ChatTemplateOptions,
) -> Result<(String, Vec<AssistantSpan>)> {
    let mut out = String::new();
    let mut spans = Vec::new();
    let is_tool_response =
        |c: &str| c.starts_with("<tool_response>") && c.ends_with("</tool_response>");
    // The last real user query: reasoning of assistant turns before it is dropped.
    let last_query = messages
        .iter()
        .rposition(|m| m.role == "user" && !is_tool_response(&m.content))
        .unwrap_or(messages.len().saturating_sub(1));

    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "system" => {
                out.push_str(&format!("<|im_start|>system\n{}<|im_end|>\n", m.content));
            }
            "user" => {
                out.push_str(&format!("<|im_start|>user\n{}<|im_end|>\n", m.content));
            }
            "assistant" => {
                let (reasoning, content) = split_reasoning(m);
                let last = i + 1 == messages.len();
                out.push_str("<|im_start|>assistant\n");
                let start = out.len();
                let content = if i > last_query && (last || !reasoning.is_empty()) {
                    out.push_str(&format!(
                        "<think>\n{}\n</think>\n\n",
                        reasoning.trim_matches('\n')
                    ));
                    content.trim_start_matches('\n').to_string()
                } else {
                    content
                };
                let content_start = out.len();
                out.push_str(&content);
                out.push_str("<|im_end|>");
                spans.push(AssistantSpan {
                    message: i,
                    start,
                    content_start,
                    end: out.len(),
                });
                out.push('\n');
            }
            other => {
                return Err(Error::InvalidInput(format!(
                    "chat message {i} has role {other:?}; expected system, user or assistant"
                )));
            }
        }
    }
    if opts.add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
        if opts.enable_thinking == Some(false) {
            out.push_str("<think>\n\n</think>\n\n");
        }
    }
    Ok((out, spans))
}

/// (reasoning, visible content) of an assistant message, as the template splits them.
fn split_reasoning(m: &ChatMessage) -> (String, String) {
    if let Some(r) = &m.reasoning_content {
        return (r.clone(), m.content.clone());
    }
    match m.content.split_once("</think>") {
        None => (String::new(), m.content.clone()),
        Some(_) => {
            let parts: Vec<&str> = m.content.split("</think>").collect();
            let before = parts[0].trim_end_matches('\n');
            let reasoning = before
                .rsplit("<think>")
                .next()
                .unwrap_or("")
                .trim_start_matches('\n');
            let content = parts[parts.len() - 1].trim_start_matches('\n');
            (reasoning.to_string(), content.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_turn_with_generation_prompt() {
        let s = render(
            &[ChatMessage::new("user", "hi")],
            &ChatTemplateOptions::default(),
        )
        .unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        let s = render(
            &[ChatMessage::new("user", "hi")],
            &ChatTemplateOptions {
                add_generation_prompt: true,
                enable_thinking: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.ends_with("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    }

    #[test]
    fn reasoning_dropped_before_last_query() {
        let msgs = [
            ChatMessage::new("user", "a"),
            ChatMessage::new("assistant", "<think>\nr1\n</think>\n\nx"),
            ChatMessage::new("user", "b"),
            ChatMessage::new("assistant", "<think>\nr2\n</think>\n\ny"),
        ];
        let s = render(
            &msgs,
            &ChatTemplateOptions {
                add_generation_prompt: false,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(s.contains("<|im_start|>assistant\nx<|im_end|>"));
        assert!(s.contains("<|im_start|>assistant\n<think>\nr2\n</think>\n\ny<|im_end|>"));
    }

    #[test]
    fn unknown_role_is_an_error() {
        let r = render(
            &[ChatMessage::new("robot", "x")],
            &ChatTemplateOptions::default(),
        );
        assert!(matches!(r, Err(Error::InvalidInput(m)) if m.contains("robot")));
    }
}
