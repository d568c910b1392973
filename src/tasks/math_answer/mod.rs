//! Answer checking for competition math (AMC/AIME style). The final answer is found
//! (`extract`), reduced to canonical text (`normalize`), read into a shape (`structure`)
//! whose elements are exact values where possible (`parse`, `value`: sums of
//! rational × π^k × √r), and compared by value; what cannot be read is compared as text.
//! docs/tasks.md lists what is and is not equivalent.

mod extract;
mod normalize;
mod parse;
mod structure;
mod value;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

pub use extract::{extract_boxed, final_answer};
pub use normalize::normalize;

use super::Verdict;
use super::rational::{Q, parse_plain};
use normalize::{clean, strip_thousands};
use structure::Answer;

/// A problem with a known final answer (from an external dataset; there is no generator).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MathItem {
    pub id: String,
    #[serde(default)]
    pub problem: String,
    pub expected: String,
}

/// Longer inputs are not numbers: keeps nested `\frac` recursion shallow.
const MAX_NUMBER_LEN: usize = 1000;

/// Exact value of an answer written as a number literal: integers, decimals, `a/b`,
/// `\frac{a}{b}`, `\frac12`, with sign, thousands commas, percent sign (dropped: "25\%"
/// reads as 25, the way answer keys write it) and leading zeros ("033" is 33). No
/// arithmetic: `3+4` is not a number here, so tasks that ask for a computed result (the
/// arithmetic task) cannot be answered with the question's own expression.
pub fn parse_number(s: &str) -> Option<Q> {
    let t = normalize(s);
    if t.len() > MAX_NUMBER_LEN {
        return None;
    }
    parse_literal(&t)
}

fn parse_literal(t: &str) -> Option<Q> {
    if let Some(rest) = t.strip_prefix('-') {
        if rest.starts_with('-') {
            return None;
        }
        return parse_literal(rest).map(|q| -q);
    }
    if let Some(rest) = t.strip_prefix("\\frac") {
        let (num, rest) = frac_arg(rest)?;
        let (den, rest) = frac_arg(rest)?;
        if !rest.is_empty() {
            return None;
        }
        let (n, d) = (parse_literal(num)?, parse_literal(den)?);
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
        return extract::brace_group(inner);
    }
    let c = s.chars().next()?;
    Some(s.split_at(c.len_utf8()))
}

/// The letter of a multiple-choice answer, in either case: `C`, `c`, `(C)`,
/// `\textbf{(C)} 12`, `C)`.
fn choice_letter(raw: &str) -> Option<char> {
    let t = normalize(raw);
    let b = t.as_bytes();
    let letter = |c: u8| (b'A'..=b'E').contains(&c.to_ascii_uppercase());
    let up = |c: &u8| Some(c.to_ascii_uppercase() as char);
    match b {
        [c] if letter(*c) => up(c),
        [b'(', c, b')', ..] if letter(*c) => up(c),
        [c, b')', ..] if letter(*c) => up(c),
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

/// Does a model reply (boxed, stated in prose, or bare) give the expected answer?
pub fn answers_match(reply: &str, expected: &str) -> bool {
    let cand = final_answer(reply);
    if let Some(want) = choice_letter(expected)
        && normalize(expected).len() <= 3
    {
        return choice_letter(&cand) == Some(want);
    }
    let (c, e) = (clean(&cand), clean(expected));
    let (ct, et) = (strip_choice_label(&c.text), strip_choice_label(&e.text));
    if ct.is_empty() {
        return false;
    }
    if ct == et {
        return true;
    }
    let (a, b) = (structure::read(ct), structure::read(et));
    a.equals(&b) || percent_of_other(&a, c.percent, &b, e.percent)
}

/// `50\%` against `0.5`: a side written with a percent sign also reads as hundredths,
/// unless both are (then `50\%` vs `0.5\%` must not match).
fn percent_of_other(a: &Answer, a_pct: bool, b: &Answer, b_pct: bool) -> bool {
    let hundredths = |v: &value::Value| v.div(&value::Value::rational(super::rational::int(100)));
    match (a, b) {
        (Answer::Value(x), Answer::Value(y)) if a_pct && !b_pct => {
            hundredths(x).as_ref() == Some(y)
        }
        (Answer::Value(x), Answer::Value(y)) if b_pct && !a_pct => {
            hundredths(y).as_ref() == Some(x)
        }
        _ => false,
    }
}

pub fn verify(item: &MathItem, reply: &str) -> Verdict {
    if answers_match(reply, &item.expected) {
        Verdict::right()
    } else {
        Verdict::wrong(format!("expected {:?}", item.expected))
    }
}
