//! Shared by the GPU tests: the device (or a printed skip), deterministic bf16-exact random
//! inputs, and the comparisons against the CPU reference.

use asyncthink::backend::Backend;
use asyncthink::backend::cuda::{CudaBackend, CudaWeight, probe};
use asyncthink::model::checkpoint::HostTensor;
use asyncthink::model::config::Qwen3Config;
use asyncthink::model::random::qwen3_0p6b_config;
use half::bf16;
use std::io::Write;

/// The device with every fresh buffer poisoned (NaN), or None after printing why the test
/// skips (no driver, device, NVRTC, cuBLAS or CUDA headers). Under ASYNCTHINK_REQUIRE_GPU=1
/// (the GPU check) no GPU is a failure, not a skip.
pub fn gpu(test: &str) -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => {
            b.set_poison(true);
            Some(b)
        }
        Err(e) if probe::gpu_required() => {
            panic!(
                "GPU test {test}: no GPU under {}=1: {e}",
                probe::REQUIRE_GPU_ENV
            )
        }
        Err(e) => {
            // Straight to the stderr handle: the test harness captures eprintln!, and a skip
            // must show in a plain `cargo test` run, not pass silently.
            let _ = writeln!(std::io::stderr(), "GPU test {test}: skipped: {e}");
            None
        }
    }
}

/// Whether `be` is the PTX emulator (emu/driver), whose device name says so.
pub fn on_emulator(be: &CudaBackend) -> bool {
    be.device_name().is_ok_and(|n| n.contains("emulator"))
}

/// The vocabulary of the Qwen3-0.6B-shaped models under the emulator: odd, and 16 full
/// strides of the sampling kernels' 1024 threads plus 27 tokens, so a partial last stride
/// stays.
pub const EMULATED_VOCAB: usize = 16_411;

/// Qwen3-0.6B's shapes (hidden 1024, head_dim 128, GQA 2:1, its real max_position_embeddings)
/// with `layers` layers. The emulator interprets every thread on the CPU, and there the
/// 151 936-token vocabulary was most of these models' cost (the lm_head product and the
/// per-row sampling passes, every step): it gets EMULATED_VOCAB, nothing else changes.
/// tests/cuda_sampling.rs keeps the full vocabulary for the sampling kernels on their own.
pub fn qwen3_0p6b_shaped(be: &CudaBackend, layers: usize) -> Qwen3Config {
    let mut config = qwen3_0p6b_config(layers).expect("the built-in Qwen3-0.6B config");
    if on_emulator(be) {
        config.vocab_size = EMULATED_VOCAB;
    }
    config
}

/// Deterministic values in [-scale, scale], already representable in bf16.
pub fn rand_bf16(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            bf16::from_f32((2.0 * u - 1.0) * scale).to_f32()
        })
        .collect()
}

/// A bf16 device weight holding `data` (already bf16-exact, so no rounding on upload).
pub fn weight(be: &CudaBackend, data: &[f32], shape: &[usize]) -> CudaWeight {
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    be.load_weight(&HostTensor::from_f32_bytes(&bytes, shape.to_vec()))
        .expect("upload weight")
}

pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

/// Elementwise: |got − want| ≤ tol·(1 + |want|).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = 0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= tol * (1.0 + w.abs()),
            "{what}: element {i}: gpu {g} vs cpu {w} (tolerance {tol} relative)"
        );
        worst = worst.max(err);
    }
    println!("{what}: max abs err {worst:.2e} over {} values", got.len());
}

/// Norm-wise: ‖got − want‖₂ ≤ tol·‖want‖₂, and no element off by more than 4·tol·max|want|
/// (a wrong index hides in a norm; it cannot hide in both).
pub fn assert_rel(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output"
    );
    let diff: f64 = got
        .iter()
        .zip(want)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum::<f64>().sqrt();
    let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let rel = diff / norm.max(1e-30);
    assert!(
        rel <= tol as f64 && worst <= 4.0 * tol * max.max(1e-30),
        "{what}: relative error {rel:.2e}, worst element {worst:.2e} of max {max:.2e} (tolerance {tol})"
    );
    println!("{what}: relative error {rel:.2e}, worst element {worst:.2e}");
}
