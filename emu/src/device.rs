//! The emulated device as a host program sees it: memory, modules loaded from PTX, and
//! launches checked against the limits an sm_90 GPU enforces.

use std::collections::HashMap;

use crate::error::{EmuError, Result};
use crate::exec::block::run_block;
use rayon::prelude::*;

use crate::exec::counters::{self, Counters};
use crate::exec::global::{BlockGlobal, BlockWrites, LaunchWrites, Race};
use crate::exec::shared::SharedMemory;
use crate::exec::thread::BlockEnv;
use crate::memory::GlobalMemory;
use crate::ptx::instr::Ty;
use crate::ptx::{Kernel, decode, parse};

/// Shared memory a block may use without opting in, and the most it may opt in to (sm_90).
pub const SHARED_DEFAULT_LIMIT: usize = 48 * 1024;
pub const SHARED_OPT_IN_LIMIT: usize = 227 * 1024;

pub struct Device {
    pub mem: GlobalMemory,
    /// Rebuild each warp's memory requests and count sectors and bank conflicts (slower).
    pub counting: bool,
    /// Append one JSON line of counters per launch here (`$ASYNCTHINK_EMU_COUNTERS`).
    pub counters_file: Option<std::path::PathBuf>,
}

pub struct Module {
    pub target: String,
    pub version: String,
    kernels: HashMap<String, Kernel>,
    /// Module-scope `.global` variables, freed with the module.
    pub globals: Vec<u64>,
}

impl Module {
    pub fn kernel(&self, name: &str) -> Result<&Kernel> {
        self.kernels
            .get(name)
            .ok_or_else(|| EmuError::NoKernel(name.to_string()))
    }

    pub fn kernel_names(&self) -> impl Iterator<Item = &str> {
        self.kernels.keys().map(String::as_str)
    }
}

/// A kernel argument, checked against the parameter's declared type at launch.
#[derive(Debug, Clone, Copy)]
pub enum Arg {
    Ptr(u64),
    U64(u64),
    U32(u32),
    I32(i32),
    F32(f32),
}

#[derive(Debug, Clone, Copy)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
    /// The kernel's `CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`: above 48 KiB of
    /// shared memory a launch needs this opt-in, as on hardware.
    pub max_dynamic_shared: u32,
}

impl LaunchConfig {
    pub fn new(grid: [u32; 3], block: [u32; 3], dynamic_shared: u32) -> Self {
        LaunchConfig {
            grid,
            block,
            dynamic_shared,
            max_dynamic_shared: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LaunchStats {
    /// Thread-instructions executed (a predicated-off instruction does not count).
    pub instructions: u64,
    pub blocks: u64,
    /// Memory counters; all zero unless `Device::counting` is on.
    pub counters: Counters,
}

impl Device {
    /// An emulated device with `capacity` bytes of global memory.
    pub fn new(capacity: u64) -> Self {
        let counters_file = std::env::var_os("ASYNCTHINK_EMU_COUNTERS").map(Into::into);
        Device {
            mem: GlobalMemory::new(capacity),
            counting: counters_file.is_some(),
            counters_file,
        }
    }

    pub fn load_ptx(&mut self, src: &str) -> Result<Module> {
        let raw = parse::parse(src)?;
        let mut addrs = HashMap::new();
        let mut globals = Vec::new();
        for g in &raw.globals {
            let at = self.mem.alloc(g.bytes)?;
            if !g.init.is_empty() {
                self.mem.write(at, &g.init).map_err(EmuError::Memory)?;
            }
            addrs.insert(g.name.clone(), at);
            globals.push(at);
        }
        let mut kernels = HashMap::new();
        for k in &raw.kernels {
            kernels.insert(
                k.name.clone(),
                decode::decode_kernel(k, &raw.shared, &addrs)?,
            );
        }
        Ok(Module {
            target: raw.target,
            version: raw.version,
            kernels,
            globals,
        })
    }

    pub fn alloc(&mut self, bytes: usize) -> Result<u64> {
        self.mem.alloc(bytes)
    }

    pub fn free(&mut self, addr: u64) -> Result<()> {
        self.mem.free(addr)
    }

    pub fn write(&mut self, addr: u64, data: &[u8]) -> Result<()> {
        self.mem.write(addr, data).map_err(EmuError::Memory)
    }

    pub fn read(&self, addr: u64, out: &mut [u8]) -> Result<()> {
        self.mem.read(addr, out).map_err(EmuError::Memory)
    }

    /// Packs `args` as the driver packs `kernelParams`, refusing a count or size mismatch.
    pub fn pack_args(kernel: &Kernel, args: &[Arg]) -> Result<Vec<u8>> {
        let bad = |msg: String| EmuError::Launch {
            kernel: kernel.name.clone(),
            msg,
        };
        if args.len() != kernel.params.len() {
            return Err(bad(format!(
                "{} arguments given, the kernel declares {}",
                args.len(),
                kernel.params.len()
            )));
        }
        let mut buf = vec![0u8; kernel.param_bytes];
        for (i, (p, a)) in kernel.params.iter().zip(args).enumerate() {
            let bytes: Vec<u8> = match (a, p.ty.bytes()) {
                (Arg::Ptr(v) | Arg::U64(v), 8) => v.to_le_bytes().to_vec(),
                (Arg::U32(v), 4) => v.to_le_bytes().to_vec(),
                (Arg::I32(v), 4) => v.to_le_bytes().to_vec(),
                (Arg::F32(v), 4) if p.ty == Ty::F32 || p.ty == Ty::B32 => v.to_le_bytes().to_vec(),
                _ => {
                    return Err(bad(format!(
                        "argument {i} ({a:?}) does not fit parameter `{}` of type {:?}",
                        p.name, p.ty
                    )));
                }
            };
            buf[p.offset..p.offset + bytes.len()].copy_from_slice(&bytes);
        }
        Ok(buf)
    }

    pub fn launch(
        &mut self,
        module: &Module,
        name: &str,
        cfg: &LaunchConfig,
        args: &[Arg],
    ) -> Result<LaunchStats> {
        let kernel = module.kernel(name)?;
        let params = Self::pack_args(kernel, args)?;
        self.launch_packed(kernel, cfg, &params)
    }

    /// Launches with an already packed parameter buffer (what `cuLaunchKernel` receives).
    pub fn launch_packed(
        &mut self,
        kernel: &Kernel,
        cfg: &LaunchConfig,
        params: &[u8],
    ) -> Result<LaunchStats> {
        check_limits(kernel, cfg)?;
        if params.len() < kernel.param_bytes {
            return Err(EmuError::Launch {
                kernel: kernel.name.clone(),
                msg: format!(
                    "{} parameter bytes given, the kernel needs {}",
                    params.len(),
                    kernel.param_bytes
                ),
            });
        }
        let shared_bytes = match kernel.dynamic_shared_offset {
            Some(at) => at + cfg.dynamic_shared as usize,
            None => kernel.static_shared,
        };
        let [gx, gy, _] = cfg.grid;
        let blocks = cfg.grid.iter().map(|&d| u64::from(d)).product::<u64>();
        let ctaid = |b: u64| {
            let (gx, gy) = (u64::from(gx), u64::from(gy));
            [
                (b % gx) as u32,
                (b / gx % gy) as u32,
                (b / (gx * gy)) as u32,
            ]
        };
        let base = &self.mem;
        let counting = self.counting;
        let run = |b: u64| -> Result<BlockResult> {
            let mut shared = SharedMemory::new(shared_bytes);
            let mut trace = Vec::new();
            let mut env = BlockEnv {
                kernel,
                params,
                ctaid: ctaid(b),
                ntid: cfg.block,
                nctaid: cfg.grid,
                global: BlockGlobal::new(base),
                shared: &mut shared,
                trace: counting.then_some(&mut trace),
            };
            let instructions = run_block(&mut env)?;
            let writes = env.global.writes;
            let mut counters = Counters::default();
            if counting {
                counters::count(&mut trace, &mut counters);
            }
            Ok(BlockResult {
                instructions,
                counters,
                writes,
            })
        };
        let mut stats = LaunchStats::default();
        let mut launch_writes = LaunchWrites::default();
        // Blocks run in parallel a chunk at a time, so a faulting launch stops soon and the
        // first fault in block order is the one reported, whatever the thread count.
        let mut first = 0;
        while first < blocks {
            let last = (first + BLOCK_CHUNK).min(blocks);
            let done: Vec<Result<BlockResult>> = (first..last).into_par_iter().map(run).collect();
            for (b, r) in (first..last).zip(done) {
                let r = r?;
                stats.instructions += r.instructions;
                stats.blocks += 1;
                stats.counters.add(&r.counters);
                launch_writes
                    .merge(b, r.writes)
                    .map_err(|race| race_error(kernel, cfg, &ctaid, race))?;
            }
            first = last;
        }
        launch_writes
            .apply(&mut self.mem)
            .map_err(EmuError::Memory)?;
        stats.counters.thread_instructions = stats.instructions;
        if let Some(path) = &self.counters_file {
            append_counters(path, kernel, cfg, &stats)?;
        }
        Ok(stats)
    }
}

/// Blocks started together: enough to keep every core busy, few enough that a fault in an
/// early block does not wait on thousands of later ones.
const BLOCK_CHUNK: u64 = 256;

struct BlockResult {
    instructions: u64,
    counters: Counters,
    writes: BlockWrites,
}

fn race_error(
    k: &Kernel,
    cfg: &LaunchConfig,
    ctaid: &dyn Fn(u64) -> [u32; 3],
    race: Race,
) -> EmuError {
    let [bx, by, _] = cfg.block;
    let tid = |t: u32| [t % bx, t / bx % by, t / (bx * by)];
    let (b1, t1, l1) = race.first;
    let (b2, t2, l2) = race.second;
    EmuError::Fault {
        kernel: k.name.clone(),
        block: ctaid(b2),
        thread: tid(t2),
        line: l2 as usize,
        msg: format!(
            "writes global {:#x}, which block {:?} thread {:?} (PTX line {l1}) also wrote in this launch: \
             blocks are unordered, so which value survives depends on scheduling",
            race.addr,
            ctaid(b1),
            tid(t1)
        ),
    }
}

fn check_limits(k: &Kernel, cfg: &LaunchConfig) -> Result<()> {
    let bad = |msg: String| {
        Err(EmuError::Launch {
            kernel: k.name.clone(),
            msg,
        })
    };
    let [bx, by, bz] = cfg.block;
    let [gx, gy, gz] = cfg.grid;
    if [bx, by, bz, gx, gy, gz].contains(&0) {
        return bad(format!(
            "grid {:?} and block {:?} must have every dimension ≥ 1",
            cfg.grid, cfg.block
        ));
    }
    let threads = bx as u64 * by as u64 * bz as u64;
    if threads > 1024 || bx > 1024 || by > 1024 || bz > 64 {
        return bad(format!(
            "block {:?}: at most 1024 threads, x,y ≤ 1024, z ≤ 64",
            cfg.block
        ));
    }
    if let Some([mx, my, mz]) = k.maxntid
        && threads > mx as u64 * my as u64 * mz as u64
    {
        return bad(format!(
            "block of {threads} threads exceeds the kernel's .maxntid {mx},{my},{mz}"
        ));
    }
    if gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
        return bad(format!("grid {:?}: x < 2^31, y and z ≤ 65535", cfg.grid));
    }
    let dynamic = cfg.dynamic_shared as usize;
    let total = k.dynamic_shared_offset.unwrap_or(k.static_shared) + dynamic;
    if k.static_shared > SHARED_DEFAULT_LIMIT {
        return bad(format!(
            "{} bytes of static shared memory exceed 48 KiB",
            k.static_shared
        ));
    }
    if total > SHARED_DEFAULT_LIMIT
        && (dynamic > cfg.max_dynamic_shared as usize || total > SHARED_OPT_IN_LIMIT)
    {
        return bad(format!(
            "{total} bytes of shared memory ({dynamic} dynamic) need the max-dynamic-shared-size attribute \
             set to at least {dynamic} (it is {}), and at most {SHARED_OPT_IN_LIMIT} in all",
            cfg.max_dynamic_shared
        ));
    }
    Ok(())
}

fn append_counters(
    path: &std::path::Path,
    k: &Kernel,
    cfg: &LaunchConfig,
    stats: &LaunchStats,
) -> Result<()> {
    use std::io::Write;
    let line = serde_json::json!({
        "kernel": k.name,
        "grid": cfg.grid,
        "block": cfg.block,
        "dynamic_shared_bytes": cfg.dynamic_shared,
        "static_shared_bytes": k.static_shared,
        "blocks": stats.blocks,
        "counters": stats.counters,
        "global_load_efficiency": stats.counters.global_load_efficiency(),
        "global_store_efficiency": stats.counters.global_store_efficiency(),
    });
    let io = |e: std::io::Error| {
        EmuError::Memory(format!("writing counters to {}: {e}", path.display()))
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    writeln!(f, "{line}").map_err(io)
}
