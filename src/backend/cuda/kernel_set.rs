//! Where a backend's kernel images come from: a precompiled set on disk, named by
//! `$ASYNCTHINK_KERNEL_DIR`, or NVRTC at run time (compiled once per process).
//!
//! A precompiled set is what `asyncthink kernels compile --out DIR` writes: per kernel file
//! its PTX (and, when ptxas ran, a cubin), plus `manifest.json` holding a hash of each file's
//! full source. A lent GPU machine then needs neither NVRTC nor `cuda_bf16.h`, and creating a
//! backend costs a module load instead of a compile. A set whose hashes differ from the
//! sources embedded in this binary is refused: running stale kernels would test the wrong
//! code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::compile::{self, KERNELS, KernelFile};
use crate::{Error, Result};

/// The environment variable naming a precompiled set: a directory holding `<arch>/manifest.json`
/// (as `scripts/gpu-pack.sh` lays it out) or a `manifest.json` of its own.
pub const KERNEL_DIR_ENV: &str = "ASYNCTHINK_KERNEL_DIR";

pub const MANIFEST: &str = "manifest.json";

/// One kernel file's loadable image.
#[derive(Debug, Clone)]
pub enum KernelImage {
    /// PTX text: the driver JIT-compiles it for the device.
    Ptx(Arc<str>),
    /// Machine code for exactly the manifest's architecture, with the PTX it was assembled
    /// from: a driver that refuses the cubin (the emulator, which runs PTX only) gets that.
    Cubin { cubin: Arc<[u8]>, ptx: Arc<str> },
}

impl KernelImage {
    pub fn to_cudarc(&self) -> cudarc::nvrtc::Ptx {
        match self {
            KernelImage::Ptx(src) => cudarc::nvrtc::Ptx::from_src(src.to_string()),
            KernelImage::Cubin { cubin, .. } => cudarc::nvrtc::Ptx::from_binary(cubin.to_vec()),
        }
    }

    /// The PTX of this image, as an image of its own.
    pub fn ptx(&self) -> KernelImage {
        match self {
            KernelImage::Ptx(src) | KernelImage::Cubin { ptx: src, .. } => {
                KernelImage::Ptx(src.clone())
            }
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            KernelImage::Ptx(_) => "ptx",
            KernelImage::Cubin { .. } => "cubin",
        }
    }
}

/// Where a backend's kernels came from (reported by `asyncthink gpu-probe`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KernelSource {
    Nvrtc,
    Precompiled { dir: PathBuf, images: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub arch: String,
    /// Hash over every kernel file's name and source hash: equal sets, equal hash.
    pub set_hash: String,
    pub kernels: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub source_hash: String,
    /// File names relative to the manifest's directory.
    pub ptx: String,
    pub cubin: Option<String>,
}

/// 64-bit FNV-1a: a staleness check against our own sources, not a defence against forgery.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Hash of the exact text NVRTC compiles for `k` (shared helpers included).
pub fn source_hash(k: &KernelFile) -> String {
    format!("{:016x}", fnv1a(compile::full_source(k).as_bytes()))
}

pub fn set_hash() -> String {
    let joined: String = KERNELS
        .iter()
        .map(|k| format!("{}={};", k.name, source_hash(k)))
        .collect();
    format!("{:016x}", fnv1a(joined.as_bytes()))
}

/// Writes the manifest for a set of images just compiled into `dir` for `arch`.
pub fn write_manifest(dir: &Path, arch: &str, entries: Vec<ManifestEntry>) -> Result<()> {
    let m = Manifest {
        arch: arch.to_string(),
        set_hash: set_hash(),
        kernels: entries,
    };
    let path = dir.join(MANIFEST);
    std::fs::write(&path, serde_json::to_string_pretty(&m)? + "\n").map_err(|e| Error::io(&path, e))
}

fn stale(dir: &Path, msg: String) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: format!(
            "refusing the precompiled kernels in {} ({KERNEL_DIR_ENV}): {msg}; rebuild them \
             (scripts/gpu-pack.sh, or asyncthink kernels compile --out DIR) or unset \
             {KERNEL_DIR_ENV} to compile with NVRTC",
            dir.display()
        ),
    }
}

/// Reads and checks the precompiled set for `arch` under `root` (`root/<arch>/manifest.json`,
/// else `root/manifest.json`). Every kernel file of this binary must be there with the hash of
/// its current source; a cubin is preferred over PTX when the set has one, and the PTX is read
/// either way (a driver that refuses the cubin loads it), so a set without its PTX is refused.
pub fn load_precompiled(
    root: &Path,
    arch: &str,
) -> Result<Vec<(&'static KernelFile, KernelImage)>> {
    let dir = [root.join(arch), root.to_path_buf()]
        .into_iter()
        .find(|d| d.join(MANIFEST).is_file())
        .ok_or_else(|| stale(root, format!("no {MANIFEST} in {arch}/ or at the top")))?;
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| {
        stale(
            &dir,
            format!("{} is not a kernel manifest: {e}", path.display()),
        )
    })?;
    if m.arch != arch {
        return Err(stale(
            &dir,
            format!("built for {}, the device needs {arch}", m.arch),
        ));
    }
    let mut images = Vec::with_capacity(KERNELS.len());
    for k in KERNELS {
        let e = m
            .kernels
            .iter()
            .find(|e| e.name == k.name)
            .ok_or_else(|| stale(&dir, format!("kernels/{}.cu is missing", k.name)))?;
        let want = source_hash(k);
        if e.source_hash != want {
            return Err(stale(
                &dir,
                format!(
                    "kernels/{}.cu changed since it was built (source hash {} there, {want} in \
                     this binary)",
                    k.name, e.source_hash
                ),
            ));
        }
        let p = dir.join(&e.ptx);
        let ptx: Arc<str> = std::fs::read_to_string(&p)
            .map_err(|err| Error::io(&p, err))?
            .into();
        let image = match &e.cubin {
            Some(f) => {
                let p = dir.join(f);
                let cubin = std::fs::read(&p).map_err(|err| Error::io(&p, err))?.into();
                KernelImage::Cubin { cubin, ptx }
            }
            None => KernelImage::Ptx(ptx),
        };
        images.push((k, image));
    }
    if m.set_hash != set_hash() {
        return Err(stale(&dir, "the set hash differs".into()));
    }
    Ok(images)
}

type PtxCache = Mutex<HashMap<(&'static str, &'static str), Arc<str>>>;

/// NVRTC output of this process, so that a test binary creating many backends compiles each
/// kernel file once.
fn nvrtc_cached(k: &'static KernelFile, arch: &'static str) -> Result<Arc<str>> {
    static CACHE: OnceLock<PtxCache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().map_err(poisoned)?.get(&(k.name, arch)) {
        return Ok(p.clone());
    }
    let include = compile::find_cuda_include()?;
    let ptx: Arc<str> = compile::compile_ptx(k, arch, &include)?.into();
    cache
        .lock()
        .map_err(poisoned)?
        .insert((k.name, arch), ptx.clone());
    Ok(ptx)
}

fn poisoned<T>(_: T) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: "the NVRTC cache lock was poisoned by a panic".into(),
    }
}

/// Every kernel file's image for `arch`: the precompiled set when `$ASYNCTHINK_KERNEL_DIR`
/// names one, else NVRTC.
pub fn images(
    arch: &'static str,
) -> Result<(KernelSource, Vec<(&'static KernelFile, KernelImage)>)> {
    if let Some(root) = std::env::var_os(KERNEL_DIR_ENV).filter(|v| !v.is_empty()) {
        let root = PathBuf::from(root);
        let images = load_precompiled(&root, arch)?;
        let kinds: Vec<&str> = images.iter().map(|(_, i)| i.kind()).collect();
        let summary = if kinds.iter().all(|k| *k == "cubin") {
            "cubin"
        } else if kinds.iter().all(|k| *k == "ptx") {
            "ptx"
        } else {
            "cubin+ptx"
        };
        return Ok((
            KernelSource::Precompiled {
                dir: root,
                images: summary.into(),
            },
            images,
        ));
    }
    let images = KERNELS
        .iter()
        .map(|k| Ok((k, KernelImage::Ptx(nvrtc_cached(k, arch)?))))
        .collect::<Result<Vec<_>>>()?;
    Ok((KernelSource::Nvrtc, images))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A set as `kernels compile` lays it out, with fake PTX (loading it needs no GPU).
    fn write_set(dir: &Path, arch: &str, with_cubin: bool) {
        std::fs::create_dir_all(dir.join(arch)).unwrap();
        let entries = KERNELS
            .iter()
            .map(|k| {
                let ptx = format!("{}.{arch}.ptx", k.name);
                std::fs::write(dir.join(arch).join(&ptx), format!("// {}\n", k.name)).unwrap();
                let cubin = with_cubin.then(|| {
                    let f = format!("{}.{arch}.cubin", k.name);
                    std::fs::write(dir.join(arch).join(&f), [0x7f, b'E', b'L', b'F']).unwrap();
                    f
                });
                ManifestEntry {
                    name: k.name.into(),
                    source_hash: source_hash(k),
                    ptx,
                    cubin,
                }
            })
            .collect();
        write_manifest(&dir.join(arch), arch, entries).unwrap();
    }

    #[test]
    fn a_current_set_loads_preferring_cubins() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "sm_80", false);
        write_set(dir.path(), "sm_90", true);
        let ptx = load_precompiled(dir.path(), "sm_80").unwrap();
        assert_eq!(ptx.len(), KERNELS.len());
        for (k, image) in &ptx {
            match image {
                KernelImage::Ptx(src) => assert_eq!(&**src, format!("// {}\n", k.name)),
                other => panic!("{}: expected PTX, got {}", k.name, other.kind()),
            }
        }
        let cubin = load_precompiled(dir.path(), "sm_90").unwrap();
        assert!(cubin.iter().all(|(_, i)| i.kind() == "cubin"));
        // Each cubin keeps the PTX it came from, for a driver that refuses machine code.
        for (k, image) in &cubin {
            match image.ptx() {
                KernelImage::Ptx(src) => assert_eq!(&*src, format!("// {}\n", k.name)),
                other => panic!("{}: ptx() gave {}", k.name, other.kind()),
            }
        }
        // A flat directory (the manifest at the top) works too.
        assert!(load_precompiled(&dir.path().join("sm_90"), "sm_90").is_ok());
    }

    #[test]
    fn a_stale_or_foreign_set_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_set(dir.path(), "sm_90", false);
        let path = dir.path().join("sm_90").join(MANIFEST);
        let good: Manifest =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();

        let mut changed = good.clone();
        changed.kernels[3].source_hash = "0000000000000000".into();
        std::fs::write(&path, serde_json::to_string(&changed).unwrap()).unwrap();
        let err = load_precompiled(dir.path(), "sm_90")
            .unwrap_err()
            .to_string();
        let name = KERNELS[3].name;
        assert!(err.contains(&format!("kernels/{name}.cu changed")), "{err}");
        assert!(err.contains(KERNEL_DIR_ENV), "{err}");

        let mut missing = good.clone();
        missing.kernels.remove(0);
        std::fs::write(&path, serde_json::to_string(&missing).unwrap()).unwrap();
        let err = load_precompiled(dir.path(), "sm_90")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("kernels/{}.cu is missing", KERNELS[0].name)),
            "{err}"
        );

        std::fs::write(&path, serde_json::to_string(&good).unwrap()).unwrap();
        assert!(load_precompiled(dir.path(), "sm_90").is_ok());
        let err = load_precompiled(&dir.path().join("sm_90"), "sm_80")
            .unwrap_err()
            .to_string();
        assert!(err.contains("built for sm_90"), "{err}");
        let err = load_precompiled(&dir.path().join("nowhere"), "sm_90")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no manifest.json"), "{err}");
    }

    #[test]
    fn hashes_follow_the_sources() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let all: std::collections::HashSet<String> = KERNELS.iter().map(source_hash).collect();
        assert_eq!(
            all.len(),
            KERNELS.len(),
            "distinct sources, distinct hashes"
        );
        assert_eq!(set_hash(), set_hash());
    }
}
