//! Multi-solution Countdown: find `k` distinct expressions reaching the target.
//! Distinct means distinct canonical forms (`Expr::canonical`): commuted or re-associated
//! rewrites of one solution count once.

use std::collections::BTreeSet;

use rand::RngExt;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::countdown::{join, solve_all, verify_expression};
use super::{Task, Verdict};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultiCountdownItem {
    pub id: String,
    pub numbers: Vec<u64>,
    pub target: u64,
    pub integer_only: bool,
    /// Distinct solutions required.
    pub k: usize,
    /// Distinct solutions that exist (positive-integer intermediates).
    pub n_solutions: usize,
    /// `k` known distinct solutions.
    pub solutions: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct MultiCountdown {
    pub n_numbers: usize,
    pub max_number: u64,
    pub min_target: u64,
    pub max_target: u64,
    pub k: usize,
}

impl Default for MultiCountdown {
    fn default() -> Self {
        Self {
            n_numbers: 4,
            max_number: 30,
            min_target: 10,
            max_target: 100,
            k: 4,
        }
    }
}

/// Answers are separated by `;` or new lines.
pub fn split_answers(answer: &str) -> impl Iterator<Item = &str> {
    answer
        .split([';', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

impl Task for MultiCountdown {
    type Item = MultiCountdownItem;
    const NAME: &'static str = "multi_countdown";

    fn generate(&self, id: String, rng: &mut ChaCha8Rng) -> MultiCountdownItem {
        loop {
            let numbers: Vec<u64> = (0..self.n_numbers)
                .map(|_| rng.random_range(1..=self.max_number))
                .collect();
            let all = solve_all(&numbers);
            let mut targets: Vec<u64> = all
                .iter()
                .filter(|(t, sols)| {
                    (self.min_target..=self.max_target).contains(*t)
                        && !numbers.contains(t)
                        && sols.len() >= self.k
                })
                .map(|(t, _)| *t)
                .collect();
            targets.sort_unstable();
            let Some(&target) = targets.choose(rng) else {
                continue;
            };
            let Some(sols) = all.get(&target) else {
                continue;
            };
            let mut list: Vec<String> = sols.values().map(|e| e.to_string()).collect();
            list.shuffle(rng);
            list.truncate(self.k);
            return MultiCountdownItem {
                id,
                numbers,
                target,
                integer_only: true,
                k: self.k,
                n_solutions: sols.len(),
                solutions: list,
            };
        }
    }

    fn id(item: &MultiCountdownItem) -> &str {
        &item.id
    }

    fn prompt(item: &MultiCountdownItem) -> String {
        format!(
            "Using the numbers {} (each at most once per expression) and + - * / with integer \
             intermediate results, find {} different expressions that equal {}. Separate them \
             with ';'.",
            join(&item.numbers),
            item.k,
            item.target
        )
    }

    fn verify(item: &MultiCountdownItem, answer: &str) -> Verdict {
        let mut distinct = BTreeSet::new();
        let mut detail = None;
        for cand in split_answers(answer) {
            match verify_expression(&item.numbers, item.target, item.integer_only, cand) {
                Ok(canon) => {
                    if !distinct.insert(canon) && detail.is_none() {
                        detail = Some(format!("{cand:?} repeats an earlier solution"));
                    }
                }
                Err(why) => {
                    detail.get_or_insert(format!("{cand:?}: {why}"));
                }
            }
        }
        Verdict {
            n_correct: distinct.len(),
            n_required: item.k,
            detail,
        }
    }

    fn reference_answer(item: &MultiCountdownItem) -> String {
        item.solutions.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{generate_items, item_rng};
    use proptest::prelude::*;

    fn item() -> MultiCountdownItem {
        MultiCountdownItem {
            id: "t".into(),
            numbers: vec![3, 5, 7, 9],
            target: 24,
            integer_only: true,
            k: 3,
            n_solutions: 0,
            solutions: vec![],
        }
    }

    #[test]
    fn counts_distinct_correct_solutions() {
        let it = item();
        let v = MultiCountdown::verify(&it, "3*5+9; 3+5+7+9; (3+9)*(7-5)");
        assert_eq!((v.n_correct, v.n_required), (3, 3));
        assert!(v.is_correct());
        // Commuted and re-associated duplicates count once; a wrong one counts zero.
        let v = MultiCountdown::verify(&it, "3*5+9\n9+5*3\n(3+5)+(7+9)\n9+(7+(5+3))\n3*8");
        assert_eq!(v.n_correct, 2);
        assert!(!v.is_correct());
        let v = MultiCountdown::verify(&it, "");
        assert_eq!(v.n_correct, 0);
    }

    #[test]
    fn generated_items_carry_k_distinct_solutions() {
        for it in generate_items(&MultiCountdown::default(), 10, 3) {
            let v = MultiCountdown::verify(&it, &MultiCountdown::reference_answer(&it));
            assert_eq!(v.n_correct, it.k, "{it:?}");
            assert!(it.n_solutions >= it.k);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn every_generated_item_is_judgeable(seed in 0u64..1_000_000, junk in ".{0,30}") {
            let it = MultiCountdown::default().generate("p".into(), &mut item_rng(seed, 0));
            prop_assert!(MultiCountdown::verify(&it, &MultiCountdown::reference_answer(&it)).is_correct());
            let _ = MultiCountdown::verify(&it, &junk);
        }
    }
}
