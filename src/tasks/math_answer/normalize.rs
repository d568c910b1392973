//! Canonical text of an answer: LaTeX formatting, units, currency and degree signs removed,
//! a percent sign noted and removed. Both the value reader and the text comparison work on
//! this form.

use super::extract::{brace_group, extract_boxed};

/// An answer's canonical text, and whether it carried a percent sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cleaned {
    pub text: String,
    pub percent: bool,
}

const TEXT_COMMANDS: [&str; 8] = [
    "\\text", "\\textbf", "\\textrm", "\\textit", "\\mathrm", "\\mathbf", "\\boxed", "\\mbox",
];

/// Units and count nouns dropped after a number. Never compared: `12 cm` equals `12` and
/// `12 m` alike (answer keys are bare numbers). Multi-word ones come before their tails.
const UNITS: [&str; 74] = [
    "square units",
    "sq units",
    "cubic units",
    "square feet",
    "square meters",
    "square inches",
    "square centimeters",
    "cubic feet",
    "cubic inches",
    "cubic centimeters",
    "sq ft",
    "units",
    "unit",
    "centimeters",
    "centimetres",
    "cm",
    "millimeters",
    "mm",
    "kilometers",
    "km",
    "meters",
    "metres",
    "meter",
    "metre",
    "m",
    "inches",
    "inch",
    "in",
    "feet",
    "foot",
    "ft",
    "yards",
    "yard",
    "yd",
    "miles",
    "mile",
    "mi",
    "mph",
    "dollars",
    "dollar",
    "cents",
    "cent",
    "degrees",
    "degree",
    "deg",
    "radians",
    "radian",
    "rad",
    "seconds",
    "second",
    "sec",
    "s",
    "minutes",
    "minute",
    "min",
    "hours",
    "hour",
    "hrs",
    "hr",
    "days",
    "day",
    "weeks",
    "years",
    "grams",
    "gram",
    "g",
    "kilograms",
    "kg",
    "pounds",
    "lbs",
    "lb",
    "liters",
    "ways",
    "people",
];

/// Canonical text form (see [`clean`]); the percent flag is dropped.
pub fn normalize(s: &str) -> String {
    clean(s).text
}

pub fn clean(s: &str) -> Cleaned {
    let mut t = s.trim().to_string();
    if let Some(b) = extract_boxed(&t) {
        t = b;
    }
    t = rewrite_spaced_mixed_number(&t).unwrap_or(t);
    for _ in 0..3 {
        match strip_unit(&t) {
            Some(u) => t = u,
            None => break,
        }
    }
    for cmd in TEXT_COMMANDS {
        t = unwrap_command(&t, cmd);
    }
    let percent = ["\\%", "%", "percent"]
        .iter()
        .any(|p| t.trim_end().trim_end_matches('$').trim_end().ends_with(p));
    // Per piece between `\\` row separators: otherwise `\ ` (a LaTeX space) would eat the
    // separator's second backslash and `1 \\ 2` would become `1\2`.
    t = t
        .split("\\\\")
        .map(replace_symbols)
        .collect::<Vec<_>>()
        .join("\\\\");
    if percent {
        t = t.trim_end().trim_end_matches("percent").to_string();
    }
    t.retain(|c| !c.is_whitespace());
    while t.ends_with('.') {
        t.pop();
    }
    // "x=5", "n=12": a lone variable name in front.
    let mut chars = t.chars();
    if let (Some(v), Some('=')) = (chars.next(), chars.next())
        && v.is_ascii_alphabetic()
    {
        t = t[2..].to_string();
    }
    Cleaned {
        text: brace_sqrt_argument(&t),
        percent,
    }
}

fn replace_symbols(piece: &str) -> String {
    let mut piece = piece.to_string();
    for (from, to) in [
        ("\\left", ""),
        ("\\right", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("\\;", ""),
        ("\\:", ""),
        ("\\ ", ""),
        ("~", ""),
        ("\\$", ""),
        ("$", ""),
        ("£", ""),
        ("€", ""),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\\circ", ""),
        ("\\degree", ""),
        ("°", ""),
        ("\\%", ""),
        ("%", ""),
        ("{,}", ","),
        ("\\cdot", "*"),
        ("\\times", "*"),
        ("×", "*"),
        ("π", "\\pi"),
        ("+\\infty", "\\infty"),
    ] {
        piece = piece.replace(from, to);
    }
    piece
}

/// `2 1/2` → `2\frac{1}{2}`: only a whole answer of that shape, where the space is the
/// only thing telling a mixed number from `21/2`.
fn rewrite_spaced_mixed_number(t: &str) -> Option<String> {
    let (sign, body) = match t.strip_prefix('-') {
        Some(b) => ("-", b),
        None => ("", t),
    };
    let (whole, frac) = body.split_once(char::is_whitespace)?;
    let (n, d) = frac.trim().split_once('/')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(whole) && digits(n) && digits(d)).then(|| format!("{sign}{whole}\\frac{{{n}}}{{{d}}}"))
}

/// One trailing unit removed: `\text{ cm}^2`, `\mbox{dollars}`, ` cm`, `\,\text{m}`, or a
/// unit of two letters or more right after a digit (`12cm`). `None` when there is none.
fn strip_unit(t: &str) -> Option<String> {
    let t = t.trim_end();
    let body = ["^2", "^3", "^{2}", "^{3}"]
        .iter()
        .find_map(|p| t.strip_suffix(p))
        .unwrap_or(t)
        .trim_end();
    let is_unit = |w: &str| {
        let w = w.trim().trim_end_matches('.').to_ascii_lowercase();
        UNITS.contains(&w.as_str())
    };
    if body.ends_with('}') {
        for cmd in TEXT_COMMANDS {
            let Some(start) = body.rfind(&format!("{cmd}{{")) else {
                continue;
            };
            let inner = &body[start + cmd.len() + 1..];
            if let Some((group, "")) = brace_group(inner)
                && is_unit(group)
            {
                return keep_if_not_empty(&body[..start]);
            }
        }
        return None;
    }
    let lower = body.to_ascii_lowercase();
    for unit in UNITS {
        let Some(before) = lower.strip_suffix(unit) else {
            continue;
        };
        let head = &body[..before.len()];
        let spaced = head.ends_with(char::is_whitespace)
            || ["~", "\\,", "\\;", "\\!", "\\:"]
                .iter()
                .any(|s| head.ends_with(s));
        let glued = unit.len() >= 2 && head.ends_with(|c: char| c.is_ascii_digit());
        if spaced || glued {
            return keep_if_not_empty(head);
        }
    }
    None
}

fn keep_if_not_empty(head: &str) -> Option<String> {
    let head = head.trim_end();
    (!head.is_empty()).then(|| head.to_string())
}

/// `\cmd{X}` → `X` for every occurrence (nested ones too); `\cmd` must be the whole
/// command name, so unwrapping `\text` leaves `\textbf` alone.
fn unwrap_command(s: &str, cmd: &str) -> String {
    let mut out = s.to_string();
    let mut from = 0;
    while let Some(p) = out[from..].find(cmd).map(|p| p + from) {
        let after = &out[p + cmd.len()..];
        if after.starts_with(|c: char| c.is_ascii_alphabetic()) {
            from = p + cmd.len();
            continue;
        }
        let Some(inner) = after.strip_prefix('{') else {
            // The command without a group: drop its name only.
            out.replace_range(p..p + cmd.len(), "");
            from = p;
            continue;
        };
        let Some((group, tail)) = brace_group(inner) else {
            break;
        };
        out = format!("{}{}{}", &out[..p], group, tail);
        from = p;
    }
    out
}

/// `\sqrt2` → `\sqrt{2}`.
fn brace_sqrt_argument(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut rest = t;
    while let Some(p) = rest.find("\\sqrt") {
        out.push_str(&rest[..p + 5]);
        rest = &rest[p + 5..];
        if let Some(c) = rest.chars().next()
            && c != '{'
            && c != '['
        {
            out.push('{');
            out.push(c);
            out.push('}');
            rest = &rest[c.len_utf8()..];
        }
    }
    out.push_str(rest);
    out
}

/// `1,234,567.5` → `1234567.5`; commas anywhere else (a tuple like `1,2`) → `None`.
pub fn strip_thousands(t: &str) -> Option<String> {
    if !t.contains(',') {
        return Some(t.to_string());
    }
    let (int_part, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    let int_part = int_part.strip_prefix('-').unwrap_or(int_part);
    let groups: Vec<&str> = int_part.split(',').collect();
    let first_ok = matches!(groups.first(), Some(g) if (1..=3).contains(&g.len()));
    let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
    let digits_ok = groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()));
    if !(first_ok && rest_ok && digits_ok) {
        return None;
    }
    let mut out = String::from(if t.starts_with('-') { "-" } else { "" });
    out.push_str(&groups.concat());
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Some(out)
}
