//! The CPU backward against torch autograd: every parameter's gradient of a masked,
//! weighted next-token loss on the tiny fixture checkpoints (tests/fixtures/make_grad_fixtures.py).

mod common;

use asyncthink::backend::TrainBackend;
use asyncthink::backend::cpu::CpuBackend;
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

fn check(name: &str, checkpointing: bool) {
    let dir = fixtures().join("reference");
    let r: GradRef = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{name}.grads.json"))).unwrap(),
    )
    .unwrap();
    let bytes = std::fs::read(dir.join(format!("{name}.grads.safetensors"))).unwrap();
    let want = SafeTensors::deserialize(&bytes).unwrap();

    let model = Qwen3::load_for_training(CpuBackend, &model_dir(name)).unwrap();
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
        (report.loss - r.loss).abs() < 1e-5 * r.loss.abs().max(1.0),
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
        assert!(err <= GRAD_TOL, "{name} {pname}: relative error {err:.2e}");
    }
    println!(
        "{name} (checkpointing={checkpointing}): loss {:.6}, worst relative gradient error {:.2e} ({})",
        report.loss, worst.0, worst.1
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
