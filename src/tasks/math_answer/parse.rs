//! A recursive-descent reader from normalized answer text (see `normalize`) to an exact
//! [`Value`]: numbers and scientific notation, `+ - * /` with implicit multiplication,
//! `\frac`, `\sqrt`, `\sqrt[n]`, `\pi`, powers, factorials and mixed numbers. Anything it
//! does not know (a variable, `\sin`, `\infty`) makes the whole answer unparseable, and the
//! caller compares text instead.

use num_bigint::BigInt;
use num_traits::ToPrimitive;

use super::value::{Value, root_of_rational};
use crate::tasks::rational::Q;

/// Long enough for any honest answer, short enough that parsing stays cheap.
const MAX_LEN: usize = 1000;
/// `((((…))))` must not overflow the stack.
const MAX_DEPTH: usize = 32;

pub fn parse_value(text: &str) -> Option<Value> {
    if text.is_empty() || text.len() > MAX_LEN {
        return None;
    }
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    let v = p.expr()?;
    (p.pos == p.s.len()).then_some(v)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn rest(&self) -> &[u8] {
        &self.s[self.pos..]
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.peek() == Some(c);
        if hit {
            self.pos += 1;
        }
        hit
    }

    /// `\name` not followed by more letters (so `\pi` does not match `\pib`).
    fn eat_command(&mut self, name: &str) -> bool {
        let rest = self.rest();
        let n = name.len();
        let hit = rest.starts_with(name.as_bytes())
            && !rest.get(n).is_some_and(|c| c.is_ascii_alphabetic());
        if hit {
            self.pos += n;
        }
        hit
    }

    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn expr(&mut self) -> Option<Value> {
        let mut acc = self.term()?;
        loop {
            if self.eat(b'+') {
                acc = acc.add(&self.term()?)?;
            } else if self.eat(b'-') {
                acc = acc.sub(&self.term()?)?;
            } else {
                return Some(acc);
            }
        }
    }

    fn term(&mut self) -> Option<Value> {
        let mut acc = self.signed()?;
        loop {
            if self.eat(b'*') {
                acc = acc.mul(&self.signed()?)?;
            } else if self.eat(b'/') {
                acc = acc.div(&self.signed()?)?;
            } else if self.starts_primary() {
                acc = acc.mul(&self.power()?)?;
            } else {
                return Some(acc);
            }
        }
    }

    fn starts_primary(&self) -> bool {
        matches!(self.peek(), Some(b'\\' | b'(' | b'{' | b'.' | b'0'..=b'9'))
    }

    fn signed(&mut self) -> Option<Value> {
        if self.eat(b'-') {
            return self.nested(|p| p.signed()).map(|v| v.neg());
        }
        if self.eat(b'+') {
            return self.nested(|p| p.signed());
        }
        self.power()
    }

    fn power(&mut self) -> Option<Value> {
        let base = self.postfix()?;
        if !self.eat(b'^') {
            return Some(base);
        }
        let exp = self.nested(|p| p.exponent())?;
        base.pow(&exp.as_rational()?)
    }

    /// `^{…}`, `^-2`, or a bare digit run: `2^10` reads as 2¹⁰, as models mean it, though
    /// LaTeX would typeset 2¹0.
    fn exponent(&mut self) -> Option<Value> {
        if self.eat(b'{') {
            let v = self.expr()?;
            return self.eat(b'}').then_some(v);
        }
        if self.eat(b'-') {
            return self.exponent().map(|v| v.neg());
        }
        if self.peek().is_some_and(|c| c.is_ascii_digit()) {
            let digits = self.take_while(|c| c.is_ascii_digit());
            return Some(Value::rational(Q::from_integer(digits.parse().ok()?)));
        }
        self.primary()
    }

    fn postfix(&mut self) -> Option<Value> {
        let mut v = self.primary()?;
        while self.eat(b'!') {
            // `5!!` is a double factorial, not (5!)!; it is not supported.
            if self.peek() == Some(b'!') {
                return None;
            }
            v = v.factorial()?;
        }
        Some(v)
    }

    fn primary(&mut self) -> Option<Value> {
        match self.peek()? {
            b'0'..=b'9' | b'.' => self.number(),
            b'(' => self.group(b'(', b')'),
            b'{' => self.group(b'{', b'}'),
            b'\\' => self.nested(|p| p.command()),
            _ => None,
        }
    }

    fn group(&mut self, open: u8, close: u8) -> Option<Value> {
        self.eat(open);
        let v = self.nested(|p| p.expr())?;
        self.eat(close).then_some(v)
    }

    fn command(&mut self) -> Option<Value> {
        if self.eat_command("\\pi") {
            return Some(Value::pi());
        }
        if self.eat_command("\\frac") {
            let n = self.arg()?;
            let d = self.arg()?;
            return n.div(&d);
        }
        if self.eat_command("\\sqrt") {
            let index = if self.eat(b'[') {
                let digits = self.take_while(|c| c.is_ascii_digit());
                if !self.eat(b']') {
                    return None;
                }
                digits.parse::<u32>().ok()?
            } else {
                2
            };
            let radicand = self.arg()?.as_rational()?;
            return root_of_rational(&radicand, index);
        }
        None
    }

    /// A `{group}` or a single digit, as `\frac12` allows.
    fn arg(&mut self) -> Option<Value> {
        if self.peek() == Some(b'{') {
            return self.group(b'{', b'}');
        }
        let c = self.peek().filter(|c| c.is_ascii_digit())?;
        self.pos += 1;
        Some(Value::rational(Q::from_integer(BigInt::from(c - b'0'))))
    }

    fn take_while(&mut self, f: impl Fn(u8) -> bool) -> String {
        let start = self.pos;
        while self.peek().is_some_and(&f) {
            self.pos += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.pos]).into_owned()
    }

    /// `12`, `1.5`, `.5`, `1.5e3`, `2E-4`, and the mixed number `2\frac{1}{2}` (an integer
    /// directly followed by a proper fraction of integers).
    fn number(&mut self) -> Option<Value> {
        let int_part = self.take_while(|c| c.is_ascii_digit());
        let frac_part = if self.eat(b'.') {
            Some(self.take_while(|c| c.is_ascii_digit()))
        } else {
            None
        };
        let mut v = crate::tasks::rational::parse_plain(&match &frac_part {
            Some(f) => format!("{int_part}.{f}"),
            None => int_part.clone(),
        })?;
        if matches!(self.peek(), Some(b'e' | b'E')) {
            let save = self.pos;
            self.pos += 1;
            let neg = self.eat(b'-') || {
                self.eat(b'+');
                false
            };
            let digits = self.take_while(|c| c.is_ascii_digit());
            if !digits.is_empty() {
                let e: i64 = digits.parse().ok()?;
                let ten = Value::rational(Q::from_integer(10.into()));
                return Value::rational(v).mul(&ten.pow_int(if neg { -e } else { e })?);
            }
            self.pos = save;
        }
        if frac_part.is_none()
            && let Some(part) = self.proper_fraction()
        {
            v += part;
        }
        Some(Value::rational(v))
    }

    fn proper_fraction(&mut self) -> Option<Q> {
        let save = self.pos;
        let parsed = (|| {
            if !self.eat_command("\\frac") {
                return None;
            }
            let n = self.int_arg()?;
            let d = self.int_arg()?;
            (n < d && d > 0).then(|| Q::new(n.into(), d.into()))
        })();
        if parsed.is_none() {
            self.pos = save;
        }
        parsed
    }

    fn int_arg(&mut self) -> Option<u64> {
        let braced = self.eat(b'{');
        let digits = if braced {
            self.take_while(|c| c.is_ascii_digit())
        } else {
            let c = self.peek().filter(|c| c.is_ascii_digit())?;
            self.pos += 1;
            (c as char).to_string()
        };
        if braced && !self.eat(b'}') {
            return None;
        }
        digits.parse::<BigInt>().ok()?.to_u64()
    }
}
