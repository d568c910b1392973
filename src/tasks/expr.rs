//! Arithmetic expressions over the given numbers: parser, exact evaluator and a canonical
//! form that identifies expressions equal up to commutativity and associativity.

use std::fmt;

use num_traits::Zero;

use super::rational::{Q, int, is_integer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Add, Op::Sub, Op::Mul, Op::Div];

    fn symbol(self) -> char {
        match self {
            Op::Add => '+',
            Op::Sub => '-',
            Op::Mul => '*',
            Op::Div => '/',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Num(u64),
    Bin(Op, Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("syntax error at {pos}: {msg}")]
    Syntax { pos: usize, msg: String },
    #[error("expression longer than {0} characters")]
    TooLong(usize),
    #[error("expression nested deeper than {0}")]
    TooDeep(usize),
    #[error("division by zero")]
    DivByZero,
    #[error("non-integer intermediate result {0}")]
    NonInteger(String),
}

/// Long enough for any honest answer, short enough that parsing stays cheap.
pub const MAX_LEN: usize = 1000;
/// Recursion guard: `((((…))))` must not overflow the stack.
pub const MAX_DEPTH: usize = 64;

impl Expr {
    pub fn bin(op: Op, a: Expr, b: Expr) -> Expr {
        Expr::Bin(op, Box::new(a), Box::new(b))
    }

    /// Exact value. With `integer_only`, any non-integer intermediate is an error
    /// (classic Countdown rules).
    pub fn eval(&self, integer_only: bool) -> Result<Q, ExprError> {
        match self {
            Expr::Num(n) => Ok(Q::from_integer((*n).into())),
            Expr::Bin(op, a, b) => {
                let (a, b) = (a.eval(integer_only)?, b.eval(integer_only)?);
                let v = match op {
                    Op::Add => a + b,
                    Op::Sub => a - b,
                    Op::Mul => a * b,
                    Op::Div => {
                        if b.is_zero() {
                            return Err(ExprError::DivByZero);
                        }
                        a / b
                    }
                };
                if integer_only && !is_integer(&v) {
                    return Err(ExprError::NonInteger(v.to_string()));
                }
                Ok(v)
            }
        }
    }

    /// The numbers used, in order of appearance.
    pub fn leaves(&self) -> Vec<u64> {
        let mut out = Vec::new();
        self.collect_leaves(&mut out);
        out
    }

    fn collect_leaves(&self, out: &mut Vec<u64>) {
        match self {
            Expr::Num(n) => out.push(*n),
            Expr::Bin(_, a, b) => {
                a.collect_leaves(out);
                b.collect_leaves(out);
            }
        }
    }

    /// Canonical string: `+`/`-` chains flatten into one sum of signed terms and `*`/`/`
    /// chains into one product of factors over divisors, with each side's operands
    /// sorted. So `a+b`, `b+a`, `(a+b)+c` and `a+(c+b)` coincide, as do `a-(b-c)` and
    /// `(a+c)-b`, and `a/(b/c)` and `(a*c)/b`. Distributivity is not applied: with each
    /// number usable once, distributing would need a number twice.
    pub fn canonical(&self) -> String {
        canon(self).to_string()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Canon {
    Num(u64),
    /// positive terms, negative terms
    Sum(Vec<Canon>, Vec<Canon>),
    /// numerator factors, denominator factors
    Prod(Vec<Canon>, Vec<Canon>),
}

fn canon(e: &Expr) -> Canon {
    match e {
        Expr::Num(n) => Canon::Num(*n),
        Expr::Bin(op, a, b) => {
            let (a, b) = (canon(a), canon(b));
            let additive = matches!(op, Op::Add | Op::Sub);
            let inverted = matches!(op, Op::Sub | Op::Div);
            let (mut pos, mut neg) = (Vec::new(), Vec::new());
            for (x, flip) in [(a, false), (b, inverted)] {
                let (p, n) = match (x, additive) {
                    (Canon::Sum(p, n), true) | (Canon::Prod(p, n), false) => (p, n),
                    (other, _) => (vec![other], vec![]),
                };
                if flip {
                    pos.extend(n);
                    neg.extend(p);
                } else {
                    pos.extend(p);
                    neg.extend(n);
                }
            }
            pos.sort();
            neg.sort();
            if additive {
                Canon::Sum(pos, neg)
            } else {
                Canon::Prod(pos, neg)
            }
        }
    }
}

impl fmt::Display for Canon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (open, close, pos, neg) = match self {
            Canon::Num(n) => return write!(f, "{n}"),
            Canon::Sum(p, n) => ("(+", "-", p, n),
            Canon::Prod(p, n) => ("(*", "/", p, n),
        };
        write!(f, "{open}")?;
        for x in pos {
            write!(f, " {x}")?;
        }
        if !neg.is_empty() {
            write!(f, " {close}")?;
            for x in neg {
                write!(f, " {x}")?;
            }
        }
        write!(f, ")")
    }
}

/// Human-readable form with only the parentheses precedence needs.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn prec(op: Op) -> u8 {
            match op {
                Op::Add | Op::Sub => 1,
                Op::Mul | Op::Div => 2,
            }
        }
        fn go(e: &Expr, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let Expr::Bin(op, a, b) = e else {
                return match e {
                    Expr::Num(n) => write!(f, "{n}"),
                    Expr::Bin(..) => Ok(()),
                };
            };
            let left_parens = matches!(**a, Expr::Bin(o, ..) if prec(o) < prec(*op));
            // Right operand of - and / also needs them at equal precedence: a-(b+c).
            let right_parens = matches!(**b, Expr::Bin(o, ..)
                if prec(o) < prec(*op) || (prec(o) == prec(*op) && matches!(op, Op::Sub | Op::Div)));
            for (x, parens, sep) in [(a, left_parens, true), (b, right_parens, false)] {
                if parens {
                    write!(f, "(")?;
                }
                go(x, f)?;
                if parens {
                    write!(f, ")")?;
                }
                if sep {
                    write!(f, " {} ", op.symbol())?;
                }
            }
            Ok(())
        }
        go(self, f)
    }
}

/// Parses `+ - * /` (also `× ÷ −`), parentheses and non-negative integers. Unary minus,
/// decimals and anything else are syntax errors.
pub fn parse(s: &str) -> Result<Expr, ExprError> {
    if s.chars().count() > MAX_LEN {
        return Err(ExprError::TooLong(MAX_LEN));
    }
    let toks = tokenize(s)?;
    let mut p = Parser { toks, pos: 0 };
    let e = p.expr(0)?;
    if p.pos != p.toks.len() {
        return Err(p.err("unexpected trailing input"));
    }
    Ok(e)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Num(u64),
    Op(Op),
    Open,
    Close,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ExprError> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '0'..='9' => {
                let start = i;
                while i < chars.len() && chars[i].is_ascii_digit() {
                    i += 1;
                }
                let digits: String = chars[start..i].iter().collect();
                let n = digits.parse::<u64>().map_err(|_| ExprError::Syntax {
                    pos: start,
                    msg: "number too large".into(),
                })?;
                toks.push(Tok::Num(n));
                continue;
            }
            '+' => Tok::Op(Op::Add),
            '-' | '−' | '–' => Tok::Op(Op::Sub),
            '*' | '×' | '·' | '⋅' => Tok::Op(Op::Mul),
            '/' | '÷' => Tok::Op(Op::Div),
            '(' | '[' => Tok::Open,
            ')' | ']' => Tok::Close,
            other => {
                return Err(ExprError::Syntax {
                    pos: i,
                    msg: format!("unexpected {other:?}"),
                });
            }
        };
        toks.push(tok);
        i += 1;
    }
    Ok(toks)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn err(&self, msg: &str) -> ExprError {
        ExprError::Syntax {
            pos: self.pos,
            msg: msg.into(),
        }
    }

    fn expr(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut lhs = self.term(depth)?;
        while let Some(Tok::Op(op @ (Op::Add | Op::Sub))) = self.toks.get(self.pos).copied() {
            self.pos += 1;
            lhs = Expr::bin(op, lhs, self.term(depth)?);
        }
        Ok(lhs)
    }

    fn term(&mut self, depth: usize) -> Result<Expr, ExprError> {
        let mut lhs = self.atom(depth)?;
        while let Some(Tok::Op(op @ (Op::Mul | Op::Div))) = self.toks.get(self.pos).copied() {
            self.pos += 1;
            lhs = Expr::bin(op, lhs, self.atom(depth)?);
        }
        Ok(lhs)
    }

    fn atom(&mut self, depth: usize) -> Result<Expr, ExprError> {
        if depth >= MAX_DEPTH {
            return Err(ExprError::TooDeep(MAX_DEPTH));
        }
        match self.toks.get(self.pos).copied() {
            Some(Tok::Num(n)) => {
                self.pos += 1;
                Ok(Expr::Num(n))
            }
            Some(Tok::Open) => {
                self.pos += 1;
                let e = self.expr(depth + 1)?;
                if self.toks.get(self.pos) != Some(&Tok::Close) {
                    return Err(self.err("expected ')'"));
                }
                self.pos += 1;
                Ok(e)
            }
            Some(_) => Err(self.err("expected a number or '('")),
            None => Err(self.err("unexpected end")),
        }
    }
}

/// Value of `a op b` under Countdown's generator rules (positive integers only), or
/// `None` when the step is not allowed.
pub fn apply_positive_integer(op: Op, a: &Q, b: &Q) -> Option<Q> {
    let v = match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => {
            if b.is_zero() {
                return None;
            }
            a / b
        }
    };
    (is_integer(&v) && v > int(0)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn val(s: &str) -> Result<Q, ExprError> {
        parse(s)?.eval(true)
    }

    #[test]
    fn parses_and_evaluates_with_precedence() {
        assert_eq!(val("2+3*4"), Ok(int(14)));
        assert_eq!(val("(2+3)*4"), Ok(int(20)));
        assert_eq!(val("100 − 4 × 5 ÷ 2"), Ok(int(90)));
        assert_eq!(val("8/4/2"), Ok(int(1)));
        assert_eq!(val("8-4-2"), Ok(int(2)));
    }

    #[test]
    fn tricky_inputs() {
        assert_eq!(val("5/(3-3)"), Err(ExprError::DivByZero));
        assert!(matches!(val("7/2*2"), Err(ExprError::NonInteger(_))));
        assert_eq!(parse("7/2*2").and_then(|e| e.eval(false)), Ok(int(7)));
        assert!(matches!(parse("-3+5"), Err(ExprError::Syntax { .. })));
        assert!(matches!(parse("2.5*2"), Err(ExprError::Syntax { .. })));
        assert!(matches!(parse("(2+3"), Err(ExprError::Syntax { .. })));
        assert!(matches!(parse("2 3"), Err(ExprError::Syntax { .. })));
        assert!(matches!(parse(""), Err(ExprError::Syntax { .. })));
        assert!(matches!(
            parse("99999999999999999999999"),
            Err(ExprError::Syntax { .. })
        ));
        assert_eq!(parse(&"(".repeat(500)), Err(ExprError::TooDeep(MAX_DEPTH)));
        assert_eq!(parse(&"1+".repeat(600)), Err(ExprError::TooLong(MAX_LEN)));
    }

    #[test]
    fn canonical_form_identifies_commuted_and_reassociated() {
        let c = |s: &str| parse(s).map(|e| e.canonical()).unwrap_or_default();
        assert_eq!(c("3+5*7"), c("7*5+3"));
        assert_eq!(c("(1+2)+3"), c("3+(2+1)"));
        assert_eq!(c("10-(4-2)"), c("(10+2)-4"));
        assert_eq!(c("8/(4/2)"), c("8*2/4"));
        assert_eq!(c("(8-3)*(2+1)"), c("(1+2)*(8-3)"));
        assert_ne!(c("8-3"), c("3-8"));
        assert_ne!(c("8/2"), c("2/8"));
        assert_ne!(c("(1+2)*3"), c("1+2*3"));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "1+2*3",
            "(1+2)*3",
            "8-(4-2)",
            "8/(4*2)",
            "(9-3)/(2+1)",
            "5-3+2",
        ] {
            let e = parse(s).unwrap();
            let again = parse(&e.to_string()).unwrap();
            assert_eq!(e.eval(false), again.eval(false), "{s}");
            assert_eq!(e.canonical(), again.canonical(), "{s}");
        }
    }
}
