//! Reading Hugging Face safetensors checkpoints through memmap2: one file
//! (`model.safetensors`) or shards listed by `model.safetensors.index.json`.
//! Every failure names the tensor and the file it came from.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use super::config::DType;
use crate::{Error, Result};

/// A shard's bytes: mapped from disk, compiled into the binary (the embedded default model),
/// or built in memory (random benchmark checkpoints).
enum ShardBytes {
    Mapped(Mmap),
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl std::ops::Deref for ShardBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            ShardBytes::Mapped(m) => m,
            ShardBytes::Static(s) => s,
            ShardBytes::Owned(v) => v,
        }
    }
}

struct Shard {
    path: PathBuf,
    mmap: ShardBytes,
    /// Byte offset where tensor data starts (8-byte length + JSON header).
    data_start: usize,
    metadata: Metadata,
}

/// An opened checkpoint: shards mapped, headers parsed once, tensors read on demand.
pub struct Checkpoint {
    shards: Vec<Shard>,
    /// tensor name -> shard index
    location: HashMap<String, usize>,
    /// What to call the checkpoint in "missing tensor" errors.
    origin: PathBuf,
}

/// A borrowed view of one tensor's bytes in a mapped file.
pub struct HostTensor<'a> {
    pub name: &'a str,
    pub file: &'a Path,
    pub dtype: DType,
    pub shape: Vec<usize>,
    bytes: &'a [u8],
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        if index.exists() {
            Self::open_sharded(&index)
        } else if single.exists() {
            Ok(Self::from_shard(Shard::open(&single)?))
        } else {
            Err(Error::Checkpoint {
                file: dir.to_path_buf(),
                msg: "no model.safetensors or model.safetensors.index.json in this directory"
                    .into(),
            })
        }
    }

    /// One safetensors file, whatever its name (optimizer state, …).
    pub fn open_file(path: &Path) -> Result<Self> {
        let shard = Shard::open(path)?;
        let location = shard
            .metadata
            .tensors()
            .keys()
            .map(|k| (k.clone(), 0))
            .collect();
        Ok(Checkpoint {
            shards: vec![shard],
            location,
            origin: path.to_path_buf(),
        })
    }

    /// A single-file checkpoint held in memory; `name` labels it in errors.
    pub fn from_static(name: &str, bytes: &'static [u8]) -> Result<Self> {
        Self::single(name, ShardBytes::Static(bytes))
    }

    /// A single-file checkpoint built in memory (safetensors bytes); `name` labels it in errors.
    pub fn from_owned(name: &str, bytes: Vec<u8>) -> Result<Self> {
        Self::single(name, ShardBytes::Owned(bytes))
    }

    fn single(name: &str, bytes: ShardBytes) -> Result<Self> {
        Ok(Self::from_shard(Shard::parse(PathBuf::from(name), bytes)?))
    }

    fn from_shard(shard: Shard) -> Self {
        let location = shard
            .metadata
            .tensors()
            .keys()
            .map(|k| (k.clone(), 0))
            .collect();
        Checkpoint {
            origin: shard.path.clone(),
            shards: vec![shard],
            location,
        }
    }

    fn open_sharded(index_path: &Path) -> Result<Self> {
        let dir = index_path.parent().unwrap_or(Path::new("."));
        let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
        let bad = |msg: String| Error::Checkpoint {
            file: index_path.to_path_buf(),
            msg,
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no \"weight_map\" object".into()))?;

        let mut shards = Vec::new();
        let mut shard_of_file: HashMap<String, usize> = HashMap::new();
        let mut location = HashMap::new();
        for (tensor, file) in map {
            let file = file
                .as_str()
                .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a file name")))?;
            if file.contains('/') || file.contains("..") {
                return Err(bad(format!(
                    "weight_map[{tensor:?}] points outside the checkpoint: {file:?}"
                )));
            }
            let idx = match shard_of_file.get(file) {
                Some(&i) => i,
                None => {
                    shards.push(Shard::open(&dir.join(file))?);
                    shard_of_file.insert(file.to_string(), shards.len() - 1);
                    shards.len() - 1
                }
            };
            if shards[idx].metadata.info(tensor).is_none() {
                return Err(Error::Tensor {
                    file: shards[idx].path.clone(),
                    tensor: tensor.clone(),
                    msg: "listed in the index but absent from this shard".into(),
                });
            }
            location.insert(tensor.clone(), idx);
        }
        Ok(Checkpoint {
            shards,
            location,
            origin: index_path.to_path_buf(),
        })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.location.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.location.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<HostTensor<'_>> {
        let (key, &idx) = self
            .location
            .get_key_value(name)
            .ok_or_else(|| Error::Tensor {
                file: self.origin.clone(),
                tensor: name.to_string(),
                msg: "missing from the checkpoint".into(),
            })?;
        let shard = &self.shards[idx];
        let info = shard.metadata.info(name).ok_or_else(|| Error::Tensor {
            file: shard.path.clone(),
            tensor: name.to_string(),
            msg: "missing from the shard".into(),
        })?;
        let err = |msg: String| Error::Tensor {
            file: shard.path.clone(),
            tensor: name.to_string(),
            msg,
        };
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            other => return Err(err(format!("dtype {other:?} (expected F32, F16 or BF16)"))),
        };
        let (start, end) = info.data_offsets;
        // read_metadata already checked offsets against the file length; this keeps the
        // slice safe even if that check ever changes.
        let bytes = shard
            .mmap
            .get(shard.data_start + start..shard.data_start + end)
            .ok_or_else(|| err("data offsets run past the end of the file".into()))?;
        Ok(HostTensor {
            name: key,
            file: &shard.path,
            dtype,
            shape: info.shape.clone(),
            bytes,
        })
    }

    /// `get` plus a shape check, the usual way the model asks for a parameter.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor<'_>> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::Tensor {
                file: t.file.to_path_buf(),
                tensor: name.to_string(),
                msg: format!("shape {:?}, expected {:?}", t.shape, shape),
            });
        }
        Ok(t)
    }
}

impl Shard {
    fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and lives as long as the Checkpoint; a file truncated
        // by another process while mapped would fault, the same contract every mmap loader has.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::parse(path.to_path_buf(), ShardBytes::Mapped(mmap))
    }

    fn parse(path: PathBuf, mmap: ShardBytes) -> Result<Self> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| Error::Checkpoint {
                file: path.clone(),
                msg: format!("not a valid safetensors file (truncated or corrupt?): {e}"),
            })?;
        Ok(Shard {
            path,
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }
}

impl<'a> HostTensor<'a> {
    /// A tensor over little-endian f32 bytes held by the caller (tests, host-built weights).
    pub fn from_f32_bytes(bytes: &'a [u8], shape: Vec<usize>) -> Self {
        HostTensor {
            name: "",
            file: Path::new(""),
            dtype: DType::F32,
            shape,
            bytes,
        }
    }
}

impl HostTensor<'_> {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype {
            DType::F32 => self
                .bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// Only meaningful for BF16 tensors, which keep their exact bits.
    pub fn to_bf16(&self) -> Vec<bf16> {
        match self.dtype {
            DType::BF16 => self
                .bytes
                .chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]))
                .collect(),
            _ => self.to_f32().into_iter().map(bf16::from_f32).collect(),
        }
    }
}
