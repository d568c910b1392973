//! Load generator for `scripts/bench-serve.py`: C closed-loop clients stream completions
//! from a running `asyncthink serve` until the prompts run out, and one JSON object with
//! the level's figures goes to stdout.
//!
//! On a small machine the clients share the cores with the server they measure, so they
//! must cost as little as possible: a blocking thread per client parsing one small JSON
//! chunk per token takes a few microseconds, where the Python clients took about 80.
//!
//!     cargo run --release --example serve_load -- --addr 127.0.0.1:8000 \
//!         --prompts prompts.jsonl --max-tokens 128 --concurrency 32

use std::io::{BufRead, BufReader};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{Value, json};

struct Args {
    addr: String,
    prompts: String,
    max_tokens: usize,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: String::new(),
        prompts: String::new(),
        max_tokens: 128,
        concurrency: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value,
            "--prompts" => args.prompts = value,
            "--max-tokens" => args.max_tokens = number(&value)?,
            "--concurrency" => args.concurrency = number(&value)?.max(1),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.addr.is_empty() || args.prompts.is_empty() {
        return Err("--addr and --prompts are required".into());
    }
    Ok(args)
}

/// One request's client-side view.
struct Timed {
    ttft: f64,
    itl: Vec<f64>,
    tokens: usize,
}

fn one_request(
    agent: &ureq::Agent,
    url: &str,
    prompt: &Value,
    max_tokens: usize,
) -> Result<Timed, String> {
    let body = json!({
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
        "stream": true, "return_token_ids": true,
    });
    let start = Instant::now();
    let resp = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .map_err(|e| format!("POST {url}: {e}"))?;
    let reader = BufReader::new(resp.into_body().into_reader());
    let (mut times, mut tokens) = (Vec::new(), 0);
    for line in reader.lines() {
        let line = line.map_err(|e| format!("reading the stream: {e}"))?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value =
            serde_json::from_str(data).map_err(|e| format!("a chunk: {e}: {data}"))?;
        let n: usize = chunk["choices"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| c["token_ids"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        if n > 0 {
            times.push(Instant::now());
            tokens += n;
        }
    }
    let ttft = times
        .first()
        .map_or(f64::NAN, |t| (*t - start).as_secs_f64());
    let itl = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    Ok(Timed { ttft, itl, tokens })
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    xs[((p / 100.0 * (xs.len() - 1) as f64).round() as usize).min(xs.len() - 1)]
}

fn main() -> Result<(), String> {
    let args = parse_args()?;
    let text =
        std::fs::read_to_string(&args.prompts).map_err(|e| format!("{}: {e}", args.prompts))?;
    let prompts: Vec<Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", args.prompts)))
        .collect::<Result<_, _>>()?;
    let url = format!("http://{}/v1/completions", args.addr);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(true)
        .build()
        .into();
    let requests = prompts.len();
    let queue = Mutex::new(prompts);
    let results: Mutex<Vec<Timed>> = Mutex::new(Vec::new());
    let began = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|_| {
                s.spawn(|| -> Result<(), String> {
                    loop {
                        let Some(p) = queue.lock().map_err(|e| e.to_string())?.pop() else {
                            return Ok(());
                        };
                        let t = one_request(&agent, &url, &p, args.max_tokens)?;
                        results.lock().map_err(|e| e.to_string())?.push(t);
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .map_err(|_| "a client thread panicked".to_string())?
            })
            .collect::<Result<Vec<()>, String>>()
    })?;
    let secs = began.elapsed().as_secs_f64();
    let results = results.into_inner().map_err(|e| e.to_string())?;
    let mut ttfts: Vec<f64> = results.iter().map(|r| r.ttft).collect();
    let mut itls: Vec<f64> = results.iter().flat_map(|r| r.itl.iter().copied()).collect();
    let tokens: usize = results.iter().map(|r| r.tokens).sum();
    let level = json!({
        "concurrency": args.concurrency,
        "requests": requests,
        "seconds": secs,
        "requests_per_second": requests as f64 / secs,
        "output_tokens_per_second": tokens as f64 / secs,
        "ttft_p50_ms": 1e3 * percentile(&mut ttfts, 50.0),
        "ttft_p99_ms": 1e3 * percentile(&mut ttfts, 99.0),
        "itl_p50_ms": 1e3 * percentile(&mut itls, 50.0),
        "itl_p99_ms": 1e3 * percentile(&mut itls, 99.0),
    });
    println!("{level}");
    Ok(())
}
