//! Shared by the integration tests: fixture paths and the committed transformers references.
#![allow(dead_code)]

#[cfg(feature = "cuda")]
pub mod gpu;

use std::path::{Path, PathBuf};

use asyncthink::backend::Backend;
use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig};
use asyncthink::model::Qwen3;
use safetensors::SafeTensors;
use serde::Deserialize;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_dir(name: &str) -> PathBuf {
    fixtures().join("models").join(name)
}

pub const MODELS: &[&str] = &[
    "tiny-gqa4-tied",
    "tiny-mha-untied-hd",
    "tiny-gqa2-sharded-bf16",
    "tiny-f16",
];

#[derive(Deserialize)]
pub struct Prompt {
    pub ids: Vec<u32>,
}

#[derive(Deserialize)]
pub struct Greedy {
    pub prompt_ids: Vec<u32>,
    pub new_ids: Vec<u32>,
    /// Top-1 minus top-2 logit at each step (the bf16 fixture records them all).
    #[serde(default)]
    pub margins: Vec<f32>,
}

#[derive(Deserialize)]
pub struct Reference {
    pub prompts: Vec<Prompt>,
    pub greedy: Vec<Greedy>,
}

pub struct Loaded {
    pub reference: Reference,
    /// Per prompt: row-major [len, vocab].
    pub logits: Vec<Vec<f32>>,
}

/// transformers' f32 run (tests/fixtures/make_fixtures.py).
pub fn reference(name: &str) -> Loaded {
    reference_run(name, "")
}

/// transformers' bf16 run (tests/fixtures/make_bf16_fixtures.py).
pub fn reference_bf16(name: &str) -> Loaded {
    reference_run(name, ".bf16")
}

fn reference_run(name: &str, run: &str) -> Loaded {
    let dir = fixtures().join("reference");
    let text =
        std::fs::read_to_string(dir.join(format!("{name}{run}.json"))).expect("reference json");
    let reference: Reference = serde_json::from_str(&text).expect("reference json parses");
    let bytes = std::fs::read(dir.join(format!("{name}{run}.logits.safetensors")))
        .expect("reference logits");
    let st = SafeTensors::deserialize(&bytes).expect("reference logits parse");
    let logits = (0..reference.prompts.len())
        .map(|i| {
            let t = st.tensor(&format!("prompt{i}")).expect("prompt tensor");
            assert_eq!(t.dtype(), safetensors::Dtype::F32);
            t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect();
    Loaded { reference, logits }
}

pub fn load(name: &str) -> Qwen3<CpuBackend> {
    Qwen3::load(CpuBackend::default(), &model_dir(name))
        .unwrap_or_else(|e| panic!("load {name}: {e}"))
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Two tokens whose logits differ by less than this fraction of the largest logit count as
/// tied between a bf16 GPU run and another computation of the same model (f32 on the CPU, or
/// the GPU in another accumulation order): 8 mantissa bits give 2^-9 relative per rounding,
/// and a few layers of roundings add up to about 1%.
pub const TIE_MARGIN: f32 = 0.02;

/// Greedy tokens `got` judged against `want` for the same prompt: equal up to their first
/// difference, and there the two chosen tokens nearly tie (within TIE_MARGIN of the largest
/// logit) in the logits `reference` computes for the common prefix. A wrong row, slot, mask
/// or weight moves logits by O(1) and fails. Returns how many tokens matched before the first
/// difference (all of them when none).
pub fn judge_greedy<B: Backend>(
    reference: &Qwen3<B>,
    what: &str,
    prompt: &[u32],
    want: &[u32],
    got: &[u32],
) -> usize {
    assert_eq!(want.len(), got.len(), "{what}: token counts");
    let Some(k) = want.iter().zip(got).position(|(a, b)| a != b) else {
        return want.len();
    };
    let mut engine = Engine::new(
        reference,
        None,
        EngineConfig {
            num_blocks: 128,
            ..Default::default()
        },
    )
    .unwrap();
    let mut context = prompt.to_vec();
    context.extend(&want[..k]);
    let logits = engine.logits_all(&context).unwrap();
    let last = logits.last().unwrap();
    let scale = last.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
    let gap = (last[want[k] as usize] - last[got[k] as usize]).abs();
    assert!(
        gap <= TIE_MARGIN * scale,
        "{what}: chose {} over the reference's {} at output {k} with a logit gap of {gap} \
         (largest logit {scale}): not a near-tie",
        got[k],
        want[k]
    );
    println!("{what}: equal for {k} tokens, then a near-tie (gap {gap:.4}, scale {scale:.2})");
    k
}
