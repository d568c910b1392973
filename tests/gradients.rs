//! The CPU backward against torch autograd: every parameter's gradient of a masked,
//! weighted next-token loss on the tiny fixture checkpoints (tests/fixtures/make_grad_fixtures.py).

mod common;

use asyncthink::backend::TrainBackend;
use asyncthink::backend::cpu::{CpuBackend, Precision};
use asyncthink::model::Qwen3;
use asyncthink::train::{Gradients, TrainBatch, loss_and_grad};
use common::*;
use safetensors::SafeTensors;
use serde::Deserialize;

#[derive(Deserialize)]
struct Seq {
    ids: Vec<u32>,
    loss_weights: Vec<f32>,
}

#[derive(Deserialize)]
struct GradRef {
    sequences: Vec<Seq>,
    loss: f64,
}

/// The shared convention: gradients within 1e-4 relative error (per tensor, relative to
/// its largest reference magnitude) against the f32 oracle.
const GRAD_TOL: f32 = 1e-4;

/// bf16 training (`--precision bf16`) against the same f32 oracle. Its forward rounds every
/// activation to 8 mantissa bits (relative 2^-9 = 2e-3 each) and the backward runs from those
/// rounded activations through ~10 ops per layer. Most tensors land at 1-3e-2 of their
/// largest magnitude; the norm weights' gradients, sums over every token (and head) of
/// terms that largely cancel, reach 5.5e-2 (measured on these three models). 0.1 bounds
/// that, while a wrong backward (a dropped term, a wrong index) is off by O(1).
const BF16_GRAD_TOL: f32 = 0.1;

fn check(name: &str, checkpointing: bool) {
    check_at(name, checkpointing, Precision::F32, GRAD_TOL, 1e-5);
}

fn check_at(name: &str, checkpointing: bool, precision: Precision, tol: f32, loss_tol: f64) {
    let dir = fixtures().join("reference");
    let r: GradRef = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.grads.json"))).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join(format!("{name}.grads.safetensors"))).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();

    let model = Qwen3::load_for_training(CpuBackend::new(precision), &model_dir(name)).unwrap();
    let seqs: Vec<(Vec<u32>, Vec<f32>)> = r
        .sequences
        .iter()
        .map(|s| (s.ids.clone(), s.loss_weights.clone()))
        .collect();
    let batch = TrainBatch::pack(&seqs).unwrap();
    let mut grads = Gradients::zeros(&model).unwrap();
    let report = loss_and_grad(
        &model,
        &batch,
        batch.weight_sum(),
        &mut grads,
        checkpointing,
    )
    .unwrap();
    assert!(
        (report.loss - r.loss).abs() < loss_tol * r.loss.abs().max(1.0),
        "{name}: loss {} vs {}",
        report.loss,
        r.loss
    );

    let params = model.parameters();
    assert_eq!(
        params.len(),
        want.len(),
        "{name}: one reference gradient per parameter"
    );
    let mut worst = (0f32, String::new());
    for ((pname, _), g) in params.iter().zip(&grads.grads) {
        let t = want
            .tensor(pname)
            .unwrap_or_else(|_| panic!("{name}: no reference gradient for {pname}"));
        let reference: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ours = model.backend.grad_to_host(g).unwrap();
        let scale = reference.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
        let err = ours
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
            / scale;
        if err > worst.0 {
            worst = (err, pname.clone());
        }
        assert!(
            err <= tol,
            "{name} at {precision} {pname}: relative error {err:.2e}"
        );
    }
    println!(
        "{name} at {precision} (checkpointing={checkpointing}): loss {:.6} (torch f32 {:.6}), worst relative gradient error {:.2e} ({})",
        report.loss, r.loss, worst.0, worst.1
    );
}

#[test]
fn gradients_match_torch_autograd() {
    for name in [
        "tiny-gqa4-tied",
        "tiny-mha-untied-hd",
        "tiny-gqa2-sharded-bf16",
    ] {
        check(name, false);
    }
}

#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    check("tiny-mha-untied-hd", true);
}

#[test]
fn bf16_training_gradients_stay_near_f32() {
    for name in [
        "tiny-gqa4-tied",
        "tiny-mha-untied-hd",
        "tiny-gqa2-sharded-bf16",
    ] {
        // The loss is a mean of O(1) cross-entropies: bf16 logits move it by ~1e-3.
        check_at(name, false, Precision::Bf16, BF16_GRAD_TOL, 1e-2);
    }
}
