//! Exact rationals for verifiers: answers are compared by value, never within a float
//! tolerance, and big inputs cannot overflow.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};

pub type Q = BigRational;

pub fn int(n: i64) -> Q {
    Q::from_integer(BigInt::from(n))
}

/// Parses `-12`, `3.25`, `.5`, `-0.125`, `7/8`, `-7/8` exactly. Anything else is `None`.
pub fn parse_plain(s: &str) -> Option<Q> {
    let s = s.trim();
    let (neg, body) = match s.strip_prefix('-') {
        Some(rest) => (true, rest.trim_start()),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let value = if let Some((n, d)) = body.split_once('/') {
        let n = parse_decimal(n.trim())?;
        let d = parse_decimal(d.trim())?;
        if d.is_zero() {
            return None;
        }
        n / d
    } else {
        parse_decimal(body)?
    };
    Some(if neg { -value } else { value })
}

/// Unsigned decimal `123`, `1.5`, `.5`, `2.` (digits on at least one side of the point).
fn parse_decimal(s: &str) -> Option<Q> {
    let (int_part, frac_part) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty()) || !digits(int_part) || !digits(frac_part) {
        return None;
    }
    let all: String = format!("{int_part}{frac_part}");
    let numer: BigInt = all.parse().ok()?;
    let denom = num_traits::pow(BigInt::from(10), frac_part.len());
    Some(Q::new(numer, denom))
}

pub fn is_integer(q: &Q) -> bool {
    q.denom().is_one()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exactly() {
        assert_eq!(parse_plain("0.1"), Some(Q::new(1.into(), 10.into())));
        assert_eq!(parse_plain("-7/8"), Some(Q::new((-7).into(), 8.into())));
        assert_eq!(parse_plain(".5"), parse_plain("1/2"));
        assert_eq!(parse_plain("2."), Some(int(2)));
        assert_eq!(parse_plain("1/0"), None);
        assert_eq!(parse_plain("."), None);
        assert_eq!(parse_plain("1e5"), None);
        assert_eq!(parse_plain(""), None);
        assert!(parse_plain("123456789012345678901234567890").is_some());
    }
}
