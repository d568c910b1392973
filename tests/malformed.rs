//! Each kind of broken checkpoint or bad input gives its own named error, never a panic.

mod common;

use std::collections::HashMap;
use std::path::Path;

use asyncthink::Error;
use asyncthink::backend::cpu::CpuBackend;
use asyncthink::engine::{Engine, EngineConfig, SamplingParams};
use asyncthink::model::Qwen3;
use asyncthink::tokenizer::Tokenizer;
use common::*;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A scratch copy of a fixture model that a test may break.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Rewrites model.safetensors after `edit` changes the tensor list.
fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>)) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    edit(&mut tensors);
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> Error {
    match Qwen3::load(CpuBackend::default(), dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e,
    }
}

const NAME: &str = "tiny-gqa4-tied";
const VICTIM: &str = "model.layers.1.self_attn.k_norm.weight";

#[test]
fn missing_tensor_is_named_with_its_file() {
    let dir = scratch_copy(NAME);
    rewrite_weights(dir.path(), |t| t.retain(|(n, ..)| n != VICTIM));
    let e = load_err(dir.path());
    let msg = e.to_string();
    assert!(matches!(e, Error::Tensor { .. }), "{msg}");
    assert!(
        msg.contains(VICTIM) && msg.contains("missing") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = scratch_copy(NAME);
    rewrite_weights(dir.path(), |t| {
        let v = t.iter_mut().find(|(n, ..)| n == VICTIM).unwrap();
        let len = v.3.len();
        v.2 = vec![2, v.2[0] / 2];
        assert_eq!(v.2.iter().product::<usize>() * 4, len);
    });
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains(VICTIM) && msg.contains("shape"), "{msg}");
}

#[test]
fn wrong_dtype_is_named() {
    let dir = scratch_copy(NAME);
    rewrite_weights(dir.path(), |t| {
        let v = t.iter_mut().find(|(n, ..)| n == VICTIM).unwrap();
        v.1 = Dtype::I32;
    });
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains(VICTIM) && msg.contains("I32"), "{msg}");
}

#[test]
fn truncated_file_is_reported() {
    let dir = scratch_copy(NAME);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(dir.path());
    let msg = e.to_string();
    assert!(matches!(e, Error::Checkpoint { .. }), "{msg}");
    assert!(
        msg.contains("truncated") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = scratch_copy("tiny-gqa2-sharded-bf16");
    let index: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let shard = index["weight_map"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(dir.path().join(&shard)).unwrap();
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains(&shard), "{msg}");
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn unsupported_architecture_is_refused() {
    let dir = scratch_copy(NAME);
    edit_config(dir.path(), |v| {
        v["model_type"] = "qwen3_moe".into();
        v["architectures"] = serde_json::json!(["Qwen3MoeForCausalLM"]);
    });
    let e = load_err(dir.path());
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("qwen3_moe")),
        "{e}"
    );
}

#[test]
fn unsupported_rope_scaling_is_refused() {
    let dir = scratch_copy(NAME);
    edit_config(dir.path(), |v| {
        v["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0});
    });
    let e = load_err(dir.path());
    assert!(
        matches!(&e, Error::Unsupported(m) if m.contains("yarn")),
        "{e}"
    );
}

#[test]
fn missing_config_is_an_io_error_naming_it() {
    let dir = scratch_copy(NAME);
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let e = load_err(dir.path());
    assert!(
        matches!(&e, Error::Io { path, .. } if path.ends_with("config.json")),
        "{e}"
    );
}

#[test]
fn broken_tokenizer_is_reported() {
    let dir = scratch_copy(NAME);
    std::fs::write(dir.path().join("tokenizer.json"), "{ not json").unwrap();
    match Tokenizer::from_dir(dir.path()) {
        Err(Error::Tokenizer(m)) => assert!(m.contains("tokenizer.json"), "{m}"),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("broken tokenizer accepted"),
    }
}

#[test]
fn out_of_vocabulary_ids_and_bad_sampling_are_rejected() {
    let model = load(NAME);
    let mut engine = Engine::new(&model, None, EngineConfig::default()).unwrap();
    let vocab = model.config.vocab_size as u32;
    assert!(
        matches!(engine.logits_all(&[1, vocab]), Err(Error::InvalidInput(m)) if m.contains("vocabulary"))
    );
    assert!(matches!(
        engine.logits_all(&[]),
        Err(Error::InvalidInput(_))
    ));
    let bad = SamplingParams {
        temperature: f32::NAN,
        ..Default::default()
    };
    assert!(
        matches!(engine.generate(&[1, 2], &bad, |_| {}), Err(Error::InvalidInput(m)) if m.contains("temperature"))
    );
    let too_long: Vec<u32> = (0..model.config.max_position_embeddings as u32)
        .map(|i| i % vocab)
        .collect();
    assert!(
        matches!(engine.add_request(too_long, SamplingParams::default()), Err(Error::InvalidInput(m)) if m.contains("max_position_embeddings"))
    );
}

#[test]
fn prompt_longer_than_the_cache_is_a_full_cache_error() {
    let model = load(NAME);
    let cfg = EngineConfig {
        num_blocks: 1,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(&model, None, cfg).unwrap();
    let ids: Vec<u32> = (0..16).collect();
    assert!(matches!(
        engine.add_request(ids, SamplingParams::default()),
        Err(Error::KvCacheFull(_))
    ));
}
