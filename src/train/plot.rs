//! A metric curve as a self-contained SVG: the value per step, evaluation points on top.

/// `train`: (step, loss); `eval`: (step, loss).
pub fn loss_curve_svg(train: &[(u64, f64)], eval: &[(u64, f64)]) -> String {
    curve_svg("loss", train, eval)
}

/// `name` labels the y axis; `train` and `eval` are (step, value).
pub fn curve_svg(name: &str, train: &[(u64, f64)], eval: &[(u64, f64)]) -> String {
    let (w, h, pad) = (640.0, 360.0, 48.0);
    let all = train.iter().chain(eval).filter(|(_, l)| l.is_finite());
    let (mut x1, mut y0, mut y1) = (1u64, f64::INFINITY, f64::NEG_INFINITY);
    for &(s, l) in all {
        x1 = x1.max(s);
        y0 = y0.min(l);
        y1 = y1.max(l);
    }
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    let px = |s: u64| pad + (s as f64 / x1 as f64) * (w - 2.0 * pad);
    let py = |l: f64| h - pad - (l - y0) / (y1 - y0) * (h - 2.0 * pad);
    let line: Vec<String> = train
        .iter()
        .filter(|(_, l)| l.is_finite())
        .map(|&(s, l)| format!("{:.1},{:.1}", px(s), py(l)))
        .collect();
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="black"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="black"/>
<text x="{pad}" y="{ty}">{name} {y1:.3}</text><text x="{pad}" y="{by}">{y0:.3}</text><text x="{r}" y="{by}" text-anchor="end">step {x1}</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>
"##,
        b = h - pad,
        r = w - pad,
        ty = pad - 8.0,
        by = h - pad + 16.0,
        pts = line.join(" ")
    );
    for &(s, l) in eval.iter().filter(|(_, l)| l.is_finite()) {
        svg.push_str(&format!(r##"<circle cx="{:.1}" cy="{:.1}" r="3" fill="#d62728"><title>eval {l:.4} @ {s}</title></circle>"##, px(s), py(l)));
        svg.push('\n');
    }
    svg.push_str(r##"<text x="560" y="20" fill="#1f77b4">train</text><text x="600" y="20" fill="#d62728">eval</text>"##);
    svg.push_str("\n</svg>\n");
    svg
}
