//! Qwen3 checkpoints of random weights, built in memory: benchmarks need a model with real
//! sizes (Qwen3-0.6B's) but nothing downloaded. The tensors carry the release's names, shapes
//! and dtype (bf16), so the model loads through the ordinary checkpoint path.

use std::path::Path;

use half::bf16;
use rayon::prelude::*;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use super::{Checkpoint, Qwen3Config};
use crate::{Error, Result};

/// Qwen3-0.6B's config.json (hidden 1024, 16 query heads, 8 KV heads, head_dim 128,
/// intermediate 3072, vocab 151936, tied embeddings, rope_theta 1e6) with `layers` decoder
/// layers (28 in the release; fewer shrinks a smoke test).
pub fn qwen3_0p6b_config(layers: usize) -> Result<Qwen3Config> {
    let text = json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000,
        "rope_scaling": null,
        "vocab_size": 151936,
        "tie_word_embeddings": true,
        "max_position_embeddings": 40960,
        "torch_dtype": "bfloat16",
        "bos_token_id": 151643,
        "eos_token_id": 151645,
    })
    .to_string();
    Qwen3Config::from_json_str(&text, Path::new("qwen3-0.6b-shape"))
}

/// Every parameter of a model with config `c` as (checkpoint name, shape), tied embeddings
/// once, in the order `Qwen3::parameters` lists them.
pub fn parameter_shapes(c: &Qwen3Config) -> Vec<(String, Vec<usize>)> {
    let (h, i, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![c.vocab_size, h],
    )];
    for l in 0..c.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![c.q_dim(), h]),
            ("self_attn.k_proj.weight", vec![c.kv_dim(), h]),
            ("self_attn.v_proj.weight", vec![c.kv_dim(), h]),
            ("self_attn.o_proj.weight", vec![h, c.q_dim()]),
            ("self_attn.q_norm.weight", vec![d]),
            ("self_attn.k_norm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !c.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![c.vocab_size, h]));
    }
    out
}

/// SplitMix64: a counter-based stream, so chunks filled in parallel are deterministic.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Little-endian bf16 bytes of `n` values uniform in [-scale, scale], a pure function of
/// `seed`.
pub fn random_bf16_bytes(n: usize, seed: u64, scale: f32) -> Vec<u8> {
    const CHUNK: usize = 1 << 16;
    let mut bytes = vec![0u8; 2 * n];
    bytes
        .par_chunks_mut(2 * CHUNK)
        .enumerate()
        .for_each(|(c, out)| {
            let base = mix(seed ^ mix(c as u64));
            for (j, v) in out.chunks_exact_mut(2).enumerate() {
                let u = (mix(base.wrapping_add(j as u64)) >> 40) as f32 / (1u64 << 24) as f32;
                v.copy_from_slice(&bf16::from_f32((2.0 * u - 1.0) * scale).to_le_bytes());
            }
        });
    bytes
}

/// A checkpoint of `c`'s parameters in bf16: norm weights 1, every matrix uniform with
/// standard deviation 0.02 (transformers' initialiser range), so activations stay finite.
pub fn random_checkpoint(c: &Qwen3Config, seed: u64) -> Result<Checkpoint> {
    let scale = 0.02 * 3f32.sqrt();
    let one = bf16::ONE.to_le_bytes();
    let tensors: Vec<(String, Vec<usize>, Vec<u8>)> = parameter_shapes(c)
        .into_iter()
        .enumerate()
        .map(|(k, (name, shape))| {
            let n: usize = shape.iter().product();
            let bytes = if shape.len() == 1 {
                one.repeat(n)
            } else {
                random_bf16_bytes(n, mix(seed.wrapping_add(k as u64)), scale)
            };
            (name, shape, bytes)
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::BF16, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::InvalidInput(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::InvalidInput(format!("serialize random checkpoint: {e}")))?;
    drop(tensors);
    Checkpoint::from_owned("random-checkpoint", bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::{ForwardBatch, Logits, Qwen3};

    fn tiny(tied: bool) -> Qwen3Config {
        let mut c = qwen3_0p6b_config(2).unwrap();
        c.hidden_size = 64;
        c.intermediate_size = 96;
        c.num_attention_heads = 4;
        c.num_key_value_heads = 2;
        c.head_dim = 16;
        c.vocab_size = 300;
        c.tie_word_embeddings = tied;
        c
    }

    #[test]
    fn the_0p6b_shape_has_the_release_parameter_count() {
        let c = qwen3_0p6b_config(28).unwrap();
        let total: usize = parameter_shapes(&c)
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(total, c.num_parameters());
        assert!((590_000_000..=600_000_000).contains(&total), "{total}");
    }

    #[test]
    fn random_checkpoints_load_and_run_with_finite_logits() {
        for tied in [true, false] {
            let c = tiny(tied);
            let ckpt = random_checkpoint(&c, 7).unwrap();
            assert_eq!(ckpt.tensor_names().count(), parameter_shapes(&c).len());
            let model = Qwen3::from_checkpoint(CpuBackend::default(), c.clone(), &ckpt).unwrap();
            let names: Vec<String> = model.parameters().into_iter().map(|(n, _)| n).collect();
            let want: Vec<String> = parameter_shapes(&c).into_iter().map(|(n, _)| n).collect();
            assert_eq!(names, want);
            let mut kv =
                crate::backend::Backend::alloc_kv(&CpuBackend::default(), model.kv_layout(2, 16))
                    .unwrap();
            let mut batch = ForwardBatch::default();
            batch.push(&[1, 5, 299, 7], 0, &[1], 16, Logits::All);
            let logits = crate::backend::Backend::to_host(
                &CpuBackend::default(),
                &model.forward(&batch, &mut kv).unwrap(),
            )
            .unwrap();
            assert_eq!(logits.len(), 4 * c.vocab_size);
            assert!(logits.iter().all(|v| v.is_finite()));
            assert!(logits.iter().any(|&v| v != 0.0));
        }
    }

    #[test]
    fn random_values_are_deterministic_bounded_and_spread() {
        let a = random_bf16_bytes(200_000, 3, 0.5);
        assert_eq!(a, random_bf16_bytes(200_000, 3, 0.5));
        assert_ne!(a, random_bf16_bytes(200_000, 4, 0.5));
        let v: Vec<f32> = a
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        assert!(v.iter().all(|x| x.abs() <= 0.5));
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
        // Uniform on [-0.5, 0.5]: mean 0, variance 1/12.
        assert!(mean.abs() < 0.01, "{mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.005, "{var}");
    }
}
