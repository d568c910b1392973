//! Every CUDA backward kernel and the fused AdamW against the CPU reference (`TrainBackend` for
//! `CpuBackend`, itself checked against torch autograd in tests/gradients.rs), on random
//! bf16-exact inputs with outputs poisoned (NaN) first; then the whole model's gradients
//! against torch's, and a short training run that must learn and be bit-for-bit repeatable.
//!
//! Tolerances: outputs that are one bf16 rounding of an f32 result (dx, dq, … ) are compared
//! norm-wise at 1e-2 (bf16 keeps 8 mantissa bits: 2^-9 ≈ 2e-3 relative per element, plus f32
//! summation-order differences); f32 outputs (weight gradients, the loss, AdamW's master
//! weights) at 1e-4 or tighter. Without a GPU each test prints "skipped: <reason>".
//!
//! Built where no CUDA driver is installed, the GPU tests are marked ignored, so `cargo test`
//! counts them as ignored, not passed; `cargo test -- --include-ignored` runs them (each then
//! prints `skipped`, or fails under ASYNCTHINK_REQUIRE_GPU=1, when no GPU can be opened).
#![cfg(feature = "cuda")]

mod common;

use asyncthink::backend::cpu::{CpuBackend, CpuTensor};
use asyncthink::backend::cuda::{CudaBackend, CudaTensor, CudaWeight};
use asyncthink::backend::{AdamWStep, AttentionShape, Backend, TrainBackend};
use asyncthink::model::Qwen3;
use asyncthink::model::checkpoint::HostTensor;
use asyncthink::model::rope::Rope;
use asyncthink::train::optim::{AdamW, OptimConfig};
use asyncthink::train::{Gradients, TrainBatch, loss_and_grad};
use common::gpu::{assert_close, assert_rel, gpu, rand_bf16, round_bf16};
use common::*;

/// One bf16 rounding of an f32 result, compared norm-wise.
const BF16_TOL: f32 = 1e-2;
/// f32 results computed from the same bf16-exact inputs (order of summation only).
const F32_TOL: f32 = 1e-4;

fn host_tensor(data: &[f32], shape: &[usize]) -> (Vec<u8>, Vec<usize>) {
    (
        data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        shape.to_vec(),
    )
}

/// The same values as a CPU f32 master weight and a CUDA bf16 + f32 master weight.
fn weights(
    be: &CudaBackend,
    data: &[f32],
    shape: &[usize],
) -> (asyncthink::backend::cpu::CpuWeight, CudaWeight) {
    let (bytes, shape) = host_tensor(data, shape);
    let t = HostTensor::from_f32_bytes(&bytes, shape);
    (
        CpuBackend::default().load_master_weight(&t).unwrap(),
        be.load_master_weight(&t).unwrap(),
    )
}

fn tensors(be: &CudaBackend, data: &[f32], rows: usize, cols: usize) -> (CpuTensor, CudaTensor) {
    (
        CpuTensor::new(data.to_vec(), rows, cols),
        be.tensor_from_host(data, rows, cols).unwrap(),
    )
}

fn shapes() -> Vec<AttentionShape> {
    let s = |num_heads, num_kv_heads, head_dim| AttentionShape {
        num_heads,
        num_kv_heads,
        head_dim,
    };
    // GQA 1:1 and 8:1, head_dim 64 and 128, and the tiny fixtures' small heads.
    vec![s(4, 4, 64), s(8, 1, 128), s(4, 2, 16), s(16, 8, 128)]
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn linear_backward_matches_cpu() {
    let Some(be) = gpu("linear_backward") else {
        return;
    };
    for (m, n, k) in [(7, 33, 64), (130, 96, 257), (1, 5, 3)] {
        let (wc, wg) = weights(&be, &rand_bf16(n * k, 1, 0.5), &[n, k]);
        let (xc, xg) = tensors(&be, &rand_bf16(m * k, 2, 1.0), m, k);
        let (dyc, dyg) = tensors(&be, &rand_bf16(m * n, 3, 1.0), m, n);
        let mut dwc = CpuBackend::default().zeros_grad(&wc).unwrap();
        let mut dwg = be.zeros_grad(&wg).unwrap();
        // Twice: the weight gradient accumulates.
        for _ in 0..2 {
            let dxc = CpuBackend::default()
                .linear_backward(&xc, &wc, &dyc, &mut dwc)
                .unwrap();
            let dxg = be.linear_backward(&xg, &wg, &dyg, &mut dwg).unwrap();
            assert_rel(
                &format!("dx {m}x{n}x{k}"),
                &be.to_host(&dxg).unwrap(),
                &dxc.data,
                BF16_TOL,
            );
        }
        assert_rel(
            &format!("dw {m}x{n}x{k}"),
            &be.grad_to_host(&dwg).unwrap(),
            &dwc,
            F32_TOL,
        );
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn rms_norm_backward_matches_cpu() {
    let Some(be) = gpu("rms_norm_backward") else {
        return;
    };
    // 300 rows: more rows than the kernel's 256 partial sums.
    for (rows, cols) in [(1, 64), (300, 1023), (17, 1024)] {
        let (wc, wg) = weights(&be, &rand_bf16(cols, 4, 1.0), &[cols]);
        let (xc, xg) = tensors(&be, &rand_bf16(rows * cols, 5, 2.0), rows, cols);
        let (dyc, dyg) = tensors(&be, &rand_bf16(rows * cols, 6, 1.0), rows, cols);
        let mut dwc = CpuBackend::default().zeros_grad(&wc).unwrap();
        let mut dwg = be.zeros_grad(&wg).unwrap();
        let dxc = CpuBackend::default()
            .rms_norm_backward(&xc, &wc, &dyc, 1e-6, &mut dwc)
            .unwrap();
        let dxg = be
            .rms_norm_backward(&xg, &wg, &dyg, 1e-6, &mut dwg)
            .unwrap();
        assert_rel(
            &format!("rms dx {rows}x{cols}"),
            &be.to_host(&dxg).unwrap(),
            &dxc.data,
            BF16_TOL,
        );
        assert_rel(
            &format!("rms dw {rows}x{cols}"),
            &be.grad_to_host(&dwg).unwrap(),
            &dwc,
            F32_TOL,
        );
        // Gradient accumulation: a second backward adds to dw, never overwrites it.
        be.rms_norm_backward(&xg, &wg, &dyg, 1e-6, &mut dwg)
            .unwrap();
        assert_rel(
            &format!("rms dw accumulated {rows}x{cols}"),
            &be.grad_to_host(&dwg).unwrap(),
            &doubled(&dwc),
            F32_TOL,
        );
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn qk_norm_rope_backward_matches_cpu() {
    let Some(be) = gpu("qk_norm_rope_backward") else {
        return;
    };
    for shape in shapes() {
        let hd = shape.head_dim;
        let rope = Rope::new(hd, 1_000_000.0);
        // Odd row count, positions from 0 to past 30k (large RoPE angles).
        let rows = 37;
        let positions: Vec<u32> = (0..rows as u32).map(|i| i * 997 % 40_000).collect();
        let (qn_c, qn_g) = weights(&be, &rand_bf16(hd, 7, 1.0), &[hd]);
        let (kn_c, kn_g) = weights(&be, &rand_bf16(hd, 8, 1.0), &[hd]);
        let (qw, kw) = (shape.num_heads * hd, shape.num_kv_heads * hd);
        let (qc, qg) = tensors(&be, &rand_bf16(rows * qw, 9, 2.0), rows, qw);
        let (kc, kg) = tensors(&be, &rand_bf16(rows * kw, 10, 2.0), rows, kw);
        let (dqc, dqg) = tensors(&be, &rand_bf16(rows * qw, 11, 1.0), rows, qw);
        let (dkc, dkg) = tensors(&be, &rand_bf16(rows * kw, 12, 1.0), rows, kw);
        let (mut gqc, mut gkc) = (vec![0f32; hd], vec![0f32; hd]);
        let (mut gqg, mut gkg) = (be.zeros_grad(&qn_g).unwrap(), be.zeros_grad(&kn_g).unwrap());
        let (dq_c, dk_c) = CpuBackend::default()
            .qk_norm_rope_backward(
                &qc, &kc, dqc, dkc, &qn_c, &kn_c, &mut gqc, &mut gkc, shape, 1e-6, &rope,
                &positions,
            )
            .unwrap();
        let (dq_g, dk_g) = be
            .qk_norm_rope_backward(
                &qg, &kg, dqg, dkg, &qn_g, &kn_g, &mut gqg, &mut gkg, shape, 1e-6, &rope,
                &positions,
            )
            .unwrap();
        let what = format!("{shape:?}");
        assert_rel(
            &format!("dq {what}"),
            &be.to_host(&dq_g).unwrap(),
            &dq_c.data,
            BF16_TOL,
        );
        assert_rel(
            &format!("dk {what}"),
            &be.to_host(&dk_g).unwrap(),
            &dk_c.data,
            BF16_TOL,
        );
        assert_rel(
            &format!("d q_norm {what}"),
            &be.grad_to_host(&gqg).unwrap(),
            &gqc,
            F32_TOL * 10.0,
        );
        assert_rel(
            &format!("d k_norm {what}"),
            &be.grad_to_host(&gkg).unwrap(),
            &gkc,
            F32_TOL * 10.0,
        );
        // A second backward adds to the norm-weight gradients.
        let (_, dqg2) = tensors(&be, &rand_bf16(rows * qw, 11, 1.0), rows, qw);
        let (_, dkg2) = tensors(&be, &rand_bf16(rows * kw, 12, 1.0), rows, kw);
        be.qk_norm_rope_backward(
            &qg, &kg, dqg2, dkg2, &qn_g, &kn_g, &mut gqg, &mut gkg, shape, 1e-6, &rope, &positions,
        )
        .unwrap();
        assert_rel(
            &format!("d q_norm accumulated {what}"),
            &be.grad_to_host(&gqg).unwrap(),
            &doubled(&gqc),
            F32_TOL * 10.0,
        );
        assert_rel(
            &format!("d k_norm accumulated {what}"),
            &be.grad_to_host(&gkg).unwrap(),
            &doubled(&gkc),
            F32_TOL * 10.0,
        );
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn swiglu_backward_matches_cpu() {
    let Some(be) = gpu("swiglu_backward") else {
        return;
    };
    let (rows, cols) = (19, 3001);
    let (gc, gg) = tensors(&be, &rand_bf16(rows * cols, 13, 6.0), rows, cols);
    let (uc, ug) = tensors(&be, &rand_bf16(rows * cols, 14, 2.0), rows, cols);
    let (dc, dg) = tensors(&be, &rand_bf16(rows * cols, 15, 1.0), rows, cols);
    let (dgc, duc) = CpuBackend::default()
        .swiglu_backward(&gc, &uc, &dc)
        .unwrap();
    let (dgg, dug) = be.swiglu_backward(&gg, &ug, &dg).unwrap();
    // Elementwise: one rounding of the same f32 formula.
    assert_close("swiglu dgate", &be.to_host(&dgg).unwrap(), &dgc.data, 1e-2);
    assert_close("swiglu dup", &be.to_host(&dug).unwrap(), &duc.data, 1e-2);
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn embedding_backward_matches_cpu() {
    let Some(be) = gpu("embedding_backward") else {
        return;
    };
    let (vocab, hidden) = (50, 96);
    let (wc, wg) = weights(&be, &rand_bf16(vocab * hidden, 16, 1.0), &[vocab, hidden]);
    // Repeated ids, out of order, and ids that never occur.
    let ids: Vec<u32> = (0..41).map(|i| (i * i * 7 + 3) % 23).collect();
    let (dyc, dyg) = tensors(
        &be,
        &rand_bf16(ids.len() * hidden, 17, 1.0),
        ids.len(),
        hidden,
    );
    let mut dwc = CpuBackend::default().zeros_grad(&wc).unwrap();
    let mut dwg = be.zeros_grad(&wg).unwrap();
    CpuBackend::default()
        .embedding_backward(&ids, &dyc, &mut dwc)
        .unwrap();
    be.embedding_backward(&ids, &dyg, &mut dwg).unwrap();
    assert_rel(
        "embedding dw",
        &be.grad_to_host(&dwg).unwrap(),
        &dwc,
        F32_TOL,
    );
    // Tied embeddings and accumulation rely on adding into dw.
    be.embedding_backward(&ids, &dyg, &mut dwg).unwrap();
    assert_rel(
        "embedding dw accumulated",
        &be.grad_to_host(&dwg).unwrap(),
        &doubled(&dwc),
        F32_TOL,
    );
    assert!(
        be.embedding_backward(
            &[vocab as u32],
            &be.tensor_from_host(&vec![0.0; hidden], 1, hidden).unwrap(),
            &mut dwg
        )
        .is_err()
    );
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn varlen_attention_forward_and_backward_match_cpu() {
    let Some(be) = gpu("varlen_attention") else {
        return;
    };
    // Odd lengths, a 1-row sequence, an empty one, and one longer than two 32-key tiles.
    let bounds = [0usize, 1, 18, 18, 89];
    let rows = *bounds.last().unwrap();
    for shape in shapes() {
        let (qw, kw) = (
            shape.num_heads * shape.head_dim,
            shape.num_kv_heads * shape.head_dim,
        );
        let (qc, qg) = tensors(&be, &rand_bf16(rows * qw, 18, 1.0), rows, qw);
        let (kc, kg) = tensors(&be, &rand_bf16(rows * kw, 19, 1.0), rows, kw);
        let (vc, vg) = tensors(&be, &rand_bf16(rows * kw, 20, 1.0), rows, kw);
        let (oc, lse_c) = CpuBackend::default()
            .varlen_attention(&qc, &kc, &vc, &bounds, shape)
            .unwrap();
        let (og, lse_g) = be.varlen_attention(&qg, &kg, &vg, &bounds, shape).unwrap();
        let what = format!("{shape:?}");
        assert_rel(
            &format!("attention out {what}"),
            &be.to_host(&og).unwrap(),
            &oc.data,
            BF16_TOL,
        );
        assert_close(
            &format!("attention lse {what}"),
            &be.stats_to_host(&lse_g).unwrap(),
            &lse_c.data,
            F32_TOL,
        );

        // The backward from the same saved output (rounded as the GPU stores it) and statistics.
        let out = round_bf16(&oc.data);
        let (oc, og) = tensors(&be, &out, rows, qw);
        let lse_g = be
            .stats_from_host(&lse_c.data, rows, shape.num_heads)
            .unwrap();
        let (doc, dog) = tensors(&be, &rand_bf16(rows * qw, 21, 1.0), rows, qw);
        let (dqc, dkc, dvc) = CpuBackend::default()
            .varlen_attention_backward(&qc, &kc, &vc, &oc, &lse_c, &doc, &bounds, shape)
            .unwrap();
        let (dqg, dkg, dvg) = be
            .varlen_attention_backward(&qg, &kg, &vg, &og, &lse_g, &dog, &bounds, shape)
            .unwrap();
        assert_rel(
            &format!("attention dq {what}"),
            &be.to_host(&dqg).unwrap(),
            &dqc.data,
            BF16_TOL,
        );
        assert_rel(
            &format!("attention dk {what}"),
            &be.to_host(&dkg).unwrap(),
            &dkc.data,
            BF16_TOL,
        );
        assert_rel(
            &format!("attention dv {what}"),
            &be.to_host(&dvg).unwrap(),
            &dvc.data,
            BF16_TOL,
        );
    }
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn fused_cross_entropy_matches_cpu() {
    let Some(be) = gpu("cross_entropy") else {
        return;
    };
    // 9000 > the 8192-column chunk: targets on both sides of the chunk edge.
    let (rows, hidden, vocab) = (13, 64, 9000);
    let (wc, wg) = weights(&be, &rand_bf16(vocab * hidden, 22, 0.5), &[vocab, hidden]);
    let (hc, hg) = tensors(&be, &rand_bf16(rows * hidden, 23, 1.0), rows, hidden);
    let targets: Vec<u32> = (0..rows as u32)
        .map(|i| (i * 691 + 8180) % vocab as u32)
        .collect();
    let loss_weights: Vec<f32> = (0..rows)
        .map(|i| {
            if i % 4 == 3 {
                0.0
            } else {
                0.5 + i as f32 / 8.0
            }
        })
        .collect();
    let mut dwc = CpuBackend::default().zeros_grad(&wc).unwrap();
    let mut dwg = be.zeros_grad(&wg).unwrap();
    let (lc, tlc, dhc) = CpuBackend::default()
        .cross_entropy(&hc, &wc, &targets, &loss_weights, 7.0, &mut dwc)
        .unwrap();
    let (lg, tlg, dhg) = be
        .cross_entropy(&hg, &wg, &targets, &loss_weights, 7.0, &mut dwg)
        .unwrap();
    assert!(
        (lc - lg).abs() <= 1e-4 * lc.abs().max(1.0),
        "loss gpu {lg} vs cpu {lc}"
    );
    assert_close("token losses", &tlg, &tlc, F32_TOL);
    assert_rel("ce dh", &be.to_host(&dhg).unwrap(), &dhc.data, BF16_TOL);
    // dlogits are rounded to bf16 before the weight-gradient product.
    assert_rel("ce dw", &be.grad_to_host(&dwg).unwrap(), &dwc, BF16_TOL);
    be.cross_entropy(&hg, &wg, &targets, &loss_weights, 7.0, &mut dwg)
        .unwrap();
    assert_rel(
        "ce dw accumulated",
        &be.grad_to_host(&dwg).unwrap(),
        &doubled(&dwc),
        BF16_TOL,
    );
    let lp_c = CpuBackend::default()
        .target_log_probs(&hc, &wc, &targets)
        .unwrap();
    let lp_g = be.target_log_probs(&hg, &wg, &targets).unwrap();
    assert_close("target log-probs", &lp_g, &lp_c, F32_TOL);
}

/// More weighted rows than a grid's y dimension holds (65535): rows must sit on grid x.
#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn cross_entropy_takes_more_rows_than_grid_y() {
    let Some(be) = gpu("cross_entropy_many_rows") else {
        return;
    };
    let (rows, hidden, vocab) = (70_000, 8, 300);
    let (wc, wg) = weights(&be, &rand_bf16(vocab * hidden, 30, 0.5), &[vocab, hidden]);
    let (hc, hg) = tensors(&be, &rand_bf16(rows * hidden, 31, 1.0), rows, hidden);
    let targets: Vec<u32> = (0..rows as u32).map(|i| i * 7 % vocab as u32).collect();
    let loss_weights = vec![1.0f32; rows];
    let mut dwc = CpuBackend::default().zeros_grad(&wc).unwrap();
    let mut dwg = be.zeros_grad(&wg).unwrap();
    let (lc, _, dhc) = CpuBackend::default()
        .cross_entropy(&hc, &wc, &targets, &loss_weights, rows as f32, &mut dwc)
        .unwrap();
    let (lg, _, dhg) = be
        .cross_entropy(&hg, &wg, &targets, &loss_weights, rows as f32, &mut dwg)
        .unwrap();
    assert!(
        (lc - lg).abs() <= 1e-4 * lc.abs().max(1.0),
        "loss gpu {lg} vs cpu {lc}"
    );
    assert_rel(
        "ce dh (70k rows)",
        &be.to_host(&dhg).unwrap(),
        &dhc.data,
        BF16_TOL,
    );
    assert_rel(
        "ce dw (70k rows)",
        &be.grad_to_host(&dwg).unwrap(),
        &dwc,
        BF16_TOL,
    );
}

fn doubled(x: &[f32]) -> Vec<f32> {
    x.iter().map(|v| 2.0 * v).collect()
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn fused_adamw_matches_cpu_and_keeps_the_bf16_copy_in_step() {
    let Some(be) = gpu("adamw") else { return };
    let n = 5000;
    let (mut wc, mut wg) = weights(&be, &rand_bf16(n, 24, 1.0), &[50, 100]);
    let mut sc = CpuBackend::default().new_opt_state(&wc).unwrap();
    let mut sg = be.new_opt_state(&wg).unwrap();
    for step in 1..=3u64 {
        let g = rand_bf16(n, 100 + step, 0.1);
        let gg = be.grad_from_host(&g).unwrap();
        let hp = AdamWStep {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            grad_scale: 0.5,
            step,
        };
        CpuBackend::default()
            .adamw(&mut wc, &g, &mut sc, &hp)
            .unwrap();
        be.adamw(&mut wg, &gg, &mut sg, &hp).unwrap();
    }
    let master = be.weight_to_host(&wg).unwrap();
    assert_close(
        "adamw master",
        &master,
        &CpuBackend::default().weight_to_host(&wc).unwrap(),
        1e-6,
    );
    assert_eq!(
        be.download(&wg.data).unwrap(),
        round_bf16(&master),
        "bf16 copy = rounded master"
    );
    let (m, v) = be.opt_state_to_host(&sg).unwrap();
    assert_close("adamw m", &m, &sc.0, 1e-6);
    assert_close("adamw v", &v, &sc.1, 1e-6);
}

#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn gradient_square_norm_matches_host() {
    let Some(be) = gpu("grad_sq_norm") else {
        return;
    };
    let g = rand_bf16(100_003, 25, 3.0);
    let dw = be.grad_from_host(&g).unwrap();
    let want: f64 = g.iter().map(|&v| v as f64 * v as f64).sum();
    let got = be.grad_sq_norm(&dw).unwrap();
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
}

fn fixture_batch(name: &str) -> (TrainBatch, f64) {
    #[derive(serde::Deserialize)]
    struct Seq {
        ids: Vec<u32>,
        loss_weights: Vec<f32>,
    }
    #[derive(serde::Deserialize)]
    struct GradRef {
        sequences: Vec<Seq>,
        loss: f64,
    }
    let r: GradRef = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join(format!("reference/{name}.grads.json"))).unwrap(),
    )
    .unwrap();
    let seqs: Vec<(Vec<u32>, Vec<f32>)> = r
        .sequences
        .into_iter()
        .map(|s| (s.ids, s.loss_weights))
        .collect();
    (TrainBatch::pack(&seqs).unwrap(), r.loss)
}

/// The whole backward on the GPU (bf16 activations) against the CPU's f32 gradients on the tiny
/// fixtures. Every layer adds a handful of bf16 roundings of activations and their gradients,
/// so parameter gradients are compared norm-wise at 5%; a wrong kernel is off by O(1).
#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn model_gradients_match_cpu_on_tiny_fixtures() {
    let Some(be) = gpu("model_gradients") else {
        return;
    };
    for name in ["tiny-gqa4-tied", "tiny-mha-untied-hd"] {
        let (batch, torch_loss) = fixture_batch(name);
        let cpu = Qwen3::load_for_training(CpuBackend::default(), &model_dir(name)).unwrap();
        let gpu_model = Qwen3::load_for_training(be.clone(), &model_dir(name)).unwrap();
        let mut gc = Gradients::zeros(&cpu).unwrap();
        let mut gg = Gradients::zeros(&gpu_model).unwrap();
        let norm = batch.weight_sum();
        let rc = loss_and_grad(&cpu, &batch, norm, &mut gc, false).unwrap();
        let rg = loss_and_grad(&gpu_model, &batch, norm, &mut gg, false).unwrap();
        assert!(
            (rg.loss - torch_loss).abs() <= 2e-2 * torch_loss.abs(),
            "{name}: gpu loss {} vs torch {torch_loss}",
            rg.loss
        );
        for (((pname, _), a), b) in cpu.parameters().iter().zip(&gc.grads).zip(&gg.grads) {
            assert_rel(
                &format!("{name} {pname}"),
                &be.grad_to_host(b).unwrap(),
                a,
                5e-2,
            );
        }
        println!(
            "{name}: loss gpu {:.6} cpu {:.6} torch {torch_loss:.6}",
            rg.loss, rc.loss
        );
    }
}

/// AdamW steps on one batch: the loss must fall well below its start, and a second run from
/// the same weights must reproduce every loss bit for bit (no atomics anywhere).
#[test]
#[cfg_attr(
    asyncthink_no_gpu,
    ignore = "no CUDA driver where this was built; `-- --include-ignored` runs it"
)]
fn training_on_the_gpu_learns_and_is_reproducible() {
    let Some(be) = gpu("gpu_training") else {
        return;
    };
    be.set_poison(false);
    let (batch, _) = fixture_batch("tiny-gqa4-tied");
    let run = |steps: usize| -> Vec<f64> {
        let mut model = Qwen3::load_for_training(be.clone(), &model_dir("tiny-gqa4-tied")).unwrap();
        let mut opt = AdamW::new(
            &model,
            OptimConfig {
                lr: 1e-2,
                warmup_steps: 0,
                total_steps: 40,
                ..OptimConfig::default()
            },
        )
        .unwrap();
        let mut grads = Gradients::zeros(&model).unwrap();
        (0..steps)
            .map(|_| {
                grads.zero(&model.backend).unwrap();
                let r =
                    loss_and_grad(&model, &batch, batch.weight_sum(), &mut grads, true).unwrap();
                opt.step(&mut model, &grads, 1).unwrap();
                r.loss
            })
            .collect()
    };
    // The second run is the first one's prefix: the same bits step for step, at a quarter of
    // the cost (the emulator runs every GPU test in CI).
    let (a, b) = (run(40), run(10));
    assert_eq!(a[..10], b, "two identical GPU runs diverged");
    assert!(
        a[39] < 0.5 * a[0],
        "loss went from {} to {} in 40 steps",
        a[0],
        a[39]
    );
    println!("gpu training: loss {:.4} -> {:.4}", a[0], a[39]);
}
