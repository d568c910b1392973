//! The hard probe that the GPU check runs before anything else (`asyncthink gpu-probe`):
//! driver, backend creation, device, a kernel launch and a cuBLAS GEMM, each checked against
//! the CPU reference. Every stage is recorded, so a failure says which stage and why, and the
//! libraries the process really mapped are listed (a stub libcuda shows up here).

use std::time::Instant;

use half::bf16;
use serde::Serialize;

use super::kernel_set::KernelSource;
use super::{CudaBackend, probe};
use crate::backend::Backend;
use crate::backend::cpu::CpuBackend;
use crate::model::checkpoint::HostTensor;
use crate::{Error, Result};

/// The stages in order; each needs the ones before it.
pub const STAGES: &[&str] = &[
    "driver",
    "backend",
    "device",
    "kernel_launch",
    "cublas_gemm",
];

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub ok: bool,
    /// False for a stage not attempted because an earlier one failed.
    pub ran: bool,
    pub seconds: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SelfTest {
    pub ok: bool,
    pub device: Option<String>,
    pub arch: Option<String>,
    pub driver_cuda_version: Option<String>,
    pub memory_total_bytes: Option<usize>,
    pub kernel_source: Option<KernelSource>,
    /// (file name, path) of every CUDA library mapped into this process.
    pub libraries: Vec<(String, String)>,
    pub stages: Vec<Stage>,
}

impl SelfTest {
    /// The first failed stage as an error, or Ok.
    pub fn into_result(self) -> Result<SelfTest> {
        match self.stages.iter().find(|s| !s.ok) {
            Some(s) => Err(Error::Backend {
                backend: "cuda",
                msg: format!("GPU probe failed at {}: {}", s.name, s.detail),
            }),
            None => Ok(self),
        }
    }

    fn stage<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> Result<(T, String)>,
    ) -> Option<T> {
        let t0 = Instant::now();
        let r = f();
        let seconds = t0.elapsed().as_secs_f64();
        let (ok, detail, value) = match r {
            Ok((v, d)) => (true, d, Some(v)),
            Err(Error::Backend { msg, .. }) => (false, msg, None),
            Err(e) => (false, e.to_string(), None),
        };
        self.stages.push(Stage {
            name,
            ok,
            ran: true,
            seconds,
            detail,
        });
        value
    }
}

/// Deterministic bf16-exact values in [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed ^ 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bf16::from_f32(((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0).to_f32()
        })
        .collect()
}

fn host(data: &[f32], shape: &[usize]) -> Vec<u8> {
    debug_assert_eq!(data.len(), shape.iter().product::<usize>());
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Largest |a − b| / (1 + |b|).
fn worst(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            if x.is_finite() {
                (x - y).abs() / (1.0 + y.abs())
            } else {
                f32::INFINITY
            }
        })
        .fold(0.0, f32::max)
}

/// Runs every stage on device `ordinal`; stops at the first failure (later stages need it)
/// and lists the stages it did not reach as not run.
pub fn run(ordinal: usize) -> SelfTest {
    let mut t = run_stages(ordinal);
    for name in STAGES.iter().skip(t.stages.len()) {
        t.stages.push(Stage {
            name,
            ok: false,
            ran: false,
            seconds: 0.0,
            detail: "not run: an earlier stage failed".into(),
        });
    }
    t.ok = t.stages.iter().all(|s| s.ok);
    t
}

fn run_stages(ordinal: usize) -> SelfTest {
    let mut t = SelfTest::default();
    let driver = t.stage("driver", || {
        let (major, minor) = probe::driver_version()?;
        Ok(((major, minor), format!("CUDA {major}.{minor}")))
    });
    t.driver_cuda_version = driver.map(|(a, b)| format!("{a}.{b}"));
    let be = driver.and_then(|_| {
        t.stage("backend", || {
            let be = CudaBackend::new(ordinal)?;
            let what = format!("{} kernels from {:?}", be.arch(), be.kernel_source());
            Ok((be, what))
        })
    });
    t.libraries = probe::loaded_libraries();
    let Some(be) = be else {
        return t;
    };
    t.arch = Some(be.arch().to_string());
    t.kernel_source = Some(be.kernel_source().clone());
    t.device = t
        .stage("device", || {
            let name = be.device_name()?;
            let (_, total) = be.memory_info()?;
            Ok((
                (name.clone(), total),
                format!("{name}, {} MiB", total >> 20),
            ))
        })
        .map(|(name, total)| {
            t.memory_total_bytes = Some(total);
            name
        });
    if t.device.is_none() {
        return t;
    }

    // A kernel launch: the embedding gather, whose output must equal the table rows exactly.
    let (vocab, d, n) = (64usize, 128usize, 96usize);
    let ids: Vec<u32> = (0..17).map(|i| (i * 7 % vocab) as u32).collect();
    let table = values(vocab * d, 1);
    let table_bytes = host(&table, &[vocab, d]);
    let table_host = HostTensor::from_f32_bytes(&table_bytes, vec![vocab, d]);
    let gathered = t.stage("kernel_launch", || {
        let w = be.load_weight(&table_host)?;
        let x = be.embedding(&w, &ids)?;
        let got = be.to_host(&x)?;
        let want: Vec<f32> = ids
            .iter()
            .flat_map(|&i| table[i as usize * d..(i as usize + 1) * d].iter().copied())
            .collect();
        let err = worst(&got, &want);
        if err != 0.0 {
            return Err(Error::Backend {
                backend: "cuda",
                msg: format!("embedding_gather returned wrong rows (max error {err})"),
            });
        }
        Ok((x, format!("embedding_gather: {} rows exact", ids.len())))
    });
    let Some(x) = gathered else {
        return t;
    };

    // A cuBLAS GEMM (the linear projection) against the CPU's f32 product. Operands are bf16
    // exact and K = 128, so the only difference is the bf16 rounding of the output: 2^-8.
    let proj = values(n * d, 2);
    let proj_bytes = host(&proj, &[n, d]);
    let proj_host = HostTensor::from_f32_bytes(&proj_bytes, vec![n, d]);
    t.stage("cublas_gemm", || {
        let w = be.load_weight(&proj_host)?;
        let got = be.to_host(&be.linear(&x, &w)?)?;
        let cpu = CpuBackend::default();
        let cw = cpu.load_weight(&proj_host)?;
        let cx = cpu.embedding(&cpu.load_weight(&table_host)?, &ids)?;
        let want = cpu.to_host(&cpu.linear(&cx, &cw)?)?;
        let err = worst(&got, &want);
        let tol = 1.0 / 128.0;
        if err > tol {
            return Err(Error::Backend {
                backend: "cuda",
                msg: format!(
                    "linear ({}x{d} by {n}x{d}) differs from the CPU by {err} > {tol}",
                    ids.len()
                ),
            });
        }
        Ok((
            (),
            format!("{}x{n}x{d} bf16 GEMM, max rel error {err:.2e}", ids.len()),
        ))
    });
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage is listed, in order, whether it ran or not; without a GPU the first failure
    /// is named and nothing after it counts as run.
    #[test]
    fn every_stage_is_reported_in_order() {
        let t = run(0);
        let names: Vec<&str> = t.stages.iter().map(|s| s.name).collect();
        assert_eq!(names, STAGES);
        assert_eq!(t.ok, t.stages.iter().all(|s| s.ok));
        if let Some(first) = t.stages.iter().position(|s| !s.ok) {
            assert!(t.stages[first].ran, "the failed stage ran");
            assert!(t.stages[first + 1..].iter().all(|s| !s.ran && !s.ok));
            let err = t.clone().into_result().unwrap_err().to_string();
            assert!(err.contains(t.stages[first].name), "{err}");
        }
    }

    #[test]
    fn worst_counts_non_finite_as_failure() {
        assert_eq!(worst(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!(worst(&[f32::NAN], &[1.0]).is_infinite());
        assert!((worst(&[3.0], &[1.0]) - 1.0).abs() < 1e-6);
    }
}
