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
    // Room on the right for a lane's note ("never joined", "failed").
    let scale = (width - LEFT - 96.0) / steps as f64;
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
    let lanes_bottom = TOP + (e.workers.len() + 1) as f64 * LANE;
    let failure = e
        .record
        .format_errors
        .first()
        .map(|err| err.to_string())
        .or_else(|| {
            e.record
                .final_answer
                .is_none()
                .then(|| "no final answer".to_string())
        });
    let height = lanes_bottom + 60.0 + if failure.is_some() { 18.0 } else { 0.0 };
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">
<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="16">critical path {} tokens, η/c {:.2}, {} forks, {} steps</text>
"##,
        e.critical_path_tokens, e.concurrency_ratio, e.forks, steps
    );
    // Step ticks under the lanes, so spans and arrows can be read off in engine steps.
    for t in crate::train::plot::ticks(0.0, steps as f64, 8) {
        svg.push_str(&format!(
            r##"<line x1="{xt:.1}" y1="{:.1}" x2="{xt:.1}" y2="{:.1}" stroke="#999"/><text x="{xt:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}</text>
"##,
            lanes_bottom,
            lanes_bottom + 5.0,
            lanes_bottom + 18.0,
            t as usize,
            xt = x(t as usize)
        ));
    }
    let mut lane = |label: &str,
                    l: usize,
                    s: usize,
                    end: usize,
                    color: &str,
                    tokens: usize,
                    note: &str| {
        // A lane that did not finish its part (never joined, or the episode failed) is
        // hatched with a dashed outline instead of filled.
        let style = if note.is_empty() {
            format!(r##"fill="{color}""##)
        } else {
            format!(
                r##"fill="{color}" fill-opacity="0.35" stroke="#d62728" stroke-dasharray="4 2""##
            )
        };
        svg.push_str(&format!(
            r##"<text x="8" y="{:.1}">{label}</text><rect x="{:.1}" y="{:.1}" width="{:.1}" height="16" {style}><title>{label}: steps {s}–{end}, {tokens} tokens{}</title></rect>
"##,
            y(l) + 12.0,
            x(s),
            y(l),
            (x(end) - x(s)).max(1.0),
            if note.is_empty() { String::new() } else { format!("; {note}") }
        ));
        if !note.is_empty() {
            svg.push_str(&format!(
                r##"<text x="{:.1}" y="{:.1}" fill="#d62728">{note}</text>
"##,
                x(end) + 4.0,
                y(l) + 12.0
            ));
        }
    };
    lane(
        "organizer",
        0,
        e.organizer.start_step,
        e.organizer.end_step,
        "#1f77b4",
        e.organizer.tokens,
        if failure.is_some() { "failed" } else { "" },
    );
    for (i, w) in e.workers.iter().enumerate() {
        let label = format!("worker {}", w.worker.unwrap_or(0));
        let joined = e
            .events
            .iter()
            .any(|ev| ev.kind == EventKind::Join && ev.worker == w.worker);
        let note = if joined { "" } else { "never joined" };
        lane(
            &label,
            i + 1,
            w.start_step,
            w.end_step,
            "#ff7f0e",
            w.tokens,
            note,
        );
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
        r##"<text x="{LEFT}" y="{:.1}">engine step (one token per active agent) →</text>"##,
        lanes_bottom + 36.0
    ));
    if let Some(why) = failure {
        svg.push_str(&format!(
            r##"<text x="8" y="{:.1}" fill="#d62728">format failure: {}</text>"##,
            height - 10.0,
            xml_escape(&why)
        ));
    }
    svg.push_str("\n</svg>\n");
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Histogram of forks per episode.
pub fn forks_histogram_svg(episodes: &[EpisodeOutcome]) -> String {
    let max_forks = episodes.iter().map(|e| e.forks).max().unwrap_or(0);
    let mut counts = vec![0usize; max_forks + 1];
    for e in episodes {
        counts[e.forks] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let (w, h, bar) = (120.0 + 60.0 * counts.len() as f64, 264.0, 40.0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/><text x="10" y="18">forks per episode ({} episodes)</text>
<line x1="52" y1="220" x2="{:.1}" y2="220" stroke="black"/><text x="{:.1}" y="254" text-anchor="middle">forks in the episode</text>
<text transform="translate(20,130) rotate(-90)" text-anchor="middle">episodes</text>
"##,
        episodes.len(),
        w - 8.0,
        (52.0 + w) / 2.0
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
            236.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::super::episode::{AgentSpan, TimelineEvent};
    use super::*;
    use crate::asyncthink::episode::EpisodeRecord;
    use crate::asyncthink::protocol::ProtocolError;

    /// An organizer that forked workers 1 and 2, joined 1, and ran out of budget.
    fn episode(failed: bool) -> EpisodeOutcome {
        let span = |worker, start_step, end_step| AgentSpan {
            worker,
            start_step,
            end_step,
            tokens: end_step - start_step,
        };
        let event = |kind, worker, step| TimelineEvent { kind, worker, step };
        EpisodeOutcome {
            question: "q".into(),
            record: EpisodeRecord {
                organizer_text: String::new(),
                final_answer: (!failed).then(|| "3".into()),
                workers: Vec::new(),
                format_errors: if failed {
                    vec![ProtocolError::BudgetExceeded {
                        what: "organizer <tokens>".into(),
                        limit: 40,
                    }]
                } else {
                    Vec::new()
                },
                concurrency: 1.5,
                capacity: 3,
                wall_clock_steps: 40,
            },
            critical_path_tokens: 40,
            wall_seconds: 0.1,
            total_tokens: 70,
            forks: 2,
            concurrency_ratio: 0.5,
            organizer: span(None, 0, 40),
            workers: vec![span(Some(1), 5, 20), span(Some(2), 8, 30)],
            events: vec![
                event(EventKind::Fork, Some(1), 5),
                event(EventKind::Fork, Some(2), 8),
                event(EventKind::Join, Some(1), 22),
            ],
            rollouts: Vec::new(),
        }
    }

    #[test]
    fn timeline_has_step_ticks_and_marks_failures_and_unjoined_workers() {
        let bad = timeline_svg(&episode(true));
        assert!(
            bad.contains(">0</text>") && bad.contains(">40</text>"),
            "step ticks: {bad}"
        );
        assert!(bad.contains("format failure: "), "{bad}");
        assert_eq!(
            bad.matches(">never joined</text>").count(),
            1,
            "worker 2 only: {bad}"
        );
        assert!(bad.contains(">failed</text>"));
        let good = timeline_svg(&episode(false));
        assert!(!good.contains("format failure") && !good.contains(">failed</text>"));
    }

    #[test]
    fn forks_histogram_has_axis_titles() {
        let svg = forks_histogram_svg(&[episode(false), episode(true)]);
        assert!(svg.contains(">forks in the episode</text>") && svg.contains(">episodes</text>"));
        assert!(svg.contains("(2 episodes)"));
    }
}
