//! Countdown: reach the target from the given numbers with + - * /, each number at most
//! once. The generator only walks positive-integer intermediates; the verifier enforces
//! the item's `integer_only` rule and otherwise accepts any exact rational route.

use std::collections::{BTreeMap, HashMap};

use num_bigint::BigInt;
use rand::RngExt;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::expr::{self, Expr, Op, apply_positive_integer};
use super::rational::{Q, int, parse_plain};
use super::{Task, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountdownItem {
    pub id: String,
    pub numbers: Vec<u64>,
    pub target: u64,
    /// Every intermediate result must be an integer.
    pub integer_only: bool,
    /// A known solution (the generator only emits solvable items).
    pub solution: String,
}

#[derive(Debug, Clone)]
pub struct Countdown {
    pub min_numbers: usize,
    pub max_numbers: usize,
    pub max_number: u64,
    pub min_target: u64,
    pub max_target: u64,
}

impl Default for Countdown {
    /// TinyZero-style sizes: 3-4 numbers below 100, targets 10..=100.
    fn default() -> Self {
        Self {
            min_numbers: 3,
            max_numbers: 4,
            max_number: 99,
            min_target: 10,
            max_target: 100,
        }
    }
}

/// Every value reachable from `numbers` (each used at most once, positive-integer
/// intermediates) with its distinct expressions keyed by canonical form. Exhaustive, so
/// meant for up to ~5 numbers.
pub fn solve_all(numbers: &[u64]) -> HashMap<u64, BTreeMap<String, Expr>> {
    let items: Vec<(Q, Expr)> = numbers
        .iter()
        .map(|&n| (Q::from_integer(n.into()), Expr::Num(n)))
        .collect();
    solve_from(items)
}

/// Like [`solve_all`] but from partial results (value, expression so far), e.g. after a
/// chosen first step.
pub fn solve_from(items: Vec<(Q, Expr)>) -> HashMap<u64, BTreeMap<String, Expr>> {
    let mut out = HashMap::new();
    search(items, &mut out);
    out
}

fn record(v: &Q, e: &Expr, out: &mut HashMap<u64, BTreeMap<String, Expr>>) {
    let Some(v) = as_u64(v) else {
        return;
    };
    out.entry(v)
        .or_default()
        .entry(e.canonical())
        .or_insert_with(|| e.clone());
}

fn search(items: Vec<(Q, Expr)>, out: &mut HashMap<u64, BTreeMap<String, Expr>>) {
    for (v, e) in &items {
        record(v, e, out);
    }
    for i in 0..items.len() {
        for j in 0..items.len() {
            if i == j {
                continue;
            }
            let (a, b) = (&items[i], &items[j]);
            for op in Op::ALL {
                // + and * are symmetric: take each unordered pair once.
                if matches!(op, Op::Add | Op::Mul) && i > j {
                    continue;
                }
                let Some(v) = apply_positive_integer(op, &a.0, &b.0) else {
                    continue;
                };
                let mut next: Vec<(Q, Expr)> = items
                    .iter()
                    .enumerate()
                    .filter(|(k, _)| *k != i && *k != j)
                    .map(|(_, x)| x.clone())
                    .collect();
                next.push((v, Expr::bin(op, a.1.clone(), b.1.clone())));
                search(next, out);
            }
        }
    }
}

/// Judges one expression against numbers and target. Returns the canonical form when
/// correct, so callers can count distinct solutions.
pub fn verify_expression(
    numbers: &[u64],
    target: u64,
    integer_only: bool,
    answer: &str,
) -> Result<String, String> {
    // Accept a trailing "= target" the way people write it, but only the right target.
    let (lhs, rhs) = match answer.split_once('=') {
        Some((l, r)) => (l, Some(r)),
        None => (answer, None),
    };
    if let Some(r) = rhs {
        let stated = parse_plain(r).ok_or_else(|| format!("cannot read {r:?} after '='"))?;
        if stated != Q::from_integer(BigInt::from(target)) {
            return Err(format!("states {r:?}, target is {target}"));
        }
    }
    let e = expr::parse(lhs).map_err(|e| e.to_string())?;
    let mut available: BTreeMap<u64, usize> = BTreeMap::new();
    for n in numbers {
        *available.entry(*n).or_default() += 1;
    }
    for leaf in e.leaves() {
        match available.get_mut(&leaf) {
            Some(c) if *c > 0 => *c -= 1,
            Some(_) => return Err(format!("{leaf} used more often than given")),
            None => return Err(format!("{leaf} is not one of the numbers")),
        }
    }
    let v = e.eval(integer_only).map_err(|e| e.to_string())?;
    if v != Q::from_integer(BigInt::from(target)) {
        return Err(format!("evaluates to {v}, not {target}"));
    }
    Ok(e.canonical())
}

impl Task for Countdown {
    type Item = CountdownItem;
    const NAME: &'static str = "countdown";

    fn generate(&self, id: String, rng: &mut ChaCha8Rng) -> CountdownItem {
        loop {
            let k = rng.random_range(self.min_numbers..=self.max_numbers);
            let numbers: Vec<u64> = (0..k)
                .map(|_| rng.random_range(1..=self.max_number))
                .collect();
            let all = solve_all(&numbers);
            let mut targets: Vec<u64> = all
                .keys()
                .copied()
                .filter(|t| (self.min_target..=self.max_target).contains(t))
                .filter(|t| !numbers.contains(t))
                .collect();
            targets.sort_unstable();
            let Some(&target) = targets.choose(rng) else {
                continue;
            };
            let sols: Vec<&Expr> = all
                .get(&target)
                .map(|m| m.values().collect())
                .unwrap_or_default();
            let Some(sol) = sols.choose(rng) else {
                continue;
            };
            return CountdownItem {
                id,
                numbers,
                target,
                integer_only: true,
                solution: sol.to_string(),
            };
        }
    }

    fn id(item: &CountdownItem) -> &str {
        &item.id
    }

    fn prompt(item: &CountdownItem) -> String {
        format!(
            "Using the numbers {} (each at most once) and + - * / with integer intermediate \
             results, write an expression that equals {}.",
            join(&item.numbers),
            item.target
        )
    }

    fn verify(item: &CountdownItem, answer: &str) -> Verdict {
        match verify_expression(&item.numbers, item.target, item.integer_only, answer) {
            Ok(_) => Verdict::right(),
            Err(why) => Verdict::wrong(why),
        }
    }

    fn reference_answer(item: &CountdownItem) -> String {
        item.solution.clone()
    }
}

pub(crate) fn join(ns: &[u64]) -> String {
    ns.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Value as an integer if it is one (used for readable reasoning text).
pub(crate) fn as_u64(q: &Q) -> Option<u64> {
    if q.is_integer() && *q >= int(0) {
        q.to_integer().try_into().ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{generate_items, item_rng};
    use proptest::prelude::*;

    fn item() -> CountdownItem {
        CountdownItem {
            id: "t".into(),
            numbers: vec![3, 5, 7, 9],
            target: 24,
            integer_only: true,
            solution: "3*5+9".into(),
        }
    }

    #[test]
    fn accepts_right_answers() {
        let it = item();
        for a in [
            "3*5+9",
            "9+5*3",
            "3+5+7+9",
            "3 × 5 + 9 = 24",
            "[(3+9)*(7-5)]",
        ] {
            let v = Countdown::verify(&it, a);
            assert!(v.is_correct(), "{a}: {v:?}");
        }
    }

    #[test]
    fn rejects_tricky_wrong_answers() {
        let it = item();
        for a in [
            "(9 - 7) * (3 + 9)", // = 24 but 9 used twice
            "3*5+9+9",           // 9 used twice
            "3*8",               // 8 not given
            "9/(7-7)",           // reuse and division by zero
            "9/(5-5)+24",        // not given
            "7/2*...",           // garbage
            "(7*9-3)/5*2",       // 2 not given
            "3*5+9 = 25",        // wrong stated result
            "",                  // empty
            "24",                // not given
            "-3+27",             // unary minus
        ] {
            assert!(!Countdown::verify(&it, a).is_correct(), "{a}");
        }
        // 9 / (5 - 3) = 4.5 is not an integer: rejected under integer_only...
        let it2 = CountdownItem {
            numbers: vec![9, 5, 3, 2],
            target: 9,
            ..item()
        };
        assert!(!Countdown::verify(&it2, "9/(5-3)*2").is_correct());
        // ...and accepted when fractions are allowed.
        let it3 = CountdownItem {
            integer_only: false,
            ..it2
        };
        assert!(Countdown::verify(&it3, "9/(5-3)*2").is_correct());
        let twins = CountdownItem {
            numbers: vec![9, 5, 5],
            ..it3
        };
        assert_eq!(
            Countdown::verify(&twins, "9/(5-5)").detail.as_deref(),
            Some("division by zero")
        );
    }

    #[test]
    fn solver_finds_known_values() {
        let all = solve_all(&[3, 5, 7]);
        assert!(all.contains_key(&105));
        assert!(all.contains_key(&1)); // 3 + 5 - 7
        assert!(!all.contains_key(&106));
    }

    #[test]
    fn generated_items_are_solvable_and_reproducible() {
        let task = Countdown::default();
        let a = generate_items(&task, 50, 7);
        let b = generate_items(&task, 50, 7);
        assert_eq!(a, b);
        for it in &a {
            assert!(Countdown::verify(it, &it.solution).is_correct(), "{it:?}");
            assert!((10..=100).contains(&it.target));
        }
        let ids: std::collections::HashSet<_> = a.iter().map(|i| i.id.clone()).collect();
        assert_eq!(ids.len(), a.len());
    }

    proptest! {
        #[test]
        fn every_generated_item_is_judgeable(seed in 0u64..1_000_000, junk in ".{0,30}") {
            let it = Countdown::default().generate("p".into(), &mut item_rng(seed, 0));
            prop_assert!(Countdown::verify(&it, &it.solution).is_correct());
            let _ = Countdown::verify(&it, &junk);
        }
    }
}
