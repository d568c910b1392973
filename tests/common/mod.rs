//! Shared by the integration tests: fixture paths and the committed transformers references.
#![allow(dead_code)]

#[cfg(feature = "cuda")]
pub mod gpu;

use std::path::{Path, PathBuf};

use asyncthink::backend::cpu::CpuBackend;
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
