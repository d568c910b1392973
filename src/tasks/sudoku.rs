//! 4×4 Sudoku (digits 1-4; rows, columns and 2×2 boxes each hold every digit once), kept
//! for generalization tests. Generated puzzles have exactly one solution.

use rand::RngExt;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Task, Verdict};

pub type Grid = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SudokuItem {
    pub id: String,
    /// 16 characters, row by row, `.` for a blank.
    pub puzzle: String,
    pub solution: String,
}

#[derive(Debug, Clone)]
pub struct Sudoku {
    pub min_blanks: usize,
    pub max_blanks: usize,
}

impl Default for Sudoku {
    fn default() -> Self {
        Self {
            min_blanks: 6,
            max_blanks: 12,
        }
    }
}

/// Row, column and box peers of cell `i` (excluding `i`).
pub fn peers(i: usize) -> impl Iterator<Item = usize> {
    let (r, c) = (i / 4, i % 4);
    let (br, bc) = (r / 2 * 2, c / 2 * 2);
    (0..16).filter(move |&j| {
        let (jr, jc) = (j / 4, j % 4);
        j != i && (jr == r || jc == c || (jr / 2 * 2 == br && jc / 2 * 2 == bc))
    })
}

/// Digits still allowed in cell `i`.
pub fn candidates(g: &Grid, i: usize) -> Vec<u8> {
    (1..=4u8).filter(|d| peers(i).all(|j| g[j] != *d)).collect()
}

/// Number of solutions, counting no further than `limit`.
pub fn count_solutions(g: &mut Grid, limit: usize) -> usize {
    let Some(i) = g.iter().position(|&d| d == 0) else {
        return 1;
    };
    let mut n = 0;
    for d in candidates(g, i) {
        g[i] = d;
        n += count_solutions(g, limit - n);
        g[i] = 0;
        if n >= limit {
            break;
        }
    }
    n
}

pub fn is_valid_solution(g: &Grid) -> bool {
    (0..16).all(|i| (1..=4).contains(&g[i]) && peers(i).all(|j| g[j] != g[i]))
}

pub fn parse_grid(s: &str, allow_blanks: bool) -> Option<Grid> {
    let cells: Vec<char> = s
        .chars()
        .filter(|c| !c.is_whitespace() && !matches!(c, '|' | ',' | '-' | '+'))
        .collect();
    if cells.len() != 16 {
        return None;
    }
    let mut g = [0u8; 16];
    for (k, c) in cells.iter().enumerate() {
        g[k] = match c {
            '1'..='4' => *c as u8 - b'0',
            '.' | '0' | '_' if allow_blanks => 0,
            _ => return None,
        };
    }
    Some(g)
}

pub fn render(g: &Grid) -> String {
    g.iter()
        .map(|&d| if d == 0 { '.' } else { (b'0' + d) as char })
        .collect()
}

/// Rows on separate lines, as the prompt shows them.
pub fn render_rows(g: &Grid) -> String {
    let s = render(g);
    (0..4)
        .map(|r| s[r * 4..r * 4 + 4].to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn random_full_grid(rng: &mut ChaCha8Rng) -> Grid {
    const BASE: Grid = [1, 2, 3, 4, 3, 4, 1, 2, 2, 1, 4, 3, 4, 3, 2, 1];
    let mut digits = [1u8, 2, 3, 4];
    digits.shuffle(rng);
    // Row order: bands swapped, rows swapped inside bands; same for columns.
    let perm = |rng: &mut ChaCha8Rng| {
        let mut bands = [0usize, 2];
        bands.shuffle(rng);
        let mut out = Vec::with_capacity(4);
        for b in bands {
            let mut inner = [b, b + 1];
            inner.shuffle(rng);
            out.extend(inner);
        }
        out
    };
    let rows = perm(rng);
    let cols = perm(rng);
    let transpose = rng.random_bool(0.5);
    let mut g = [0u8; 16];
    for r in 0..4 {
        for c in 0..4 {
            let (sr, sc) = if transpose {
                (cols[c], rows[r])
            } else {
                (rows[r], cols[c])
            };
            g[r * 4 + c] = digits[(BASE[sr * 4 + sc] - 1) as usize];
        }
    }
    g
}

impl Task for Sudoku {
    type Item = SudokuItem;
    const NAME: &'static str = "sudoku";

    fn generate(&self, id: String, rng: &mut ChaCha8Rng) -> SudokuItem {
        let solution = random_full_grid(rng);
        let want = rng.random_range(self.min_blanks..=self.max_blanks.max(self.min_blanks));
        let mut puzzle = solution;
        let mut order: Vec<usize> = (0..16).collect();
        order.shuffle(rng);
        let mut blanks = 0;
        for i in order {
            if blanks >= want {
                break;
            }
            let keep = puzzle[i];
            puzzle[i] = 0;
            if count_solutions(&mut puzzle.clone(), 2) == 1 {
                blanks += 1;
            } else {
                puzzle[i] = keep;
            }
        }
        SudokuItem {
            id,
            puzzle: render(&puzzle),
            solution: render(&solution),
        }
    }

    fn id(item: &SudokuItem) -> &str {
        &item.id
    }

    fn prompt(item: &SudokuItem) -> String {
        let rows = parse_grid(&item.puzzle, true)
            .map(|g| render_rows(&g))
            .unwrap_or_default();
        format!(
            "Solve this 4x4 Sudoku (digits 1-4; each row, column and 2x2 box holds each digit \
             once; '.' is blank). Answer with the 16 digits row by row.\n{rows}"
        )
    }

    fn verify(item: &SudokuItem, answer: &str) -> Verdict {
        let Some(givens) = parse_grid(&item.puzzle, true) else {
            return Verdict::wrong("item has an unreadable puzzle");
        };
        let Some(g) = parse_grid(answer, false) else {
            return Verdict::wrong("answer is not 16 digits 1-4");
        };
        if !is_valid_solution(&g) {
            return Verdict::wrong("answer breaks a row, column or box");
        }
        if givens.iter().zip(&g).any(|(&p, &a)| p != 0 && p != a) {
            return Verdict::wrong("answer changes a given digit");
        }
        Verdict::right()
    }

    fn reference_answer(item: &SudokuItem) -> String {
        item.solution.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::{generate_items, item_rng};
    use proptest::prelude::*;

    #[test]
    fn generated_puzzles_are_unique_and_verifiable() {
        for it in generate_items(&Sudoku::default(), 100, 2) {
            let mut g = parse_grid(&it.puzzle, true).unwrap();
            assert_eq!(count_solutions(&mut g, 3), 1, "{it:?}");
            assert!(g.iter().filter(|&&d| d == 0).count() >= 4);
            assert!(Sudoku::verify(&it, &it.solution).is_correct());
        }
    }

    #[test]
    fn verifier_rejects() {
        let it = SudokuItem {
            id: "t".into(),
            puzzle: "1.3.34.2.1.34.21".into(),
            solution: "1234341221434321".into(),
        };
        assert!(Sudoku::verify(&it, "1234\n3412\n2143\n4321").is_correct());
        assert!(Sudoku::verify(&it, "12 34 | 34 12 | 21 43 | 43 21").is_correct());
        // valid grid but contradicts a given (row swap)
        assert!(!Sudoku::verify(&it, "3412123443212143").is_correct());
        // breaks a column
        assert!(!Sudoku::verify(&it, "1234341212343412").is_correct());
        assert!(!Sudoku::verify(&it, "123434122143432").is_correct());
        assert!(!Sudoku::verify(&it, "1234341221434325").is_correct());
        assert!(!Sudoku::verify(&it, "12343412214343.1").is_correct());
    }

    proptest! {
        #[test]
        fn every_generated_item_is_judgeable(seed in 0u64..1_000_000, junk in ".{0,30}") {
            let it = Sudoku::default().generate("p".into(), &mut item_rng(seed, 0));
            prop_assert!(Sudoku::verify(&it, &it.solution).is_correct());
            let _ = Sudoku::verify(&it, &junk);
        }
    }
}
