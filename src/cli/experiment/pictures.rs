//! The experiment's pictures: the latency–accuracy plane (one point per method with both
//! intervals), the fork/join timeline of one held-out question before and after GRPO, and
//! the structure histogram (forks per episode) before and after GRPO.

use std::path::Path;

use super::report::{Row, Stage};
use crate::Result;
use crate::asyncthink::executor::ThinkingMode;
use crate::asyncthink::executor::svg::timeline_svg;
use crate::train::plot::ticks;
use crate::util::write_atomic;

const COLORS: [&str; 10] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// x: mean critical path (tokens) with its 95% interval; y: accuracy with its Wilson interval.
/// Both axes start at 0: lower-right is worse, upper-left better.
pub fn latency_accuracy_svg(rows: &[Row]) -> String {
    let (w, h) = (900.0, 460.0);
    let (x0, x1, y0, y1) = (70.0, 500.0, 400.0, 40.0);
    let xmax = rows
        .iter()
        .map(|r| r.critical_path.mean + r.critical_path.ci95)
        .fold(1.0, f64::max)
        * 1.1;
    let sx = |v: f64| x0 + (x1 - x0) * v / xmax;
    let sy = |v: f64| y0 - (y0 - y1) * v;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{x0}" y="22">accuracy against critical-path latency ({} held-out questions each; bars: 95% intervals)</text>
<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/><line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">critical path (generated tokens, mean)</text>
<text transform="translate(22,{:.1}) rotate(-90)" text-anchor="middle">accuracy (all products right)</text>
"##,
        rows.first().map_or(0, |r| r.questions),
        (x0 + x1) / 2.0,
        y0 + 40.0,
        (y0 + y1) / 2.0
    );
    for t in ticks(0.0, xmax, 6) {
        svg.push_str(&format!(
            r##"<line x1="{0:.1}" y1="{y0}" x2="{0:.1}" y2="{1}" stroke="black"/><text x="{0:.1}" y="{2}" text-anchor="middle">{t:.0}</text>
"##,
            sx(t),
            y0 + 5.0,
            y0 + 18.0
        ));
    }
    for t in ticks(0.0, 1.0, 5) {
        svg.push_str(&format!(
            r##"<line x1="{0}" y1="{1:.1}" x2="{x0}" y2="{1:.1}" stroke="black"/><text x="{2}" y="{3:.1}" text-anchor="end">{t:.1}</text>
"##,
            x0 - 5.0,
            sy(t),
            x0 - 8.0,
            sy(t) + 4.0
        ));
    }
    for (k, r) in rows.iter().enumerate() {
        let c = COLORS[k % COLORS.len()];
        let (x, y) = (sx(r.critical_path.mean), sy(r.accuracy));
        svg.push_str(&format!(
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{c}"/><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{c}"/><circle cx="{x:.1}" cy="{y:.1}" r="5" fill="{c}"/>
<rect x="515" y="{:.1}" width="10" height="10" fill="{c}"/><text x="530" y="{:.1}">{}</text>
"##,
            sx(r.critical_path.mean - r.critical_path.ci95),
            sx(r.critical_path.mean + r.critical_path.ci95),
            sy(r.accuracy_ci.0),
            sy(r.accuracy_ci.1),
            50.0 + 18.0 * k as f64,
            59.0 + 18.0 * k as f64,
            esc(&format!("{}: {}", r.stage.label(), r.method()))
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Forks per episode, two histograms side by side (`a` and `b` with their labels).
pub fn structures_svg(a: (&str, &Row), b: (&str, &Row)) -> String {
    let forks = |r: &Row| -> Vec<usize> {
        r.outcomes
            .iter()
            .flat_map(|o| o.episodes.iter().map(|e| e.forks))
            .collect()
    };
    let (fa, fb) = (forks(a.1), forks(b.1));
    let max = fa.iter().chain(&fb).copied().max().unwrap_or(0);
    let count = |f: &[usize]| {
        let mut c = vec![0usize; max + 1];
        for &x in f {
            c[x] += 1;
        }
        c
    };
    let (ca, cb) = (count(&fa), count(&fb));
    let top = ca.iter().chain(&cb).copied().max().unwrap_or(1).max(1);
    let (w, h) = (140.0 + 70.0 * (max + 1) as f64, 300.0);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/><text x="10" y="18">forks per episode, {} held-out questions</text>
<rect x="10" y="28" width="10" height="10" fill="#9ecae1"/><text x="24" y="37">{}</text>
<rect x="10" y="44" width="10" height="10" fill="#08519c"/><text x="24" y="53">{}</text>
<line x1="52" y1="250" x2="{:.1}" y2="250" stroke="black"/><text x="{:.1}" y="288" text-anchor="middle">forks in the episode</text>
<text transform="translate(20,160) rotate(-90)" text-anchor="middle">episodes</text>
"##,
        fa.len(),
        esc(a.0),
        esc(b.0),
        w - 8.0,
        (52.0 + w) / 2.0
    );
    for k in 0..=max {
        let x = 60.0 + 70.0 * k as f64;
        for (j, (c, color)) in [(ca[k], "#9ecae1"), (cb[k], "#08519c")].iter().enumerate() {
            let bh = 170.0 * *c as f64 / top as f64;
            let bx = x + 28.0 * j as f64;
            svg.push_str(&format!(
                r##"<rect x="{bx:.1}" y="{:.1}" width="26" height="{bh:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">{c}</text>
"##,
                250.0 - bh,
                bx + 13.0,
                246.0 - bh
            ));
        }
        svg.push_str(&format!(
            r##"<text x="{:.1}" y="268" text-anchor="middle">{k}</text>
"##,
            x + 27.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

/// The question whose episodes are pictured before and after GRPO: one both models got
/// right, where GRPO's critical path is shortest against SFT's (first such question on ties).
fn pictured_question(before: &Row, after: &Row) -> Option<usize> {
    (0..before.outcomes.len().min(after.outcomes.len()))
        .filter(|&i| before.verdicts[i].is_correct() && after.verdicts[i].is_correct())
        .min_by_key(|&i| {
            after.outcomes[i].critical_path_tokens as i64
                - before.outcomes[i].critical_path_tokens as i64
        })
}

pub fn write_all(out: &Path, rows: &[Row]) -> Result<()> {
    write_atomic(
        &out.join("latency_accuracy.svg"),
        latency_accuracy_svg(rows).as_bytes(),
    )?;
    let find = |stage: Stage| {
        rows.iter().find(|r| {
            r.stage == stage
                && r.mode == ThinkingMode::Asyncthink
                && r.capacity == super::GRPO_CAPACITY
        })
    };
    if let (Some(before), Some(after)) = (find(Stage::Sft), find(Stage::Grpo)) {
        write_atomic(
            &out.join("structures.svg"),
            structures_svg(("SFT", before), ("SFT + GRPO", after)).as_bytes(),
        )?;
        if let Some(i) = pictured_question(before, after) {
            for (name, row) in [("timeline_sft.svg", before), ("timeline_grpo.svg", after)] {
                if let Some(e) = row.outcomes[i].episodes.first() {
                    write_atomic(&out.join(name), timeline_svg(e).as_bytes())?;
                }
            }
        }
    }
    Ok(())
}
