//! Long sums and products with a known split into partial results: small enough for a
//! tiny model, and naturally forkable (each worker computes one part).

use num_bigint::BigInt;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::math_answer::parse_number;
use super::{Task, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArithOp {
    Sum,
    Product,
}

impl ArithOp {
    pub fn symbol(self) -> &'static str {
        match self {
            ArithOp::Sum => " + ",
            ArithOp::Product => " * ",
        }
    }

    pub fn fold(self, xs: &[u64]) -> BigInt {
        match self {
            ArithOp::Sum => xs.iter().map(|&x| BigInt::from(x)).sum(),
            ArithOp::Product => xs.iter().map(|&x| BigInt::from(x)).product(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArithmeticItem {
    pub id: String,
    pub op: ArithOp,
    pub operands: Vec<u64>,
    /// Consecutive groups of operands whose partial results combine to the answer.
    pub parts: Vec<Vec<u64>>,
    pub result: String,
}

#[derive(Debug, Clone)]
pub struct Arithmetic {
    pub sum_operands: (usize, usize),
    pub sum_max: u64,
    pub product_operands: (usize, usize),
    pub product_max: u64,
}

impl Default for Arithmetic {
    fn default() -> Self {
        Self {
            sum_operands: (4, 8),
            sum_max: 999,
            product_operands: (3, 5),
            product_max: 20,
        }
    }
}

impl Arithmetic {
    /// Short sums and products of small numbers: answers a model of a few hundred thousand
    /// parameters can learn on a CPU in minutes, so the demo shows the protocol being
    /// learned rather than the arithmetic being failed.
    pub fn tiny() -> Self {
        Self {
            sum_operands: (3, 4),
            sum_max: 9,
            product_operands: (3, 3),
            product_max: 4,
        }
    }
}

impl Task for Arithmetic {
    type Item = ArithmeticItem;
    const NAME: &'static str = "arithmetic";

    fn generate(&self, id: String, rng: &mut ChaCha8Rng) -> ArithmeticItem {
        let op = if rng.random_bool(0.5) {
            ArithOp::Sum
        } else {
            ArithOp::Product
        };
        let ((lo, hi), max) = match op {
            ArithOp::Sum => (self.sum_operands, self.sum_max),
            ArithOp::Product => (self.product_operands, self.product_max),
        };
        let n = rng.random_range(lo..=hi.max(lo).max(2));
        let operands: Vec<u64> = (0..n).map(|_| rng.random_range(2..=max.max(2))).collect();
        // 2..=min(4, n) parts, cut at distinct random points.
        let n_parts = rng.random_range(2..=n.min(4));
        let mut cuts: Vec<usize> = Vec::new();
        while cuts.len() < n_parts - 1 {
            let c = rng.random_range(1..n);
            if !cuts.contains(&c) {
                cuts.push(c);
            }
        }
        cuts.sort_unstable();
        let mut parts = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain([n]) {
            parts.push(operands[start..c].to_vec());
            start = c;
        }
        ArithmeticItem {
            id,
            op,
            result: op.fold(&operands).to_string(),
            operands,
            parts,
        }
    }

    fn id(item: &ArithmeticItem) -> &str {
        &item.id
    }

    fn prompt(item: &ArithmeticItem) -> String {
        let terms: Vec<String> = item.operands.iter().map(u64::to_string).collect();
        format!("Compute {}.", terms.join(item.op.symbol()))
    }

    fn verify(item: &ArithmeticItem, answer: &str) -> Verdict {
        let Some(expected) = parse_number(&item.result) else {
            return Verdict::wrong(format!("item has an unreadable answer {:?}", item.result));
        };
        match parse_number(answer) {
            Some(got) if got == expected => Verdict::right(),
            Some(got) => Verdict::wrong(format!("{got} is not {}", item.result)),
            None => Verdict::wrong(format!("not a number: {answer:?}")),
        }
    }

    fn reference_answer(item: &ArithmeticItem) -> String {
        item.result.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::generate_items;

    #[test]
    fn parts_recompose_the_answer() {
        for it in generate_items(&Arithmetic::default(), 200, 1) {
            let flat: Vec<u64> = it.parts.concat();
            assert_eq!(flat, it.operands);
            assert!(it.parts.len() >= 2 && it.parts.iter().all(|p| !p.is_empty()));
            let partials: Vec<BigInt> = it.parts.iter().map(|p| it.op.fold(p)).collect();
            let total: BigInt = match it.op {
                ArithOp::Sum => partials.into_iter().sum(),
                ArithOp::Product => partials.into_iter().product(),
            };
            assert_eq!(total.to_string(), it.result);
            assert!(Arithmetic::verify(&it, &it.result).is_correct());
        }
    }

    #[test]
    fn verifier() {
        let it = ArithmeticItem {
            id: "t".into(),
            op: ArithOp::Sum,
            operands: vec![600, 634],
            parts: vec![vec![600], vec![634]],
            result: "1234".into(),
        };
        assert!(Arithmetic::verify(&it, "1234").is_correct());
        assert!(Arithmetic::verify(&it, "1,234").is_correct());
        assert!(Arithmetic::verify(&it, "\\boxed{1234}").is_correct());
        assert!(!Arithmetic::verify(&it, "1235").is_correct());
        assert!(!Arithmetic::verify(&it, "12 34x").is_correct());
        assert!(!Arithmetic::verify(&it, "").is_correct());
    }
}
