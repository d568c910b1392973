//! Exact closed-form values: finite sums of rational × π^k × √r with r squarefree. Square
//! roots of distinct squarefree integers and powers of π are linearly independent over the
//! rationals, so two values are equal exactly when their canonical term maps are equal:
//! no tolerance, no CAS. Every operation is size-capped and returns `None` past the cap,
//! because the operands come from model output.

use std::collections::BTreeMap;

use num_bigint::{BigInt, BigUint, Sign};
use num_traits::{One, Signed, ToPrimitive, Zero};

use crate::tasks::rational::{Q, int};

/// Bits of all numerators and denominators together: `10^{1000}` (3.3k bits) fits,
/// `10^{100000}` does not.
const MAX_BITS: u64 = 4096;
const MAX_TERMS: usize = 32;
const MAX_PI_POWER: i32 = 12;
/// Radicands are factored by trial division up to their cube root, so this keeps a
/// square root below ~10^5 divisions.
const MAX_RADICAND: u64 = 1_000_000_000_000_000;
/// 300! has ~2k bits, inside `MAX_BITS`; `1000!` is refused before it is computed.
pub const MAX_FACTORIAL: u64 = 300;
const MAX_EXPONENT: i64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// (power of π, squarefree radicand) → non-zero coefficient.
    terms: BTreeMap<(i32, u64), Q>,
}

impl Value {
    pub fn rational(q: Q) -> Value {
        let mut terms = BTreeMap::new();
        if !q.is_zero() {
            terms.insert((0, 1), q);
        }
        Value { terms }
    }

    pub fn pi() -> Value {
        Value {
            terms: BTreeMap::from([((1, 1), int(1))]),
        }
    }

    /// The value when it has no π and no radical.
    pub fn as_rational(&self) -> Option<Q> {
        match self.terms.len() {
            0 => Some(Q::zero()),
            1 => self.terms.get(&(0, 1)).cloned(),
            _ => None,
        }
    }

    fn checked(mut self) -> Option<Value> {
        self.terms.retain(|_, c| !c.is_zero());
        let bits: u64 = self
            .terms
            .values()
            .map(|c| c.numer().bits() + c.denom().bits())
            .sum();
        let pi_ok = self.terms.keys().all(|(k, _)| k.abs() <= MAX_PI_POWER);
        (bits <= MAX_BITS && self.terms.len() <= MAX_TERMS && pi_ok).then_some(self)
    }

    pub fn neg(&self) -> Value {
        Value {
            terms: self.terms.iter().map(|(k, c)| (*k, -c)).collect(),
        }
    }

    pub fn add(&self, other: &Value) -> Option<Value> {
        let mut terms = self.terms.clone();
        for (k, c) in &other.terms {
            *terms.entry(*k).or_insert_with(Q::zero) += c;
        }
        Value { terms }.checked()
    }

    pub fn sub(&self, other: &Value) -> Option<Value> {
        self.add(&other.neg())
    }

    pub fn mul(&self, other: &Value) -> Option<Value> {
        if self.terms.len() * other.terms.len() > MAX_TERMS * MAX_TERMS {
            return None;
        }
        let mut terms: BTreeMap<(i32, u64), Q> = BTreeMap::new();
        for ((k1, r1), c1) in &self.terms {
            for ((k2, r2), c2) in &other.terms {
                // r1·r2 = g²·(r1/g)(r2/g), and the cofactors of two squarefree numbers by
                // their gcd are coprime and squarefree, so their product is squarefree.
                let g = gcd(*r1, *r2);
                let r = (*r1 / g) as u128 * (*r2 / g) as u128;
                let r = u64::try_from(r).ok().filter(|r| *r <= MAX_RADICAND)?;
                let c = c1 * c2 * int(g as i64);
                *terms.entry((k1 + k2, r)).or_insert_with(Q::zero) += c;
            }
        }
        Value { terms }.checked()
    }

    /// 1/x for a single term, or for two terms with the same power of π by the conjugate
    /// (a√r + b√s)(a√r − b√s) = a²r − b²s. Anything else is not representable here.
    pub fn recip(&self) -> Option<Value> {
        let t: Vec<_> = self.terms.iter().collect();
        match t.as_slice() {
            [((k, r), c)] => {
                let c: &Q = c;
                let coef = Q::one() / (c * int(*r as i64));
                Value {
                    terms: BTreeMap::from([((-k, *r), coef)]),
                }
                .checked()
            }
            [((k1, r1), a), ((k2, r2), b)] if k1 == k2 => {
                let (a, b): (&Q, &Q) = (a, b);
                let norm = a * a * int(*r1 as i64) - b * b * int(*r2 as i64);
                if norm.is_zero() {
                    return None;
                }
                let inv = Q::one() / norm;
                Value {
                    terms: BTreeMap::from([((-k1, *r1), a * &inv), ((-k1, *r2), -(b * &inv))]),
                }
                .checked()
            }
            _ => None,
        }
    }

    pub fn div(&self, other: &Value) -> Option<Value> {
        self.mul(&other.recip()?)
    }

    pub fn pow_int(&self, n: i64) -> Option<Value> {
        if n.abs() > MAX_EXPONENT {
            return None;
        }
        if n < 0 {
            return self.recip()?.pow_int(-n);
        }
        // A lower bound on the result's size, so `3^{100000}` is refused up front.
        let widest = self
            .terms
            .values()
            .map(|c| c.numer().bits().max(c.denom().bits()))
            .max()
            .unwrap_or(0);
        let grows = self.terms.len() > 1 || self.terms.keys().any(|k| *k != (0, 1));
        if widest.saturating_sub(1).saturating_mul(n as u64) > MAX_BITS
            || (grows && n > 4 * MAX_BITS as i64)
        {
            return None;
        }
        let mut result = Value::rational(int(1));
        let mut base = self.clone();
        let mut e = n as u64;
        while e > 0 {
            if e & 1 == 1 {
                result = result.mul(&base)?;
            }
            e >>= 1;
            if e > 0 {
                base = base.mul(&base)?;
            }
        }
        Some(result)
    }

    /// x^(p/q) for a rational exponent: integer powers of anything, roots only of rationals.
    pub fn pow(&self, exp: &Q) -> Option<Value> {
        let p = exp.numer().to_i64()?;
        let q = exp.denom().to_u32()?;
        if q == 1 {
            return self.pow_int(p);
        }
        let root = root_of_rational(&self.as_rational()?, q)?;
        root.pow_int(p)
    }

    pub fn factorial(&self) -> Option<Value> {
        let q = self.as_rational()?;
        if !q.denom().is_one() || q.is_negative() {
            return None;
        }
        let n = q.numer().to_u64().filter(|n| *n <= MAX_FACTORIAL)?;
        let f = (2..=n).fold(BigInt::one(), |acc, i| acc * i);
        Value::rational(Q::from_integer(f)).checked()
    }
}

/// √q and higher roots of a rational, exactly: √(n/d) = a√s / (b√t) = a√(st) / (b·t) with
/// n = a²s, d = b²t. Higher roots only when they are rational (`\sqrt[3]{8}` = 2).
pub fn root_of_rational(q: &Q, n: u32) -> Option<Value> {
    match n {
        0 => None,
        1 => Some(Value::rational(q.clone())),
        2 => {
            if q.is_negative() {
                return None;
            }
            let num = q.numer().to_u64().filter(|v| *v <= MAX_RADICAND)?;
            let den = q.denom().to_u64().filter(|v| *v <= MAX_RADICAND)?;
            let (a, s) = square_split(num);
            let (b, t) = square_split(den);
            let coef = Q::new(BigInt::from(a), BigInt::from(b) * BigInt::from(t));
            let sqrt_s = Value {
                terms: BTreeMap::from([((0, s), Q::one())]),
            };
            let sqrt_t = Value {
                terms: BTreeMap::from([((0, t), Q::one())]),
            };
            sqrt_s.mul(&sqrt_t)?.mul(&Value::rational(coef))
        }
        _ => {
            let neg = q.is_negative();
            if neg && n.is_multiple_of(2) {
                return None;
            }
            let exact = |v: &BigInt| -> Option<BigInt> {
                let m: BigUint = v.magnitude().clone();
                let r = m.nth_root(n);
                (r.pow(n) == m).then(|| BigInt::from_biguint(Sign::Plus, r))
            };
            let r = Q::new(exact(q.numer())?, exact(q.denom())?);
            Some(Value::rational(if neg { -r } else { r }))
        }
    }
}

/// n = a²·s with s squarefree. Trial division runs while p³ ≤ the cofactor; what is left
/// then has at most two prime factors, so it is a square or squarefree.
fn square_split(n: u64) -> (u64, u64) {
    if n == 0 {
        return (0, 1);
    }
    let (mut m, mut a, mut s) = (n, 1u64, 1u64);
    let mut p = 2u64;
    while p.saturating_mul(p).saturating_mul(p) <= m {
        let mut e = 0;
        while m.is_multiple_of(p) {
            m /= p;
            e += 1;
        }
        a *= p.pow(e / 2);
        if !e.is_multiple_of(2) {
            s *= p;
        }
        p += if p == 2 { 1 } else { 2 };
    }
    let r = m.isqrt();
    if m > 1 && r * r == m {
        a *= r;
    } else {
        s *= m;
    }
    (a, s)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqrt(n: i64) -> Value {
        root_of_rational(&int(n), 2).unwrap()
    }

    #[test]
    fn radicals_are_canonical() {
        assert_eq!(square_split(72), (6, 2));
        assert_eq!(square_split(1_000_003 * 1_000_003), (1_000_003, 1));
        assert_eq!(square_split(999_983 * 1_000_003), (1, 999_983 * 1_000_003));
        assert_eq!(sqrt(8), sqrt(2).mul(&Value::rational(int(2))).unwrap());
        assert_eq!(sqrt(2).mul(&sqrt(2)).unwrap(), Value::rational(int(2)));
        assert_eq!(sqrt(6), sqrt(2).mul(&sqrt(3)).unwrap());
        // 1/(1+√2) = √2 − 1
        let one = Value::rational(int(1));
        let lhs = one.add(&sqrt(2)).unwrap().recip().unwrap();
        assert_eq!(lhs, sqrt(2).sub(&one).unwrap());
        assert_eq!(root_of_rational(&int(-4), 2), None);
        assert_eq!(
            root_of_rational(&int(-8), 3),
            Some(Value::rational(int(-2)))
        );
        assert_eq!(root_of_rational(&int(9), 3), None);
    }

    #[test]
    fn blow_ups_are_refused() {
        let ten = Value::rational(int(10));
        assert!(ten.pow_int(1000).is_some());
        assert_eq!(ten.pow_int(100_000), None);
        assert_eq!(ten.pow_int(i64::MAX), None);
        assert_eq!(
            Value::rational(int(1)).pow_int(99_999),
            Some(Value::rational(int(1)))
        );
        assert_eq!(Value::pi().pow_int(100), None);
        assert_eq!(Value::rational(int(1000)).factorial(), None);
        assert!(Value::rational(int(300)).factorial().is_some());
        assert_eq!(Value::rational(int(0)).recip(), None);
    }
}
