//! Checkpoint chat templates rendered with minijinja against transformers'
//! `apply_chat_template` (tokenizer/chat_templates.json, made by
//! make_chat_template_fixtures.py), and the Jinja rendering of Qwen3's template against the
//! native renderer, text and SFT spans alike.

mod common;

use std::path::Path;

use asyncthink::tokenizer::chat::{render, render_with_spans};
use asyncthink::tokenizer::{ChatMessage, ChatTemplate, ChatTemplateOptions, Tokenizer};
use asyncthink::train::sft_data::encode_conversation;
use common::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Deserialize)]
struct Fixture {
    name: String,
    template: String,
    special_tokens: Map<String, Value>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    conversation: String,
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    kwargs: Map<String, Value>,
    text: Option<String>,
    error: Option<String>,
}

fn fixtures_file() -> Vec<Fixture> {
    let path = fixtures().join("tokenizer/chat_templates.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn tokenizer_config() -> Value {
    let path = fixtures().join("tokenizer/tokenizer_config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn qwen3_jinja() -> ChatTemplate {
    let config = tokenizer_config();
    ChatTemplate::from_config(Some(&config), "tokenizer_config.json").unwrap()
}

fn no_prompt() -> ChatTemplateOptions {
    ChatTemplateOptions {
        add_generation_prompt: false,
        ..Default::default()
    }
}

#[test]
fn every_template_matches_transformers() {
    let fixtures = fixtures_file();
    assert_eq!(fixtures.len(), 5);
    let mut errors = 0;
    for f in &fixtures {
        let config = Value::Object(f.special_tokens.clone());
        let t = ChatTemplate::from_source(f.template.clone(), &f.name, Some(&config)).unwrap();
        for (i, c) in f.cases.iter().enumerate() {
            let what = format!("{} case {i} ({})", f.name, c.conversation);
            // Every kwarg, enable_thinking included, through the generic map the server fills.
            let opts = ChatTemplateOptions {
                add_generation_prompt: c.add_generation_prompt,
                enable_thinking: None,
                kwargs: c.kwargs.clone(),
            };
            match (&c.text, &c.error, t.render(&c.messages, &opts)) {
                (Some(want), None, Ok(got)) => assert_eq!(&got, want, "{what}"),
                (None, Some(want), Err(got)) => {
                    errors += 1;
                    let got = got.to_string();
                    assert!(got.ends_with(&format!("raised: {want}")), "{what}: {got}");
                    assert!(got.contains(&f.name), "{what}: {got}");
                }
                (_, _, got) => panic!(
                    "{what}: transformers gave {:?}/{:?}, we {got:?}",
                    c.text, c.error
                ),
            }
        }
    }
    assert_eq!(errors, 2);
}

/// Conversations with assistant turns: the SFT traces and the fixture conversations.
fn conversations() -> Vec<Vec<ChatMessage>> {
    #[derive(Deserialize)]
    struct Line {
        messages: Vec<ChatMessage>,
    }
    let traces = std::fs::read_to_string(fixtures().join("sft/traces.jsonl")).unwrap();
    let mut out: Vec<Vec<ChatMessage>> = traces
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Line>(l).unwrap().messages)
        .collect();
    let qwen3 = fixtures_file()
        .into_iter()
        .find(|f| f.name == "qwen3")
        .unwrap();
    for c in qwen3.cases {
        if c.messages.iter().any(|m| m.role == "assistant")
            && !out.contains(&c.messages)
            && c.messages.iter().all(|m| m.role != "tool")
        {
            out.push(c.messages);
        }
    }
    out
}

#[test]
fn qwen3_jinja_gives_the_native_text_and_spans() {
    let jinja = qwen3_jinja();
    let convs = conversations();
    assert!(convs.len() >= 8, "{}", convs.len());
    let mut with_reasoning = 0;
    for (i, msgs) in convs.iter().enumerate() {
        let native = render_with_spans(msgs, &no_prompt()).unwrap();
        let got = jinja.render_with_spans(msgs, &no_prompt()).unwrap();
        assert_eq!(got, native, "conversation {i}");
        with_reasoning += usize::from(got.1.len() >= 2 && got.0.contains("</think>"));
        for thinking in [None, Some(false), Some(true)] {
            let opts = ChatTemplateOptions {
                enable_thinking: thinking,
                ..Default::default()
            };
            assert_eq!(
                jinja.render(msgs, &opts).unwrap(),
                render(msgs, &opts).unwrap(),
                "conversation {i}, enable_thinking {thinking:?}"
            );
        }
    }
    assert!(with_reasoning >= 2, "{with_reasoning}");
}

#[test]
fn sft_examples_are_the_same_through_either_renderer() {
    let dir = fixtures().join("tokenizer");
    let bytes = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let mut config = tokenizer_config();
    config.as_object_mut().unwrap().remove("chat_template");
    let native = Tokenizer::from_parts(&bytes, None, Some(config)).unwrap();
    assert_eq!(native.chat_template().source(), None);
    let jinja = Tokenizer::from_dir(&dir).unwrap();
    assert!(
        jinja
            .chat_template()
            .source()
            .unwrap()
            .ends_with("tokenizer_config.json")
    );
    for msgs in conversations() {
        assert_eq!(
            encode_conversation(&jinja, &msgs, &[], 4096).unwrap(),
            encode_conversation(&native, &msgs, &[], 4096).unwrap()
        );
    }
}

fn copy_tokenizer_to(dir: &Path) {
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("tokenizer").join(f), dir.join(f)).unwrap();
    }
}

#[test]
fn chat_template_jinja_file_wins_and_errors_name_it() {
    let tmp = tempfile::tempdir().unwrap();
    copy_tokenizer_to(tmp.path());
    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}",
    )
    .unwrap();
    let tok = Tokenizer::from_dir(tmp.path()).unwrap();
    let msgs = [ChatMessage::new("user", "hi")];
    let ids = tok.encode_chat(&msgs, &no_prompt()).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), "[user] hi\n");

    std::fs::write(
        tmp.path().join("chat_template.jinja"),
        "{% for m in messages %}",
    )
    .unwrap();
    let err = Tokenizer::from_dir(tmp.path()).err().unwrap().to_string();
    assert!(err.contains("chat_template.jinja"), "{err}");
}

#[test]
fn span_errors_name_the_message() {
    // A template that puts the last message first: no prefix of it renders as a prefix.
    let config = json!({"eos_token": "<|im_end|>"});
    let t = ChatTemplate::from_source(
        "{% for m in messages|reverse %}{{ m.content }}<|im_end|>{% endfor %}".into(),
        "reversed.jinja",
        Some(&config),
    )
    .unwrap();
    let msgs = [
        ChatMessage::new("user", "a"),
        ChatMessage::new("assistant", "b"),
        ChatMessage::new("user", "c"),
        ChatMessage::new("assistant", "d"),
    ];
    let err = t
        .render_with_spans(&msgs, &no_prompt())
        .unwrap_err()
        .to_string();
    assert!(err.contains("assistant message"), "{err}");
    assert!(err.contains("reversed.jinja"), "{err}");
}
