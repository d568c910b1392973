//! Qwen3 dense `config.json`, in both layouts found in the wild: the Qwen3 releases'
//! (top-level `rope_theta`, `torch_dtype`) and the one transformers 5 writes
//! (`rope_parameters`, `dtype`). Anything we would compute wrongly is rejected by name.

use std::path::Path;

use serde_json::Value;

use crate::{Error, Result};

/// Storage dtype of a checkpoint's tensors, as named by Hugging Face configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "float32" | "f32" => Some(DType::F32),
            "float16" | "f16" | "half" => Some(DType::F16),
            "bfloat16" | "bf16" => Some(DType::BF16),
            _ => None,
        }
    }

    pub fn hf_name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Qwen3 decouples head_dim from hidden_size / heads (0.6B: 1024 hidden, 16 heads, head_dim 128).
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub dtype: Option<DType>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl Qwen3Config {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// `path` only names the file in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::Config {
            path: path.to_path_buf(),
            msg,
        };
        let v: Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("top level is not a JSON object".into()))?;

        let model_type = obj.get("model_type").and_then(Value::as_str).unwrap_or("");
        if model_type != "qwen3" {
            return Err(Error::Unsupported(format!(
                "{}: model_type {model_type:?} (only dense \"qwen3\" is supported)",
                path.display()
            )));
        }
        if let Some(archs) = obj.get("architectures").and_then(Value::as_array) {
            for a in archs.iter().filter_map(Value::as_str) {
                if a != "Qwen3ForCausalLM" {
                    return Err(Error::Unsupported(format!(
                        "{}: architecture {a:?} (only Qwen3ForCausalLM)",
                        path.display()
                    )));
                }
            }
        }

        let usize_field = |name: &str| -> Result<usize> {
            obj.get(name)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .filter(|&x| x > 0)
                .ok_or_else(|| bad(format!("missing or non-positive integer field {name:?}")))
        };
        let hidden_size = usize_field("hidden_size")?;
        let num_attention_heads = usize_field("num_attention_heads")?;
        let num_key_value_heads = match obj.get("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            Some(_) => usize_field("num_key_value_heads")?,
        };
        let head_dim = match obj.get("head_dim") {
            None | Some(Value::Null) => hidden_size / num_attention_heads,
            Some(_) => usize_field("head_dim")?,
        };
        if num_attention_heads % num_key_value_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {num_attention_heads} is not a multiple of num_key_value_heads {num_key_value_heads}"
            )));
        }
        if head_dim % 2 != 0 {
            return Err(bad(format!("head_dim {head_dim} must be even for RoPE")));
        }

        for flag in ["attention_bias", "use_sliding_window"] {
            if obj.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(Error::Unsupported(format!(
                    "{}: {flag}=true is not supported",
                    path.display()
                )));
            }
        }
        if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
            && act != "silu"
        {
            return Err(Error::Unsupported(format!(
                "{}: hidden_act {act:?} (only silu)",
                path.display()
            )));
        }

        let rope_theta = parse_rope(obj, path)?;

        let rms_norm_eps = obj
            .get("rms_norm_eps")
            .map(|x| {
                x.as_f64()
                    .ok_or_else(|| bad("rms_norm_eps is not a number".into()))
            })
            .transpose()?
            .unwrap_or(1e-6) as f32;

        let dtype_name = obj
            .get("dtype")
            .or_else(|| obj.get("torch_dtype"))
            .and_then(Value::as_str);
        let dtype = match dtype_name {
            None => None,
            Some(n) => Some(DType::parse(n).ok_or_else(|| bad(format!("unknown dtype {n:?}")))?),
        };

        Ok(Qwen3Config {
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps,
            rope_theta,
            max_position_embeddings: obj
                .get("max_position_embeddings")
                .and_then(Value::as_u64)
                .unwrap_or(32768) as usize,
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            dtype,
            bos_token_id: token_ids(obj.get("bos_token_id")).first().copied(),
            eos_token_ids: token_ids(obj.get("eos_token_id")),
        })
    }

    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parameter count, tied embeddings counted once.
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let attn = h * self.q_dim() * 2 + h * self.kv_dim() * 2 + 2 * self.head_dim;
        let mlp = 3 * h * self.intermediate_size;
        let layer = attn + mlp + 2 * h;
        let embed = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + head + self.num_hidden_layers * layer + h
    }
}

/// Accepts `rope_scaling` absent/null/"default" (release layout) and `rope_parameters`
/// with rope_type "default" (transformers 5 layout). Scaled variants (yarn, linear,
/// dynamic, llama3) would silently give wrong logits, so they are refused.
fn parse_rope(obj: &serde_json::Map<String, Value>, path: &Path) -> Result<f64> {
    let check_type = |params: &Value, field: &str| -> Result<()> {
        let ty = params
            .get("rope_type")
            .or_else(|| params.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("default");
        if ty != "default" {
            return Err(Error::Unsupported(format!(
                "{}: {field} rope_type {ty:?} (only unscaled \"default\" RoPE)",
                path.display()
            )));
        }
        Ok(())
    };
    if let Some(s) = obj.get("rope_scaling").filter(|v| !v.is_null()) {
        check_type(s, "rope_scaling")?;
    }
    let mut theta = obj.get("rope_theta").and_then(Value::as_f64);
    if let Some(p) = obj.get("rope_parameters").filter(|v| !v.is_null()) {
        check_type(p, "rope_parameters")?;
        if let Some(t) = p.get("rope_theta").and_then(Value::as_f64) {
            theta = Some(t);
        }
    }
    Ok(theta.unwrap_or(10000.0))
}

fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_u64)
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Qwen3Config> {
        Qwen3Config::from_json_str(s, Path::new("config.json"))
    }

    const RELEASE: &str = r#"{"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3",
        "hidden_size":1024,"intermediate_size":3072,"num_hidden_layers":28,"num_attention_heads":16,
        "num_key_value_heads":8,"head_dim":128,"rms_norm_eps":1e-6,"rope_theta":1000000,
        "rope_scaling":null,"vocab_size":151936,"tie_word_embeddings":true,
        "max_position_embeddings":40960,"torch_dtype":"bfloat16","bos_token_id":151643,"eos_token_id":151645}"#;

    #[test]
    fn release_layout() {
        let c = parse(RELEASE).unwrap();
        assert_eq!(c.head_dim, 128);
        assert_eq!(c.q_dim(), 2048);
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.dtype, Some(DType::BF16));
        assert_eq!(c.eos_token_ids, vec![151645]);
        // Qwen3-0.6B's published size: 0.6B parameters with tied embeddings.
        assert!((590_000_000..=600_000_000).contains(&c.num_parameters()));
    }

    #[test]
    fn transformers5_layout() {
        let s = RELEASE
            .replace(r#""rope_theta":1000000,"#, "")
            .replace(
                r#""rope_scaling":null,"#,
                r#""rope_parameters":{"rope_type":"default","rope_theta":5000.0},"#,
            )
            .replace("torch_dtype", "dtype");
        let c = parse(&s).unwrap();
        assert_eq!(c.rope_theta, 5000.0);
        assert_eq!(c.dtype, Some(DType::BF16));
    }

    #[test]
    fn rejects_moe_and_scaled_rope() {
        let moe = RELEASE.replace("\"qwen3\"", "\"qwen3_moe\"");
        assert!(matches!(parse(&moe), Err(Error::Unsupported(m)) if m.contains("qwen3_moe")));
        let yarn = RELEASE.replace(
            r#""rope_scaling":null"#,
            r#""rope_scaling":{"rope_type":"yarn","factor":4.0}"#,
        );
        assert!(matches!(parse(&yarn), Err(Error::Unsupported(m)) if m.contains("yarn")));
    }

    #[test]
    fn rejects_missing_field_by_name() {
        let s = RELEASE.replace(r#""hidden_size":1024,"#, "");
        assert!(matches!(parse(&s), Err(Error::Config { msg, .. }) if msg.contains("hidden_size")));
    }
}
