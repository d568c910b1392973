//! Reading Hugging Face safetensors checkpoints through memmap2: one file
//! (`model.safetensors`) or shards listed by `model.safetensors.index.json`.
//! Every failure names the tensor and the file it came from.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors, tensor::Metadata};

use super::config::DType;
use crate::{Error, Result};

/// Whether loading a model checks each weight for NaN and Inf (`HostTensor::check_finite`).
/// Process-wide, like the rayon pool, so every load path (resume, reference models, the
/// embedded default) honours `--skip-weight-check` without a flag threaded through each.
static CHECK_WEIGHTS: AtomicBool = AtomicBool::new(true);

/// Turns the load-time weight check on (the default) or off for this process.
pub fn set_weight_check(on: bool) {
    CHECK_WEIGHTS.store(on, Ordering::Relaxed);
}

pub fn weight_check() -> bool {
    CHECK_WEIGHTS.load(Ordering::Relaxed)
}

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

fn elem_size(dtype: DType) -> usize {
    match dtype {
        DType::F32 => 4,
        DType::F16 | DType::BF16 => 2,
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

    /// The first element that is NaN or ±Inf. Reads exponent bits in place (all ones means
    /// not finite, in every float format), eight bytes at a time, chunks in parallel: one
    /// pass over the mapped bytes, cheap next to converting and uploading them.
    pub fn first_non_finite(&self) -> Option<usize> {
        use rayon::prelude::*;
        const CHUNK: usize = 1 << 16;
        // Per lane of a little-endian u64: (x & exponent) + one exponent ulp carries into
        // the lane's top bit exactly when the exponent is all ones; lanes cannot carry
        // into each other, since (x & exponent) + ulp <= top bit.
        let (exponent, ulp, top): (u64, u64, u64) = match self.dtype {
            DType::F32 => (0x7f80_0000, 0x0080_0000, 0x8000_0000),
            DType::F16 => (0x7c00, 0x0400, 0x8000),
            DType::BF16 => (0x7f80, 0x0080, 0x8000),
        };
        let size = elem_size(self.dtype);
        let lanes = |x: u64| (0..8 / size).fold(0, |acc, l| acc | x << (l * size * 8));
        let (exponent, ulp, top) = (lanes(exponent), lanes(ulp), lanes(top));
        let hit = |w: &[u8]| {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            ((u64::from_le_bytes(b) & exponent) + ulp) & top != 0
        };
        self.bytes
            .par_chunks(CHUNK * size)
            .enumerate()
            .find_map_first(|(c, chunk)| {
                // A branch-free sweep first; the position only when something is there.
                let any = chunk.chunks(8).fold(false, |acc, w| acc | hit(w));
                any.then(|| chunk.chunks_exact(size).position(hit))
                    .flatten()
                    .map(|i| c * CHUNK + i)
            })
    }

    /// An error naming the tensor, its file and the first NaN/Inf element, if there is one.
    pub fn check_finite(&self) -> Result<()> {
        let Some(flat) = self.first_non_finite() else {
            return Ok(());
        };
        let mut index = vec![0; self.shape.len()];
        let mut rest = flat;
        for (i, &d) in self.shape.iter().enumerate().rev() {
            index[i] = rest % d.max(1);
            rest /= d.max(1);
        }
        let value = self.to_f32_at(flat);
        Err(Error::Tensor {
            file: self.file.to_path_buf(),
            tensor: self.name.to_string(),
            msg: format!(
                "element {index:?} is {value}: the weights are corrupt (--skip-weight-check \
                 loads them anyway)"
            ),
        })
    }

    fn to_f32_at(&self, i: usize) -> f32 {
        let size = elem_size(self.dtype);
        let b = &self.bytes[i * size..(i + 1) * size];
        match self.dtype {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(dtype: DType, bytes: &[u8], n: usize) -> HostTensor<'_> {
        HostTensor {
            name: "w",
            file: Path::new("f"),
            dtype,
            shape: vec![n],
            bytes,
        }
    }

    #[test]
    fn non_finite_elements_are_found_in_every_dtype_and_finite_extremes_pass() {
        let n = 70_001; // past one parallel chunk, and not a multiple of a u64's lanes
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for at in [0, 3, 65_536, n - 1] {
                let mut v = vec![f32::MAX; n];
                v[1] = f32::MIN_POSITIVE / 4.0;
                v[at] = bad;
                let f32s: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                let f16s: Vec<u8> = v
                    .iter()
                    .map(|&x| if x.is_finite() { 65504.0 } else { x })
                    .flat_map(|x| f16::from_f32(x).to_le_bytes())
                    .collect();
                let bf16s: Vec<u8> = v
                    .iter()
                    .map(|&x| {
                        if x.is_finite() {
                            bf16::MAX
                        } else {
                            bf16::from_f32(x)
                        }
                    })
                    .flat_map(|x| x.to_le_bytes())
                    .collect();
                for (dtype, bytes) in [
                    (DType::F32, &f32s),
                    (DType::F16, &f16s),
                    (DType::BF16, &bf16s),
                ] {
                    let t = tensor(dtype, bytes, n);
                    assert_eq!(t.first_non_finite(), Some(at), "{dtype:?} {bad} at {at}");
                }
            }
        }
        let clean: Vec<u8> = [1.0f32, -3e38, 0.0, -0.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(tensor(DType::F32, &clean, 4).first_non_finite(), None);
        let mut m = vec![0u8; 12];
        m[8..].copy_from_slice(&f32::NAN.to_le_bytes());
        let t = HostTensor {
            shape: vec![1, 3],
            ..tensor(DType::F32, &m, 3)
        };
        let err = t.check_finite().unwrap_err().to_string();
        assert!(
            err.contains("tensor w") && err.contains("[0, 2] is NaN"),
            "{err}"
        );
    }
}
