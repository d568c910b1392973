//! Resource usage of compiled kernels, read from `ptxas -v` (registers, shared memory,
//! stack and spills per entry point), for the CI check and docs/kernels.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub function: String,
    pub registers: u32,
    pub smem_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

impl Resources {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }
}

/// ptxas from $CUDA_BIN, beside the include directory (the wheel's `cu13/bin`), or PATH.
pub fn find_ptxas(include: Option<&Path>) -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Some(b) = std::env::var_os("CUDA_BIN") {
        c.push(PathBuf::from(b).join("ptxas"));
    }
    if let Some(i) = include.and_then(Path::parent) {
        c.push(i.join("bin/ptxas"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        c.extend(std::env::split_paths(&path).map(|d| d.join("ptxas")));
    }
    c.into_iter().find(|p| p.is_file())
}

/// Assembles `ptx_file` for `arch` with `-v` and returns each entry point's resources.
pub fn run(ptxas: &Path, ptx_file: &Path, arch: &str) -> Result<Vec<Resources>> {
    let out_file = ptx_file.with_extension("cubin");
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(ptx_file)
        .arg("-o")
        .arg(&out_file)
        .output()
        .map_err(|e| Error::io(ptxas, e))?;
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Backend {
            backend: "cuda",
            msg: format!("ptxas failed on {}: {text}", ptx_file.display()),
        });
    }
    Ok(parse(&text))
}

/// Parses `ptxas -v` output:
/// ```text
/// ptxas info    : Compiling entry function 'rms_norm' for 'sm_90'
/// ptxas info    : Function properties for rms_norm
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 15 registers, used 1 barriers, 128 bytes smem, 380 bytes cmem[0]
/// ```
pub fn parse(text: &str) -> Vec<Resources> {
    let mut out: Vec<Resources> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default();
            out.push(Resources {
                function: name.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        if line.contains("stack frame") {
            cur.stack_bytes = number_before(line, "bytes stack frame");
            cur.spill_store_bytes = number_before(line, "bytes spill stores");
            cur.spill_load_bytes = number_before(line, "bytes spill loads");
        } else if line.contains("Used ") && line.contains("registers") {
            cur.registers = number_before(line, "registers");
            cur.smem_bytes = number_before(line, "bytes smem");
        }
    }
    out
}

/// The integer just before `unit` in `line` (0 when absent).
fn number_before(line: &str, unit: &str) -> u32 {
    line.split(unit)
        .next()
        .filter(|head| head.len() < line.len())
        .and_then(|head| head.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_verbose_output() {
        let text = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'attention_decode' for 'sm_90'\n\
ptxas info    : Function properties for attention_decode\n\
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n\
ptxas info    : Used 123 registers, used 1 barriers, 16640 bytes smem, 452 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'swiglu' for 'sm_90'\n\
ptxas info    : Function properties for swiglu\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 16 registers, used 0 barriers, 380 bytes cmem[0]\n";
        let r = parse(text);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            Resources {
                function: "attention_decode".into(),
                registers: 123,
                smem_bytes: 16640,
                stack_bytes: 8,
                spill_store_bytes: 4,
                spill_load_bytes: 12,
            }
        );
        assert!(r[0].spills());
        assert_eq!((r[1].registers, r[1].smem_bytes), (16, 0));
        assert!(!r[1].spills());
    }
}
