//! Our tokenizer wrapper and chat templates against transformers' outputs
//! (tokenizer.encode/decode and apply_chat_template with Qwen3's Jinja template): the native
//! renderer's text, and `encode_chat`'s ids, which go through the fixture's Jinja template.

mod common;

use asyncthink::tokenizer::{ChatMessage, ChatTemplateOptions, Tokenizer};
use common::*;
use serde::Deserialize;

#[derive(Deserialize)]
struct ChatCase {
    messages: Vec<ChatMessage>,
    add_generation_prompt: bool,
    enable_thinking: Option<bool>,
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct TokCase {
    text: String,
    ids: Vec<u32>,
    decoded: String,
    decoded_skip_special: String,
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(&fixtures().join("tokenizer")).unwrap()
}

fn read<T: for<'de> Deserialize<'de>>(file: &str) -> T {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer").join(file)).unwrap())
        .unwrap()
}

#[test]
fn chat_template_matches_transformers() {
    let tok = tokenizer();
    let cases: Vec<ChatCase> = read("chat_template_cases.json");
    assert!(cases.len() >= 8);
    for (i, c) in cases.iter().enumerate() {
        let opts = ChatTemplateOptions {
            add_generation_prompt: c.add_generation_prompt,
            enable_thinking: c.enable_thinking,
            ..Default::default()
        };
        let text = asyncthink::tokenizer::chat::render(&c.messages, &opts).unwrap();
        assert_eq!(text, c.text, "case {i}: rendered text differs");
        assert_eq!(
            tok.encode_chat(&c.messages, &opts).unwrap(),
            c.ids,
            "case {i}: ids differ"
        );
    }
}

#[test]
fn encode_decode_match_transformers() {
    let tok = tokenizer();
    let cases: Vec<TokCase> = read("tokenizer_cases.json");
    for c in &cases {
        assert_eq!(tok.encode(&c.text).unwrap(), c.ids, "encode {:?}", c.text);
        assert_eq!(
            tok.decode(&c.ids, false).unwrap(),
            c.decoded,
            "decode {:?}",
            c.text
        );
        assert_eq!(
            tok.decode(&c.ids, true).unwrap(),
            c.decoded_skip_special,
            "decode skip {:?}",
            c.text
        );
    }
}

#[test]
fn special_tokens_and_eos_from_generation_config() {
    let tok = Tokenizer::from_dir(&model_dir("tiny-gqa4-tied")).unwrap();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let eot = tok.token_to_id("<|endoftext|>").unwrap();
    assert_eq!(tok.eos_ids, vec![im_end, eot]);
    // A special token is one id, not a byte soup.
    assert_eq!(
        tok.encode("<think>").unwrap(),
        vec![tok.token_to_id("<think>").unwrap()]
    );
}
