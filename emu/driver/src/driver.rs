//! The CUDA driver API subset cudarc 0.19 and asyncthink's backend call, over the emulator.
//! One device (ordinal 0), named so no one mistakes it for a GPU, with sm_90's limits; one
//! primary context; streams that run work in order at once; stream capture into graphs;
//! events that time with the host clock. Every pointer argument is checked for null.

use std::ffi::{CStr, c_char, c_void};
use std::time::Instant;

use asyncthink_emu::LaunchConfig;

use crate::state::{Function, Work, code, report, state};

pub const DEVICE_NAME: &str = "asyncthink PTX emulator (sm_90, not a GPU)";
const SM_COUNT: i32 = 132;

/// Writes `v` through an out-pointer the caller owns, or says the argument was null.
macro_rules! out {
    ($p:expr, $v:expr) => {{
        if $p.is_null() {
            return code::INVALID_VALUE;
        }
        // SAFETY: checked non-null; the driver API's contract is that it points to a
        // writable value of this type.
        unsafe { *$p = $v };
    }};
}

#[unsafe(no_mangle)]
pub extern "C" fn cuInit(_flags: u32) -> u32 {
    drop(state());
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDriverGetVersion(v: *mut i32) -> u32 {
    out!(v, 13000);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGetCount(n: *mut i32) -> u32 {
    out!(n, 1);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGet(d: *mut i32, ordinal: i32) -> u32 {
    if ordinal != 0 {
        return code::INVALID_VALUE;
    }
    out!(d, 0);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGetName(name: *mut c_char, len: i32, _dev: i32) -> u32 {
    if name.is_null() || len <= 0 {
        return code::INVALID_VALUE;
    }
    let bytes = DEVICE_NAME.as_bytes();
    let n = bytes.len().min(len as usize - 1);
    // SAFETY: `name` holds `len` bytes (the API's contract); we write n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), n);
        *name.add(n) = 0;
    }
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, _dev: i32) -> u32 {
    let cap = state().dev.mem.capacity as usize;
    out!(bytes, cap);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], _dev: i32) -> u32 {
    out!(uuid, *b"asyncthink-emu\0\0");
    code::SUCCESS
}

/// The attributes an sm_90 (H100/H200-class) device reports, for the ones anyone asks.
fn attribute(a: u32) -> Option<i32> {
    Some(match a {
        1 => 1024,        // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,    // MAX_BLOCK_DIM_X, _Y
        4 => 64,          // MAX_BLOCK_DIM_Z
        5 => i32::MAX,    // MAX_GRID_DIM_X
        6 | 7 => 65535,   // MAX_GRID_DIM_Y, _Z
        8 => 48 * 1024,   // MAX_SHARED_MEMORY_PER_BLOCK
        10 => 32,         // WARP_SIZE
        12 => 65536,      // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,  // CLOCK_RATE (kHz)
        16 => SM_COUNT,   // MULTIPROCESSOR_COUNT
        39 => 2048,       // MAX_THREADS_PER_MULTIPROCESSOR
        75 => 9,          // COMPUTE_CAPABILITY_MAJOR
        76 => 0,          // COMPUTE_CAPABILITY_MINOR
        81 => 228 * 1024, // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,      // MAX_REGISTERS_PER_MULTIPROCESSOR
        97 => 227 * 1024, // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        115 => 1,         // MEMORY_POOLS_SUPPORTED
        36 => 2_619_000,  // MEMORY_CLOCK_RATE (kHz)
        37 => 6144,       // GLOBAL_MEMORY_BUS_WIDTH
        14 => 512,        // TEXTURE_ALIGNMENT
        15 => 1,          // GPU_OVERLAP
        17 => 0,          // KERNEL_EXEC_TIMEOUT
        18 => 0,          // INTEGRATED
        19 => 1,          // CAN_MAP_HOST_MEMORY
        31 => 1,          // CONCURRENT_KERNELS
        41 => 1,          // UNIFIED_ADDRESSING
        _ => return None,
    })
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGetAttribute(v: *mut i32, attrib: u32, _dev: i32) -> u32 {
    match attribute(attrib) {
        Some(x) => {
            out!(v, x);
            code::SUCCESS
        }
        None => {
            report(
                "cuDeviceGetAttribute",
                format!("attribute {attrib} is not emulated"),
            );
            code::INVALID_VALUE
        }
    }
}

/// The one context; its handle is a fixed non-null value.
const CONTEXT: usize = 0xC0;

#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, _dev: i32) -> u32 {
    out!(ctx, CONTEXT as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(_dev: i32) -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSetCurrent(_ctx: *mut c_void) -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuCtxGetCurrent(ctx: *mut *mut c_void) -> u32 {
    out!(ctx, CONTEXT as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuCtxGetDevice(d: *mut i32) -> u32 {
    out!(d, 0);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSynchronize() -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuCtxGetApiVersion(_ctx: *mut c_void, v: *mut u32) -> u32 {
    out!(v, 13000);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> u32 {
    let st = state();
    let (cap, used) = (st.dev.mem.capacity as usize, st.dev.mem.used as usize);
    drop(st);
    out!(free, cap - used);
    out!(total, cap);
    code::SUCCESS
}

fn alloc(dptr: *mut u64, bytes: usize, stream: usize) -> u32 {
    let mut st = state();
    match st.dev.alloc(bytes) {
        Ok(at) => {
            if let Some(owned) = st.capture_allocs.get_mut(&stream) {
                owned.push(at);
            }
            drop(st);
            out!(dptr, at);
            code::SUCCESS
        }
        Err(e) => {
            report("cuMemAlloc", e);
            code::OUT_OF_MEMORY
        }
    }
}

fn free(dptr: u64, stream: usize) -> u32 {
    if dptr == 0 {
        return code::SUCCESS;
    }
    let mut st = state();
    // Freed inside the capture that allocated it: the graph owns it until destroyed.
    if st
        .capture_allocs
        .get(&stream)
        .is_some_and(|owned| owned.contains(&dptr))
    {
        return code::SUCCESS;
    }
    if st.capturing.contains_key(&stream) {
        report(
            "cuMemFreeAsync",
            "freeing memory from before the capture inside it is not emulated",
        );
        return code::NOT_SUPPORTED;
    }
    match st.dev.free(dptr) {
        Ok(()) => code::SUCCESS,
        Err(e) => {
            report("cuMemFree", e);
            code::INVALID_VALUE
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) -> u32 {
    alloc(dptr, bytes, usize::MAX)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemAllocAsync(dptr: *mut u64, bytes: usize, stream: *mut c_void) -> u32 {
    alloc(dptr, bytes, stream as usize)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemFree_v2(dptr: u64) -> u32 {
    free(dptr, usize::MAX)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeAsync(dptr: u64, stream: *mut c_void) -> u32 {
    free(dptr, stream as usize)
}

/// Why a host copy does nothing or is refused: zero bytes (done), a null host pointer, or a
/// captured stream (CUDA refuses pageable copies there too: the host buffer would have to
/// outlive the graph).
fn host_copy_refusal(host_null: bool, bytes: usize, stream: *mut c_void) -> Option<u32> {
    if bytes == 0 {
        Some(code::SUCCESS)
    } else if host_null {
        Some(code::INVALID_VALUE)
    } else if state().capturing.contains_key(&(stream as usize)) {
        Some(code::STREAM_CAPTURE_UNSUPPORTED)
    } else {
        None
    }
}

fn submit(stream: *mut c_void, work: Work) -> u32 {
    state().submit(stream as usize, work)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, bytes: usize) -> u32 {
    cuMemcpyHtoDAsync_v2(dst, src, bytes, std::ptr::null_mut())
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    bytes: usize,
    stream: *mut c_void,
) -> u32 {
    if let Some(rc) = host_copy_refusal(src.is_null(), bytes, stream) {
        return rc;
    }
    submit(
        stream,
        Work::HtoD {
            dst,
            src: src as usize,
            bytes,
        },
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, bytes: usize) -> u32 {
    cuMemcpyDtoHAsync_v2(dst, src, bytes, std::ptr::null_mut())
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    bytes: usize,
    stream: *mut c_void,
) -> u32 {
    if let Some(rc) = host_copy_refusal(dst.is_null(), bytes, stream) {
        return rc;
    }
    submit(
        stream,
        Work::DtoH {
            dst: dst as usize,
            src,
            bytes,
        },
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoD_v2(dst: u64, src: u64, bytes: usize) -> u32 {
    submit(std::ptr::null_mut(), Work::DtoD { dst, src, bytes })
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: u64,
    src: u64,
    bytes: usize,
    stream: *mut c_void,
) -> u32 {
    submit(stream, Work::DtoD { dst, src, bytes })
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemsetD8_v2(dst: u64, value: u8, n: usize) -> u32 {
    submit(
        std::ptr::null_mut(),
        Work::Memset {
            dst,
            value,
            bytes: n,
        },
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemsetD8Async(dst: u64, value: u8, n: usize, stream: *mut c_void) -> u32 {
    submit(
        stream,
        Work::Memset {
            dst,
            value,
            bytes: n,
        },
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamCreate(stream: *mut *mut c_void, _flags: u32) -> u32 {
    // Streams hold no state: work runs at once in submission order.
    let id = state().id();
    out!(stream, id as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamCreateWithPriority(
    stream: *mut *mut c_void,
    flags: u32,
    _priority: i32,
) -> u32 {
    cuStreamCreate(stream, flags)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamDestroy_v2(_stream: *mut c_void) -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize(_stream: *mut c_void) -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamQuery(_stream: *mut c_void) -> u32 {
    code::SUCCESS
}

/// Work already ran in order, so a cross-stream wait is satisfied on arrival.
#[unsafe(no_mangle)]
pub extern "C" fn cuStreamWaitEvent(_stream: *mut c_void, _event: *mut c_void, _flags: u32) -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventCreate(event: *mut *mut c_void, _flags: u32) -> u32 {
    let mut st = state();
    let id = st.id();
    st.events.insert(id, None);
    drop(st);
    out!(event, id as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventRecord(event: *mut c_void, _stream: *mut c_void) -> u32 {
    match state().events.get_mut(&(event as usize)) {
        Some(t) => {
            *t = Some(Instant::now());
            code::SUCCESS
        }
        None => code::INVALID_HANDLE,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventRecordWithFlags(
    event: *mut c_void,
    stream: *mut c_void,
    _flags: u32,
) -> u32 {
    cuEventRecord(event, stream)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventSynchronize(_event: *mut c_void) -> u32 {
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventQuery(_event: *mut c_void) -> u32 {
    code::SUCCESS
}

/// Host-clock milliseconds between two records: the emulator's time, not a GPU's.
#[unsafe(no_mangle)]
pub extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, start: *mut c_void, end: *mut c_void) -> u32 {
    let st = state();
    let (Some(Some(a)), Some(Some(b))) = (
        st.events.get(&(start as usize)),
        st.events.get(&(end as usize)),
    ) else {
        return code::INVALID_HANDLE;
    };
    let t = b.saturating_duration_since(*a).as_secs_f32() * 1e3;
    drop(st);
    out!(ms, t);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventElapsedTime(ms: *mut f32, start: *mut c_void, end: *mut c_void) -> u32 {
    cuEventElapsedTime_v2(ms, start, end)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventDestroy_v2(event: *mut c_void) -> u32 {
    state().events.remove(&(event as usize));
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> u32 {
    if image.is_null() {
        return code::INVALID_VALUE;
    }
    // An ELF cubin is machine code: said once and plainly, so the backend's fallback to the
    // set's PTX reads as what it is, not as a PTX syntax error.
    let bytes = image.cast::<u8>();
    // SAFETY: the image is at least as long as its first byte differing from the magic or its
    // NUL (PTX text) or its ELF header (a cubin); each byte is read only after the previous
    // one matched, so the read never passes the image's end.
    let elf = (0..4).all(|i| unsafe { *bytes.add(i) } == b"\x7fELF"[i]);
    if elf {
        // Not `report`: the refusal is expected (the backend then loads the PTX), so it must
        // not abort under ASYNCTHINK_EMU_ABORT, and one line per process is enough.
        static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "[asyncthink-emu libcuda] cuModuleLoadData: the image is a cubin (ELF machine \
                 code); the emulator runs PTX only (said once per process)"
            );
        }
        return code::INVALID_IMAGE;
    }
    // SAFETY: the image of a PTX module is a NUL-terminated string (the API's contract).
    let text = unsafe { CStr::from_ptr(image.cast::<c_char>()) };
    let Ok(text) = text.to_str() else {
        report(
            "cuModuleLoadData",
            "the image is not UTF-8 PTX text (cubins cannot be emulated)",
        );
        return code::INVALID_IMAGE;
    };
    let mut st = state();
    match st.dev.load_ptx(text) {
        Ok(m) => {
            let id = st.id();
            st.modules.insert(id, m);
            drop(st);
            out!(module, id as *mut c_void);
            code::SUCCESS
        }
        Err(e) => {
            report("cuModuleLoadData", e);
            code::INVALID_IMAGE
        }
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuModuleLoadDataEx(
    module: *mut *mut c_void,
    image: *const c_void,
    _n: u32,
    _opts: *mut c_void,
    _vals: *mut *mut c_void,
) -> u32 {
    cuModuleLoadData(module, image)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuModuleUnload(module: *mut c_void) -> u32 {
    let mut st = state();
    if let Some(m) = st.modules.remove(&(module as usize)) {
        for g in m.globals {
            let _ = st.dev.free(g);
        }
    }
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuModuleGetFunction(
    f: *mut *mut c_void,
    module: *mut c_void,
    name: *const c_char,
) -> u32 {
    if name.is_null() {
        return code::INVALID_VALUE;
    }
    // SAFETY: `name` is a NUL-terminated C string (the API's contract).
    let name = unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned();
    let mut st = state();
    let Some(m) = st.modules.get(&(module as usize)) else {
        return code::INVALID_HANDLE;
    };
    if m.kernel(&name).is_err() {
        return code::NOT_FOUND;
    }
    let id = st.id();
    st.functions.insert(
        id,
        Function {
            module: module as usize,
            name,
            max_dynamic_shared: 0,
        },
    );
    drop(st);
    out!(f, id as *mut c_void);
    code::SUCCESS
}

const ATTR_MAX_THREADS_PER_BLOCK: u32 = 0;
const ATTR_SHARED_SIZE_BYTES: u32 = 1;
const ATTR_NUM_REGS: u32 = 4;
const ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES: u32 = 8;

#[unsafe(no_mangle)]
pub extern "C" fn cuFuncSetAttribute(f: *mut c_void, attrib: u32, value: i32) -> u32 {
    let mut st = state();
    let Some(func) = st.functions.get_mut(&(f as usize)) else {
        return code::INVALID_HANDLE;
    };
    match attrib {
        ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES if (0..=227 * 1024).contains(&value) => {
            func.max_dynamic_shared = value as u32;
            code::SUCCESS
        }
        // Carveout preferences and the like change nothing the emulator models.
        9..=13 => code::SUCCESS,
        _ => code::INVALID_VALUE,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuFuncGetAttribute(v: *mut i32, attrib: u32, f: *mut c_void) -> u32 {
    let st = state();
    let Some(func) = st.functions.get(&(f as usize)) else {
        return code::INVALID_HANDLE;
    };
    let Some(kernel) = st
        .modules
        .get(&func.module)
        .and_then(|m| m.kernel(&func.name).ok())
    else {
        return code::INVALID_HANDLE;
    };
    let x = match attrib {
        ATTR_MAX_THREADS_PER_BLOCK => kernel.maxntid.map_or(1024, |[a, b, c]| (a * b * c) as i32),
        ATTR_SHARED_SIZE_BYTES => kernel.static_shared as i32,
        ATTR_NUM_REGS => 0,
        ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES => func.max_dynamic_shared as i32,
        _ => return code::INVALID_VALUE,
    };
    drop(st);
    out!(v, x);
    code::SUCCESS
}

#[unsafe(no_mangle)]
#[allow(clippy::too_many_arguments)]
pub extern "C" fn cuLaunchKernel(
    f: *mut c_void,
    gx: u32,
    gy: u32,
    gz: u32,
    bx: u32,
    by: u32,
    bz: u32,
    shared: u32,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> u32 {
    if !extra.is_null() {
        report(
            "cuLaunchKernel",
            "the `extra` argument form is not emulated",
        );
        return code::NOT_SUPPORTED;
    }
    let mut st = state();
    let Some(func) = st.functions.get(&(f as usize)) else {
        return code::INVALID_HANDLE;
    };
    let Some(kernel) = st
        .modules
        .get(&func.module)
        .and_then(|m| m.kernel(&func.name).ok())
    else {
        return code::INVALID_HANDLE;
    };
    if params.is_null() && !kernel.params.is_empty() {
        return code::INVALID_VALUE;
    }
    let mut packed = vec![0u8; kernel.param_bytes];
    for (i, p) in kernel.params.iter().enumerate() {
        let n = p.ty.bytes();
        // SAFETY: cuLaunchKernel's contract: params[i] points to the i-th argument, whose size
        // is that of the kernel's i-th parameter.
        unsafe {
            let arg = *params.add(i);
            if arg.is_null() {
                return code::INVALID_VALUE;
            }
            std::ptr::copy_nonoverlapping(arg.cast::<u8>(), packed[p.offset..].as_mut_ptr(), n);
        }
    }
    let cfg = LaunchConfig::new([gx, gy, gz], [bx, by, bz], shared);
    st.submit(
        stream as usize,
        Work::Launch {
            func: f as usize,
            cfg,
            params: packed,
        },
    )
}

const CAPTURE_NONE: u32 = 0;
const CAPTURE_ACTIVE: u32 = 1;

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamBeginCapture_v2(stream: *mut c_void, _mode: u32) -> u32 {
    let mut st = state();
    if st.capturing.contains_key(&(stream as usize)) {
        return code::INVALID_VALUE;
    }
    st.capturing.insert(stream as usize, Vec::new());
    st.capture_allocs.insert(stream as usize, Vec::new());
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamEndCapture(stream: *mut c_void, graph: *mut *mut c_void) -> u32 {
    let mut st = state();
    let Some(work) = st.capturing.remove(&(stream as usize)) else {
        return code::INVALID_VALUE;
    };
    let owned = st
        .capture_allocs
        .remove(&(stream as usize))
        .unwrap_or_default();
    let id = st.id();
    st.graphs.insert(id, work);
    st.graph_allocs.insert(id, owned);
    drop(st);
    out!(graph, id as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamIsCapturing(stream: *mut c_void, status: *mut u32) -> u32 {
    let active = state().capturing.contains_key(&(stream as usize));
    out!(status, if active { CAPTURE_ACTIVE } else { CAPTURE_NONE });
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut *mut c_void,
    graph: *mut c_void,
    _flags: u64,
) -> u32 {
    let mut st = state();
    let Some(work) = st.graphs.get(&(graph as usize)).cloned() else {
        return code::INVALID_HANDLE;
    };
    let id = st.id();
    st.execs.insert(id, (graph as usize, work));
    drop(st);
    out!(exec, id as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuGraphLaunch(exec: *mut c_void, stream: *mut c_void) -> u32 {
    let mut st = state();
    if st.capturing.contains_key(&(stream as usize)) {
        report(
            "cuGraphLaunch",
            "launching a graph into a capturing stream is not emulated",
        );
        return code::NOT_SUPPORTED;
    }
    let Some((graph, work)) = st.execs.remove(&(exec as usize)) else {
        return code::INVALID_HANDLE;
    };
    let mut rc = code::SUCCESS;
    for w in &work {
        rc = st.run(w);
        if rc != code::SUCCESS {
            break;
        }
    }
    st.execs.insert(exec as usize, (graph, work));
    rc
}

#[unsafe(no_mangle)]
pub extern "C" fn cuGraphExecDestroy(exec: *mut c_void) -> u32 {
    let mut st = state();
    if let Some((graph, _)) = st.execs.remove(&(exec as usize)) {
        st.release_graph_memory(graph);
    }
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuGraphDestroy(graph: *mut c_void) -> u32 {
    let mut st = state();
    st.graphs.remove(&(graph as usize));
    st.release_graph_memory(graph as usize);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuGetErrorString(err: u32, s: *mut *const c_char) -> u32 {
    cuGetErrorName(err, s)
}

#[unsafe(no_mangle)]
pub extern "C" fn cuGetErrorName(err: u32, s: *mut *const c_char) -> u32 {
    let text: &'static CStr = match err {
        code::SUCCESS => c"CUDA_SUCCESS",
        code::INVALID_VALUE => c"CUDA_ERROR_INVALID_VALUE",
        code::OUT_OF_MEMORY => c"CUDA_ERROR_OUT_OF_MEMORY",
        code::NOT_INITIALIZED => c"CUDA_ERROR_NOT_INITIALIZED",
        code::INVALID_IMAGE => c"CUDA_ERROR_INVALID_IMAGE",
        code::INVALID_CONTEXT => c"CUDA_ERROR_INVALID_CONTEXT",
        code::INVALID_HANDLE => c"CUDA_ERROR_INVALID_HANDLE",
        code::NOT_FOUND => c"CUDA_ERROR_NOT_FOUND",
        code::NOT_READY => c"CUDA_ERROR_NOT_READY",
        code::ILLEGAL_ADDRESS => c"CUDA_ERROR_ILLEGAL_ADDRESS (see the emulator's message above)",
        code::LAUNCH_OUT_OF_RESOURCES => c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        code::LAUNCH_FAILED => c"CUDA_ERROR_LAUNCH_FAILED (see the emulator's message above)",
        code::NOT_SUPPORTED => c"CUDA_ERROR_NOT_SUPPORTED",
        _ => c"CUDA_ERROR_UNKNOWN",
    };
    out!(s, text.as_ptr());
    code::SUCCESS
}

/// NVRTC dlopens libcuda.so.1 and asks for the driver's private export tables; the emulator
/// has none, and says so (NVRTC then compiles without them, as on a machine with no driver).
#[unsafe(no_mangle)]
pub extern "C" fn cuGetExportTable(table: *mut *const c_void, _id: *const c_void) -> u32 {
    if !table.is_null() {
        // SAFETY: checked non-null; the caller passes a place for one table pointer.
        unsafe { *table = std::ptr::null() };
    }
    code::NOT_SUPPORTED
}

/// Uploading ahead of the first launch is an optimisation with nothing to do here.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphUpload(exec: *mut c_void, _stream: *mut c_void) -> u32 {
    if state().execs.contains_key(&(exec as usize)) {
        code::SUCCESS
    } else {
        code::INVALID_HANDLE
    }
}

/// The device's one memory pool (every cuMemAllocAsync draws from it).
const POOL: usize = 0x900;
const POOL_USED_MEM_CURRENT: u32 = 7;
const POOL_USED_MEM_HIGH: u32 = 8;

#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut *mut c_void, _dev: i32) -> u32 {
    out!(pool, POOL as *mut c_void);
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemPoolGetAttribute(pool: *mut c_void, attr: u32, value: *mut c_void) -> u32 {
    if pool as usize != POOL {
        return code::INVALID_HANDLE;
    }
    let st = state();
    let v = match attr {
        POOL_USED_MEM_CURRENT => st.dev.mem.used,
        POOL_USED_MEM_HIGH => st.dev.mem.peak(),
        _ => return code::NOT_SUPPORTED,
    };
    drop(st);
    out!(value.cast::<u64>(), v);
    code::SUCCESS
}

/// Only resetting the high-water mark (writing 0 to USED_MEM_HIGH) is meaningful here.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemPoolSetAttribute(pool: *mut c_void, attr: u32, _value: *mut c_void) -> u32 {
    if pool as usize != POOL {
        return code::INVALID_HANDLE;
    }
    match attr {
        POOL_USED_MEM_HIGH => {
            state().dev.mem.reset_peak();
            code::SUCCESS
        }
        _ => code::NOT_SUPPORTED,
    }
}
