//! Pictures of episodes: a timeline (organizer and workers as lanes over engine steps,
//! fork and join arrows) and a histogram of forks per episode over many episodes.

use super::episode::{EpisodeOutcome, EventKind};

const LANE: f64 = 28.0;
const LEFT: f64 = 90.0;
const TOP: f64 = 30.0;

pub fn timeline_svg(e: &EpisodeOutcome) -> String {
    let steps = e
        .organizer
        .end_step
        .max(e.workers.iter().map(|w| w.end_step).max().unwrap_or(0))
        .max(1);
    let width = 760.0;
    let scale = (width - LEFT - 20.0) / steps as f64;
    let x = |s: usize| LEFT + s as f64 * scale;
    let lane_of = |w: Option<u32>| match w {
        None => 0,
        Some(id) => {
            1 + e
                .workers
                .iter()
                .position(|s| s.worker == Some(id))
                .unwrap_or(0)
        }
    };
    let y = |lane: usize| TOP + lane as f64 * LANE;
    let height = TOP + (e.workers.len() + 1) as f64 * LANE + 40.0;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="16">critical path {} tokens, η/c {:.2}, {} forks, {} steps</text>
"##,
        e.critical_path_tokens, e.concurrency_ratio, e.forks, steps
    );
    let mut lane = |label: &str, l: usize, s: usize, end: usize, color: &str, tokens: usize| {
        svg.push_str(&format!(
            r##"<text x="8" y="{:.1}">{label}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="16" fill="{color}"><title>{label}: steps {s}–{end}, {tokens} tokens</title></rect>
"##,
            y(l) + 12.0,
            x(s),
            y(l),
            (x(end) - x(s)).max(1.0)
        ));
    };
    lane(
        "organizer",
        0,
        e.organizer.start_step,
        e.organizer.end_step,
        "#1f77b4",
        e.organizer.tokens,
    );
    for (i, w) in e.workers.iter().enumerate() {
        let label = format!("worker {}", w.worker.unwrap_or(0));
        lane(&label, i + 1, w.start_step, w.end_step, "#ff7f0e", w.tokens);
    }
    for ev in &e.events {
        let (Some(id), kind) = (ev.worker, ev.kind) else {
            continue;
        };
        let l = lane_of(Some(id));
        let Some(w) = e.workers.get(l - 1) else {
            continue;
        };
        let (x1, y1, x2, y2) = match kind {
            EventKind::Fork => (x(ev.step), y(0) + 16.0, x(w.start_step), y(l)),
            EventKind::Join => (x(w.end_step), y(l), x(ev.step.max(w.end_step)), y(0) + 16.0),
            EventKind::Answer => continue,
        };
        svg.push_str(&format!(
            r##"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="#444" marker-end="url(#arrow)"><title>{kind:?} {id} at step {}</title></line>
"##,
            ev.step
        ));
    }
    svg.push_str(&format!(
        r##"<text x="{LEFT}" y="{:.1}">engine step →</text>"##,
        height - 12.0
    ));
    svg.push_str("\n</svg>\n");
    svg
}

/// Histogram of forks per episode.
pub fn forks_histogram_svg(episodes: &[EpisodeOutcome]) -> String {
    let max_forks = episodes.iter().map(|e| e.forks).max().unwrap_or(0);
    let mut counts = vec![0usize; max_forks + 1];
    for e in episodes {
        counts[e.forks] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let (w, h, bar) = (120.0 + 60.0 * counts.len() as f64, 260.0, 40.0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/><text x="10" y="18">forks per episode ({} episodes)</text>
"##,
        episodes.len()
    );
    for (forks, &c) in counts.iter().enumerate() {
        let bh = 180.0 * c as f64 / top as f64;
        let bx = 60.0 + forks as f64 * 60.0;
        svg.push_str(&format!(
            r##"<rect x="{bx}" y="{:.1}" width="{bar}" height="{bh:.1}" fill="#2ca02c"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{c}</text><text x="{:.1}" y="{:.1}" text-anchor="middle">{forks}</text>
"##,
            220.0 - bh,
            bx + bar / 2.0,
            215.0 - bh,
            bx + bar / 2.0,
            238.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}
