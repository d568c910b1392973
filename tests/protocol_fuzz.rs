//! Property test over random tag soups (issue 4): the incremental parser, fed in random
//! pieces, never panics or hangs and agrees with the offline validator. 100k soups, seeded;
//! the cargo-fuzz target in fuzz/ runs the same check on coverage-guided inputs.

use asyncthink::asyncthink::protocol::{
    ProtocolLimits, ProtocolTags, check_incremental_agrees_with_offline, validate_organizer,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Pieces that tags are made of, whole tags, near-misses and plain text, so soups hit every
/// parser state (open tags, partial tags at a cut, malformed indices, nesting, text after
/// the answer) instead of being mostly plain text.
const FRAGMENTS: &[&str] = &[
    "<FORK-",
    "</FORK-",
    "<JOIN-",
    "</JOIN-",
    "<ANSWER>",
    "</ANSWER>",
    "<RETURN>",
    "</RETURN>",
    "<",
    ">",
    "</",
    "-",
    "0",
    "1",
    "2",
    "3",
    "07",
    "4294967296",
    "999999999",
    "<FORK-1>",
    "</FORK-1>",
    "<FORK-2>",
    "</FORK-2>",
    "<JOIN-1>",
    "</JOIN-1>",
    "<JOIN-2>",
    "</JOIN-2>",
    "<FORK-3>",
    "</FORK-3>",
    "<JOIN-3>",
    "</JOIN-3>",
    "<ANSWER",
    "ANSWER>",
    " ",
    "\n",
    "think",
    "12 + 30",
    "ü",
    "漢",
    "🙂",
    "<FORK-x>",
    "<JOIN-1 >",
];

fn soup(rng: &mut ChaCha8Rng) -> String {
    let n = rng.random_range(0..24);
    (0..n)
        .map(|_| FRAGMENTS[rng.random_range(0..FRAGMENTS.len())])
        .collect()
}

/// A well-formed organizer transcript with a random structure, so the live replay (with
/// injected join payloads) is exercised on valid streams too, not only on the rare valid soup.
fn valid_trace(rng: &mut ChaCha8Rng, tags: &ProtocolTags) -> String {
    let forks = rng.random_range(0..4u32);
    let mut text = String::from("plan ");
    let mut active: Vec<u32> = Vec::new();
    for id in 1..=forks {
        text.push_str(&tags.fork(id, &format!("sub {id}")));
        active.push(id);
        if rng.random_bool(0.3) {
            let k = active.remove(rng.random_range(0..active.len()));
            text.push_str(&format!("{}r{k}ü{}", tags.join_open(k), tags.join_close(k)));
        }
        text.push_str(" more ");
    }
    while !active.is_empty() {
        let k = active.remove(rng.random_range(0..active.len()));
        text.push_str(&format!("{}r{k}{}", tags.join_open(k), tags.join_close(k)));
    }
    text.push_str(&tags.answer("42"));
    text
}

/// A valid trace with 0–2 random edits (a fragment spliced in, a range cut out): streams
/// that are almost right, where parser bugs hide.
fn mutated_trace(rng: &mut ChaCha8Rng, tags: &ProtocolTags) -> String {
    let mut text = valid_trace(rng, tags);
    for _ in 0..rng.random_range(0..3) {
        let boundaries: Vec<usize> = (0..=text.len())
            .filter(|&i| text.is_char_boundary(i))
            .collect();
        let a = boundaries[rng.random_range(0..boundaries.len())];
        if rng.random_bool(0.5) {
            text.insert_str(a, FRAGMENTS[rng.random_range(0..FRAGMENTS.len())]);
        } else {
            let b = boundaries[rng.random_range(0..boundaries.len())];
            text.replace_range(a.min(b)..a.max(b), "");
        }
    }
    text
}

fn cuts(rng: &mut ChaCha8Rng, len: usize) -> Vec<usize> {
    let n = rng.random_range(0..8);
    (0..n).map(|_| rng.random_range(0..=len)).collect()
}

#[test]
fn incremental_and_offline_parsers_agree_on_100k_soups() {
    let tags = ProtocolTags::default();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut valid = 0usize;
    for case in 0..100_000 {
        let text = if case % 2 == 0 {
            soup(&mut rng)
        } else {
            mutated_trace(&mut rng, &tags)
        };
        // Small limits now and then, so budget errors are compared too.
        let limits = if case % 7 == 0 {
            ProtocolLimits {
                capacity: 2,
                max_forks: 2,
                max_tag_bytes: 8,
                max_total_bytes: 64,
            }
        } else {
            ProtocolLimits::with_capacity(3)
        };
        let c = cuts(&mut rng, text.len());
        if let Err(e) = check_incremental_agrees_with_offline(&text, &c, &tags, &limits) {
            panic!("case {case}: {e}");
        }
        valid += usize::from(validate_organizer(&text, &tags, limits).is_ok());
    }
    // The soups must reach the valid paths as well, or the test only compares errors.
    assert!(valid > 5_000, "only {valid} valid soups");
}

#[test]
fn live_replay_of_valid_traces_matches_offline() {
    let tags = ProtocolTags::default();
    let limits = ProtocolLimits::with_capacity(4);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for case in 0..20_000 {
        let text = valid_trace(&mut rng, &tags);
        validate_organizer(&text, &tags, limits.clone())
            .unwrap_or_else(|e| panic!("generator made an invalid trace {text:?}: {e}"));
        let c = cuts(&mut rng, text.len());
        if let Err(e) = check_incremental_agrees_with_offline(&text, &c, &tags, &limits) {
            panic!("case {case}: {e}");
        }
    }
}
