//! Cold-start trace synthesis: programmatic organizer and worker traces in the exact
//! protocol syntax, with randomized thinking structures (how many forks, which worker is
//! joined when, organizer thinking between fork and join), kept only if the protocol
//! validator accepts them and the task verifier accepts the final answer. The same plans
//! also render as sequential and parallel-thinking traces for the baselines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use rand::RngExt;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::protocol::{
    ProtocolError, ProtocolLimits, ProtocolTags, validate_organizer, validate_worker,
};
use crate::tasks::arithmetic::{ArithOp, Arithmetic, ArithmeticItem};
use crate::tasks::countdown::{Countdown, CountdownItem, join, solve_from};
use crate::tasks::expr::{Expr, Op, apply_positive_integer};
use crate::tasks::multi_countdown::{MultiCountdown, MultiCountdownItem};
use crate::tasks::products::{Products, ProductsItem};
use crate::tasks::rational::Q;
use crate::tasks::sudoku::{Sudoku, SudokuItem, candidates, parse_grid, render};
use crate::tasks::{Task, item_rng};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceMode {
    /// Organizer forks sub-queries and joins them asynchronously, in a random structure.
    AsyncThink,
    /// One fixed structure for every trace (the paper's ablation): fork as many sub-queries
    /// as the pool allows, join them oldest first, repeat; the organizer does none itself.
    #[serde(rename = "asyncthink-fixed")]
    AsyncThinkFixed,
    /// No forks: the organizer works through every sub-query itself.
    Sequential,
    /// The whole question goes to each of the `c - 1` workers.
    Parallel,
}

/// One piece of work an organizer can hand out.
#[derive(Debug, Clone)]
pub struct SubTask {
    /// Short description for the organizer's own thinking ("9 - 7 first").
    pub title: String,
    pub query: String,
    /// The worker's thinking before its return.
    pub thinking: String,
    pub takeaways: String,
    /// The organizer's reaction after joining it.
    pub reaction: String,
    /// The organizer's text when it does this sub-task itself instead of forking it
    /// (`None`: always forked in AsyncThink traces).
    pub inline: Option<String>,
}

/// A problem broken into sub-tasks, plus the organizer's own text around them.
#[derive(Debug, Clone)]
pub struct Plan {
    pub intro: String,
    /// In the order they would be forked.
    pub subtasks: Vec<SubTask>,
    /// Thinking the organizer may do while workers run.
    pub fillers: Vec<String>,
    pub conclusion: String,
    pub answer: String,
    /// Join workers oldest first in every random structure, instead of a per-trace policy
    /// (oldest, newest or random).
    pub oldest_first: bool,
}

/// Tasks that can be decomposed into organizer plans.
pub trait Plannable: Task {
    fn plan(item: &Self::Item, rng: &mut ChaCha8Rng) -> Plan;
}

pub const WORKER_INSTRUCTION: &str = "You are a worker. Solve the sub-query below on your own. \
Think step by step, then end with <RETURN>your key findings</RETURN>.";

pub fn organizer_instruction(capacity: usize, tags: &ProtocolTags) -> String {
    // With no room for a worker this is sequential thinking: a prompt of its own, so one
    // model fine-tuned on both kinds of trace knows which one it is asked for.
    if capacity <= 1 {
        return format!(
            "Think step by step on your own. End with {}.",
            tags.answer("your final answer")
        );
    }
    format!(
        "You are the organizer. Think step by step. You may hand a sub-query to worker i with \
         {}sub-query{} (at most {} workers at once), wait for its result with {}, and must \
         join every worker you fork. End with {}.",
        tags.fork_open(1).replace('1', "i"),
        tags.fork_close(1).replace('1', "i"),
        capacity.saturating_sub(1),
        tags.join_open(1).replace('1', "i"),
        tags.answer("your final answer"),
    )
}

// ---------------------------------------------------------------- plans per task

fn q(n: u64) -> Q {
    Q::from_integer(n.into())
}

/// Whether `e` has a subtree equal to `sub` up to commutation (canonical form).
fn contains(e: &Expr, sub: &str) -> bool {
    match e {
        Expr::Num(_) => false,
        Expr::Bin(_, a, b) => e.canonical() == sub || contains(a, sub) || contains(b, sub),
    }
}

/// Countdown branches by first step: each worker gets the numbers after one step and
/// reports the solutions through that step (or that there are none).
fn countdown_branches(numbers: &[u64], target: u64, want: usize) -> Vec<(SubTask, Vec<Expr>)> {
    let mut out = Vec::new();
    for i in 0..numbers.len() {
        for j in 0..numbers.len() {
            for op in Op::ALL {
                if i == j || (matches!(op, Op::Add | Op::Mul) && i > j) {
                    continue;
                }
                let (a, b) = (numbers[i], numbers[j]);
                let Some(v) = apply_positive_integer(op, &q(a), &q(b)) else {
                    continue;
                };
                let step = Expr::bin(op, Expr::Num(a), Expr::Num(b));
                let step_canon = step.canonical();
                let mut rest: Vec<u64> = numbers.to_vec();
                rest.remove(i.max(j));
                rest.remove(i.min(j));
                let mut items: Vec<(Q, Expr)> =
                    rest.iter().map(|&n| (q(n), Expr::Num(n))).collect();
                items.push((v.clone(), step.clone()));
                let sols: Vec<Expr> = solve_from(items)
                    .remove(&target)
                    .map(|m| {
                        m.into_values()
                            .filter(|e| contains(e, &step_canon))
                            .collect()
                    })
                    .unwrap_or_default();
                let vs = v.to_string();
                let mut left = vec![vs.clone()];
                left.extend(rest.iter().map(u64::to_string));
                let left = left.join(", ");
                let query = format!(
                    "Numbers {}; target {target}. Take {step} = {vs} as the first step, then \
                     use the remaining numbers {left} (each at most once) to reach {target}.",
                    join(numbers)
                );
                let found: Vec<String> = sols.iter().take(want).map(|e| e.to_string()).collect();
                let thinking = format!(
                    "After {step} = {vs} I have {left}. Searching combinations of them for \
                     {target}. {}",
                    if found.is_empty() {
                        "None of them reaches the target.".to_string()
                    } else {
                        format!("Found {}: {}.", found.len(), found.join("; "))
                    }
                );
                let takeaways = if found.is_empty() {
                    format!("no solution starting with {step}")
                } else {
                    found.join("; ")
                };
                let reaction = if found.is_empty() {
                    format!("{step} leads nowhere.")
                } else {
                    format!("{step} works.")
                };
                out.push((
                    SubTask {
                        title: format!("{step} first"),
                        query,
                        thinking,
                        takeaways,
                        reaction,
                        inline: None,
                    },
                    sols,
                ));
            }
        }
    }
    out
}

fn countdown_fillers(numbers: &[u64], target: u64) -> Vec<String> {
    let total: u64 = numbers.iter().sum();
    let max = numbers.iter().max().copied().unwrap_or(0);
    vec![
        format!("Meanwhile: all numbers add up to {total}, the target is {target}."),
        format!(
            "The largest number is {max}; {target} - {max} = {}.",
            target as i64 - max as i64
        ),
        format!("While waiting I note that {target} has to come from the last operation."),
    ]
}

/// Picks branches that together cover `need` distinct solutions (as reported, at most
/// `per_branch` each), plus some random others.
fn pick_branches(
    branches: Vec<(SubTask, Vec<Expr>)>,
    need: usize,
    per_branch: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<(SubTask, Vec<Expr>)> {
    let (mut good, mut bad): (Vec<_>, Vec<_>) = branches.into_iter().partition(|b| !b.1.is_empty());
    good.shuffle(rng);
    bad.shuffle(rng);
    let mut chosen = Vec::new();
    let mut seen = BTreeSet::new();
    while seen.len() < need {
        let Some(b) = good.pop() else { break };
        seen.extend(b.1.iter().take(per_branch).map(Expr::canonical));
        chosen.push(b);
    }
    // Up to 3 more branches (right or dead ends), at most 6 in all unless coverage needs more.
    let extra = rng
        .random_range(0..=3usize)
        .min(6usize.saturating_sub(chosen.len()));
    let mut rest: Vec<_> = good.into_iter().chain(bad).collect();
    rest.shuffle(rng);
    chosen.extend(rest.into_iter().take(extra));
    chosen.shuffle(rng);
    chosen
}

impl Plannable for Countdown {
    fn plan(item: &CountdownItem, rng: &mut ChaCha8Rng) -> Plan {
        let branches = countdown_branches(&item.numbers, item.target, 1);
        let chosen = pick_branches(branches, 1, 1, rng);
        let answer = chosen
            .iter()
            .flat_map(|(_, s)| s.first())
            .next()
            .map(Expr::to_string)
            .unwrap_or_else(|| item.solution.clone());
        Plan {
            intro: format!(
                "Numbers {}, target {}. I will explore different first steps.",
                join(&item.numbers),
                item.target
            ),
            subtasks: chosen.into_iter().map(|(s, _)| s).collect(),
            fillers: countdown_fillers(&item.numbers, item.target),
            conclusion: format!("{answer} = {} uses each number at most once.", item.target),
            answer,
            oldest_first: false,
        }
    }
}

impl Plannable for MultiCountdown {
    fn plan(item: &MultiCountdownItem, rng: &mut ChaCha8Rng) -> Plan {
        // Each branch reports up to 2k solutions: branches overlap (3+5+7+9 starts with
        // any pair), and the organizer needs k distinct ones over all it joins.
        let per_branch = 2 * item.k;
        let branches = countdown_branches(&item.numbers, item.target, per_branch);
        let chosen = pick_branches(branches, item.k, per_branch, rng);
        // Solutions in fork order, deduplicated by canonical form, as the organizer would.
        let mut seen = BTreeSet::new();
        let mut answers = Vec::new();
        for e in chosen.iter().flat_map(|(_, s)| s.iter().take(per_branch)) {
            if answers.len() < item.k && seen.insert(e.canonical()) {
                answers.push(e.to_string());
            }
        }
        let answer = answers.join("; ");
        Plan {
            intro: format!(
                "Numbers {}, target {}, I need {} different expressions. I will split the \
                 search by first step.",
                join(&item.numbers),
                item.target,
                item.k
            ),
            subtasks: chosen.into_iter().map(|(s, _)| s).collect(),
            fillers: countdown_fillers(&item.numbers, item.target),
            conclusion: format!(
                "Collecting distinct solutions (dropping rewrites of the same one): {answer}."
            ),
            answer,
            oldest_first: false,
        }
    }
}

/// Each product is one sub-task: the sub-query is the product itself, the work its running
/// totals, the takeaway `a*b=v`, which is also how the final answer lists it. No intro, fillers
/// or reactions: every organizer token is a tag, a sub-query, work or the answer, so the
/// critical path measures the structure and nothing else.
impl Plannable for Products {
    fn plan(item: &ProductsItem, _rng: &mut ChaCha8Rng) -> Plan {
        Plan {
            intro: String::new(),
            subtasks: item
                .products
                .iter()
                .map(|p| SubTask {
                    title: p.text(),
                    query: p.text(),
                    thinking: p.work(),
                    takeaways: p.result(),
                    reaction: String::new(),
                    inline: Some(format!("{}: {}; {}", p.text(), p.work(), p.result())),
                })
                .collect(),
            fillers: Vec::new(),
            conclusion: String::new(),
            answer: item.result.clone(),
            oldest_first: true,
        }
    }
}

impl Plannable for Arithmetic {
    fn plan(item: &ArithmeticItem, _rng: &mut ChaCha8Rng) -> Plan {
        let sym = item.op.symbol();
        let show = |xs: &[u64]| xs.iter().map(u64::to_string).collect::<Vec<_>>().join(sym);
        let mut partials = Vec::new();
        let subtasks = item
            .parts
            .iter()
            .map(|part| {
                let mut steps = Vec::new();
                let mut acc = num_bigint::BigInt::from(part[0]);
                for &x in &part[1..] {
                    let next = match item.op {
                        ArithOp::Sum => &acc + x,
                        ArithOp::Product => &acc * x,
                    };
                    steps.push(format!("{acc}{sym}{x} = {next}"));
                    acc = next;
                }
                partials.push(acc.to_string());
                let thinking = if steps.is_empty() {
                    format!("Just {acc}.")
                } else {
                    format!("{}.", steps.join("; "))
                };
                SubTask {
                    title: show(part),
                    query: format!("Compute {}.", show(part)),
                    thinking,
                    takeaways: format!("{} = {acc}", show(part)),
                    reaction: format!("Partial result {acc}."),
                    inline: None,
                }
            })
            .collect();
        Plan {
            intro: format!(
                "I split {} into {} parts and compute them separately.",
                show(&item.operands),
                item.parts.len()
            ),
            subtasks,
            fillers: vec![
                "While the parts are computed: the final step combines the partial results.".into(),
                format!("There are {} numbers in total.", item.operands.len()),
            ],
            conclusion: format!(
                "Combining the parts: {} = {}.",
                partials.join(sym),
                item.result
            ),
            answer: item.result.clone(),
            oldest_first: false,
        }
    }
}

impl Plannable for Sudoku {
    fn plan(item: &SudokuItem, _rng: &mut ChaCha8Rng) -> Plan {
        let (Some(puzzle), Some(sol)) = (
            parse_grid(&item.puzzle, true),
            parse_grid(&item.solution, false),
        ) else {
            // Unreadable items yield an empty plan; the validator then drops the trace.
            return Plan {
                intro: String::new(),
                subtasks: vec![],
                fillers: vec![],
                conclusion: String::new(),
                answer: String::new(),
                oldest_first: false,
            };
        };
        let rows = crate::tasks::sudoku::render_rows(&puzzle).replace('\n', " / ");
        let mut subtasks = Vec::new();
        for b in 0..4 {
            let (r0, c0) = (b / 2 * 2, b % 2 * 2);
            let cells: Vec<usize> = [(0, 0), (0, 1), (1, 0), (1, 1)]
                .iter()
                .map(|(dr, dc)| (r0 + dr) * 4 + c0 + dc)
                .filter(|&i| puzzle[i] == 0)
                .collect();
            if cells.is_empty() {
                continue;
            }
            let name = |i: usize| format!("r{}c{}", i / 4 + 1, i % 4 + 1);
            let thinking: Vec<String> = cells
                .iter()
                .map(|&i| {
                    let cands = candidates(&puzzle, i);
                    let cs: Vec<String> = cands.iter().map(u8::to_string).collect();
                    if cands.len() == 1 {
                        format!("{} can only be {}", name(i), sol[i])
                    } else {
                        format!(
                            "{} could be {}; the rest of the grid forces {}",
                            name(i),
                            cs.join(" or "),
                            sol[i]
                        )
                    }
                })
                .collect();
            let fills: Vec<String> = cells
                .iter()
                .map(|&i| format!("{}={}", name(i), sol[i]))
                .collect();
            subtasks.push(SubTask {
                title: format!("box {}", b + 1),
                query: format!(
                    "4x4 Sudoku (rows: {rows}; '.' blank). Fill the blank cells of the 2x2 box \
                     with rows {}-{} and columns {}-{}.",
                    r0 + 1,
                    r0 + 2,
                    c0 + 1,
                    c0 + 2
                ),
                thinking: format!("{}.", thinking.join("; ")),
                takeaways: fills.join(", "),
                reaction: format!("Box {} done.", b + 1),
                inline: None,
            });
        }
        Plan {
            intro: format!(
                "Puzzle rows: {rows}. Each 2x2 box with blanks can be worked on separately."
            ),
            subtasks,
            fillers: vec!["Meanwhile I check that every row will hold 1-4 exactly once.".into()],
            conclusion:
                "Putting the boxes together gives a grid where every row, column and box holds 1-4."
                    .into(),
            answer: render(&sol),
            oldest_first: false,
        }
    }
}

// ---------------------------------------------------------------- rendering

/// A synthesized conversation ready for JSONL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Conversation {
    pub messages: Vec<Message>,
    pub meta: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

fn msg(role: &str, content: String) -> Message {
    Message {
        role: role.into(),
        content,
    }
}

fn worker_conversation(
    q: &str,
    thinking: &str,
    takeaways: &str,
    tags: &ProtocolTags,
) -> (Message, Message, Message) {
    (
        msg(
            "system",
            WORKER_INSTRUCTION.replace(
                "<RETURN>your key findings</RETURN>",
                &tags.ret("your key findings"),
            ),
        ),
        msg("user", q.to_string()),
        msg("assistant", format!("{thinking}\n{}", tags.ret(takeaways))),
    )
}

/// A line of organizer text; empty pieces (a plan without an intro) write nothing.
fn line(text: &mut String, piece: &str) {
    if !piece.is_empty() {
        text.push_str(piece);
        text.push('\n');
    }
}

/// Organizer text for AsyncThink mode with a random fork/join schedule. Where a plan's
/// sub-tasks can be done inline, how often the organizer does one itself instead of forking
/// it is drawn per trace, so the traces span every degree of concurrency from "fork all" to
/// "fork one" and GRPO has structures to choose between.
fn asyncthink_text(
    plan: &Plan,
    capacity: usize,
    tags: &ProtocolTags,
    rng: &mut ChaCha8Rng,
) -> (String, Vec<usize>) {
    let mut text = String::new();
    line(&mut text, &plan.intro);
    let mut forks = Vec::new();
    let mut queue: Vec<usize> = (0..plan.subtasks.len()).collect();
    queue.reverse();
    let mut active: Vec<(u32, usize)> = Vec::new();
    let mut next_id = 1u32;
    let workers = capacity.saturating_sub(1);
    // Join policy for this trace: oldest first, newest first, or random.
    let policy = if plan.oldest_first {
        0
    } else {
        rng.random_range(0..3u8)
    };
    let inline_p = *[0.0, 0.25, 0.5, 0.75].choose(rng).unwrap_or(&0.0);
    // At least one fork per trace: an AsyncThink trace without any is a sequential one.
    let mut forked = 0usize;
    while !queue.is_empty() || !active.is_empty() {
        let can_fork = !queue.is_empty() && active.len() < workers;
        let next_inline = queue.last().and_then(|&k| plan.subtasks[k].inline.as_ref());
        if let Some(inline) = next_inline
            && forked > 0
            && rng.random_bool(inline_p)
        {
            line(&mut text, inline);
            queue.pop();
        } else if can_fork && (active.is_empty() || rng.random_bool(0.6)) {
            let Some(k) = queue.pop() else { break };
            let st = &plan.subtasks[k];
            if st.inline.is_none() && rng.random_bool(0.3) {
                text.push_str(&format!("Let me hand off {}.\n", st.title));
            }
            text.push_str(&tags.fork(next_id, &st.query));
            text.push('\n');
            active.push((next_id, k));
            forks.push(k);
            next_id += 1;
            forked += 1;
        } else {
            let pos = match policy {
                0 => 0,
                1 => active.len() - 1,
                _ => rng.random_range(0..active.len()),
            };
            let (id, k) = active.remove(pos);
            if rng.random_bool(0.5)
                && let Some(f) = plan.fillers.choose(rng)
            {
                line(&mut text, f);
            }
            let st = &plan.subtasks[k];
            text.push_str(&tags.join_open(id));
            text.push_str(&st.takeaways);
            text.push_str(&tags.join_close(id));
            text.push('\n');
            if rng.random_bool(0.7) {
                line(&mut text, &st.reaction);
            }
        }
    }
    line(&mut text, &plan.conclusion);
    text.push_str(&tags.answer(&plan.answer));
    (text, forks)
}

/// Random structures for plans whose sub-tasks can be done inline, in waves: fork a random
/// number of the next sub-tasks (1 up to what the pool holds), work a random number of the
/// following ones (0-2) inline while those workers run, then join the wave oldest first.
/// Wave size and inline share vary per wave, so the traces span η from about 1 to c; the
/// bookkeeping (which workers are open) stays as regular as the fixed structure's, which a
/// small model learns near-perfectly. Freer schedules (asyncthink_text) left a 0.86M model
/// at 62% valid episodes with 4 forks against 98% with 1 (docs/results.md), and GRPO then
/// learned to stop forking.
///
/// Without `rng` every wave is as large as the pool and nothing is done inline: the
/// ablation's one fixed structure (fork while the pool has room, join oldest first, repeat).
fn waves_text(
    plan: &Plan,
    capacity: usize,
    tags: &ProtocolTags,
    mut rng: Option<&mut ChaCha8Rng>,
) -> (String, Vec<usize>) {
    let mut text = String::new();
    line(&mut text, &plan.intro);
    let workers = capacity.saturating_sub(1).max(1);
    let (mut next, mut next_id) = (0usize, 1u32);
    let mut forks = Vec::new();
    while next < plan.subtasks.len() {
        let left = plan.subtasks.len() - next;
        let wave = match rng.as_deref_mut() {
            Some(rng) => rng.random_range(1..=workers.min(left)),
            None => workers.min(left),
        };
        let first_id = next_id;
        for st in &plan.subtasks[next..next + wave] {
            text.push_str(&tags.fork(next_id, &st.query));
            text.push('\n');
            next_id += 1;
        }
        forks.extend(next..next + wave);
        let joined = next;
        next += wave;
        let inline = match rng.as_deref_mut() {
            Some(rng) => rng.random_range(0..=2usize.min(plan.subtasks.len() - next)),
            None => 0,
        };
        for st in &plan.subtasks[next..next + inline] {
            line(&mut text, st.inline.as_deref().unwrap_or_default());
        }
        next += inline;
        for (id, st) in (first_id..).zip(&plan.subtasks[joined..joined + wave]) {
            text.push_str(&tags.join_open(id));
            text.push_str(&st.takeaways);
            text.push_str(&tags.join_close(id));
            text.push('\n');
        }
    }
    line(&mut text, &plan.conclusion);
    text.push_str(&tags.answer(&plan.answer));
    (text, forks)
}

fn sequential_text(plan: &Plan, tags: &ProtocolTags) -> String {
    let mut text = String::new();
    line(&mut text, &plan.intro);
    for st in &plan.subtasks {
        match &st.inline {
            Some(inline) => line(&mut text, inline),
            None => text.push_str(&format!(
                "Try {}: {} So: {}. {}\n",
                st.title, st.thinking, st.takeaways, st.reaction
            )),
        }
    }
    line(&mut text, &plan.conclusion);
    text.push_str(&tags.answer(&plan.answer));
    text
}

/// Summary of a batch of synthesized organizer traces.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TraceStats {
    pub items: usize,
    pub kept: usize,
    pub dropped: usize,
    pub worker_lines: usize,
    pub forks_per_trace: BTreeMap<usize, usize>,
    pub join_order: BTreeMap<String, usize>,
    pub max_active: BTreeMap<usize, usize>,
    /// Traces where some fork follows some join.
    pub interleaved: usize,
    /// Traces with organizer thinking between some fork and its join.
    pub overlapped: usize,
    pub first_drop_reason: Option<String>,
}

impl TraceStats {
    fn add(&mut self, t: &super::protocol::OrganizerTrace) {
        self.kept += 1;
        *self.forks_per_trace.entry(t.forks.len()).or_default() += 1;
        *self
            .join_order
            .entry(format!("{:?}", t.join_order_kind()))
            .or_default() += 1;
        *self.max_active.entry(t.max_active).or_default() += 1;
        self.interleaved += usize::from(t.interleaved());
        self.overlapped += usize::from(t.overlapped_joins > 0);
    }
}

impl fmt::Display for TraceStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pct = |n: usize| 100.0 * n as f64 / self.kept.max(1) as f64;
        writeln!(
            f,
            "items {}, organizer traces kept {} (dropped {}), worker traces {}",
            self.items, self.kept, self.dropped, self.worker_lines
        )?;
        if let Some(r) = &self.first_drop_reason {
            writeln!(f, "first drop: {r}")?;
        }
        let hist = |m: &BTreeMap<usize, usize>| {
            m.iter()
                .map(|(k, v)| format!("{k}:{v} ({:.1}%)", pct(*v)))
                .collect::<Vec<_>>()
                .join("  ")
        };
        writeln!(f, "forks per trace: {}", hist(&self.forks_per_trace))?;
        writeln!(f, "max active workers: {}", hist(&self.max_active))?;
        let jo: Vec<String> = self
            .join_order
            .iter()
            .map(|(k, v)| format!("{k}:{v} ({:.1}%)", pct(*v)))
            .collect();
        writeln!(f, "join order: {}", jo.join("  "))?;
        write!(
            f,
            "fork after join (interleaved): {} ({:.1}%); organizer thinks while a worker runs: {} ({:.1}%)",
            self.interleaved,
            pct(self.interleaved),
            self.overlapped,
            pct(self.overlapped)
        )
    }
}

/// Renders one item in `mode`, validates every conversation, and returns them (organizer
/// first) or why the item was dropped.
pub fn synthesize_item<T: Plannable>(
    item: &T::Item,
    mode: TraceMode,
    capacity: usize,
    tags: &ProtocolTags,
    rng: &mut ChaCha8Rng,
    stats: &mut TraceStats,
) -> Result<Vec<Conversation>, String> {
    let plan = T::plan(item, rng);
    let limits = ProtocolLimits::with_capacity(capacity);
    let mut workers: Vec<(String, String, String)> = Vec::new();
    let organizer = match mode {
        TraceMode::AsyncThink | TraceMode::AsyncThinkFixed => {
            let inline = plan.subtasks.iter().all(|st| st.inline.is_some());
            let (text, forks) = match mode {
                TraceMode::AsyncThink if inline => waves_text(&plan, capacity, tags, Some(rng)),
                TraceMode::AsyncThink => asyncthink_text(&plan, capacity, tags, rng),
                _ => waves_text(&plan, capacity, tags, None),
            };
            // Only the sub-tasks the organizer forked have a worker conversation.
            for k in forks {
                let st = &plan.subtasks[k];
                workers.push((st.query.clone(), st.thinking.clone(), st.takeaways.clone()));
            }
            text
        }
        TraceMode::Sequential => sequential_text(&plan, tags),
        TraceMode::Parallel => {
            let n = capacity.saturating_sub(1);
            let mut text =
                format!("I will let {n} workers solve the whole problem independently.\n");
            for id in 1..=n as u32 {
                let mut p = T::plan(item, rng);
                p.subtasks.shuffle(rng);
                let body = sequential_text(&p, tags);
                let thinking = body
                    .rsplit_once(&tags.answer_open)
                    .map_or(body.clone(), |(t, _)| t.trim_end().to_string());
                let takeaways = format!("answer: {}", p.answer);
                text.push_str(&tags.fork(id, &T::prompt(item)));
                text.push('\n');
                workers.push((T::prompt(item), thinking, takeaways));
            }
            for (k, id) in (1..=n as u32).enumerate() {
                text.push_str(&tags.join_open(id));
                text.push_str(&workers[k].2);
                text.push_str(&tags.join_close(id));
                text.push('\n');
            }
            text.push_str(&format!(
                "Checking worker 1's answer. {}\n",
                plan.conclusion
            ));
            let first = workers
                .first()
                .map(|w| w.2.trim_start_matches("answer: ").to_string());
            text.push_str(&tags.answer(&first.unwrap_or(plan.answer.clone())));
            text
        }
    };
    let trace = validate_organizer(&organizer, tags, limits.clone())
        .map_err(|e: ProtocolError| e.to_string())?;
    let verdict = T::verify(item, &trace.answer);
    if !verdict.is_correct() {
        return Err(format!("answer rejected: {:?}", verdict.detail));
    }
    let id = T::id(item).to_string();
    let mut out = vec![Conversation {
        messages: vec![
            msg(
                "system",
                organizer_instruction(
                    if mode == TraceMode::Sequential {
                        1
                    } else {
                        capacity
                    },
                    tags,
                ),
            ),
            msg("user", T::prompt(item)),
            msg("assistant", organizer.clone()),
        ],
        meta: json!({
            "role": "organizer",
            "task": T::NAME,
            "item_id": id,
            "mode": mode,
            "capacity": capacity,
            "n_forks": trace.forks.len(),
            "join_order": trace.join_order,
            "join_order_kind": format!("{:?}", trace.join_order_kind()),
            "interleaved": trace.interleaved(),
            "overlapped_joins": trace.overlapped_joins,
            "max_active": trace.max_active,
            "inserted_char_spans": trace.inserted_char_spans.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
            "inserted_byte_spans": trace.inserted_byte_spans.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
        }),
    }];
    for (k, (q, thinking, takeaways)) in workers.iter().enumerate() {
        let (s, u, a) = worker_conversation(q, thinking, takeaways, tags);
        let w = validate_worker(&a.content, tags, limits.clone()).map_err(|e| e.to_string())?;
        if w.takeaways != *takeaways {
            return Err("worker takeaways changed in rendering".into());
        }
        out.push(Conversation {
            messages: vec![s, u, a],
            meta: json!({
                "role": "worker",
                "task": T::NAME,
                "item_id": id,
                "mode": mode,
                "worker": k + 1,
            }),
        });
    }
    stats.add(&trace);
    stats.worker_lines += workers.len();
    Ok(out)
}

/// Traces for items `0..n` of `seed`: generated, planned and validated; invalid ones are
/// dropped and counted.
pub fn synthesize<T: Plannable>(
    task: &T,
    n: usize,
    seed: u64,
    mode: TraceMode,
    capacity: usize,
    tags: &ProtocolTags,
) -> (Vec<Conversation>, TraceStats) {
    let mut out = Vec::new();
    let collect = |convs: Vec<Conversation>| -> Result<(), std::convert::Infallible> {
        out.extend(convs);
        Ok(())
    };
    match synthesize_each(task, n, seed, mode, capacity, tags, collect) {
        Ok(stats) => (out, stats),
        Err(never) => match never {},
    }
}

/// `synthesize` as a stream: each kept item's conversations go to `sink` in item order,
/// and items are generated a chunk at a time, so memory stays flat whatever `n` is.
pub fn synthesize_each<T: Plannable, E: Send>(
    task: &T,
    n: usize,
    seed: u64,
    mode: TraceMode,
    capacity: usize,
    tags: &ProtocolTags,
    mut sink: impl FnMut(Vec<Conversation>) -> Result<(), E> + Send,
) -> Result<TraceStats, E> {
    let mut stats = TraceStats::default();
    crate::tasks::for_each_chunk(task, n as u64, seed, |start, items| {
        stats.items += items.len();
        for (k, item) in items.iter().enumerate() {
            // A separate stream from the generator's, so structure and item stay independent.
            let mut rng = item_rng(seed ^ 0x5452_4143_4553, start + k as u64);
            match synthesize_item::<T>(item, mode, capacity, tags, &mut rng, &mut stats) {
                Ok(convs) => sink(convs)?,
                Err(why) => {
                    stats.dropped += 1;
                    stats.first_drop_reason.get_or_insert(why);
                }
            }
        }
        Ok(())
    })?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Plannable>(
        task: &T,
        mode: TraceMode,
        capacity: usize,
    ) -> (Vec<Conversation>, TraceStats) {
        synthesize(task, 200, 11, mode, capacity, &ProtocolTags::default())
    }

    #[test]
    fn asyncthink_traces_all_valid_and_structurally_diverse() {
        let (convs, stats) = run(&Countdown::default(), TraceMode::AsyncThink, 4);
        assert_eq!(stats.dropped, 0, "{stats}");
        assert_eq!(stats.kept, 200);
        // Not degenerate: several fork counts, every join-order kind, interleaving and
        // overlapped thinking both present and both absent somewhere.
        assert!(stats.forks_per_trace.len() >= 4, "{stats}");
        for kind in ["Single", "Fifo", "Lifo", "Mixed"] {
            assert!(
                stats.join_order.get(kind).copied().unwrap_or(0) >= 5,
                "{kind}: {stats}"
            );
        }
        assert!(stats.interleaved > 10 && stats.interleaved < 190, "{stats}");
        assert!(stats.overlapped > 10 && stats.overlapped < 200, "{stats}");
        assert!(stats.max_active.keys().any(|&k| k == 3), "{stats}");
        // Re-validate from the JSON and check the payload spans cover exactly the inserted text.
        let tags = ProtocolTags::default();
        for c in convs.iter().filter(|c| c.meta["role"] == "organizer") {
            let text = &c.messages[2].content;
            let t = validate_organizer(text, &tags, ProtocolLimits::with_capacity(4)).unwrap();
            let chars: Vec<char> = text.chars().collect();
            let spans = c.meta["inserted_char_spans"].as_array().unwrap();
            assert_eq!(spans.len(), t.join_order.len());
            for s in spans {
                let (a, b) = (
                    s[0].as_u64().unwrap() as usize,
                    s[1].as_u64().unwrap() as usize,
                );
                let piece: String = chars[a..b].iter().collect();
                assert!(
                    piece.ends_with("</JOIN-") || piece.contains("</JOIN-"),
                    "{piece}"
                );
                assert!(!piece.contains("<JOIN-"), "{piece}");
            }
        }
    }

    #[test]
    fn every_task_and_mode_is_valid() {
        for mode in [
            TraceMode::AsyncThink,
            TraceMode::Sequential,
            TraceMode::Parallel,
        ] {
            for cap in [2, 4] {
                let s = run(&Arithmetic::default(), mode, cap).1;
                assert_eq!(s.dropped, 0, "arithmetic {mode:?} {s}");
                let s = run(&Sudoku::default(), mode, cap).1;
                assert_eq!(s.dropped, 0, "sudoku {mode:?} {s}");
            }
        }
        let s = synthesize(
            &MultiCountdown::default(),
            20,
            5,
            TraceMode::AsyncThink,
            4,
            &ProtocolTags::default(),
        )
        .1;
        assert_eq!(s.dropped, 0, "{s}");
        let s = synthesize(
            &MultiCountdown::default(),
            10,
            5,
            TraceMode::Parallel,
            3,
            &ProtocolTags::default(),
        )
        .1;
        assert_eq!(s.dropped, 0, "{s}");
        let (_, s) = run(&Countdown::default(), TraceMode::Sequential, 4);
        assert_eq!(
            s.forks_per_trace.keys().copied().collect::<Vec<_>>(),
            vec![0]
        );
        let (_, s) = run(&Countdown::default(), TraceMode::Parallel, 4);
        assert_eq!(
            s.forks_per_trace.keys().copied().collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn products_traces_are_valid_and_span_inline_and_forked_work() {
        for cap in [2, 4] {
            let (convs, s) = run(&Products::default(), TraceMode::AsyncThink, cap);
            assert_eq!(s.dropped, 0, "{s}");
            assert!(!s.forks_per_trace.contains_key(&0), "{s}");
            let organizers: Vec<&str> = convs
                .iter()
                .filter(|c| c.meta["role"] == "organizer")
                .map(|c| c.messages[2].content.as_str())
                .collect();
            // Some traces fork every product, some work one or more inline.
            let inline = organizers.iter().filter(|t| t.contains(": 1:")).count();
            assert!(inline > 20 && inline < 195, "{inline} of 200 inline");
            // One worker conversation per fork, no more.
            let workers = convs.iter().filter(|c| c.meta["role"] == "worker").count();
            let forks: usize = s.forks_per_trace.iter().map(|(k, v)| k * v).sum();
            assert_eq!(workers, forks);
        }
        let (_, s) = run(&Products::default(), TraceMode::Sequential, 1);
        assert_eq!(s.dropped, 0, "{s}");
    }

    #[test]
    fn fixed_structure_forks_every_subtask_and_joins_oldest_first() {
        let (convs, s) = run(&Products::default(), TraceMode::AsyncThinkFixed, 4);
        assert_eq!(s.dropped, 0, "{s}");
        assert!(
            s.join_order.keys().all(|k| k == "Fifo" || k == "Single"),
            "{s}"
        );
        assert_eq!(
            s.interleaved,
            s.forks_per_trace
                .iter()
                .filter(|(k, _)| **k > 3)
                .map(|(_, v)| v)
                .sum::<usize>()
        );
        for c in convs.iter().filter(|c| c.meta["role"] == "organizer") {
            let text = &c.messages[2].content;
            assert!(!text.contains(": 1:"), "{text}");
            // The first wave forks min(3, products) before any join.
            let first_join = text.find("<JOIN-").unwrap();
            let n = c.meta["n_forks"].as_u64().unwrap() as usize;
            assert_eq!(text[..first_join].matches("<FORK-").count(), n.min(3));
        }
    }

    #[test]
    fn reproducible() {
        let a = run(&Countdown::default(), TraceMode::AsyncThink, 3).0;
        let b = run(&Countdown::default(), TraceMode::AsyncThink, 3).0;
        let s = |v: &Vec<Conversation>| serde_json::to_string(v).unwrap_or_default();
        assert_eq!(s(&a), s(&b));
    }
}
