//! The one emulated device behind both libraries, and what the driver API hands out as
//! opaque handles (modules, functions, streams, events, graphs). Work submitted to a stream
//! runs at once, in submission order, which is a legal schedule of any stream program; during
//! stream capture it is recorded into the graph instead and runs at `cuGraphLaunch`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use asyncthink_emu::{Device, LaunchConfig, Module};

/// CUresult / cublasStatus_t values this library returns (all are variants of cudarc's enums).
pub mod code {
    pub const SUCCESS: u32 = 0;
    pub const INVALID_VALUE: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const NOT_INITIALIZED: u32 = 3;
    pub const INVALID_IMAGE: u32 = 200;
    pub const INVALID_CONTEXT: u32 = 201;
    pub const INVALID_HANDLE: u32 = 400;
    pub const NOT_FOUND: u32 = 500;
    pub const NOT_READY: u32 = 600;
    pub const ILLEGAL_ADDRESS: u32 = 700;
    pub const LAUNCH_OUT_OF_RESOURCES: u32 = 701;
    pub const LAUNCH_FAILED: u32 = 719;
    pub const NOT_SUPPORTED: u32 = 801;
    pub const STREAM_CAPTURE_UNSUPPORTED: u32 = 900;
}

/// Device memory of the emulated GPU (`ASYNCTHINK_EMU_MEMORY_MB`, default 4 GiB). The engine
/// sizes its KV cache from the free memory it reports, and emulated memory is host memory.
fn memory_bytes() -> u64 {
    std::env::var("ASYNCTHINK_EMU_MEMORY_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(4 * 1024)
        << 20
}

pub struct Function {
    pub module: usize,
    pub name: String,
    pub max_dynamic_shared: u32,
}

/// One piece of stream work, as recorded in a graph.
#[derive(Clone)]
pub enum Work {
    Launch {
        func: usize,
        cfg: LaunchConfig,
        params: Vec<u8>,
    },
    /// Never captured (refused while a stream is captured), so the host pointer is live.
    HtoD {
        dst: u64,
        src: usize,
        bytes: usize,
    },
    DtoH {
        dst: usize,
        src: u64,
        bytes: usize,
    },
    DtoD {
        dst: u64,
        src: u64,
        bytes: usize,
    },
    Memset {
        dst: u64,
        value: u8,
        bytes: usize,
    },
    Gemm(crate::cublas::Gemm),
}

pub struct State {
    pub dev: Device,
    pub modules: HashMap<usize, Module>,
    pub functions: HashMap<usize, Function>,
    /// Streams being captured, with the work recorded so far.
    pub capturing: HashMap<usize, Vec<Work>>,
    /// Memory allocated on a stream while it was captured: CUDA makes these graph memory
    /// nodes, valid whenever the graph runs, so they live until the graph is destroyed.
    pub capture_allocs: HashMap<usize, Vec<u64>>,
    pub graphs: HashMap<usize, Vec<Work>>,
    pub graph_allocs: HashMap<usize, Vec<u64>>,
    /// Instantiated graphs: their own copy of the work (a graph may be destroyed while its
    /// instantiation lives on) and the graph they came from.
    pub execs: HashMap<usize, (usize, Vec<Work>)>,
    pub events: HashMap<usize, Option<Instant>>,
    /// The stream each cuBLAS handle submits to.
    pub blas_streams: HashMap<usize, usize>,
    next: usize,
}

impl State {
    pub fn id(&mut self) -> usize {
        self.next += 1;
        // Handles are small integers shown as pointers; 0 stays the null stream.
        self.next * 16
    }
}

pub fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let mut dev = Device::new(memory_bytes());
            // Counters cost time; they are on only when a counters file is asked for.
            dev.counting = dev.counters_file.is_some();
            Mutex::new(State {
                dev,
                modules: HashMap::new(),
                functions: HashMap::new(),
                capturing: HashMap::new(),
                capture_allocs: HashMap::new(),
                graphs: HashMap::new(),
                graph_allocs: HashMap::new(),
                execs: HashMap::new(),
                events: HashMap::new(),
                blas_streams: HashMap::new(),
                next: 0,
            })
        })
        .lock()
        // A panic while holding the lock cannot leave the device half-updated in a way a later
        // call would misread more than the failed call itself did; keep serving.
        .unwrap_or_else(|e| e.into_inner())
}

/// Prints why a call failed: the driver API has only a code, and the emulator knows more.
/// With `ASYNCTHINK_EMU_ABORT=1` the process aborts at the first report, so a debugger shows
/// the host stack that made the failing call.
pub fn report(what: &str, msg: impl std::fmt::Display) {
    eprintln!("[asyncthink-emu libcuda] {what}: {msg}");
    if std::env::var("ASYNCTHINK_EMU_ABORT").as_deref() == Ok("1") {
        std::process::abort();
    }
}

impl State {
    /// Runs or records one piece of work for `stream`.
    pub fn submit(&mut self, stream: usize, work: Work) -> u32 {
        if let Some(graph) = self.capturing.get_mut(&stream) {
            graph.push(work);
            return code::SUCCESS;
        }
        self.run(&work)
    }

    pub fn run(&mut self, work: &Work) -> u32 {
        match *work {
            Work::Gemm(ref g) => crate::cublas::run_gemm(self, g),
            Work::Launch {
                func,
                ref cfg,
                ref params,
            } => {
                let Some(f) = self.functions.get(&func) else {
                    return code::INVALID_HANDLE;
                };
                let Some(m) = self.modules.get(&f.module) else {
                    return code::INVALID_HANDLE;
                };
                let kernel = match m.kernel(&f.name) {
                    Ok(k) => k,
                    Err(e) => {
                        report("cuLaunchKernel", e);
                        return code::NOT_FOUND;
                    }
                };
                let mut cfg = *cfg;
                cfg.max_dynamic_shared = f.max_dynamic_shared;
                match self.dev.launch_packed(kernel, &cfg, params) {
                    Ok(_) => code::SUCCESS,
                    Err(asyncthink_emu::EmuError::Launch { kernel, msg }) => {
                        report("cuLaunchKernel", format!("launch of `{kernel}`: {msg}"));
                        code::INVALID_VALUE
                    }
                    Err(e) => {
                        report("cuLaunchKernel", e);
                        code::LAUNCH_FAILED
                    }
                }
            }
            Work::HtoD { dst, src, bytes } => {
                // SAFETY: the caller passed `src` as a host buffer of `bytes` bytes, as the
                // driver API requires; a captured copy reads it at replay, as CUDA does.
                let data = unsafe { std::slice::from_raw_parts(src as *const u8, bytes) };
                let r = self.dev.write(dst, data);
                self.mem_result("cuMemcpyHtoD", r)
            }
            Work::DtoH { dst, src, bytes } => {
                // SAFETY: as above, `dst` is a writable host buffer of `bytes` bytes.
                let out = unsafe { std::slice::from_raw_parts_mut(dst as *mut u8, bytes) };
                let r = self.dev.read(src, out);
                self.mem_result("cuMemcpyDtoH", r)
            }
            Work::DtoD { dst, src, bytes } => {
                let mut buf = vec![0u8; bytes];
                let r = self
                    .dev
                    .read(src, &mut buf)
                    .and_then(|_| self.dev.write(dst, &buf));
                self.mem_result("cuMemcpyDtoD", r)
            }
            Work::Memset { dst, value, bytes } => {
                let r = self
                    .dev
                    .mem
                    .fill(dst, bytes, value)
                    .map_err(asyncthink_emu::EmuError::Memory);
                self.mem_result("cuMemsetD8", r)
            }
        }
    }

    fn mem_result(&self, what: &str, r: asyncthink_emu::Result<()>) -> u32 {
        match r {
            Ok(()) => code::SUCCESS,
            Err(e) => {
                report(what, e);
                code::ILLEGAL_ADDRESS
            }
        }
    }
}

impl State {
    /// Frees a graph's memory nodes once neither the graph nor any instantiation of it lives.
    pub fn release_graph_memory(&mut self, graph: usize) {
        let in_use =
            self.graphs.contains_key(&graph) || self.execs.values().any(|(g, _)| *g == graph);
        if !in_use {
            for at in self.graph_allocs.remove(&graph).unwrap_or_default() {
                let _ = self.dev.free(at);
            }
        }
    }
}
