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
