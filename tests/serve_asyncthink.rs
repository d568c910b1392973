//! The server's AsyncThink request mode on the embedded model (the products model): the
//! answer and the episode equal `run_episodes` on the same question, the stream carries the
//! organizer's text then the answer and the episode, episodes share the engine with plain
//! requests, and a client that leaves mid-episode has every sequence of it aborted.

mod serve_support;

use asyncthink::asyncthink::executor::{ExecutorConfig, run_episodes};
use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig};
use asyncthink::model::ModelSource;
use serde_json::{Value, json};
use serve_support::*;

const QUESTION: &str = "Compute 7*6, 4*9, 13*5.";

fn episode_body(extra: Value) -> Value {
    let mut b = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "asyncthink": {"capacity": 4},
    });
    if let (Some(b), Value::Object(e)) = (b.as_object_mut(), extra) {
        b.extend(e);
    }
    b
}

/// The same question through the executor directly: greedy, capacity 4, the server's
/// default budgets (organizer 512 tokens, workers 256).
fn offline_episode() -> (String, usize, usize) {
    let (model, tokenizer) = ModelSource::Embedded.load(CpuBackend::default()).unwrap();
    let mut engine = Engine::new(&model, Some(&tokenizer), EngineConfig::default()).unwrap();
    let mut cfg = ExecutorConfig::new(4);
    for p in [&mut cfg.organizer, &mut cfg.worker] {
        p.temperature = 0.0;
    }
    cfg.organizer.max_new_tokens = 512;
    cfg.worker.max_new_tokens = 256;
    let out = run_episodes(
        &mut engine,
        &tokenizer,
        &cfg,
        &[QUESTION.to_string()],
        None,
        0,
    )
    .unwrap();
    let e = &out[0];
    (
        e.record.final_answer.clone().expect("an answer"),
        e.critical_path_tokens,
        e.forks,
    )
}

#[test]
fn an_episode_whole_and_streamed_equals_the_executor_offline() {
    let (answer, critical_path, forks) = offline_episode();
    assert_eq!(answer, "7*6=42, 4*9=36, 13*5=65");
    let mut server = start(config());
    let addr = server.addr();

    let whole = post(addr, "/v1/chat/completions", &episode_body(json!({})));
    assert_eq!(whole.status, 200, "{}", whole.text());
    let v = whole.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["message"]["content"], answer.as_str());
    assert_eq!(choice["finish_reason"], "stop");
    let at = &choice["asyncthink"];
    assert_eq!(at["critical_path_tokens"], critical_path);
    assert_eq!(at["forks"], forks);
    assert_eq!(at["format_error"], Value::Null);
    assert_eq!(at["record"]["capacity"], 4);
    assert!(at["record"]["concurrency"].as_f64().unwrap() > 1.0, "{at}");
    assert_eq!(at["workers"].as_array().unwrap().len(), forks);
    let reasoning = choice["message"]["reasoning_content"].as_str().unwrap();
    assert_eq!(reasoning, at["record"]["organizer_text"].as_str().unwrap());
    assert!(reasoning.contains("<JOIN-1>7*6=42</JOIN-1>"), "{reasoning}");
    assert_eq!(
        v["usage"]["completion_tokens"], at["total_tokens"],
        "usage counts every agent's tokens"
    );

    let streamed = post(
        addr,
        "/v1/chat/completions",
        &episode_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(streamed.status, 200, "{}", streamed.text());
    let data = streamed.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let (mut text, mut content, mut last) = (String::new(), String::new(), None);
    for c in &chunks {
        for ch in c["choices"].as_array().unwrap() {
            text.push_str(ch["delta"]["reasoning_content"].as_str().unwrap_or(""));
            content.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
            if !ch["finish_reason"].is_null() {
                last = Some(ch.clone());
            }
        }
    }
    let pieces = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["reasoning_content"].is_string())
        .count();
    assert!(pieces > 10, "the organizer's text streams as it decodes");
    assert_eq!(text, reasoning);
    assert_eq!(content, answer);
    let last = last.expect("a chunk with the finish reason");
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["asyncthink"]["critical_path_tokens"], critical_path);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], at["total_tokens"]);

    let text = wait_for_metrics(addr, "the episodes to end", idle);
    assert_eq!(
        metric(&text, "asyncthink_requests_total{outcome=\"completed\"}"),
        2.0
    );
    // Both requests' organizers sent the same deltas, one gap fewer each than deltas; a
    // lagging stream may have merged some of them into fewer chunks.
    let gaps = metric(
        &text,
        "asyncthink_episode_inter_token_latency_seconds_count",
    );
    assert!(
        gaps >= 2.0 * (pieces - 1) as f64,
        "{gaps} gaps for {pieces} chunks"
    );
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn episodes_and_plain_requests_share_the_engine() {
    let mut server = start(config());
    let addr = server.addr();
    let clients: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let body = if i % 3 == 2 {
                    json!({"model": MODEL, "prompt": "7*6", "max_tokens": 16, "temperature": 0})
                } else {
                    episode_body(json!({"n": 2, "temperature": 0.7, "seed": i}))
                };
                let path = if i % 3 == 2 {
                    "/v1/completions"
                } else {
                    "/v1/chat/completions"
                };
                post(addr, path, &body)
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "client {i}: {}", r.text());
        let v = r.json();
        let choices = v["choices"].as_array().unwrap();
        if i % 3 == 2 {
            assert_eq!(choices.len(), 1);
            continue;
        }
        assert_eq!(choices.len(), 2, "n = 2 gives two episodes");
        for ch in choices {
            let at = &ch["asyncthink"];
            let finish = ch["finish_reason"].as_str().unwrap();
            // Sampled at 0.7, an episode may end in a format error; it says which.
            assert!(["stop", "error", "length"].contains(&finish), "{ch}");
            assert_eq!(finish == "stop", at["format_error"].is_null(), "{ch}");
            assert!(at["critical_path_tokens"].as_u64().unwrap() > 0);
        }
    }
    let text = wait_for_metrics(addr, "every sequence to end", idle);
    assert_eq!(
        metric(&text, "asyncthink_requests_total{outcome=\"completed\"}"),
        6.0
    );
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}

#[test]
fn a_client_leaving_mid_episode_aborts_every_agent() {
    let mut server = start(config());
    let addr = server.addr();
    // Long budgets and four episodes, so the client leaves while workers run.
    let body = episode_body(json!({"stream": true, "n": 4, "temperature": 1.0, "seed": 3}));
    let seen = stream_then_disconnect(addr, "/v1/chat/completions", &body, 12);
    assert_eq!(seen.len(), 12, "{seen:?}");
    let text = wait_for_metrics(addr, "the episodes' abort", |t| {
        idle(t) && metric(t, "asyncthink_requests_total{outcome=\"disconnected\"}") == 1.0
    });
    assert_eq!(
        metric(&text, "asyncthink_requests_total{outcome=\"completed\"}"),
        0.0
    );
    server.shutdown();
    assert!(server.wait().unwrap().is_clean());
}
