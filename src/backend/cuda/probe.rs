//! Library presence checks. cudarc with `dynamic-loading` panics when a library it needs is
//! missing, so every entry point asks here first and turns absence into our own error.

use crate::{Error, Result};

fn missing(what: &str) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: what.to_string(),
    }
}

pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen libnvrtc and reports whether it loaded; no CUDA call is made.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda and reports whether it loaded.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

pub fn cublas_present() -> bool {
    // SAFETY: only tries to dlopen libcublas and reports whether it loaded.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

pub fn require_nvrtc() -> Result<()> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(missing(
            "no NVRTC library (libnvrtc) found; put the CUDA 13.0 wheel's nvidia/cu13/lib on \
             LD_LIBRARY_PATH (scripts/cuda-toolchain.sh)",
        ))
    }
}

pub fn require_driver() -> Result<()> {
    if driver_present() {
        Ok(())
    } else {
        Err(missing("no CUDA driver (libcuda) found"))
    }
}

pub fn require_cublas() -> Result<()> {
    if cublas_present() {
        Ok(())
    } else {
        Err(missing("no cuBLAS library (libcublas) found"))
    }
}

/// The CUDA libraries this process has actually mapped (from /proc/self/maps), by file name:
/// what was loaded, not what a search path suggests. Empty where /proc is unavailable.
pub fn loaded_libraries() -> Vec<(String, String)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let mut found: Vec<(String, String)> = Vec::new();
    for path in maps.lines().filter_map(|l| l.split_whitespace().nth(5)) {
        let Some(file) = path.rsplit('/').next() else {
            continue;
        };
        let cuda = ["libcuda.so", "libcublas", "libnvrtc", "libnvJitLink"]
            .iter()
            .any(|p| file.starts_with(p));
        if cuda && !found.iter().any(|(_, p)| p == path) {
            found.push((file.to_string(), path.to_string()));
        }
    }
    found
}

/// Stub libraries (a CUDA toolkit's `lib/stubs/`) load and then fail every call; a mapped one
/// explains any failure that follows.
pub fn stub_libraries() -> Vec<String> {
    loaded_libraries()
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| p.contains("/stubs/"))
        .collect()
}

/// The driver's CUDA version as (major, minor), e.g. (13, 0) for driver 580.
pub fn driver_version() -> Result<(i32, i32)> {
    require_driver()?;
    let mut v = 0i32;
    // SAFETY: libcuda is present (checked above); cuDriverGetVersion only writes one int and
    // needs no cuInit.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(missing(&format!("cuDriverGetVersion: {r:?}")));
    }
    Ok((v / 1000, (v % 1000) / 10))
}

/// Set to 1 by the GPU check: GPU tests then fail where they would skip, so a broken
/// environment cannot read as a passing run.
pub const REQUIRE_GPU_ENV: &str = "ASYNCTHINK_REQUIRE_GPU";

pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_ENV).is_ok_and(|v| v == "1")
}
