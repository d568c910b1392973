//! Writing a model back as a Hugging Face checkpoint (config.json, model.safetensors,
//! tokenizer files) that transformers loads, atomically: the directory appears whole
//! under its final name or not at all.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

use super::Qwen3;
use crate::backend::TrainBackend;
use crate::{Error, Result};

/// Extra files to write beside the weights (tokenizer.json, optimizer state, …): name → bytes.
pub type ExtraFiles = Vec<(String, Vec<u8>)>;

/// config.json in the Qwen3 release layout, for the weights as saved (float32).
pub fn config_json<B: TrainBackend>(model: &Qwen3<B>) -> serde_json::Value {
    let c = &model.config;
    json!({
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": null,
        "vocab_size": c.vocab_size,
        "tie_word_embeddings": c.tie_word_embeddings,
        "max_position_embeddings": c.max_position_embeddings,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "use_sliding_window": false,
        "torch_dtype": "float32",
        "bos_token_id": c.bos_token_id,
        "eos_token_id": match c.eos_token_ids.as_slice() {
            [one] => json!(one),
            many => json!(many),
        },
    })
}

/// Writes named f32 tensors as a safetensors file, with the `format: pt` metadata
/// transformers wants, straight from the tensors (no second copy in memory), and syncs it.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(n, s, d)| {
            TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice::<f32, u8>(d))
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::InvalidInput(format!("tensor {n}: {e}")))
        })
        .collect::<Result<HashMap<_, _>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| match e {
        safetensors::SafeTensorError::IoError(io) => Error::io(path, io),
        e => Error::InvalidInput(format!("writing {}: {e}", path.display())),
    })?;
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Saves weights (f32: the training master copy, so a resumed run continues exactly),
/// config.json and `extra` files into `dir`, replacing it atomically.
pub fn save_checkpoint<B: TrainBackend>(
    model: &Qwen3<B>,
    dir: &Path,
    extra: &ExtraFiles,
) -> Result<()> {
    save_checkpoint_with(model, dir, extra, |_| Ok(()))
}

/// `save_checkpoint`, then `more` writes its own files into the directory before it is
/// swapped in. Each file's bytes exist only while it is written: a Qwen3-0.6B training
/// checkpoint (3 GB of f32 weights, 6 GB of AdamW moments) needs 6 GB beside the trainer,
/// not the 18 GB it took when every file was built first.
pub fn save_checkpoint_with<B: TrainBackend>(
    model: &Qwen3<B>,
    dir: &Path,
    extra: &ExtraFiles,
    more: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    write_dir_atomic_with(dir, |tmp| {
        let mut tensors = Vec::new();
        for (name, w) in model.parameters() {
            tensors.push((
                name,
                model.backend.weight_shape(w),
                model.backend.weight_to_host(w)?,
            ));
        }
        write_safetensors(&tmp.join("model.safetensors"), &tensors)?;
        drop(tensors);
        write_file(
            tmp,
            "config.json",
            &serde_json::to_vec_pretty(&config_json(model))?,
        )?;
        for (name, bytes) in extra {
            write_file(tmp, name, bytes)?;
        }
        more(tmp)
    })
}

/// Writes and syncs `dir/name`.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&path, e))
}

/// Writes every file into a temporary sibling directory, syncs it, then swaps it in.
pub fn write_dir_atomic(dir: &Path, files: &ExtraFiles) -> Result<()> {
    write_dir_atomic_with(dir, |tmp| {
        files
            .iter()
            .try_for_each(|(name, bytes)| write_file(tmp, name, bytes))
    })
}

/// `fill` writes the files into a temporary sibling directory, which is then swapped in.
pub fn write_dir_atomic_with(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let parent = dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = dir
        .file_name()
        .ok_or_else(|| Error::InvalidInput(format!("{} is not a directory path", dir.display())))?;
    let tmp = parent.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // The files' names reach the disk before the swap, and the swap itself after it, so a
    // power cut leaves the old directory or the new one, each whole.
    sync_dir(&tmp)?;
    // A directory cannot be renamed over a non-empty one. Linux swaps the two in one step,
    // so `dir` is never missing; the temporary name then holds the old copy.
    if dir.exists() && exchange(&tmp, dir).map_err(|e| Error::io(dir, e))? {
        sync_dir(parent)?;
        let _ = std::fs::remove_dir_all(&tmp);
        return Ok(());
    }
    // Elsewhere the old copy moves aside first. A kill between the two renames leaves
    // `dir` missing and `.NAME.oldPID` whole; the next training run in this directory puts
    // it back (train::run_dir::clean_stale), or move it back by hand.
    let old = parent.join(format!(
        ".{}.old{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| Error::io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))?;
    sync_dir(parent)?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// fsync of a directory: makes the names in it (new files, renames) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Swaps two existing paths atomically (renameat2 with RENAME_EXCHANGE). Ok(false) where the
/// kernel or the filesystem cannot, for the caller to fall back to two renames.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let a = CString::new(a.as_os_str().as_bytes())?;
    let b = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated paths that outlive the call; AT_FDCWD resolves them
    // as rename(2) would. The call only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // Old kernels (ENOSYS) and filesystems without the flag (EINVAL).
        Some(libc::ENOSYS | libc::EINVAL | libc::EOPNOTSUPP) => Ok(false),
        _ => Err(e),
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<bool> {
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacing_a_directory_swaps_it_whole_and_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("final");
        let file = |b: &str| vec![("a.txt".to_string(), b.as_bytes().to_vec())];
        write_dir_atomic(&dir, &file("one")).unwrap();
        write_dir_atomic(&dir, &file("two")).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only final/ remains: {names:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn exchange_swaps_two_directories_in_one_step() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("new"), "").unwrap();
        // tmpfs, ext4, xfs and btrfs support the flag; elsewhere the fallback runs.
        if exchange(&a, &b).unwrap() {
            assert!(b.join("new").exists() && !a.join("new").exists());
        }
    }
}
