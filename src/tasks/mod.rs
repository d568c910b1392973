//! Task generators and verifiers. Every generator is seeded per item, so item `i` of seed
//! `s` is the same whatever `n` or thread count produced it.

pub mod arithmetic;
pub mod countdown;
pub mod expr;
pub mod math_answer;
pub mod multi_countdown;
pub mod products;
pub mod rational;
pub mod sudoku;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

/// How a verifier judged one answer. One-answer tasks have `n_required == 1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Distinct correct answers found (0 or 1 for one-answer tasks).
    pub n_correct: usize,
    pub n_required: usize,
    /// Why an answer was rejected (first reason), for logs.
    pub detail: Option<String>,
}

impl Verdict {
    pub fn right() -> Self {
        Self {
            n_correct: 1,
            n_required: 1,
            detail: None,
        }
    }

    pub fn wrong(why: impl Into<String>) -> Self {
        Self {
            n_correct: 0,
            n_required: 1,
            detail: Some(why.into()),
        }
    }

    pub fn is_correct(&self) -> bool {
        self.n_correct >= self.n_required
    }
}

/// A generated task: items are JSON lines; the verifier judges an answer string (the
/// text inside the final-answer tags, or the whole reply if it has none).
pub trait Task: Sync {
    type Item: Serialize + DeserializeOwned + Clone + Send + Sync;
    const NAME: &'static str;

    fn generate(&self, id: String, rng: &mut ChaCha8Rng) -> Self::Item;
    fn id(item: &Self::Item) -> &str;
    /// The question as the user turn states it.
    fn prompt(item: &Self::Item) -> String;
    fn verify(item: &Self::Item, answer: &str) -> Verdict;
    /// A known correct answer, for tests and trace synthesis.
    fn reference_answer(item: &Self::Item) -> String;
}

/// Stable per-item seed: SplitMix64 over (seed, index), so neighbouring items are unrelated.
pub fn item_seed(seed: u64, index: u64) -> u64 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    mix(mix(seed) ^ index)
}

pub fn item_rng(seed: u64, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(item_seed(seed, index))
}

pub fn item_id(task: &str, seed: u64, index: u64) -> String {
    format!("{task}-s{seed}-{index:07}")
}

/// Items `0..n` for `seed`, generated in parallel but in a fixed order.
pub fn generate_items<T: Task>(task: &T, n: usize, seed: u64) -> Vec<T::Item> {
    generate_range(task, 0..n as u64, seed)
}

/// Items `range` of `seed`, in parallel, in order. Item `i` depends only on `(seed, i)`,
/// so ranges that split `0..n` concatenate to `generate_items(task, n, seed)`.
pub fn generate_range<T: Task>(task: &T, range: std::ops::Range<u64>, seed: u64) -> Vec<T::Item> {
    use rayon::prelude::*;
    range
        .into_par_iter()
        .map(|i| task.generate(item_id(T::NAME, seed, i), &mut item_rng(seed, i)))
        .collect()
}

/// Items per parallel batch of `for_each_chunk`: enough to keep every core busy, few enough
/// that memory stays flat however many items are asked for.
pub const ITEM_CHUNK: u64 = 4096;

/// Items `0..n` of `seed` handed to `sink` in order, `ITEM_CHUNK` at a time with the index
/// of each chunk's first item. The next chunk is generated while `sink` takes the current
/// one; no more than two are ever held, so `n` can exceed memory.
pub fn for_each_chunk<T: Task, E: Send>(
    task: &T,
    n: u64,
    seed: u64,
    mut sink: impl FnMut(u64, Vec<T::Item>) -> Result<(), E> + Send,
) -> Result<(), E> {
    let chunk = |start: u64| start..n.min(start.saturating_add(ITEM_CHUNK));
    let mut range = chunk(0);
    let mut items = generate_range(task, range.clone(), seed);
    while !range.is_empty() {
        let next = chunk(range.end);
        let (done, next_items) = rayon::join(
            || sink(range.start, std::mem::take(&mut items)),
            || generate_range(task, next.clone(), seed),
        );
        done?;
        (range, items) = (next, next_items);
    }
    Ok(())
}

/// The final answer inside `<ANSWER>…</ANSWER>` (last one) if present, else the whole
/// reply: lets `data check` take either bare answers or full model outputs.
pub fn extract_final_answer(text: &str, open: &str, close: &str) -> String {
    if let Some(start) = text.rfind(open) {
        let inner = &text[start + open.len()..];
        let end = inner.find(close).unwrap_or(inner.len());
        return inner[..end].trim().to_string();
    }
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_answer_extraction() {
        assert_eq!(
            extract_final_answer("x <ANSWER> 1+2 </ANSWER>", "<ANSWER>", "</ANSWER>"),
            "1+2"
        );
        assert_eq!(extract_final_answer(" 7 ", "<ANSWER>", "</ANSWER>"), "7");
        assert_eq!(
            extract_final_answer("<ANSWER>3", "<ANSWER>", "</ANSWER>"),
            "3"
        );
    }

    #[test]
    fn item_seeds_differ_and_repeat() {
        assert_eq!(item_seed(1, 5), item_seed(1, 5));
        assert_ne!(item_seed(1, 5), item_seed(1, 6));
        assert_ne!(item_seed(1, 5), item_seed(2, 5));
    }
}
