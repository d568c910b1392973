//! The kernels' run-time compile path: the .cu sources of `kernels/` are embedded in the
//! binary and compiled by NVRTC for the device at hand (and, through `asyncthink kernels
//! compile`, for sm_90 and sm_80 in CI, where there is no GPU). Only the CUDA headers
//! (`cuda_bf16.h`) and libnvrtc are needed, never a CUDA toolkit install.

use std::path::{Path, PathBuf};

use super::probe;
use crate::{Error, Result};

/// One kernel file: the ops it defines and the entry points (`extern "C"` names).
#[derive(Debug, Clone, Copy)]
pub struct KernelFile {
    pub name: &'static str,
    pub source: &'static str,
    pub functions: &'static [&'static str],
    /// Attention, norm and sampling kernels must not spill registers (the CI check fails if
    /// they do).
    pub no_spill: bool,
}

/// Prepended to every kernel (shared helpers; see kernels/common.cuh).
pub const COMMON: &str = include_str!("../../../kernels/common.cuh");

pub const KERNELS: &[KernelFile] = &[
    KernelFile {
        name: "embedding",
        source: include_str!("../../../kernels/embedding.cu"),
        functions: &["embedding_gather", "embedding_backward"],
        no_spill: false,
    },
    KernelFile {
        name: "rmsnorm",
        source: include_str!("../../../kernels/rmsnorm.cu"),
        functions: &[
            "rms_norm",
            "add_rms_norm",
            "add_assign",
            "rms_norm_backward",
            "colsum_accumulate",
        ],
        no_spill: true,
    },
    KernelFile {
        name: "qk_norm_rope",
        source: include_str!("../../../kernels/qk_norm_rope.cu"),
        functions: &["qk_norm_rope", "write_kv", "qk_norm_rope_backward"],
        no_spill: true,
    },
    KernelFile {
        name: "swiglu",
        source: include_str!("../../../kernels/swiglu.cu"),
        functions: &["swiglu", "swiglu_backward"],
        no_spill: false,
    },
    KernelFile {
        name: "attention_decode",
        source: include_str!("../../../kernels/attention_decode.cu"),
        functions: &[
            "attention_decode_g1",
            "attention_decode_g2",
            "attention_decode_g4",
            "attention_decode_g8",
            "attention_decode_reduce",
        ],
        no_spill: true,
    },
    KernelFile {
        name: "attention_prefill",
        source: include_str!("../../../kernels/attention_prefill.cu"),
        functions: &["attention_prefill_d64", "attention_prefill_d128"],
        no_spill: true,
    },
    KernelFile {
        name: "attention_varlen",
        source: include_str!("../../../kernels/attention_varlen.cu"),
        functions: &[
            "attention_varlen_fwd",
            "attention_varlen_row_dot",
            "attention_varlen_bwd_dq",
            "attention_varlen_bwd_dkdv",
        ],
        no_spill: true,
    },
    KernelFile {
        name: "cross_entropy",
        source: include_str!("../../../kernels/cross_entropy.cu"),
        functions: &["ce_chunk_stats", "ce_chunk_grad", "ce_scatter_rows"],
        no_spill: false,
    },
    KernelFile {
        name: "adamw",
        source: include_str!("../../../kernels/adamw.cu"),
        functions: &["adamw", "sq_norm_partials"],
        no_spill: false,
    },
    KernelFile {
        name: "sampling",
        source: include_str!("../../../kernels/sampling.cu"),
        functions: &["repetition_penalty", "sample", "token_logprob"],
        no_spill: true,
    },
];

/// The newest PTX ISA we ship: CUDA 13.0's. The lent GPUs' driver (580) reads no newer.
pub const MAX_PTX_VERSION: (u32, u32) = (9, 0);

/// Architectures the compile path accepts (NVRTC wants a `&'static str`).
pub const ARCHS: &[&str] = &["sm_80", "sm_86", "sm_89", "sm_90"];

pub fn parse_arch(arch: &str) -> Result<&'static str> {
    ARCHS.iter().copied().find(|a| *a == arch).ok_or_else(|| {
        Error::InvalidInput(format!(
            "unknown arch {arch:?}; one of {}",
            ARCHS.join(", ")
        ))
    })
}

fn cuda_err(msg: String) -> Error {
    Error::Backend {
        backend: "cuda",
        msg,
    }
}

/// Where `cuda_bf16.h` lives: $ASYNCTHINK_CUDA_INCLUDE, $CUDA_HOME/include,
/// $CUDA_PATH/include, /usr/local/cuda/include, or the PyPI wheel's `nvidia/cu13/include`
/// under ./.cuda-venv or $VIRTUAL_ENV (scripts/cuda-toolchain.sh installs it there).
pub fn find_cuda_include() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("ASYNCTHINK_CUDA_INCLUDE") {
        candidates.push(p.into());
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = std::env::var_os(var) {
            candidates.push(PathBuf::from(p).join("include"));
        }
    }
    candidates.push("/usr/local/cuda/include".into());
    let mut venvs = vec![PathBuf::from(".cuda-venv")];
    if let Some(p) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(p.into());
    }
    for venv in venvs {
        if let Ok(entries) = std::fs::read_dir(venv.join("lib")) {
            for e in entries.flatten() {
                candidates.push(e.path().join("site-packages/nvidia/cu13/include"));
            }
        }
    }
    candidates
        .iter()
        .find(|p| p.join("cuda_bf16.h").is_file())
        .cloned()
        .ok_or_else(|| {
            cuda_err(format!(
                "cuda_bf16.h not found (looked in {}); set ASYNCTHINK_CUDA_INCLUDE or run \
                 scripts/cuda-toolchain.sh",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The full text NVRTC compiles: the shared helpers, then the kernel file (a `#line`
/// directive keeps compiler messages pointing at the kernel file's own lines).
pub fn full_source(k: &KernelFile) -> String {
    source_text(k.name, COMMON, k.source)
}

fn source_text(name: &str, common: &str, source: &str) -> String {
    format!("{common}\n#line 1 \"kernels/{name}.cu\"\n{source}")
}

/// Compiles one kernel file to PTX for `arch` and checks its PTX ISA version.
pub fn compile_ptx(k: &KernelFile, arch: &'static str, include: &Path) -> Result<String> {
    compile_text(k.name, full_source(k), arch, include)
}

/// Compiles an edited copy of kernel file `k.name` (`common` and `source` read from
/// elsewhere) through the same NVRTC options: how a kernel change, or a deliberately broken
/// kernel of the mutation check, is compiled before it is tried on the emulator.
pub fn compile_ptx_from(
    k: &KernelFile,
    common: &str,
    source: &str,
    arch: &'static str,
    include: &Path,
) -> Result<String> {
    compile_text(k.name, source_text(k.name, common, source), arch, include)
}

fn compile_text(name: &str, text: String, arch: &'static str, include: &Path) -> Result<String> {
    probe::require_nvrtc()?;
    let opts = cudarc::nvrtc::CompileOptions {
        arch: Some(arch),
        include_paths: vec![include.display().to_string()],
        name: Some(format!("{name}.cu")),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(text, opts)
        .map_err(|e| {
            cuda_err(format!(
                "NVRTC failed on kernels/{name}.cu: {}",
                describe(&e)
            ))
        })?
        .to_src();
    check_ptx_version(name, &ptx)?;
    Ok(ptx)
}

fn describe(e: &cudarc::nvrtc::CompileError) -> String {
    match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => log.to_string_lossy().into(),
        other => format!("{other:?}"),
    }
}

/// The `.version X.Y` line of a PTX text.
pub fn ptx_version(ptx: &str) -> Option<(u32, u32)> {
    let line = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version"))?;
    let (major, minor) = line.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn check_ptx_version(name: &str, ptx: &str) -> Result<()> {
    let v = ptx_version(ptx)
        .ok_or_else(|| cuda_err(format!("kernels/{name}.cu: PTX has no .version line")))?;
    if v > MAX_PTX_VERSION {
        return Err(cuda_err(format!(
            "kernels/{name}.cu: PTX .version {}.{} is newer than {}.{} (CUDA 13.0), which the \
             driver may not read; use the CUDA 13.0 NVRTC (scripts/cuda-toolchain.sh)",
            v.0, v.1, MAX_PTX_VERSION.0, MAX_PTX_VERSION.1
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptx_version_is_parsed_and_bounded() {
        let ptx = "//\n// Generated by NVIDIA NVVM Compiler\n.version 9.0\n.target sm_90\n";
        assert_eq!(ptx_version(ptx), Some((9, 0)));
        assert!(check_ptx_version("x", ptx).is_ok());
        assert!(check_ptx_version("x", ".version 9.5\n").is_err());
        assert!(check_ptx_version("x", ".target sm_90\n").is_err());
    }

    #[test]
    fn every_declared_entry_point_is_defined_in_its_file() {
        for k in KERNELS {
            for f in k.functions {
                assert!(
                    k.source.contains(&format!("{f}(")),
                    "kernels/{}.cu does not define {f}",
                    k.name
                );
            }
        }
    }

    #[test]
    fn unknown_arch_is_an_error() {
        assert_eq!(parse_arch("sm_90").unwrap(), "sm_90");
        assert!(parse_arch("sm_100a").is_err());
    }
}
