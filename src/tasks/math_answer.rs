//! Answer checking for competition math (AMC/AIME style): pull the last `\boxed{…}` out of
//! a reply, normalize LaTeX number forms, and compare exactly as rationals when both sides
//! are numbers, else as normalized LaTeX text.

use serde::{Deserialize, Serialize};

use super::Verdict;
use super::rational::{Q, parse_plain};

/// A problem with a known final answer (from an external dataset; there is no generator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MathItem {
    pub id: String,
    #[serde(default)]
    pub problem: String,
    pub expected: String,
}

/// Content of the last `\boxed{…}` (or `\fbox{…}`, or `\boxed 5`), braces matched with
/// nesting. `None` when there is none or its braces never close.
pub fn extract_boxed(text: &str) -> Option<String> {
    let (pos, kw) = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|kw| text.rfind(kw).map(|p| (p, *kw)))
        .max_by_key(|(p, _)| *p)?;
    let rest = &text[pos + kw.len()..];
    let trimmed = rest.trim_start();
    if let Some(inner) = trimmed.strip_prefix('{') {
        return brace_group(inner).map(|(g, _)| g.to_string());
    }
    if rest.starts_with(char::is_whitespace) {
        let word: String = trimmed
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '$')
            .collect();
        return (!word.is_empty()).then_some(word);
    }
    None
}

/// Given the text just after an opening `{`, the group content and the text after its `}`.
fn brace_group(s: &str) -> Option<(&str, &str)> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
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

/// Canonical text form of an answer: formatting commands, spaces, units of angle,
/// percent signs, `x =` prefixes and a trailing period removed; `\dfrac`/`\tfrac` →
/// `\frac`; `\sqrt2` → `\sqrt{2}`; `{,}` thousands separators → `,`.
pub fn normalize(s: &str) -> String {
    let mut t = s.trim().to_string();
    if let Some(b) = extract_boxed(&t) {
        t = b;
    }
    for cmd in [
        "\\text", "\\textbf", "\\mathrm", "\\mathbf", "\\boxed", "\\mbox",
    ] {
        t = unwrap_command(&t, cmd);
    }
    // Per piece between `\\` row separators: otherwise `\ ` (a LaTeX space) would eat the
    // separator's second backslash and `1 \\ 2` would become `1\2`.
    t = t
        .split("\\\\")
        .map(|piece| {
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
                ("$", ""),
                ("\\dfrac", "\\frac"),
                ("\\tfrac", "\\frac"),
                ("^{\\circ}", ""),
                ("^\\circ", ""),
                ("\\circ", ""),
                ("°", ""),
                ("\\%", ""),
                ("%", ""),
                ("{,}", ","),
                ("\\cdot", "*"),
                ("\\times", "*"),
            ] {
                piece = piece.replace(from, to);
            }
            piece
        })
        .collect::<Vec<_>>()
        .join("\\\\");
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
    // `\sqrt2` → `\sqrt{2}`
    let mut out = String::with_capacity(t.len());
    let mut rest = t.as_str();
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

/// Exact value of a normalized answer that is a number: integers, decimals, `a/b`,
/// `\frac{a}{b}`, `\frac12`, with sign, thousands commas, percent sign (dropped: "25\%"
/// reads as 25, the way answer keys write it) and leading zeros ("033" is 33).
pub fn parse_number(s: &str) -> Option<Q> {
    let t = normalize(s);
    parse_normalized(&t)
}

fn parse_normalized(t: &str) -> Option<Q> {
    if let Some(rest) = t.strip_prefix('-') {
        if rest.starts_with('-') {
            return None;
        }
        return parse_normalized(rest).map(|q| -q);
    }
    if let Some(rest) = t.strip_prefix("\\frac") {
        let (num, rest) = frac_arg(rest)?;
        let (den, rest) = frac_arg(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let (n, d) = (parse_normalized(num)?, parse_normalized(den)?);
        if num_traits::Zero::is_zero(&d) {
            return None;
        }
        return Some(n / d);
    }
    parse_plain(&strip_thousands(t)?)
}

/// `{group}` or a single character, as `\frac12` allows.
fn frac_arg(s: &str) -> Option<(&str, &str)> {
    if let Some(inner) = s.strip_prefix('{') {
        return brace_group(inner);
    }
    let c = s.chars().next()?;
    Some(s.split_at(c.len_utf8()))
}

/// `1,234,567.5` → `1234567.5`; commas anywhere else (a tuple like `1,2`) → `None`.
fn strip_thousands(t: &str) -> Option<String> {
    if !t.contains(',') {
        return Some(t.to_string());
    }
    let (int_part, frac) = match t.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (t, None),
    };
    let groups: Vec<&str> = int_part.split(',').collect();
    let first_ok = matches!(groups.first(), Some(g) if (1..=3).contains(&g.len()));
    let rest_ok = groups[1..].iter().all(|g| g.len() == 3);
    let digits_ok = groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit()));
    if !(first_ok && rest_ok && digits_ok) {
        return None;
    }
    let mut out = groups.concat();
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    Some(out)
}

/// The letter of a multiple-choice answer: `C`, `(C)`, `\textbf{(C)} 12`, `C)`.
fn choice_letter(raw: &str) -> Option<char> {
    let t = normalize(raw);
    let b = t.as_bytes();
    let letter = |c: u8| (b'A'..=b'E').contains(&c);
    match b {
        [c] if letter(*c) => Some(*c as char),
        [b'(', c, b')', ..] if letter(*c) => Some(*c as char),
        [c, b')', ..] if letter(*c) => Some(*c as char),
        _ => None,
    }
}

/// `(C)12` → `12`: the value part of an answer written with its choice label.
fn strip_choice_label(t: &str) -> &str {
    let b = t.as_bytes();
    if b.len() > 3 && b[0] == b'(' && b[2] == b')' && (b'A'..=b'E').contains(&b[1]) {
        &t[3..]
    } else {
        t
    }
}

/// Does a model reply (boxed or bare) give the expected answer?
pub fn answers_match(reply: &str, expected: &str) -> bool {
    let cand = extract_boxed(reply).unwrap_or_else(|| reply.to_string());
    if let Some(want) = choice_letter(expected)
        && normalize(expected).len() <= 3
    {
        return choice_letter(&cand) == Some(want);
    }
    let (c, e) = (normalize(&cand), normalize(expected));
    let (c, e) = (strip_choice_label(&c), strip_choice_label(&e));
    if c.is_empty() {
        return false;
    }
    match (parse_normalized(c), parse_normalized(e)) {
        (Some(a), Some(b)) => a == b,
        _ => c == e,
    }
}

pub fn verify(item: &MathItem, reply: &str) -> Verdict {
    if answers_match(reply, &item.expected) {
        Verdict::right()
    } else {
        Verdict::wrong(format!("expected {:?}", item.expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::rational::int;
    use proptest::prelude::*;

    #[test]
    fn boxed_extraction_handles_nesting() {
        assert_eq!(
            extract_boxed(r"so $\boxed{\frac{a}{\sqrt{b+{c}}}}$.").as_deref(),
            Some(r"\frac{a}{\sqrt{b+{c}}}")
        );
        assert_eq!(
            extract_boxed(r"\boxed{1} then \boxed{2}").as_deref(),
            Some("2")
        );
        assert_eq!(extract_boxed(r"\boxed 5$").as_deref(), Some("5"));
        assert_eq!(
            extract_boxed(r"\boxed{\{1,2\}}").as_deref(),
            Some(r"\{1,2\}")
        );
        assert_eq!(extract_boxed(r"\boxed{12"), None);
        assert_eq!(extract_boxed("no box"), None);
    }

    #[test]
    fn number_normalization() {
        let half = Q::new(1.into(), 2.into());
        for s in [
            r"\frac{1}{2}",
            r"\dfrac{1}{2}",
            r"\tfrac12",
            "0.5",
            ".5",
            "1/2",
            r"\frac{2}{4}",
        ] {
            assert_eq!(parse_number(s), Some(half.clone()), "{s}");
        }
        for s in [r"-\frac{1}{2}", r"\frac{-1}{2}", "-0.5", r"$-\dfrac{1}{2}$"] {
            assert_eq!(parse_number(s), Some(-half.clone()), "{s}");
        }
        assert_eq!(parse_number("1{,}024"), Some(int(1024)));
        assert_eq!(parse_number("1,000,000"), Some(int(1_000_000)));
        assert_eq!(parse_number(r"25\%"), Some(int(25)));
        assert_eq!(parse_number("033"), Some(int(33)));
        assert_eq!(parse_number(r"90^\circ"), Some(int(90)));
        assert_eq!(parse_number("x = 5"), Some(int(5)));
        assert_eq!(parse_number(r"\text{5}"), Some(int(5)));
        assert_eq!(parse_number("1,2"), None);
        assert_eq!(parse_number("12,34"), None);
        assert_eq!(parse_number(r"\frac{1}{0}"), None);
        assert_eq!(parse_number(r"2\sqrt{2}"), None);
    }

    #[test]
    fn real_competition_style_answers() {
        let yes = [
            (r"Thus the answer is $\boxed{\dfrac{7}{2}}$.", "3.5"),
            (r"\boxed{\frac{7}{2}}", "7/2"),
            (r"\boxed{1{,}024}", "1024"),
            (r"The answer is $\boxed{-\frac{1}{2}}$.", "-0.5"),
            (r"\boxed{25\%}", "25"),
            (r"\boxed{\textbf{(C)}\ 12}", "C"),
            (r"\boxed{\textbf{(C)}\ 12}", "12"),
            (r"\boxed{(B)}", r"\textbf{(B)}"),
            (r"\boxed{033}", "33"),
            (r"\boxed{2\sqrt{2}}", r"2\sqrt2"),
            (r"\boxed{\frac{\sqrt{3}}{2}}", r"\dfrac{\sqrt3}{2}"),
            (r"\boxed{90^\circ}", "90"),
            (r"\boxed{1,000,000}", "1000000"),
            ("204", "204"),
            (r"\boxed{\left(1, 2\right)}", "(1,2)"),
        ];
        for (reply, expected) in yes {
            assert!(answers_match(reply, expected), "{reply} vs {expected}");
        }
        let no = [
            (r"\boxed{\frac{1}{3}}", "0.33"),
            (r"\boxed{5}", "-5"),
            (r"\boxed{1,2}", "12"),
            (r"\boxed{\textbf{(D)}\ 12}", "C"),
            (r"\boxed{}", "0"),
            ("", "0"),
            (r"\boxed{2\sqrt{3}}", r"2\sqrt2"),
            (r"\boxed{1}\boxed{2}", "1"),
        ];
        for (reply, expected) in no {
            assert!(!answers_match(reply, expected), "{reply} vs {expected}");
        }
    }

    #[test]
    fn row_separator_followed_by_space_stays_a_separator() {
        let key = r"\begin{pmatrix}1\\2\end{pmatrix}";
        for reply in [
            r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}",
            r"\boxed{\begin{pmatrix}1\\ 2\end{pmatrix}}",
        ] {
            assert!(answers_match(reply, key), "{reply}");
        }
        assert!(!answers_match(
            r"\boxed{\begin{pmatrix}1\\ 2\end{pmatrix}}",
            "12"
        ));
        assert_eq!(normalize(r"1 \\ 2"), normalize(r"1\\2"));
    }

    proptest! {
        #[test]
        fn never_panics(a in ".{0,40}", b in ".{0,10}") {
            let _ = answers_match(&a, &b);
            let _ = parse_number(&a);
        }

        #[test]
        fn integers_round_trip(n in -1_000_000i64..1_000_000) {
            let reply = format!(r"\boxed{{{n}}}");
            prop_assert!(answers_match(&reply, &n.to_string()));
        }
    }
}
