//! `CudaBackend`: one device, one stream, a cuBLAS handle and every kernel loaded once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUresult;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtrMut, DeviceRepr, DriverError,
    LaunchConfig,
};
use half::bf16;

use super::graphs::{ActiveStep, GraphState};
use super::kernel_set::{self, KernelImage, KernelSource};
use super::probe;
use crate::{Error, Result};

pub(super) fn cuda_err(msg: impl std::fmt::Display) -> Error {
    Error::Backend {
        backend: "cuda",
        msg: msg.to_string(),
    }
}

/// The CUDA backend. Cloning shares the device state.
#[derive(Clone)]
pub struct CudaBackend {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlas,
    pub funcs: HashMap<&'static str, CudaFunction>,
    pub arch: &'static str,
    pub sm_count: usize,
    pub kernel_source: KernelSource,
    /// Tests: fill every fresh buffer with NaN, so an element a kernel forgets shows up
    /// (not inside a graph capture, where nothing may be uploaded).
    pub poison: AtomicBool,
    /// cuBLAS's workspace, set explicitly so that a GEMM inside a graph capture never
    /// allocates (and eager GEMMs use the same one, hence the same algorithms).
    pub _blas_workspace: CudaSlice<u8>,
    /// Captured decode graphs per bucket (graphs.rs).
    pub graphs: Mutex<GraphState>,
    /// The graph step in progress, whose persistent metadata the ops read.
    pub active: Mutex<Option<ActiveStep>>,
}

/// cuBLAS's recommended workspace on Hopper (4 MiB suffices before it).
const BLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// The NVRTC target for a compute capability: the newest one we build for that it runs.
fn arch_for(major: i32, minor: i32) -> Result<&'static str> {
    Ok(match (major, minor) {
        (9.., _) => "sm_90",
        (8, 9) => "sm_89",
        (8, 6..=8) => "sm_86",
        (8, _) => "sm_80",
        _ => {
            return Err(cuda_err(format!(
                "compute capability {major}.{minor} is older than 8.0 (bf16 tensor paths need sm_80+)"
            )));
        }
    })
}

impl CudaBackend {
    /// Opens device `ordinal` and loads every kernel for it: from the precompiled set that
    /// `$ASYNCTHINK_KERNEL_DIR` names, else compiled by NVRTC (once per process).
    /// A missing driver, device, NVRTC or cuBLAS is an error, never a panic.
    pub fn new(ordinal: usize) -> Result<Self> {
        probe::require_driver()?;
        let count = CudaContext::device_count().map_err(|e| {
            let stubs = probe::stub_libraries();
            let why = if stubs.is_empty() {
                String::new()
            } else {
                format!(
                    "; stub libraries were loaded instead of the driver's: {}",
                    stubs.join(", ")
                )
            };
            cuda_err(format!("no CUDA device ({e:?}){why}"))
        })?;
        if ordinal >= count.max(0) as usize {
            return Err(cuda_err(format!(
                "no CUDA device {ordinal} ({count} device(s) present)"
            )));
        }
        probe::require_cublas()?;
        let ctx = CudaContext::new(ordinal).map_err(|e| cuda_err(format!("{e:?}")))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| cuda_err(format!("{e:?}")))?;
        let arch = arch_for(major, minor)?;
        let sm_count = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            )
            .map_err(|e| cuda_err(format!("{e:?}")))? as usize;
        let (mut kernel_source, images) = kernel_set::images(arch)?;
        let mut funcs = HashMap::new();
        let mut refused_cubins = Vec::new();
        for (k, image) in images {
            let load = |image: &KernelImage| {
                ctx.load_module(image.to_cudarc()).map_err(|e| {
                    let what = format!("loading kernels/{}.cu ({}): {e:?}", k.name, image.kind());
                    (e, what)
                })
            };
            let module = match load(&image) {
                Ok(m) => m,
                // A driver that cannot take the machine code (the PTX emulator runs PTX only)
                // JIT-compiles the same kernels from the PTX they were assembled from.
                Err((DriverError(code), refused))
                    if image.kind() == "cubin"
                        && matches!(
                            code,
                            CUresult::CUDA_ERROR_INVALID_IMAGE
                                | CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU
                        ) =>
                {
                    refused_cubins.push(k.name);
                    load(&image.ptx())
                        .map_err(|(_, what)| cuda_err(format!("{refused}; then {what}")))?
                }
                Err((_, what)) => return Err(cuda_err(what)),
            };
            for f in k.functions {
                let func = module
                    .load_function(f)
                    .map_err(|e| cuda_err(format!("kernel {f}: {e:?}")))?;
                funcs.insert(*f, func);
            }
        }
        if let (KernelSource::Precompiled { images, .. }, false) =
            (&mut kernel_source, refused_cubins.is_empty())
        {
            *images = format!(
                "{images}; the driver refused the cubins of {}, loaded their PTX",
                refused_cubins.join(", ")
            );
        }
        // One stream of our own for everything: the legacy default stream cannot be captured
        // into a graph. Every buffer lives and is used on this one stream, so cudarc's
        // cross-stream event tracking is off: its event waits would break a capture.
        // SAFETY: no buffer of this context exists yet, and all of them will be used on `stream`
        // only (the backend has no other), so no cross-stream synchronisation is needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err(format!("stream: {e:?}")))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| cuda_err(format!("{e:?}")))?;
        let mut workspace = stream
            .alloc_zeros::<u8>(BLAS_WORKSPACE_BYTES)
            .map_err(|e| cuda_err(format!("cuBLAS workspace: {e:?}")))?;
        let (ws_ptr, ws_guard) = workspace.device_ptr_mut(&stream);
        // SAFETY: `workspace` is a live device buffer of BLAS_WORKSPACE_BYTES allocated on the
        // handle's stream; `Inner` keeps it and declares it after `blas`, so the handle is
        // destroyed before the buffer is freed.
        let status = unsafe {
            cudarc::cublas::sys::cublasSetWorkspace_v2(
                *blas.handle(),
                ws_ptr as *mut std::ffi::c_void,
                BLAS_WORKSPACE_BYTES,
            )
        };
        drop(ws_guard);
        if status != cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(cuda_err(format!("cublasSetWorkspace: {status:?}")));
        }
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                ctx,
                stream,
                blas,
                funcs,
                arch,
                sm_count,
                kernel_source,
                poison: AtomicBool::new(false),
                _blas_workspace: workspace,
                graphs: Mutex::new(GraphState::default()),
                active: Mutex::new(None),
            }),
        })
    }

    pub fn arch(&self) -> &'static str {
        self.inner.arch
    }

    /// Where the loaded kernels came from: NVRTC or a precompiled set.
    pub fn kernel_source(&self) -> &KernelSource {
        &self.inner.kernel_source
    }

    pub fn device_name(&self) -> Result<String> {
        self.inner
            .ctx
            .name()
            .map_err(|e| cuda_err(format!("{e:?}")))
    }

    /// Tests: from now on every buffer an op allocates starts as NaN instead of garbage.
    pub fn set_poison(&self, on: bool) {
        self.inner.poison.store(on, Ordering::Relaxed);
    }

    fn poisoned(&self) -> bool {
        self.inner.poison.load(Ordering::Relaxed)
    }

    pub(super) fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    pub(super) fn func(&self, name: &str) -> Result<&CudaFunction> {
        self.inner
            .funcs
            .get(name)
            .ok_or_else(|| cuda_err(format!("kernel {name} is not loaded")))
    }

    pub(super) fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        self.stream()
            .clone_htod(host)
            .map_err(|e| cuda_err(format!("upload: {e:?}")))
    }

    /// An uninitialised bf16 buffer every element of which the caller's kernel writes.
    pub(super) fn alloc_bf16(&self, n: usize) -> Result<CudaSlice<bf16>> {
        if self.poisoned() && !self.capturing() {
            return self.upload(&vec![bf16::NAN; n.max(1)]);
        }
        // SAFETY: the memory is uninitialised; every caller launches a kernel that writes all
        // `n` elements before anything reads them.
        unsafe { self.stream().alloc::<bf16>(n.max(1)) }
            .map_err(|e| cuda_err(format!("alloc of {n} bf16: {e:?}")))
    }

    pub(super) fn alloc_f32(&self, n: usize) -> Result<CudaSlice<f32>> {
        if self.poisoned() && !self.capturing() {
            return self.upload(&vec![f32::NAN; n.max(1)]);
        }
        // SAFETY: as alloc_bf16: the launching kernel writes every element before it is read.
        unsafe { self.stream().alloc::<f32>(n.max(1)) }
            .map_err(|e| cuda_err(format!("alloc of {n} f32: {e:?}")))
    }
}

/// Launch shape helpers.
pub(super) fn grid(x: usize, y: usize, z: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (x as u32, y as u32, z as u32),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(super) fn elementwise(n: usize) -> LaunchConfig {
    grid(n.div_ceil(256), 1, 1, 256)
}
