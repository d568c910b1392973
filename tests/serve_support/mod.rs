//! For the server tests: a server on an ephemeral port over the embedded model, and a
//! small blocking HTTP/1.1 client (one request per connection) that can also walk away
//! from a stream half-way, as a disconnecting client does.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::EngineConfig;
use asyncthink::model::ModelSource;
use asyncthink::serve::{self, Loaded, ServeConfig, Server};
use serde_json::Value;

pub const MODEL: &str = "tiny";
/// Generous: the test machine is small and shared.
pub const TIMEOUT: Duration = Duration::from_secs(180);

pub fn config() -> ServeConfig {
    ServeConfig {
        host: "127.0.0.1".into(),
        port: 0,
        served_model_name: MODEL.into(),
        ..ServeConfig::default()
    }
}

pub fn start(cfg: ServeConfig) -> Server {
    start_with(cfg, 256)
}

pub fn start_with(cfg: ServeConfig, num_blocks: usize) -> Server {
    serve::start(cfg, move || {
        let (model, tokenizer) = ModelSource::Embedded.load(CpuBackend::default())?;
        Ok(Loaded {
            model,
            tokenizer,
            engine: EngineConfig {
                num_blocks,
                ..EngineConfig::default()
            },
        })
    })
    .expect("server starts")
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `data:` payloads of a server-sent-event body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.text())
    }
}

pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s
}

fn write_request(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).expect("write request");
}

pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut s = connect(addr);
    write_request(&mut s, method, path, headers, body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    parse(&raw)
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    send(addr, "GET", path, &[], "")
}

pub fn post(addr: SocketAddr, path: &str, body: &Value) -> Response {
    send(addr, "POST", path, &[], &body.to_string())
}

fn parse(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response has a head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .expect("chunk size");
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
}

/// Posts a streaming request, reads until `events` SSE `data:` lines have arrived, then
/// drops the connection. Returns the lines seen.
pub fn stream_then_disconnect(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    events: usize,
) -> Vec<String> {
    let mut s = connect(addr);
    write_request(&mut s, "POST", path, &[], &body.to_string());
    let mut reader = BufReader::new(s);
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < events {
        line.clear();
        if reader.read_line(&mut line).expect("read stream") == 0 {
            break;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            seen.push(d.to_string());
        }
    }
    let s = reader.into_inner();
    let _ = s.shutdown(std::net::Shutdown::Both);
    seen
}

/// A metric's value from /metrics text (`name` with its labels, e.g. `x{outcome="a"}`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

/// Polls /metrics until `done` holds (the engine loop works asynchronously); panics with the
/// last text after TIMEOUT.
pub fn wait_for_metrics(addr: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let began = Instant::now();
    loop {
        let text = get(addr, "/metrics").text();
        if done(&text) {
            return text;
        }
        assert!(
            began.elapsed() < TIMEOUT,
            "timed out waiting for {what}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// No sequence running or waiting, and every KV block free.
pub fn idle(text: &str) -> bool {
    metric(text, "asyncthink_running_sequences") == 0.0
        && metric(text, "asyncthink_waiting_sequences") == 0.0
        && metric(text, "asyncthink_live_requests") == 0.0
        && metric(text, "asyncthink_kv_blocks_free") == metric(text, "asyncthink_kv_blocks_total")
}
