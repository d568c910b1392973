//! The HTTP server end to end on 127.0.0.1 with an ephemeral port and the embedded model:
//! every endpoint whole and streamed, malformed requests, auth, disconnect-abort, the full
//! queue, graceful shutdown (in-process and by SIGTERM), parity with `batch`, and a load of
//! concurrent streaming clients that walk away at random.

mod serve_support;

use std::time::Duration;

use serde_json::{Value, json};
use serve_support::*;

fn chat_body(extra: Value) -> Value {
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "What is 2+2?"}],
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": true,
    });
    merge(&mut b, extra);
    b
}

fn completion_body(extra: Value) -> Value {
    let mut b = json!({
        "model": MODEL,
        "prompt": "The answer is",
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": true,
    });
    merge(&mut b, extra);
    b
}

fn merge(b: &mut Value, extra: Value) {
    if let (Some(b), Value::Object(e)) = (b.as_object_mut(), extra) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
}

/// The chunks of a streamed response, checked for shape: JSON chunks then `[DONE]`.
fn chunks(r: &Response) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    let data = r.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("chunk {d}: {e}")))
        .collect()
}

/// Text of each choice in a stream, and each choice's finish reason.
fn streamed(chunks: &[Value], field: &str) -> (Vec<String>, Vec<Option<String>>) {
    let mut text = Vec::new();
    let mut finish = Vec::new();
    for c in chunks {
        for ch in c["choices"].as_array().into_iter().flatten() {
            let i = ch["index"].as_u64().expect("index") as usize;
            if text.len() <= i {
                text.resize(i + 1, String::new());
                finish.resize(i + 1, None);
            }
            let piece = if field == "text" {
                &ch["text"]
            } else {
                &ch["delta"][field]
            };
            text[i].push_str(piece.as_str().unwrap_or(""));
            if let Some(f) = ch["finish_reason"].as_str() {
                assert!(finish[i].is_none(), "two finish reasons for choice {i}");
                finish[i] = Some(f.to_string());
            }
        }
    }
    (text, finish)
}

#[test]
fn models_health_metrics_and_unknown_routes() {
    let mut server = start(config());
    let addr = server.addr();
    let r = get(addr, "/health");
    assert_eq!(r.status, 200);
    let m = get(addr, "/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["id"], MODEL);
    assert_eq!(m["data"][0]["object"], "model");
    let text = get(addr, "/metrics").text();
    for name in [
        "asyncthink_running_sequences",
        "asyncthink_waiting_sequences",
        "asyncthink_kv_blocks_used",
        "asyncthink_kv_blocks_free",
        "asyncthink_prefix_cache_hit_rate",
        "asyncthink_preemptions_total",
        "asyncthink_generated_tokens_total",
        "asyncthink_time_to_first_token_seconds_count",
        "asyncthink_inter_token_latency_seconds_count",
        "asyncthink_requests_total{outcome=\"completed\"}",
    ] {
        metric(&text, name);
    }
    assert_eq!(metric(&text, "asyncthink_kv_blocks_total"), 256.0);
    let r = get(addr, "/v2/nothing");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["message"].is_string());
    server.shutdown();
    assert!(server.wait().expect("clean exit").is_clean());
}

#[test]
fn completions_whole_and_streamed_agree() {
    let mut server = start(config());
    let addr = server.addr();
    let whole = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"return_token_ids": true})),
    );
    assert_eq!(whole.status, 200, "{}", whole.text());
    let w = whole.json();
    assert_eq!(w["object"], "text_completion");
    assert!(w["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(w["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(w["model"], MODEL);
    assert_eq!(w["choices"][0]["finish_reason"], "length");
    assert_eq!(w["usage"]["completion_tokens"], 12);
    assert_eq!(w["choices"][0]["token_ids"].as_array().unwrap().len(), 12);
    let prompt = w["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(w["usage"]["total_tokens"].as_u64().unwrap(), prompt + 12);
    let text = w["choices"][0]["text"].as_str().unwrap().to_string();

    let s = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    let cs = chunks(&s);
    let (t, f) = streamed(&cs, "text");
    assert_eq!(t, vec![text]);
    assert_eq!(f, vec![Some("length".to_string())]);
    let last = cs.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(last["usage"]["completion_tokens"], 12);
    assert!(cs[..cs.len() - 1].iter().all(|c| c["usage"].is_null()));

    // Token ids as the prompt give the same answer as the text they encode.
    let ids = post(
        addr,
        "/v1/completions",
        &json!({"prompt": [1, 2, 3, 4], "max_tokens": 3, "temperature": 0}),
    );
    assert_eq!(ids.status, 200, "{}", ids.text());
    assert_eq!(ids.json()["usage"]["prompt_tokens"], 4);
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn chat_whole_and_streamed_agree_and_thinking_is_honoured() {
    let mut server = start(config());
    let addr = server.addr();
    let w = post(addr, "/v1/chat/completions", &chat_body(json!({}))).json();
    assert_eq!(w["object"], "chat.completion");
    assert!(w["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &w["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert!(msg["content"].is_string());
    assert!(msg.get("reasoning_content").is_some());
    assert_eq!(w["choices"][0]["finish_reason"], "length");

    let s = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true})),
    );
    let cs = chunks(&s);
    assert!(cs.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(cs[0]["choices"][0]["delta"]["role"], "assistant");
    let (content, finish) = streamed(&cs, "content");
    let (reasoning, _) = streamed(&cs, "reasoning_content");
    assert_eq!(content[0], msg["content"].as_str().unwrap());
    assert_eq!(
        reasoning[0],
        msg["reasoning_content"].as_str().unwrap_or("")
    );
    assert_eq!(finish[0].as_deref(), Some("length"));

    // enable_thinking=false pre-fills an empty think block: a longer prompt.
    let off = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"chat_template_kwargs": {"enable_thinking": false}})),
    )
    .json();
    let p_on = w["usage"]["prompt_tokens"].as_u64().unwrap();
    let p_off = off["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(p_off > p_on, "{p_off} vs {p_on}");
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn n_choices_stop_strings_and_logprobs() {
    let mut server = start(config());
    let addr = server.addr();
    // n = 3, sampled with a seed: three choices, each finished, whole and streamed.
    let body = completion_body(json!({"n": 3, "temperature": 1.0, "seed": 7}));
    let w = post(addr, "/v1/completions", &body).json();
    let choices = w["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(w["usage"]["completion_tokens"], 36);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (texts, finish) = streamed(&chunks(&post(addr, "/v1/completions", &sbody)), "text");
    assert_eq!(finish, vec![Some("length".to_string()); 3]);
    let whole: Vec<&str> = choices
        .iter()
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, whole, "a seeded stream repeats the whole response");

    // A stop string cuts the text before it, whole and streamed.
    let long = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"max_tokens": 24})),
    );
    let text = long.json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 8, "{text:?}");
    let mid = chars.len() / 2;
    let stop: String = chars[mid..mid + 2].iter().collect();
    let expect = &text[..text.find(&stop).unwrap()];
    let cut = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"max_tokens": 24, "stop": [stop.clone()]})),
    )
    .json();
    assert_eq!(cut["choices"][0]["text"], expect);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let (t, f) = streamed(
        &chunks(&post(
            addr,
            "/v1/completions",
            &completion_body(json!({"max_tokens": 24, "stop": stop, "stream": true})),
        )),
        "text",
    );
    assert_eq!(t[0], expect);
    assert_eq!(f[0].as_deref(), Some("stop"));

    // Log-probs of the chosen tokens: one per token, each <= 0.
    let lp = post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"logprobs": true})),
    )
    .json();
    let content = lp["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 12);
    assert!(
        content
            .iter()
            .all(|t| t["logprob"].as_f64().unwrap() <= 0.0 && t["token"].is_string())
    );
    let lp = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"logprobs": 0})),
    )
    .json();
    let lps = &lp["choices"][0]["logprobs"];
    assert_eq!(lps["tokens"].as_array().unwrap().len(), 12);
    assert_eq!(lps["token_logprobs"].as_array().unwrap().len(), 12);
    let s = chunks(&post(
        addr,
        "/v1/chat/completions",
        &chat_body(json!({"logprobs": true, "stream": true})),
    ));
    let streamed_lps: usize = s
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .map(|ch| ch["logprobs"]["content"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(streamed_lps, 12);
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

/// Each chat position's `top_logprobs`: `k` entries, sorted descending, none above 0, and
/// the chosen token's log-prob no more than the first.
fn check_chat_tops(content: &[Value], k: usize) {
    for (i, t) in content.iter().enumerate() {
        let tops = t["top_logprobs"].as_array().expect("top_logprobs");
        assert_eq!(tops.len(), k, "position {i}: {t}");
        let lps: Vec<f64> = tops
            .iter()
            .map(|a| a["logprob"].as_f64().unwrap())
            .collect();
        assert!(
            lps.windows(2).all(|w| w[0] >= w[1]),
            "position {i}: {lps:?}"
        );
        assert!(lps[0] <= 0.0);
        assert!(
            tops.iter()
                .all(|a| a["token"].is_string() && a["bytes"].is_array())
        );
        assert!(
            t["logprob"].as_f64().unwrap() <= lps[0],
            "position {i}: {t}"
        );
    }
}

#[test]
fn top_logprobs_whole_streamed_and_completions() {
    let mut server = start(config());
    let addr = server.addr();
    // Sampled, so a chosen token is not always the most likely one.
    let body =
        chat_body(json!({"logprobs": true, "top_logprobs": 3, "temperature": 1.0, "seed": 5}));
    let whole = post(addr, "/v1/chat/completions", &body).json();
    let content = whole["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), 12);
    check_chat_tops(&content, 3);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let s = chunks(&post(addr, "/v1/chat/completions", &sbody));
    let streamed: Vec<Value> = s
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .flat_map(|ch| {
            ch["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        streamed, content,
        "a seeded stream carries the same alternatives"
    );

    // Completions: a {text: logprob} dict per position; two ids may decode alike and share
    // a key, so a dict has 1 or 2 entries, the best no less than the chosen token's.
    let c = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"logprobs": 2})),
    )
    .json();
    let lps = &c["choices"][0]["logprobs"];
    let tops = lps["top_logprobs"].as_array().unwrap();
    let chosen = lps["token_logprobs"].as_array().unwrap();
    assert_eq!(tops.len(), 12);
    for (d, lp) in tops.iter().zip(chosen) {
        let d = d.as_object().unwrap();
        assert!((1..=2).contains(&d.len()), "{d:?}");
        let best = d
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        // Greedy: the chosen token is the best alternative.
        assert_eq!(best, lp.as_f64().unwrap(), "{d:?}");
    }
    let streamed_tops: usize = chunks(&post(
        addr,
        "/v1/completions",
        &completion_body(json!({"logprobs": 2, "stream": true})),
    ))
    .iter()
    .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
    .map(|ch| {
        ch["logprobs"]["top_logprobs"]
            .as_array()
            .map_or(0, Vec::len)
    })
    .sum();
    assert_eq!(streamed_tops, 12);
    let none = post(
        addr,
        "/v1/completions",
        &completion_body(json!({"logprobs": 0})),
    )
    .json();
    assert!(none["choices"][0]["logprobs"]["top_logprobs"].is_null());
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn every_malformed_request_is_a_400_naming_the_field() {
    let mut server = start(config());
    let addr = server.addr();
    let chat = "/v1/chat/completions";
    let cmpl = "/v1/completions";
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        (chat, "".into(), None),
        (chat, "{not json".into(), None),
        (chat, "[1, 2]".into(), None),
        (chat, json!({}).to_string(), Some("messages")),
        (chat, json!({"messages": []}).to_string(), Some("messages")),
        (
            chat,
            json!({"messages": "hi"}).to_string(),
            Some("messages"),
        ),
        (
            chat,
            json!({"messages": [{"role": "robot", "content": "x"}]}).to_string(),
            Some("messages[0].role"),
        ),
        (
            chat,
            json!({"messages": [{"content": "x"}]}).to_string(),
            Some("messages[0]"),
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": 3}]}).to_string(),
            Some("messages[0].content"),
        ),
        (
            chat,
            json!({"messages": [{"role": "user"}]}).to_string(),
            Some("messages[0].content"),
        ),
        (
            chat,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}).to_string(),
            Some("messages[0].content[0]"),
        ),
        (
            chat,
            chat_body(json!({"prompt": "x"})).to_string(),
            Some("prompt"),
        ),
        (
            chat,
            chat_body(json!({"temperature": "hot"})).to_string(),
            Some("temperature"),
        ),
        (
            chat,
            chat_body(json!({"temperature": 5})).to_string(),
            Some("temperature"),
        ),
        (
            chat,
            chat_body(json!({"temperature": -1})).to_string(),
            Some("temperature"),
        ),
        (
            chat,
            chat_body(json!({"top_p": 0})).to_string(),
            Some("top_p"),
        ),
        (
            chat,
            chat_body(json!({"top_k": -5})).to_string(),
            Some("top_k"),
        ),
        (
            chat,
            chat_body(json!({"min_p": 2})).to_string(),
            Some("min_p"),
        ),
        (
            chat,
            chat_body(json!({"repetition_penalty": 0})).to_string(),
            Some("repetition_penalty"),
        ),
        (chat, chat_body(json!({"n": 0})).to_string(), Some("n")),
        (chat, chat_body(json!({"n": 1000})).to_string(), Some("n")),
        (chat, chat_body(json!({"n": -1})).to_string(), Some("n")),
        (
            chat,
            chat_body(json!({"max_tokens": 0})).to_string(),
            Some("max_tokens"),
        ),
        (
            chat,
            chat_body(json!({"max_tokens": 100000})).to_string(),
            Some("max_tokens"),
        ),
        (
            chat,
            chat_body(json!({"max_completion_tokens": 0})).to_string(),
            Some("max_completion_tokens"),
        ),
        (
            chat,
            chat_body(json!({"stop": ""})).to_string(),
            Some("stop"),
        ),
        (
            chat,
            chat_body(json!({"stop": 5})).to_string(),
            Some("stop"),
        ),
        (
            chat,
            chat_body(json!({"seed": "x"})).to_string(),
            Some("seed"),
        ),
        (
            chat,
            chat_body(json!({"stream": "yes"})).to_string(),
            Some("stream"),
        ),
        (
            chat,
            chat_body(json!({"logprobs": 3})).to_string(),
            Some("logprobs"),
        ),
        (
            chat,
            chat_body(json!({"logprobs": true, "top_logprobs": 21})).to_string(),
            Some("top_logprobs"),
        ),
        (
            chat,
            chat_body(json!({"logprobs": true, "top_logprobs": -1})).to_string(),
            Some("top_logprobs"),
        ),
        (
            chat,
            chat_body(json!({"top_logprobs": 2})).to_string(),
            Some("top_logprobs"),
        ),
        (
            chat,
            chat_body(json!({"chat_template_kwargs": {"enable_thinking": "no"}})).to_string(),
            Some("chat_template_kwargs.enable_thinking"),
        ),
        (
            chat,
            chat_body(json!({"chat_template_kwargs": {"messages": []}})).to_string(),
            Some("chat_template_kwargs.messages"),
        ),
        (
            chat,
            chat_body(json!({"tools": [{"type": "function"}]})).to_string(),
            Some("tools"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {"capacity": 99}, "ignore_eos": null})).to_string(),
            Some("asyncthink.capacity"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {"workers": 2}, "ignore_eos": null})).to_string(),
            Some("asyncthink.workers"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": "yes", "ignore_eos": null})).to_string(),
            Some("asyncthink"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}})).to_string(),
            Some("ignore_eos"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null, "stop": "x"})).to_string(),
            Some("stop"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null, "logprobs": true})).to_string(),
            Some("logprobs"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null, "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Compute 7*6."}]}))
            .to_string(),
            Some("messages"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null, "messages": [
                {"role": "assistant", "content": "Compute 7*6."}]}))
            .to_string(),
            Some("messages[0].role"),
        ),
        (
            cmpl,
            completion_body(json!({"asyncthink": {}, "ignore_eos": null})).to_string(),
            Some("asyncthink"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null, "logprobs": 2})).to_string(),
            Some("logprobs"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null,
                "chat_template_kwargs": {"enable_thinking": false}}))
            .to_string(),
            Some("chat_template_kwargs"),
        ),
        (
            chat,
            chat_body(json!({"asyncthink": {}, "ignore_eos": null, "max_tokens": 5000}))
                .to_string(),
            Some("max_tokens"),
        ),
        (
            chat,
            chat_body(json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]}))
                .to_string(),
            Some("messages"),
        ),
        (cmpl, json!({}).to_string(), Some("prompt")),
        (cmpl, json!({"prompt": 5}).to_string(), Some("prompt")),
        (
            cmpl,
            json!({"prompt": ["a", "b"]}).to_string(),
            Some("prompt"),
        ),
        (cmpl, json!({"prompt": []}).to_string(), Some("prompt")),
        (
            cmpl,
            json!({"prompt": [1, 99999]}).to_string(),
            Some("prompt"),
        ),
        (cmpl, json!({"prompt": [1, -2]}).to_string(), Some("prompt")),
        (
            cmpl,
            json!({"prompt": "x", "messages": []}).to_string(),
            Some("messages"),
        ),
        (
            cmpl,
            json!({"prompt": "x", "logprobs": true}).to_string(),
            Some("logprobs"),
        ),
        (
            cmpl,
            json!({"prompt": "x", "logprobs": 21}).to_string(),
            Some("logprobs"),
        ),
        (
            cmpl,
            json!({"prompt": "x", "logprobs": -1}).to_string(),
            Some("logprobs"),
        ),
        (
            cmpl,
            json!({"prompt": "x", "echo": true}).to_string(),
            Some("echo"),
        ),
        (
            cmpl,
            json!({"prompt": "x", "max_tokens": 1.5}).to_string(),
            Some("max_tokens"),
        ),
    ];
    for (path, body, param) in &cases {
        let r = send(addr, "POST", path, &[], body);
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let e = &r.json()["error"];
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}: {e}"
        );
        assert_eq!(e["type"], "invalid_request_error", "{body}");
        assert!(e.get("code").is_some(), "{body}: {e}");
        assert_eq!(e["param"].as_str(), *param, "{path} {body}: {e}");
    }
    // An unknown model is a 404, and the server still serves afterwards.
    let r = post(addr, chat, &chat_body(json!({"model": "gpt-5"})));
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let ok = post(addr, chat, &chat_body(json!({})));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let text = get(addr, "/metrics").text();
    assert_eq!(
        metric(&text, "asyncthink_requests_total{outcome=\"invalid\"}"),
        cases.len() as f64 + 1.0
    );
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn api_key_guards_v1_routes() {
    let mut cfg = config();
    cfg.api_key = Some("s3cret".into());
    let mut server = start(cfg);
    let addr = server.addr();
    let body = chat_body(json!({})).to_string();
    let chat = "/v1/chat/completions";
    let none = send(addr, "POST", chat, &[], &body);
    assert_eq!(none.status, 401);
    assert_eq!(none.json()["error"]["type"], "authentication_error");
    let wrong = send(
        addr,
        "POST",
        chat,
        &[("Authorization", "Bearer s3creT")],
        &body,
    );
    assert_eq!(wrong.status, 401);
    let right = send(
        addr,
        "POST",
        chat,
        &[("Authorization", "Bearer s3cret")],
        &body,
    );
    assert_eq!(right.status, 200, "{}", right.text());
    assert_eq!(send(addr, "GET", "/v1/models", &[], "").status, 401);
    assert_eq!(get(addr, "/health").status, 200);
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

/// A stream long enough (8 choices of 500 tokens) that the client leaves while it runs.
fn long_stream() -> Value {
    completion_body(json!({"max_tokens": 500, "n": 8, "stream": true}))
}

#[test]
fn a_disconnected_client_is_aborted_and_its_blocks_freed() {
    let mut server = start(config());
    let addr = server.addr();
    let seen = stream_then_disconnect(addr, "/v1/completions", &long_stream(), 3);
    assert_eq!(seen.len(), 3, "{seen:?}");
    let text = wait_for_metrics(addr, "the aborted stream's blocks", |t| {
        idle(t) && metric(t, "asyncthink_requests_total{outcome=\"disconnected\"}") == 1.0
    });
    assert!(
        metric(&text, "asyncthink_generated_tokens_total") < 4000.0,
        "{text}"
    );

    // A whole (non-streaming) request whose client leaves is aborted too.
    {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let body = completion_body(json!({"max_tokens": 500, "n": 8})).to_string();
        use std::io::Write;
        write!(
            s,
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        wait_for_metrics(addr, "the whole request to start", |t| {
            metric(t, "asyncthink_live_requests") == 1.0
        });
    }
    wait_for_metrics(addr, "the whole request's abort", |t| {
        idle(t) && metric(t, "asyncthink_requests_total{outcome=\"disconnected\"}") == 2.0
    });
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn a_full_queue_answers_503_and_recovers() {
    let mut cfg = config();
    cfg.max_pending = 1;
    let mut server = start(cfg);
    let addr = server.addr();
    // While one long stream holds the only slot, another request is refused. (Should the
    // stream end between the check and the second request, try again.)
    let mut refused = None;
    for _ in 0..5 {
        let holder = std::thread::spawn(move || {
            stream_then_disconnect(addr, "/v1/completions", &long_stream(), usize::MAX)
        });
        wait_for_metrics(addr, "the first request to run", |t| {
            metric(t, "asyncthink_live_requests") == 1.0
        });
        let r = post(addr, "/v1/completions", &completion_body(json!({})));
        let first = holder.join().unwrap();
        assert_eq!(first.last().map(String::as_str), Some("[DONE]"));
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = refused.expect("a request beyond the queue limit was refused");
    assert_eq!(r.json()["error"]["code"], "server_overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    let ok = post(addr, "/v1/completions", &completion_body(json!({})));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let text = get(addr, "/metrics").text();
    assert_eq!(
        metric(&text, "asyncthink_requests_total{outcome=\"rejected\"}"),
        1.0
    );
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn shutdown_aborts_in_flight_requests_after_the_grace_period() {
    let mut cfg = config();
    cfg.shutdown_grace = Duration::from_millis(200);
    let mut server = start(cfg);
    let addr = server.addr();
    let body = completion_body(json!({"max_tokens": 500, "stream": true}));
    let client = std::thread::spawn(move || post(addr, "/v1/completions", &body));
    wait_for_metrics(addr, "the request to run", |t| {
        metric(t, "asyncthink_generated_tokens_total") > 0.0
    });
    server.shutdown();
    let r = client.join().unwrap();
    let cs = chunks(&r);
    let (_, finish) = streamed(&cs, "text");
    assert!(
        matches!(finish[0].as_deref(), Some("abort" | "length")),
        "{finish:?}"
    );
    let report = server.wait().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting"
    );
}

#[test]
fn sigterm_stops_the_binary_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(["serve", "--port", "0", "--served-model-name", MODEL])
        .args(["--kv-cache-mb", "16", "--shutdown-grace", "0.3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn asyncthink serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("first line: {line:?}"))
        .parse()
        .unwrap();
    let ok = post(addr, "/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(ok.status, 200, "{}", ok.text());
    let body = completion_body(json!({"max_tokens": 500, "stream": true}));
    let client = std::thread::spawn(move || post(addr, "/v1/completions", &body));
    wait_for_metrics(addr, "the stream to run", |t| {
        metric(t, "asyncthink_live_requests") == 1.0
    });
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let r = client.join().unwrap();
    chunks(&r);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("KV blocks free"), "{stderr}");
}

#[test]
fn greedy_output_equals_batch_token_for_token() {
    let dir = tempfile::tempdir().unwrap();
    let questions = ["What is 2+2?", "Name a colour.", "Count to five"];
    let ids = [vec![5u32, 17, 42, 7, 99], vec![300, 2, 1, 450]];
    let mut lines = String::new();
    for q in questions {
        lines.push_str(&json!({"messages": [{"role": "user", "content": q}]}).to_string());
        lines.push('\n');
    }
    for p in &ids {
        lines.push_str(&json!({ "prompt_ids": p }).to_string());
        lines.push('\n');
    }
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    std::fs::write(&input, lines).unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_asyncthink"))
        .args(["batch", "--kv-cache-mb", "16", "--max-new-tokens", "24"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());
    let batch: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let mut server = start(config());
    let addr = server.addr();
    for (i, q) in questions.iter().enumerate() {
        for stream in [false, true] {
            let body = json!({
                "messages": [{"role": "user", "content": q}],
                "max_tokens": 24, "temperature": 0, "return_token_ids": true, "stream": stream,
            });
            let got = server_ids(&post(addr, "/v1/chat/completions", &body), stream);
            assert_eq!(got, batch[i]["token_ids"], "question {i}, stream {stream}");
        }
    }
    for (j, p) in ids.iter().enumerate() {
        let body =
            json!({"prompt": p, "max_tokens": 24, "temperature": 0, "return_token_ids": true});
        let r = post(addr, "/v1/completions", &body);
        assert_eq!(
            server_ids(&r, false),
            batch[questions.len() + j]["token_ids"]
        );
        assert_eq!(
            r.json()["choices"][0]["text"],
            batch[questions.len() + j]["text"]
        );
    }
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

fn server_ids(r: &Response, stream: bool) -> Value {
    if !stream {
        return r.json()["choices"][0]["token_ids"].clone();
    }
    let ids: Vec<Value> = chunks(r)
        .iter()
        .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
        .flat_map(|ch| ch["token_ids"].as_array().cloned().unwrap_or_default())
        .collect();
    Value::Array(ids)
}

#[test]
fn load_of_64_streaming_clients_with_random_disconnects() {
    let mut server = start_with(config(), 512);
    let addr = server.addr();
    const CLIENTS: u64 = 64;
    const EACH: u64 = 2;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            std::thread::spawn(move || {
                let mut rng = c.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = move |m: u64| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng % m
                };
                let (mut completed, mut left) = (0, 0);
                for _ in 0..EACH {
                    let max_tokens = 4 + next(36);
                    let (path, body) = if next(2) == 0 {
                        ("/v1/chat/completions", chat_body(json!({"max_tokens": max_tokens, "stream": true, "temperature": 0.8, "seed": next(1000)})))
                    } else {
                        ("/v1/completions", completion_body(json!({"max_tokens": max_tokens, "stream": true})))
                    };
                    if next(10) < 3 {
                        stream_then_disconnect(addr, path, &body, 1 + next(4) as usize);
                        left += 1;
                    } else {
                        let r = post(addr, path, &body);
                        let cs = chunks(&r);
                        let field = if path.contains("chat") { "content" } else { "text" };
                        let (_, finish) = streamed(&cs, field);
                        assert_eq!(finish.len(), 1);
                        assert!(
                            matches!(finish[0].as_deref(), Some("length" | "stop")),
                            "{finish:?}"
                        );
                        completed += 1;
                    }
                }
                (completed, left)
            })
        })
        .collect();
    let (mut completed, mut left) = (0, 0);
    for t in threads {
        let (c, l) = t.join().expect("client thread");
        completed += c;
        left += l;
    }
    assert_eq!(completed + left, CLIENTS * EACH);
    let text = wait_for_metrics(addr, "the load to drain", |t| {
        let done = metric(t, "asyncthink_requests_total{outcome=\"completed\"}")
            + metric(t, "asyncthink_requests_total{outcome=\"disconnected\"}");
        idle(t) && done == (CLIENTS * EACH) as f64
    });
    assert!(metric(&text, "asyncthink_requests_total{outcome=\"completed\"}") >= completed as f64);
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

/// `--stream-interval 4`: the same text and token ids in fewer chunks, the first token at
/// once and the last with the finish reason.
#[test]
fn a_stream_interval_sends_the_same_tokens_in_fewer_chunks() {
    let mut plain = start(config());
    let body = completion_body(json!({"stream": true, "return_token_ids": true, "n": 2}));
    let want = chunks(&post(plain.addr(), "/v1/completions", &body));
    plain.shutdown();
    assert!(plain.wait().unwrap().is_clean());
    let mut server = start(asyncthink::serve::ServeConfig {
        stream_interval: 4,
        ..config()
    });
    let got = chunks(&post(server.addr(), "/v1/completions", &body));
    let ids = |cs: &[Value], i: u64| -> Vec<Vec<u64>> {
        cs.iter()
            .flat_map(|c| c["choices"].as_array().cloned().unwrap_or_default())
            .filter(|ch| ch["index"] == i)
            .filter_map(|ch| ch["token_ids"].as_array().cloned())
            .filter(|t| !t.is_empty())
            .map(|t| t.iter().map(|x| x.as_u64().unwrap()).collect())
            .collect()
    };
    assert_eq!(streamed(&got, "text"), streamed(&want, "text"));
    for i in 0..2 {
        let (g, w) = (ids(&got, i), ids(&want, i));
        assert_eq!(g.concat(), w.concat(), "choice {i}: the same tokens");
        assert_eq!(
            w.len(),
            12,
            "choice {i}: one chunk per token without the interval"
        );
        // 12 tokens: the first alone, then 4, 4 and the last 3 with the finish.
        let sizes: Vec<usize> = g.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 4, 4, 3], "choice {i}");
    }
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}
