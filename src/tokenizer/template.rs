//! The chat template a checkpoint ships, compiled once when its tokenizer loads: the
//! `chat_template.jinja` file beside it (how transformers 5 saves it), else
//! tokenizer_config.json's `chat_template` (a string, or a list of `{name, template}` of
//! which "default" is used), rendered with minijinja as transformers' `apply_chat_template`
//! renders it; Qwen3's template, rendered natively, when the checkpoint has none. Every
//! chat prompt (CLI, executor, server) and every SFT conversation goes through it.

use std::collections::BTreeMap;

use minijinja::Environment;
use minijinja::value::Serde;
use serde_json::Value;

use super::chat::{self, AssistantSpan, ChatMessage, ChatTemplateOptions};
use super::template_env::{self, RAISED};
use super::template_spans::assistant_spans;
use crate::{Error, Result};

pub struct ChatTemplate {
    jinja: Option<Jinja>,
}

struct Jinja {
    env: Environment<'static>,
    /// Where the template came from, for error messages.
    source: String,
    /// bos_token, eos_token, … as strings: globals transformers gives every template.
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.source().unwrap_or("built-in Qwen3 template"))
    }
}

/// Keys transformers sets itself; a kwarg by that name would be a second value for them.
pub const RESERVED_KWARGS: [&str; 4] = ["messages", "add_generation_prompt", "tools", "documents"];

impl ChatTemplate {
    /// Qwen3's template, rendered natively.
    pub fn native() -> Self {
        ChatTemplate { jinja: None }
    }

    /// tokenizer_config.json's `chat_template` (native when there is none); `source` names
    /// the file in errors.
    pub fn from_config(config: Option<&Value>, source: &str) -> Result<Self> {
        let bad = |msg: &str| Error::Tokenizer(format!("{source}: chat_template {msg}"));
        let text = match config.and_then(|c| c.get("chat_template")) {
            None | Some(Value::Null) => return Ok(Self::native()),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(named)) => named
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("is a list of named templates without a \"default\" one"))?
                .to_string(),
            Some(_) => return Err(bad("must be a string or a list of {name, template}")),
        };
        Self::from_source(text, source, config)
    }

    /// A Jinja template's text; the config supplies the special tokens it may read.
    pub fn from_source(text: String, source: &str, config: Option<&Value>) -> Result<Self> {
        let env = template_env::environment(text)
            .map_err(|e| Error::Tokenizer(format!("chat template {source}: {}", describe(&e))))?;
        let special_tokens = ["bos_token", "eos_token", "unk_token", "pad_token"]
            .into_iter()
            .filter_map(|k| Some((k.to_string(), token_text(config?.get(k)?)?)))
            .collect();
        Ok(ChatTemplate {
            jinja: Some(Jinja {
                env,
                source: source.to_string(),
                special_tokens,
            }),
        })
    }

    /// The template's file, or None for the built-in Qwen3 template.
    pub fn source(&self) -> Option<&str> {
        self.jinja.as_ref().map(|j| j.source.as_str())
    }

    pub fn render(&self, messages: &[ChatMessage], opts: &ChatTemplateOptions) -> Result<String> {
        match &self.jinja {
            None => chat::render(messages, opts),
            Some(j) => j.render(messages, opts),
        }
    }

    /// `render`, plus where every assistant turn landed (what SFT trains on).
    pub fn render_with_spans(
        &self,
        messages: &[ChatMessage],
        opts: &ChatTemplateOptions,
    ) -> Result<(String, Vec<AssistantSpan>)> {
        let Some(j) = &self.jinja else {
            return chat::render_with_spans(messages, opts);
        };
        let full = j.render(messages, opts)?;
        let eos = j.special_tokens.get("eos_token").map(String::as_str);
        let spans = assistant_spans(messages, &full, eos, &j.source, |m, gen_prompt| {
            let o = ChatTemplateOptions {
                add_generation_prompt: gen_prompt,
                ..opts.clone()
            };
            j.render(m, &o)
        })?;
        Ok((full, spans))
    }
}

impl Jinja {
    fn render(&self, messages: &[ChatMessage], opts: &ChatTemplateOptions) -> Result<String> {
        use minijinja::Value as J;
        let mut ctx: BTreeMap<String, J> = self
            .special_tokens
            .iter()
            .map(|(k, v)| (k.clone(), J::from(v.as_str())))
            .collect();
        for (k, v) in &opts.kwargs {
            if RESERVED_KWARGS.contains(&k.as_str()) {
                return Err(Error::InvalidInput(format!(
                    "chat_template_kwargs.{k}: {k} is set by the renderer, not a template kwarg"
                )));
            }
            ctx.insert(k.clone(), J::from(Serde(v)));
        }
        if let Some(t) = opts.enable_thinking {
            ctx.insert("enable_thinking".into(), J::from(t));
        }
        ctx.insert("messages".into(), J::from(Serde(messages)));
        ctx.insert(
            "add_generation_prompt".into(),
            J::from(opts.add_generation_prompt),
        );
        let template = self
            .env
            .get_template(template_env::NAME)
            .map_err(|e| Error::Tokenizer(format!("chat template {}: {e}", self.source)))?;
        template.render(ctx).map_err(|e| {
            Error::InvalidInput(format!("chat template {}: {}", self.source, describe(&e)))
        })
    }
}

/// A minijinja error in one line: the template's own `raise_exception` message verbatim,
/// else the error with its line and cause.
fn describe(e: &minijinja::Error) -> String {
    if let Some(msg) = e.detail().and_then(|d| d.strip_prefix(RAISED)) {
        return format!("raised: {msg}");
    }
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// A special token as tokenizer_config.json writes it: a string or `{"content": …}`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jinja(text: &str) -> ChatTemplate {
        ChatTemplate::from_source(text.into(), "t.jinja", Some(&json!({"eos_token": "</s>"})))
            .unwrap()
    }

    #[test]
    fn config_forms() {
        let native = ChatTemplate::from_config(Some(&json!({})), "c.json").unwrap();
        assert_eq!(native.source(), None);
        let named = json!({"chat_template": [
            {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]});
        let t = ChatTemplate::from_config(Some(&named), "c.json").unwrap();
        let out = t.render(&[], &ChatTemplateOptions::default()).unwrap();
        assert_eq!(out, "D");
        let no_default = json!({"chat_template": [{"name": "tool_use", "template": "T"}]});
        let err = ChatTemplate::from_config(Some(&no_default), "c.json").unwrap_err();
        assert!(err.to_string().contains("c.json"), "{err}");
    }

    #[test]
    fn errors_name_the_source_and_never_panic() {
        let err = ChatTemplate::from_source("{% if %}".into(), "bad.jinja", None).unwrap_err();
        assert!(
            matches!(&err, Error::Tokenizer(m) if m.contains("bad.jinja")),
            "{err}"
        );
        let t = jinja("{{ raise_exception('roles must alternate') }}");
        let err = t.render(&[], &ChatTemplateOptions::default()).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidInput(m) if m.contains("t.jinja") && m.ends_with("raised: roles must alternate")),
            "{err}"
        );
        let t = jinja("{{ messages[0].content.nope() }}");
        let msgs = [ChatMessage::new("user", "x")];
        assert!(t.render(&msgs, &ChatTemplateOptions::default()).is_err());
    }

    #[test]
    fn a_runaway_template_runs_out_of_fuel() {
        let t = jinja(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        );
        let err = t.render(&[], &ChatTemplateOptions::default()).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn kwargs_and_special_tokens_are_globals() {
        let t = jinja("{{ eos_token }}{{ flavor }}{{ enable_thinking }}{{ n | tojson }}");
        let mut opts = ChatTemplateOptions {
            enable_thinking: Some(false),
            ..Default::default()
        };
        opts.kwargs.insert("flavor".into(), json!("mint"));
        opts.kwargs
            .insert("n".into(), json!({"b": [1, 2.5], "a": "<&>"}));
        // Python's spellings (`False`, `", "`), no HTML escapes; serde_json maps sort keys.
        assert_eq!(
            t.render(&[], &opts).unwrap(),
            r#"</s>mintFalse{"a": "<&>", "b": [1, 2.5]}"#
        );
        opts.kwargs.insert("messages".into(), json!([]));
        assert!(matches!(t.render(&[], &opts), Err(Error::InvalidInput(_))));
    }
}
