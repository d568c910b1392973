//! Training end to end on the CPU: the tiny model overfits, a saved checkpoint reloads
//! with identical logits, and a resumed run continues the same loss curve.

use asyncthink::backend::Backend;
use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig};
use asyncthink::model::{ModelSource, Qwen3};
use asyncthink::tokenizer::{ChatMessage, Tokenizer};
use asyncthink::train::optim::OptimConfig;
use asyncthink::train::sft::{SftConfig, SftTrainer};
use asyncthink::train::sft_data::{SftExample, encode_conversation};

fn dataset(tok: &Tokenizer) -> Vec<SftExample> {
    (0..6)
        .map(|i| {
            let msgs = [
                ChatMessage::new("user", &format!("What is {i} + {}?", i + 2)),
                ChatMessage::new(
                    "assistant",
                    &format!(
                        "<think>\n{i} plus {} is {}.\n</think>\n\n<ANSWER>{}</ANSWER>",
                        i + 2,
                        2 * i + 2,
                        2 * i + 2
                    ),
                ),
            ];
            encode_conversation(tok, &msgs, &[], 256).unwrap()
        })
        .collect()
}

fn config(steps: u64) -> SftConfig {
    SftConfig {
        steps,
        batch_tokens: 128,
        grad_accum: 2,
        seed: 3,
        optim: OptimConfig {
            lr: 5e-3,
            warmup_steps: 5,
            total_steps: steps,
            ..OptimConfig::default()
        },
        ..SftConfig::default()
    }
}

fn trainer(steps: u64) -> SftTrainer<CpuBackend> {
    let (model, tok) = ModelSource::Embedded
        .load_for_training(CpuBackend::default())
        .unwrap();
    let data = dataset(&tok);
    SftTrainer::new(
        model,
        data.clone(),
        data,
        config(steps),
        ModelSource::Embedded.tokenizer_files().unwrap(),
    )
    .unwrap()
}

#[test]
fn assistant_tokens_only_carry_loss() {
    let (_, tok) = ModelSource::Embedded.load(CpuBackend::default()).unwrap();
    let msgs = [
        ChatMessage::new("user", "hi"),
        ChatMessage::new("assistant", "A<JOIN-1>xyz</JOIN-1>B"),
    ];
    // Mask the executor-inserted "xyz</JOIN-1>" (bytes 9..21 of the content).
    let ex = encode_conversation(&tok, &msgs, &[(9, 21)], 256).unwrap();
    let trained: String = ex
        .weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0.0)
        .map(|(t, _)| tok.decode(&[ex.ids[t + 1]], false).unwrap())
        .collect();
    // Qwen3's template gives the final assistant turn an (empty) think block: the model
    // writes it, so it is trained too.
    assert_eq!(trained, "<think>\n\n</think>\n\nA<JOIN-1>B<|im_end|>");
}

#[test]
fn tiny_model_overfits_a_small_dataset() {
    let mut t = trainer(80);
    let first = t.train_step().unwrap().loss;
    let mut last = first;
    while !t.is_done() {
        last = t.train_step().unwrap().loss;
    }
    println!("loss {first:.3} -> {last:.3}");
    assert!(first > 4.0, "a random model starts near ln(vocab): {first}");
    assert!(
        last < 0.5,
        "80 steps on 6 conversations should memorize them: {last}"
    );
}

#[test]
fn resumed_training_continues_the_same_loss_curve() {
    let mut straight = trainer(12);
    let want: Vec<f64> = (0..12)
        .map(|_| straight.train_step().unwrap().loss)
        .collect();

    let mut first_half = trainer(12);
    let mut got: Vec<f64> = (0..6)
        .map(|_| first_half.train_step().unwrap().loss)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    first_half.save(&ckpt).unwrap();
    drop(first_half);
    let (_, tok) = ModelSource::Embedded.load(CpuBackend::default()).unwrap();
    let data = dataset(&tok);
    let mut resumed =
        SftTrainer::resume(CpuBackend::default(), &ckpt, data.clone(), data, Vec::new()).unwrap();
    assert_eq!(resumed.state.step, 6);
    while !resumed.is_done() {
        got.push(resumed.train_step().unwrap().loss);
    }
    assert_eq!(got, want, "bit-for-bit the same losses after resume");
}

#[test]
fn saved_checkpoint_reloads_with_identical_logits() {
    let mut t = trainer(3);
    while !t.is_done() {
        t.train_step().unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("final");
    t.save(&ckpt).unwrap();
    let ids: Vec<u32> = vec![501, 487, 198, 18, 261, 220, 19, 502];
    let mut engine = Engine::new(&t.model, None, EngineConfig::default()).unwrap();
    let before = engine.logits_all(&ids).unwrap();
    let reloaded = Qwen3::load(CpuBackend::default(), &ckpt).unwrap();
    let mut engine = Engine::new(&reloaded, None, EngineConfig::default()).unwrap();
    assert_eq!(engine.logits_all(&ids).unwrap(), before);
    assert!(
        Tokenizer::from_dir(&ckpt).is_ok(),
        "tokenizer files travel with the checkpoint"
    );
    assert_eq!(reloaded.backend.name(), "cpu");
}

#[test]
fn evaluation_loss_equals_the_training_loss_on_the_same_data_before_an_update() {
    let (model, tok) = ModelSource::Embedded
        .load_for_training(CpuBackend::default())
        .unwrap();
    let data = dataset(&tok);
    // A micro-batch of exactly one epoch: every example once.
    let epoch_tokens = data.iter().map(|e| e.ids.len()).sum();
    let cfg = SftConfig {
        batch_tokens: epoch_tokens,
        grad_accum: 1,
        ..config(1)
    };
    let mut t = SftTrainer::new(model, data.clone(), data, cfg, Vec::new()).unwrap();
    let eval = t.evaluate().unwrap();
    let step = t.train_step().unwrap();
    // One micro-batch holding every example: its loss is the evaluation loss (before the
    // update), up to f32 rounding of the two paths (different packing order and kernels).
    assert!(
        (eval - step.loss).abs() < 1e-5 * eval.abs(),
        "eval {eval} vs train {}",
        step.loss
    );
}

#[test]
fn forward_only_log_probs_match_the_loss_pass() {
    use asyncthink::train::grad::target_log_probs;
    use asyncthink::train::{Gradients, TrainBatch, loss_and_grad};
    let (model, tok) = ModelSource::Embedded
        .load_for_training(CpuBackend::default())
        .unwrap();
    let data = dataset(&tok);
    let seqs: Vec<(Vec<u32>, Vec<f32>)> = data
        .iter()
        .map(|e| (e.ids.clone(), vec![1.0; e.weights.len()]))
        .collect();
    let batch = TrainBatch::pack(&seqs).unwrap();
    let mut g = Gradients::zeros(&model).unwrap();
    let rep = loss_and_grad(&model, &batch, 1.0, &mut g, false).unwrap();
    let lp = target_log_probs(&model, &batch).unwrap();
    let worst = rep
        .token_losses
        .iter()
        .zip(&lp)
        .zip(&batch.weights)
        .filter(|(_, w)| **w > 0.0)
        .map(|((ce, lp), _)| (ce + lp).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "per-token CE vs -log p differ by {worst}");
}

#[test]
fn a_message_with_an_unknown_role_is_its_lines_error() {
    let (_, tok) = ModelSource::Embedded.load(CpuBackend::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.jsonl");
    let good = r#"{"messages": [{"role": "user", "content": "7*6"}, {"role": "assistant", "content": "42"}]}"#;
    let bad =
        r#"{"messages": [{"role": "user", "content": "7*6"}, {"role": "tool", "content": "42"}]}"#;
    std::fs::write(&path, format!("{good}\n{bad}\n")).unwrap();
    let err = asyncthink::train::sft_data::load_jsonl(&path, &tok, 256)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data.jsonl:2") && err.contains("messages[1]") && err.contains("\"tool\""),
        "{err}"
    );
}
