//! Several small products in one question, each worked by repeated addition: the task of
//! the AsyncThink experiment (docs/tasks.md). A sub-query is a few characters ("7*6") but its
//! work is a line of running totals ("1:7 2:14 … 6:42"), so handing it to a worker takes
//! much more off the organizer's critical path than the fork costs; and every step is a
//! local fact (previous total plus the addend, the count plus one) that a model of a few
//! million parameters learns on a CPU.

use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::math_answer::parse_number;
use super::rational::Q;
use super::{Task, Verdict};

/// `addend * count`: the addend summed `count` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    pub addend: u64,
    pub count: u64,
}

impl Product {
    pub fn value(self) -> u64 {
        self.addend * self.count
    }

    /// How the question and the worker's sub-query write it.
    pub fn text(self) -> String {
        format!("{}*{}", self.addend, self.count)
    }

    /// The running totals, `step:total`, one per addition.
    pub fn work(self) -> String {
        (1..=self.count)
            .map(|k| format!("{k}:{}", k * self.addend))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// What a worker returns and the final answer lists: `7*6=42`.
    pub fn result(self) -> String {
        format!("{}={}", self.text(), self.value())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductsItem {
    pub id: String,
    pub products: Vec<Product>,
    /// Every result in question order: `7*6=42, 4*9=36`.
    pub result: String,
}

#[derive(Debug, Clone)]
pub struct Products {
    /// Products per question.
    pub products: (usize, usize),
    pub addend: (u64, u64),
    pub count: (u64, u64),
}

impl Default for Products {
    fn default() -> Self {
        Self {
            products: (3, 5),
            addend: (2, 19),
            count: (3, 9),
        }
    }
}

impl Task for Products {
    type Item = ProductsItem;
    const NAME: &'static str = "products";

    fn generate(&self, id: String, rng: &mut ChaCha8Rng) -> ProductsItem {
        let n = rng.random_range(self.products.0..=self.products.1.max(self.products.0));
        let mut products: Vec<Product> = Vec::with_capacity(n);
        // Distinct products, so each result in the context names exactly one of them.
        while products.len() < n {
            let p = Product {
                addend: rng.random_range(self.addend.0..=self.addend.1.max(self.addend.0)),
                count: rng.random_range(self.count.0..=self.count.1.max(self.count.0)),
            };
            if !products.contains(&p) {
                products.push(p);
            }
        }
        let result = products
            .iter()
            .map(|p| p.result())
            .collect::<Vec<_>>()
            .join(", ");
        ProductsItem {
            id,
            products,
            result,
        }
    }

    fn id(item: &ProductsItem) -> &str {
        &item.id
    }

    fn prompt(item: &ProductsItem) -> String {
        let list: Vec<String> = item.products.iter().map(|p| p.text()).collect();
        format!("Compute {}.", list.join(", "))
    }

    /// One point per product whose value is right in its place; the answer may list bare
    /// values (`42, 36`) or restate the products (`7*6=42, 4*9=36`). Correct means all.
    fn verify(item: &ProductsItem, answer: &str) -> Verdict {
        let parts: Vec<&str> = answer.split(',').map(str::trim).collect();
        let n_required = item.products.len();
        let mut n_correct = 0;
        let mut detail = None;
        for (k, p) in item.products.iter().enumerate() {
            let Some(part) = parts.get(k) else {
                detail.get_or_insert_with(|| format!("no value for {}", p.text()));
                continue;
            };
            let value = part.rsplit('=').next().unwrap_or(part);
            let restated = part.rsplit_once('=').map(|(lhs, _)| lhs.trim());
            let want = Q::from_integer(p.value().into());
            match parse_number(value) {
                Some(v) if v == want && restated.is_none_or(|l| l == p.text()) => n_correct += 1,
                _ => {
                    detail.get_or_insert_with(|| format!("{part:?} is not {}", p.result()));
                }
            }
        }
        if parts.len() > n_required {
            detail.get_or_insert_with(|| format!("{} values for {n_required}", parts.len()));
            n_correct = n_correct.min(n_required.saturating_sub(1));
        }
        Verdict {
            n_correct,
            n_required,
            detail,
        }
    }

    fn reference_answer(item: &ProductsItem) -> String {
        item.result.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::generate_items;

    #[test]
    fn items_are_distinct_in_range_and_answer_themselves() {
        let t = Products::default();
        for it in generate_items(&t, 300, 3) {
            assert!((3..=5).contains(&it.products.len()));
            for (i, p) in it.products.iter().enumerate() {
                assert!((2..=19).contains(&p.addend) && (3..=9).contains(&p.count));
                assert!(!it.products[..i].contains(p));
            }
            assert!(Products::verify(&it, &it.result).is_correct());
        }
    }

    #[test]
    fn work_is_the_running_totals() {
        let p = Product {
            addend: 7,
            count: 4,
        };
        assert_eq!(p.work(), "1:7 2:14 3:21 4:28");
        assert_eq!(p.result(), "7*4=28");
    }

    #[test]
    fn verifier_counts_values_in_place() {
        let it = ProductsItem {
            id: "t".into(),
            products: vec![
                Product {
                    addend: 7,
                    count: 6,
                },
                Product {
                    addend: 4,
                    count: 9,
                },
            ],
            result: "7*6=42, 4*9=36".into(),
        };
        let v = |a: &str| Products::verify(&it, a);
        assert!(v("42, 36").is_correct());
        assert!(v("7*6=42, 4*9=36").is_correct());
        assert_eq!(v("42, 35").n_correct, 1);
        assert_eq!(v("36, 42").n_correct, 0);
        // A value under the wrong product is wrong even if the number matches.
        assert_eq!(v("4*9=42, 4*9=36").n_correct, 1);
        assert_eq!(v("42").n_correct, 1);
        assert!(!v("42, 36, 1").is_correct());
        assert_eq!(v("").n_correct, 0);
    }
}
