//! `asyncthink gpu-probe`: the GPU check's first step. Opens the device, launches a kernel and
//! a cuBLAS GEMM against the CPU reference, and lists the CUDA libraries really loaded. Exits
//! 1 naming the failed stage, so a broken environment cannot pass as a run of skipped tests.

use std::path::PathBuf;

use clap::Args;

use crate::Result;
use crate::backend::cuda::self_test;

#[derive(Args, Debug)]
pub struct GpuProbeArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Also write the report as JSON here (it is always printed).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(a: GpuProbeArgs) -> Result<()> {
    let report = self_test::run(a.device);
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &a.out {
        crate::util::write_atomic(path, (text + "\n").as_bytes())?;
    }
    report.into_result().map(|_| ())
}
