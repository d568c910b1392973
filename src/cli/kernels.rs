//! `asyncthink kernels compile`: every CUDA kernel through the same NVRTC path the backend
//! uses at run time, for a named architecture; no GPU needed. Writes the PTX, checks its ISA
//! version, and with ptxas at hand reports registers, shared memory and spills per entry
//! point, failing when an attention or norm kernel spills. The output directory, with its
//! `manifest.json`, is a precompiled set the backend loads through `$ASYNCTHINK_KERNEL_DIR`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use crate::backend::cuda::compile::{self, KERNELS};
use crate::backend::cuda::kernel_set::{self, ManifestEntry};
use crate::backend::cuda::ptxas;
use crate::{Error, Result};

#[derive(Subcommand, Debug)]
pub enum KernelsCommand {
    /// Compile every kernel with NVRTC; write PTX and a resource report.
    Compile(CompileArgs),
}

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// Target architecture (sm_80, sm_86, sm_89, sm_90).
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Directory for the PTX (and cubins, when ptxas runs).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a JSON report (PTX version, resources per entry point).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// ptxas to assemble the PTX with (default: $CUDA_BIN, beside the CUDA headers, or PATH).
    #[arg(long)]
    pub ptxas: Option<PathBuf>,
    /// Compile the .cu files (and common.cuh) of this directory instead of the embedded
    /// kernels, through the same NVRTC path: for trying a kernel edit, or the deliberately
    /// broken kernels of scripts/mutation-check.sh, on the emulator. No manifest is written,
    /// so the backend never loads such a set as the real one.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

pub fn run(cmd: KernelsCommand) -> Result<()> {
    match cmd {
        KernelsCommand::Compile(a) => compile_all(a),
    }
}

fn compile_all(a: CompileArgs) -> Result<()> {
    let arch = compile::parse_arch(&a.arch)?;
    let include = compile::find_cuda_include()?;
    let out_dir = a
        .out
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("asyncthink-ptx-{arch}")));
    std::fs::create_dir_all(&out_dir).map_err(|e| Error::io(&out_dir, e))?;
    let ptxas_bin = a
        .ptxas
        .clone()
        .or_else(|| ptxas::find_ptxas(Some(&include)));

    let mut entries = Vec::new();
    let mut manifest = Vec::new();
    let mut spilled = Vec::new();
    let edited_common = match &a.source {
        Some(dir) => Some(read_source(&dir.join("common.cuh"))?),
        None => None,
    };
    for k in KERNELS {
        let ptx = match (&a.source, &edited_common) {
            (Some(dir), Some(common)) => {
                let source = read_source(&dir.join(format!("{}.cu", k.name)))?;
                compile::compile_ptx_from(k, common, &source, arch, &include)?
            }
            _ => compile::compile_ptx(k, arch, &include)?,
        };
        let ptx_name = format!("{}.{arch}.ptx", k.name);
        let file = out_dir.join(&ptx_name);
        std::fs::write(&file, &ptx).map_err(|e| Error::io(&file, e))?;
        let version = compile::ptx_version(&ptx).unwrap_or_default();
        let resources = match &ptxas_bin {
            Some(bin) => ptxas::run(bin, &file, arch)?,
            None => Vec::new(),
        };
        for r in &resources {
            println!(
                "{arch}  {:<18} {:<24} regs {:>3}  smem {:>6} B  stack {:>3} B  spill st/ld {}/{} B",
                k.name,
                r.function,
                r.registers,
                r.smem_bytes,
                r.stack_bytes,
                r.spill_store_bytes,
                r.spill_load_bytes
            );
            if k.no_spill && r.spills() {
                spilled.push(format!("{}::{}", k.name, r.function));
            }
        }
        let cubin = file.with_extension("cubin");
        manifest.push(ManifestEntry {
            name: k.name.into(),
            source_hash: kernel_set::source_hash(k),
            ptx: ptx_name,
            cubin: (ptxas_bin.is_some() && cubin.is_file())
                .then(|| format!("{}.{arch}.cubin", k.name)),
        });
        if resources.is_empty() {
            println!(
                "{arch}  {:<18} PTX {}.{} (no ptxas: resources not measured)",
                k.name, version.0, version.1
            );
        }
        entries.push(json!({
            "file": format!("kernels/{}.cu", k.name),
            "functions": k.functions,
            "ptx_version": format!("{}.{}", version.0, version.1),
            "ptx_bytes": ptx.len(),
            "no_spill_required": k.no_spill,
            "resources": resources,
        }));
    }
    // The set a GPU machine can load with $ASYNCTHINK_KERNEL_DIR instead of running NVRTC;
    // an edited set (--source) has no manifest, so it cannot pass for the embedded one.
    if a.source.is_none() {
        kernel_set::write_manifest(&out_dir, arch, manifest)?;
    } else {
        // A manifest left from the real set would vouch for the edited one.
        let stale = out_dir.join("manifest.json");
        if stale.exists() {
            std::fs::remove_file(&stale).map_err(|e| Error::io(&stale, e))?;
        }
    }
    if let Some(path) = &a.report {
        let report = json!({
            "arch": arch,
            "commit": env!("ASYNCTHINK_COMMIT"),
            "kernel_set_hash": kernel_set::set_hash(),
            "compiler": "NVRTC (run-time path), ptxas -v for resources",
            "kernels": entries,
        });
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))?;
    }
    if !spilled.is_empty() {
        return Err(Error::Backend {
            backend: "cuda",
            msg: format!(
                "{arch}: attention/norm kernels spill registers: {}",
                spilled.join(", ")
            ),
        });
    }
    eprintln!(
        "{} kernel files compiled for {arch}; PTX in {}",
        KERNELS.len(),
        out_dir.display()
    );
    Ok(())
}

fn read_source(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}
