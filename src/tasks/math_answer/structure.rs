//! The shape of an answer: a single value, a set, an interval or tuple, a union of those,
//! a matrix, or a bare comma list, each element read as an exact value where it can be and
//! kept as text otherwise. Comparison follows the shape: sets, unions and bare lists in any
//! order; tuples, intervals and matrices position by position, brackets included.

use super::normalize::strip_thousands;
use super::parse::parse_value;
use super::value::Value;

/// `\{(1,2),(3,4)\}` nests; deeper than this is read as text.
const MAX_DEPTH: usize = 8;
const MAX_ITEMS: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Value(Value),
    Text(String),
    Set(Vec<Answer>),
    /// `(a,b)`, `[a,b)`, …: a tuple or an interval, which read the same.
    Bracketed {
        open: char,
        close: char,
        items: Vec<Answer>,
    },
    Union(Vec<Answer>),
    Matrix(Vec<Vec<Answer>>),
    /// `1, 2, 3` with no brackets: the solutions of an equation, in any order.
    List(Vec<Answer>),
}

pub fn read(text: &str) -> Answer {
    read_at(text, 0)
}

fn read_at(t: &str, depth: usize) -> Answer {
    if depth >= MAX_DEPTH {
        return Answer::Text(t.to_string());
    }
    let next = |s: &str| read_at(s, depth + 1);
    let unions = split_top(t, "\\cup");
    if unions.len() > 1 {
        return Answer::Union(unions.into_iter().map(next).collect());
    }
    if let Some(inner) = t.strip_prefix("\\{").and_then(|r| r.strip_suffix("\\}"))
        && encloses(t, 2)
    {
        return Answer::Set(split_top(inner, ",").into_iter().map(next).collect());
    }
    if let Some(rows) = matrix_rows(t) {
        return Answer::Matrix(
            rows.iter()
                .map(|r| split_top(r, "&").into_iter().map(next).collect())
                .collect(),
        );
    }
    let (first, last) = (t.chars().next(), t.chars().last());
    if let (Some(open @ ('(' | '[')), Some(close @ (')' | ']'))) = (first, last)
        && encloses(t, 1)
    {
        let inner = &t[1..t.len() - 1];
        let items = split_top(inner, ",");
        if items.len() > 1 {
            return Answer::Bracketed {
                open,
                close,
                items: items.into_iter().map(next).collect(),
            };
        }
    }
    if let Some(plain) = strip_thousands(t)
        && plain != t
        && let Some(v) = parse_value(&plain)
    {
        return Answer::Value(v);
    }
    let items = split_top(t, ",");
    if items.len() > 1 {
        return Answer::List(items.into_iter().map(next).collect());
    }
    match parse_value(t) {
        Some(v) => Answer::Value(v),
        None => Answer::Text(t.to_string()),
    }
}

/// Does the bracket opening at 0 (of `open_len` bytes) close only at the very end? So
/// `(0,1)` is one group and `(0,1)\cup(2,3)` or `(1)(2)` is not.
fn encloses(t: &str, open_len: usize) -> bool {
    let mut depth = 0i32;
    for (i, c) in t.char_indices() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && i + c.len_utf8() < t.len() && i >= open_len.saturating_sub(1) {
            return false;
        }
    }
    true
}

/// Split at `sep` outside every bracket; brackets of any kind count alike, since a
/// half-open interval `[0,1)` mixes them. More than `MAX_ITEMS` pieces: not split.
fn split_top<'a>(t: &'a str, sep: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let (mut depth, mut start, mut i) = (0i32, 0usize, 0usize);
    let b = t.as_bytes();
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            // `sep` is ASCII, so a match starts on a char boundary.
            _ if depth == 0 && b[i..].starts_with(sep.as_bytes()) => {
                out.push(&t[start..i]);
                i += sep.len();
                start = i;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&t[start..]);
    if out.len() > MAX_ITEMS {
        return vec![t];
    }
    out
}

/// `\begin{pmatrix}a&b\\c&d\end{pmatrix}` (also bmatrix, matrix) → its rows.
fn matrix_rows(t: &str) -> Option<Vec<&str>> {
    let env = ["pmatrix", "bmatrix", "matrix"]
        .into_iter()
        .find(|e| t.starts_with(&format!("\\begin{{{e}}}")))?;
    let inner = t
        .strip_prefix(&format!("\\begin{{{env}}}"))?
        .strip_suffix(&format!("\\end{{{env}}}"))?;
    let rows = split_top(inner, "\\\\");
    (rows.len() <= MAX_ITEMS).then_some(rows)
}

impl Answer {
    pub fn equals(&self, other: &Answer) -> bool {
        use Answer::*;
        match (self, other) {
            (Value(a), Value(b)) => a == b,
            (Text(a), Text(b)) => a == b,
            (Set(a) | List(a), Set(b) | List(b)) => same_set(a, b),
            (Union(a), Union(b)) => a.len() == b.len() && same_set(a, b),
            (
                Bracketed {
                    open: o1,
                    close: c1,
                    items: a,
                },
                Bracketed {
                    open: o2,
                    close: c2,
                    items: b,
                },
            ) => o1 == o2 && c1 == c2 && same_sequence(a, b),
            (Matrix(a), Matrix(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_sequence(x, y))
            }
            _ => false,
        }
    }
}

fn same_sequence(a: &[Answer], b: &[Answer]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.equals(y))
}

/// Every element of each side appears in the other (repeats ignored, as in a set).
fn same_set(a: &[Answer], b: &[Answer]) -> bool {
    a.iter().all(|x| b.iter().any(|y| x.equals(y)))
        && b.iter().all(|y| a.iter().any(|x| x.equals(y)))
}
