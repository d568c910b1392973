//! A metric curve as a self-contained SVG: the value per step, evaluation points on top,
//! with axis titles, ticks, and a y range that starts at 0 when no value is negative (so a
//! small change does not look like a large one).

/// `train`: (step, loss); `eval`: (step, loss).
pub fn loss_curve_svg(train: &[(u64, f64)], eval: &[(u64, f64)]) -> String {
    curve_svg("loss (nats per token)", train, eval)
}

/// About `n` round tick values covering [lo, hi] (steps of 1, 2 or 5 × 10^k).
pub fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || n == 0 {
        return vec![lo];
    }
    let raw = (hi - lo) / n as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v == v.trunc() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else if v.abs() >= 0.01 {
        format!("{v:.2}")
    } else {
        format!("{v:.1e}")
    }
}

/// `y_title` names the y axis (with its unit); `train` and `eval` are (step, value). A series
/// with no finite point gets no legend entry.
pub fn curve_svg(y_title: &str, train: &[(u64, f64)], eval: &[(u64, f64)]) -> String {
    let (w, h) = (640.0, 360.0);
    let (left, right, top, bottom) = (64.0, 24.0, 28.0, 48.0);
    let finite = |s: &[(u64, f64)]| -> Vec<(u64, f64)> {
        s.iter().copied().filter(|(_, v)| v.is_finite()).collect()
    };
    let (train, eval) = (finite(train), finite(eval));
    let all = || train.iter().chain(&eval);
    let x1 = all().map(|&(s, _)| s).max().unwrap_or(1).max(1);
    let mut y0 = all().map(|&(_, v)| v).fold(f64::INFINITY, f64::min);
    let mut y1 = all().map(|&(_, v)| v).fold(f64::NEG_INFINITY, f64::max);
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y0 >= 0.0 {
        y0 = 0.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let y_ticks = ticks(y0, y1, 5);
    // The top tick may sit just under the largest value: extend the range to the next tick.
    if let [.., a, b] = y_ticks[..]
        && y1 > b + 1e-12
    {
        y1 = b + (b - a);
    }
    let y_ticks = ticks(y0, y1, 5);
    let px = |s: f64| left + (s / x1 as f64) * (w - left - right);
    let py = |v: f64| h - bottom - (v - y0) / (y1 - y0) * (h - top - bottom);
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="black"/>
<text x="{xc}" y="{xt}" text-anchor="middle">step</text>
<text transform="translate(16,{yc}) rotate(-90)" text-anchor="middle">{y_title}</text>
"##,
        b = h - bottom,
        r = w - right,
        xc = (left + w - right) / 2.0,
        xt = h - 10.0,
        yc = (top + h - bottom) / 2.0,
    );
    for v in &y_ticks {
        svg.push_str(&format!(
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{left}" y2="{y:.1}" stroke="black"/><line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>
"##,
            left - 4.0,
            w - right,
            left - 6.0,
            py(*v) + 4.0,
            label(*v),
            y = py(*v)
        ));
    }
    for s in ticks(0.0, x1 as f64, 6) {
        svg.push_str(&format!(
            r##"<line x1="{x:.1}" y1="{b}" x2="{x:.1}" y2="{:.1}" stroke="black"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>
"##,
            h - bottom + 4.0,
            h - bottom + 17.0,
            label(s),
            b = h - bottom,
            x = px(s)
        ));
    }
    let line: Vec<String> = train
        .iter()
        .map(|&(s, v)| format!("{:.1},{:.1}", px(s as f64), py(v)))
        .collect();
    svg.push_str(&format!(
        r##"<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{}"/>
"##,
        line.join(" ")
    ));
    for &(s, v) in &eval {
        svg.push_str(&format!(
            r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#d62728"><title>eval {v:.4} @ {s}</title></circle>
"##,
            px(s as f64),
            py(v)
        ));
    }
    let mut legend_x = w - right - 8.0;
    for (name, color, shown) in [
        ("eval", "#d62728", !eval.is_empty()),
        ("train", "#1f77b4", !train.is_empty()),
    ] {
        if shown {
            svg.push_str(&format!(
                r##"<text x="{legend_x}" y="18" text-anchor="end" fill="{color}">{name}</text>"##
            ));
            legend_x -= 48.0;
        }
    }
    svg.push_str("\n</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let t = ticks(0.0, 1.0, 5);
        let want = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0];
        assert_eq!(t.len(), want.len(), "{t:?}");
        assert!(
            t.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12),
            "{t:?}"
        );
        assert_eq!(
            ticks(0.0, 100.0, 6),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
        assert_eq!(ticks(3.0, 3.0, 5), vec![3.0]);
    }

    #[test]
    fn axes_are_titled_the_baseline_is_zero_and_only_drawn_series_are_in_the_legend() {
        let svg = curve_svg("reward", &[(1, 0.5), (2, 0.75)], &[]);
        assert!(
            svg.contains(">step</text>") && svg.contains(">reward</text>"),
            "{svg}"
        );
        assert!(svg.contains(">train</text>"));
        assert!(
            !svg.contains(">eval</text>"),
            "no eval points, no eval legend"
        );
        // Non-negative values: the y axis starts at 0, labelled on the axis, not at x's start.
        assert!(svg.contains(r#"text-anchor="end">0</text>"#), "{svg}");
        let with_eval = loss_curve_svg(&[(1, 2.0)], &[(1, 1.5)]);
        assert!(with_eval.contains(">eval</text>") && with_eval.contains("loss (nats per token)"));
        // Negative values keep their own minimum.
        let neg = curve_svg("advantage", &[(1, -0.5), (2, 0.5)], &[]);
        assert!(
            neg.contains(">-0.50</text>") || neg.contains(">-0.6"),
            "{neg}"
        );
    }
}
