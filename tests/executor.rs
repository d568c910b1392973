//! The executor on the real engine, driven by scripted texts through every protocol path,
//! and by the untrained tiny model end to end.

mod common;

use std::collections::HashMap;

use asyncthink::asyncthink::executor::{EpisodeOutcome, ExecutorConfig, Script, run_episodes};
use asyncthink::asyncthink::protocol::ProtocolError;
use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig};
use asyncthink::model::{ModelSource, Qwen3};
use asyncthink::tokenizer::Tokenizer;

/// The untrained tiny fixture: its 512 positions and small KV rows are what the budget and
/// refusal cases below are sized for.
fn setup() -> (Qwen3<CpuBackend>, Tokenizer) {
    ModelSource::Dir(common::fixtures().join("models/tiny-gqa4-tied"))
        .load(CpuBackend::default())
        .unwrap()
}

fn script(org: &str, workers: &[(u32, &str)]) -> Script {
    Script {
        organizer: org.to_string(),
        workers: workers
            .iter()
            .map(|(i, t)| (*i, t.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

fn run(
    model: &Qwen3<CpuBackend>,
    tok: &Tokenizer,
    capacity: usize,
    scripts: &[Script],
) -> Vec<EpisodeOutcome> {
    run_with(model, tok, &ExecutorConfig::new(capacity), 256, scripts)
}

fn run_with(
    model: &Qwen3<CpuBackend>,
    tok: &Tokenizer,
    cfg: &ExecutorConfig,
    num_blocks: usize,
    scripts: &[Script],
) -> Vec<EpisodeOutcome> {
    let engine_cfg = EngineConfig {
        num_blocks,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(model, Some(tok), engine_cfg).unwrap();
    let questions: Vec<String> = (0..scripts.len())
        .map(|i| format!("Question {i}: what is 3 + 4?"))
        .collect();
    let out = run_episodes(&mut engine, tok, cfg, &questions, Some(scripts), 0).unwrap();
    assert!(!engine.has_unfinished(), "every sequence ended");
    assert_eq!(
        engine.num_free_blocks(),
        num_blocks,
        "every KV block returned"
    );
    engine.check_invariants().unwrap();
    out
}

fn n(tok: &Tokenizer, s: &str) -> usize {
    tok.encode(s).unwrap().len()
}

#[test]
fn out_of_order_joins_with_the_organizer_pausing() {
    let (model, tok) = setup();
    let org = "Plan it.\n<FORK-1>add three</FORK-1>\n<FORK-2>add four</FORK-2>\n<JOIN-2> then\n<JOIN-1> so\n<ANSWER>7</ANSWER>";
    let w1 =
        "one two three four five six seven eight nine ten eleven twelve <RETURN>three</RETURN>";
    let w2 = "ok <RETURN>four</RETURN>";
    let out = &run(&model, &tok, 4, &[script(org, &[(1, w1), (2, w2)])])[0];
    assert!(
        out.record.format_errors.is_empty(),
        "{:?}",
        out.record.format_errors
    );
    assert_eq!(out.record.final_answer.as_deref(), Some("7"));
    // Token by token, the organizer's context: its own text with each worker's takeaways
    // and the closing tag inserted right after the JOIN it wrote.
    assert_eq!(
        out.record.organizer_text,
        "Plan it.\n<FORK-1>add three</FORK-1>\n<FORK-2>add four</FORK-2>\n<JOIN-2>four</JOIN-2> then\n<JOIN-1>three</JOIN-1> so\n<ANSWER>7</ANSWER>"
    );
    // Critical path by hand. The script is tokenized in pieces ending at each JOIN tag; a
    // fork completes at the first token whose text closes its tag. JOIN-2 completes at
    // max(organizer so far, fork-2 + worker 2), then JOIN-1 likewise, then the rest.
    let seg1 = tok
        .encode("Plan it.\n<FORK-1>add three</FORK-1>\n<FORK-2>add four</FORK-2>\n<JOIN-2>")
        .unwrap();
    let fork_at = |tag: &str| {
        (1..=seg1.len())
            .find(|&k| tok.decode(&seg1[..k], false).unwrap().contains(tag))
            .unwrap()
    };
    let (f1, f2) = (fork_at("</FORK-1>"), fork_at("</FORK-2>"));
    let after_join2 = seg1.len().max(f2 + n(&tok, w2));
    let after_join1 = (after_join2 + n(&tok, " then\n<JOIN-1>")).max(f1 + n(&tok, w1));
    let want = after_join1 + n(&tok, " so\n<ANSWER>7</ANSWER>");
    assert_eq!(out.critical_path_tokens, want);
    assert!(
        f2 + n(&tok, w2) > seg1.len(),
        "the organizer really waited for worker 2"
    );
    assert_eq!(out.forks, 2);
    // What GRPO trains on: the organizer's whole context, with only sampled positions marked.
    let org = &out.rollouts[0];
    assert_eq!(org.generated.len(), out.organizer.tokens);
    assert_eq!(org.logprobs.len(), org.generated.len());
    let sampled: String = org
        .generated
        .iter()
        .map(|&p| tok.decode(&[org.ids[p]], false).unwrap())
        .collect();
    assert!(
        !sampled.contains("four</JOIN-2>"),
        "injected takeaways are not marked as sampled"
    );
    assert!(
        tok.decode(&org.ids, false)
            .unwrap()
            .ends_with(&out.record.organizer_text)
    );
    assert_eq!(out.rollouts.len(), 3, "organizer and both workers");
    assert!(
        out.record.concurrency > 1.0,
        "workers ran beside the organizer: η = {}",
        out.record.concurrency
    );
}

#[test]
fn join_of_an_already_finished_worker_continues_at_once() {
    let (model, tok) = setup();
    let org = "<FORK-1>q</FORK-1>\nlong thinking about many things while the worker runs its course\n<JOIN-1> done\n<ANSWER>x</ANSWER>";
    let out = &run(
        &model,
        &tok,
        2,
        &[script(org, &[(1, "<RETURN>r</RETURN>")])],
    )[0];
    assert!(
        out.record.format_errors.is_empty(),
        "{:?}",
        out.record.format_errors
    );
    assert!(
        out.record
            .organizer_text
            .contains("<JOIN-1>r</JOIN-1> done")
    );
    // No wait: the critical path is the organizer's own length.
    assert_eq!(out.critical_path_tokens, out.organizer.tokens);
}

fn first_error(out: &EpisodeOutcome) -> &ProtocolError {
    out.record
        .format_errors
        .first()
        .unwrap_or_else(|| panic!("expected a format error, got {:?}", out.record))
}

#[test]
fn malformed_episodes_are_recorded_and_free_their_blocks() {
    let (model, tok) = setup();
    let cases = [
        // A fork over the pool (capacity 2: one worker at a time).
        (
            script(
                "<FORK-1>a</FORK-1>\n<FORK-2>b</FORK-2>\n<JOIN-1>\n",
                &[(1, "<RETURN>x</RETURN>"), (2, "<RETURN>y</RETURN>")],
            ),
            "capacity",
        ),
        (script("<JOIN-3>\n<ANSWER>x</ANSWER>", &[]), "never forked"),
        (
            script(
                "<FORK-1>a</FORK-1>\n<FORK-1>b</FORK-1>\n",
                &[(1, "<RETURN>x</RETURN>")],
            ),
            "forked twice",
        ),
        (
            script("I will just stop here.", &[]),
            "without a final answer",
        ),
        (
            script(
                "<FORK-1>a</FORK-1>\n<JOIN-1>\n<ANSWER>x</ANSWER>",
                &[(1, "no return at all")],
            ),
            "without a return",
        ),
        (
            script(
                "<FORK-1>a</FORK-1>\n<ANSWER>x</ANSWER>",
                &[(1, "<RETURN>x</RETURN>")],
            ),
            "never joined",
        ),
    ];
    let scripts: Vec<Script> = cases.iter().map(|(s, _)| s.clone()).collect();
    // All malformed episodes share one engine run, and one valid one runs beside them.
    let mut all = scripts.clone();
    all.push(script("<ANSWER>fine</ANSWER>", &[]));
    let outs = run(&model, &tok, 2, &all);
    for ((_, want), out) in cases.iter().zip(&outs) {
        let msg = first_error(out).to_string();
        assert!(msg.contains(want), "expected {want:?}, got {msg:?}");
        assert!(out.record.has_format_error());
    }
    assert!(outs.last().unwrap().record.format_errors.is_empty());
    assert_eq!(
        outs.last().unwrap().record.final_answer.as_deref(),
        Some("fine")
    );
}

#[test]
fn many_episodes_share_the_worker_instruction_prefix() {
    let (model, tok) = setup();
    let s = script(
        "<FORK-1>q one</FORK-1>\n<FORK-2>q two</FORK-2>\n<JOIN-1>\n<JOIN-2>\n<ANSWER>a</ANSWER>",
        &[(1, "<RETURN>r1</RETURN>"), (2, "<RETURN>r2</RETURN>")],
    );
    let cfg = EngineConfig {
        num_blocks: 512,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(&model, Some(&tok), cfg).unwrap();
    let questions: Vec<String> = (0..6).map(|i| format!("Question {i}")).collect();
    let scripts = vec![s; 6];
    let outs = run_episodes(
        &mut engine,
        &tok,
        &ExecutorConfig::new(3),
        &questions,
        Some(&scripts),
        0,
    )
    .unwrap();
    assert!(
        outs.iter()
            .all(|o| o.record.format_errors.is_empty() && o.record.final_answer.is_some())
    );
    // 12 workers whose prompts start with the same worker instruction: after the first
    // ones, its full blocks come from the prefix cache instead of being computed again.
    let instruction = tok
        .encode_chat(
            &[asyncthink::tokenizer::ChatMessage::new(
                "system",
                &ExecutorConfig::new(3).worker_system,
            )],
            &Default::default(),
        )
        .unwrap();
    let shared_blocks = (instruction.len() - 4) / 16;
    assert!(shared_blocks >= 1);
    assert!(
        engine.stats.prefix_hit_tokens as usize >= 6 * shared_blocks * 16,
        "hits {}",
        engine.stats.prefix_hit_tokens
    );
    assert_eq!(engine.num_free_blocks(), 512);
}

#[test]
fn the_untrained_model_is_recorded_never_hangs() {
    let (model, tok) = setup();
    let mut engine = Engine::new(&model, Some(&tok), EngineConfig::default()).unwrap();
    let mut cfg = ExecutorConfig::new(3);
    cfg.organizer.max_new_tokens = 48;
    cfg.worker.max_new_tokens = 24;
    let questions: Vec<String> = (0..4).map(|i| format!("What is {i} + 2?")).collect();
    let outs = run_episodes(&mut engine, &tok, &cfg, &questions, None, 7).unwrap();
    assert_eq!(outs.len(), 4);
    for o in &outs {
        // Random weights almost never write a valid protocol: whatever happened is recorded.
        assert!(o.record.final_answer.is_some() || !o.record.format_errors.is_empty());
        assert!(o.total_tokens <= 48 + 2 * 24);
    }
    assert!(!engine.has_unfinished());
}

/// A lone agent is active at every step of its critical path, so η is exactly 1 even when
/// prompts prefill in chunks over several steps (the steps before an episode's first token,
/// when it has no active agent, used to count and pull η below 1).
#[test]
fn a_lone_agent_has_concurrency_exactly_one_under_chunked_prefill() {
    let (model, tok) = setup();
    let cfg = EngineConfig {
        num_blocks: 256,
        max_batched_tokens: 24,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(&model, Some(&tok), cfg).unwrap();
    let questions: Vec<String> = (0..6)
        .map(|i| format!("Question {i}: what is the sum of 3, 4, 5 and {i}?"))
        .collect();
    let scripts: Vec<Script> = (0..6)
        .map(|i| {
            script(
                &format!("thinking alone {i}\n<ANSWER>{}</ANSWER>", 12 + i),
                &[],
            )
        })
        .collect();
    let outs = run_episodes(
        &mut engine,
        &tok,
        &ExecutorConfig::new(1),
        &questions,
        Some(&scripts),
        0,
    )
    .unwrap();
    for o in &outs {
        assert!(
            o.record.format_errors.is_empty(),
            "{:?}",
            o.record.format_errors
        );
        assert_eq!(o.record.concurrency, 1.0, "{}", o.question);
        assert_eq!(o.record.wall_clock_steps, o.organizer.tokens);
        assert_eq!(o.critical_path_tokens, o.organizer.tokens);
    }
}

/// The organizer text up to and including its first JOIN, and the rest of a script.
const FORK_JOIN: &str = "<FORK-1>add three</FORK-1>\n<JOIN-1>";
const AFTER_JOIN: &str = " so\n<ANSWER>7</ANSWER>";
const SLOW_WORKER: &str =
    "one two three four five six seven eight nine ten eleven twelve <RETURN>three</RETURN>";

fn only_error(out: &EpisodeOutcome) -> String {
    assert_eq!(out.record.format_errors.len(), 1, "{:?}", out.record);
    assert!(out.record.final_answer.is_none());
    out.record.format_errors[0].to_string()
}

/// The organizer's budget runs out on the token that completes `<JOIN-1>` while worker 1
/// still runs (the issue's crash: pausing a finished sequence), beside an episode that
/// goes on to its answer.
#[test]
fn organizer_budget_ending_on_a_join_of_a_running_worker_is_a_recorded_failure() {
    let (model, tok) = setup();
    let mut cfg = ExecutorConfig::new(2);
    cfg.organizer.max_new_tokens = n(&tok, FORK_JOIN);
    let org = format!("{FORK_JOIN}{AFTER_JOIN}");
    let outs = run_with(
        &model,
        &tok,
        &cfg,
        256,
        &[
            script(&org, &[(1, SLOW_WORKER)]),
            script("<ANSWER>7</ANSWER>", &[]),
        ],
    );
    assert_eq!(
        only_error(&outs[0]),
        format!(
            "budget exceeded: organizer tokens while waiting on JOIN-1 (limit {})",
            n(&tok, FORK_JOIN)
        )
    );
    assert_eq!(outs[0].organizer.tokens, n(&tok, FORK_JOIN));
    assert!(outs[0].record.workers[0].takeaways.is_none());
    assert_eq!(outs[1].record.final_answer.as_deref(), Some("7"));
}

/// The same last token, with worker 1 already returned: injecting its takeaways into the
/// finished organizer used to fail the same way.
#[test]
fn organizer_budget_ending_on_a_join_of_a_returned_worker_is_a_recorded_failure() {
    let (model, tok) = setup();
    let org = "<FORK-1>q</FORK-1>\nlong thinking about many things while the worker runs its course\n<JOIN-1>";
    let mut cfg = ExecutorConfig::new(2);
    cfg.organizer.max_new_tokens = n(&tok, org);
    let scripts = [script(
        &format!("{org}{AFTER_JOIN}"),
        &[(1, "<RETURN>r</RETURN>")],
    )];
    let out = &run_with(&model, &tok, &cfg, 256, &scripts)[0];
    assert_eq!(out.record.workers[0].takeaways.as_deref(), Some("r"));
    assert!(
        only_error(out).starts_with("budget exceeded: organizer tokens while waiting on JOIN-1"),
        "{:?}",
        out.record.format_errors
    );
}

/// A stop string that the JOIN token completes ends the organizer in the same step.
#[test]
fn a_stop_string_on_the_join_token_is_a_recorded_failure() {
    let (model, tok) = setup();
    let mut cfg = ExecutorConfig::new(2);
    cfg.organizer.stop = vec!["<JOIN-1>".into()];
    let scripts = [script(
        &format!("{FORK_JOIN}{AFTER_JOIN}"),
        &[(1, SLOW_WORKER)],
    )];
    let out = &run_with(&model, &tok, &cfg, 256, &scripts)[0];
    assert_eq!(
        only_error(out),
        "organizer ended (stop string) while waiting on JOIN-1"
    );
}

/// A script that ends on its JOIN (its "length" before its budget) is the same path.
#[test]
fn a_script_ending_on_a_join_is_a_recorded_failure() {
    let (model, tok) = setup();
    let out = &run(&model, &tok, 2, &[script(FORK_JOIN, &[(1, SLOW_WORKER)])])[0];
    assert_eq!(
        only_error(out),
        "organizer ended (end of its script) while waiting on JOIN-1"
    );
}

/// KV exhaustion: the takeaways injected at the JOIN make the organizer's context larger
/// than the whole cache. The engine ends it with CacheFull, and the record says so.
#[test]
fn an_organizer_outgrowing_the_kv_cache_is_a_recorded_kv_failure() {
    let (model, tok) = setup();
    let mut cfg = ExecutorConfig::new(2);
    cfg.worker.max_new_tokens = 512;
    let chat = |system: &str, user: &str| {
        tok.encode_chat(
            &[
                asyncthink::tokenizer::ChatMessage::new("system", system),
                asyncthink::tokenizer::ChatMessage::new("user", user),
            ],
            &asyncthink::tokenizer::ChatTemplateOptions {
                add_generation_prompt: true,
                ..Default::default()
            },
        )
        .unwrap()
        .len()
    };
    let takeaway = "many words of takeaway ".repeat(10);
    let worker = format!("<RETURN>{takeaway}</RETURN>");
    let org = format!("{FORK_JOIN}{AFTER_JOIN}");
    let worker_len = chat(&cfg.worker_system, "add three") + n(&tok, &worker);
    let org_len = chat(&cfg.organizer_system, "Question 0: what is 3 + 4?") + n(&tok, &org);
    // Room for the worker alone, not for the organizer with the takeaways inside it.
    let num_blocks = worker_len.div_ceil(16) + 1;
    assert!(org_len + n(&tok, &takeaway) > num_blocks * 16);
    assert!(
        org_len + 1 < num_blocks * 16,
        "the organizer fits until the JOIN"
    );
    let out = &run_with(
        &model,
        &tok,
        &cfg,
        num_blocks,
        &[script(&org, &[(1, &worker)])],
    )[0];
    let err = only_error(out);
    assert!(
        err.contains("KV cache") && err.contains("organizer"),
        "{err}"
    );
}

/// A worker prompt the engine refuses (longer than the model's context, or than the whole
/// KV cache) ends that episode, not the run.
#[test]
fn a_worker_prompt_the_engine_refuses_is_a_recorded_failure() {
    let (model, tok) = setup();
    let mut cfg = ExecutorConfig::new(2);
    cfg.worker_system = "a very long worker instruction ".repeat(80);
    let scripts = [
        script(&format!("{FORK_JOIN}{AFTER_JOIN}"), &[(1, SLOW_WORKER)]),
        script("<ANSWER>7</ANSWER>", &[]),
    ];
    let outs = run_with(&model, &tok, &cfg, 24, &scripts);
    let err = only_error(&outs[0]);
    assert!(
        err.starts_with("worker 1 could not start") && err.contains("max_position_embeddings"),
        "{err}"
    );
    assert_eq!(outs[1].record.final_answer.as_deref(), Some("7"));
}

#[test]
fn zero_token_budgets_are_refused_naming_the_role() {
    let (model, tok) = setup();
    let mut engine = Engine::new(&model, Some(&tok), EngineConfig::default()).unwrap();
    for role in ["organizer", "worker"] {
        let mut cfg = ExecutorConfig::new(2);
        match role {
            "organizer" => cfg.organizer.max_new_tokens = 0,
            _ => cfg.worker.max_new_tokens = 0,
        }
        let err = run_episodes(&mut engine, &tok, &cfg, &["q".into()], None, 0)
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains(role) && err.contains("max_new_tokens must be at least 1"),
            "{err}"
        );
        assert!(!engine.has_unfinished());
    }
}

/// More episodes than the engine runs sequences at once, every organizer waiting on a JOIN
/// before its worker has started: paused organizers must not hold the batch slots their
/// workers need (this deadlocked until the step budget ran out).
#[test]
fn waiting_organizers_do_not_starve_their_workers_of_batch_slots() {
    let (model, tok) = setup();
    let org = "<FORK-1>go</FORK-1>\n<JOIN-1> done\n<ANSWER>1</ANSWER>";
    let worker = "one two three <RETURN>x</RETURN>";
    let scripts: Vec<Script> = (0..12).map(|_| script(org, &[(1, worker)])).collect();
    let cfg = ExecutorConfig::new(2);
    let engine_cfg = EngineConfig {
        num_blocks: 512,
        max_num_seqs: 4,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(&model, Some(&tok), engine_cfg).unwrap();
    let questions: Vec<String> = (0..scripts.len()).map(|i| format!("q{i}")).collect();
    let out = run_episodes(&mut engine, &tok, &cfg, &questions, Some(&scripts), 0).unwrap();
    for o in &out {
        assert!(
            o.record.format_errors.is_empty(),
            "{:?}",
            o.record.format_errors
        );
        assert_eq!(o.record.final_answer.as_deref(), Some("1"));
    }
    assert!(!engine.has_unfinished());
    engine.check_invariants().unwrap();
}
