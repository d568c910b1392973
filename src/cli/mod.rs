//! The `asyncthink` command line: one file per subcommand.

/// Runs `$body` with `$backend` bound to the backend `$device` names (on the CPU at
/// `$precision`, on CUDA with `$graphs`' CUDA-graph settings, graphs on when not given).
/// A macro, not a function
/// taking a closure: the body is generic over the backend type, which a closure cannot be.
macro_rules! on_device {
    ($device:expr, $precision:expr, $backend:ident => $body:expr) => {
        on_device!($device, $precision, $crate::cli::CudaGraphArgs::on(), $backend => $body)
    };
    ($device:expr, $precision:expr, $graphs:expr, $backend:ident => $body:expr) => {
        match $device {
            $crate::cli::Device::Cpu => {
                let $backend = $crate::backend::cpu::CpuBackend::new($precision);
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::cli::Device::Cuda => {
                let $backend = $graphs.cuda_backend()?;
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::cli::Device::Cuda => Err($crate::Error::InvalidInput(
                "--device cuda: this binary was built without the `cuda` feature".into(),
            )),
        }
    };
}

mod batch;
mod bench;
mod bench_batch;
mod bench_executor;
mod bench_gpu;
pub mod data;
mod demo;
pub mod eval;
mod experiment;
mod generate;
#[cfg(feature = "cuda")]
mod gpu_probe;
pub mod grpo;
#[cfg(feature = "cuda")]
mod kernels;
mod logits;
mod progress;
mod serve;
mod sft;
pub mod think;
mod validate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::model::ModelSource;
use crate::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "asyncthink",
    version,
    about = "Qwen3 engine for asynchronous thinking"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate text from a prompt (chat template applied unless --raw).
    Generate(generate::GenerateArgs),
    /// Print the logits of every position as JSON.
    Logits(logits::LogitsArgs),
    /// Run a JSONL file of requests through the batching engine.
    Batch(batch::BatchArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions).
    Serve(serve::ServeArgs),
    /// Measure prefill and decode tokens/s; writes JSON.
    Bench(bench::BenchArgs),
    /// Measure engine throughput against concurrency, and prefix-sharing memory; writes JSON.
    BenchBatch(bench_batch::BenchBatchArgs),
    /// Measure the AsyncThink executor against the engine with a scripted policy; writes JSON.
    BenchExecutor(bench_executor::BenchExecutorArgs),
    /// Every GPU figure in one run: copy bandwidth, GEMM, paged attention, batch-1 decode
    /// and offline throughput of a random Qwen3-0.6B-shaped model; writes JSON.
    BenchGpu(bench_gpu::BenchGpuArgs),
    /// The whole pipeline at a tiny scale: traces, SFT, GRPO, AsyncThink vs baselines.
    Demo(demo::DemoArgs),
    /// The AsyncThink experiment: a fresh model learns the products task by SFT and GRPO
    /// and is measured against sequential and parallel thinking, with ablations (~40 min on
    /// 2 cores).
    Experiment(experiment::ExperimentArgs),
    /// One question through the AsyncThink executor (organizer + workers).
    Think(think::ThinkArgs),
    /// A task file through AsyncThink or a baseline: accuracy, latency, concurrency.
    Eval(eval::EvalArgs),
    /// GRPO on a task file: rewards for accuracy, format and concurrency.
    Grpo(grpo::GrpoArgs),
    /// Supervised fine-tuning on chat JSONL, with checkpoints and resume.
    Sft(sft::SftArgs),
    /// Tasks, verifiers and cold-start fork/join traces.
    Data {
        #[command(subcommand)]
        cmd: data::DataCommand,
    },
    /// CUDA kernels: compile them through NVRTC for an architecture (no GPU needed).
    #[cfg(feature = "cuda")]
    Kernels {
        #[command(subcommand)]
        cmd: kernels::KernelsCommand,
    },
    /// Check the GPU before trusting it: driver, device, a kernel launch and a cuBLAS GEMM
    /// against the CPU, and the CUDA libraries really loaded; exits 1 naming what failed.
    #[cfg(feature = "cuda")]
    GpuProbe(gpu_probe::GpuProbeArgs),
}

/// Model location and CPU threads, shared by every subcommand that runs a model.
/// Where a command runs its model.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The rayon reference backend (f32).
    #[default]
    Cpu,
    /// GPU 0 through the CUDA backend (bf16; needs the CUDA driver, NVRTC and cuBLAS).
    Cuda,
}

/// CUDA graphs for decode steps (on by default, as in vLLM; docs/kernels.md).
#[derive(Args, Debug, Clone)]
pub struct CudaGraphArgs {
    /// --device cuda: run decode steps op by op instead of replaying a CUDA graph per batch
    /// size bucket (vLLM's switch of the same name).
    #[arg(long)]
    pub enforce_eager: bool,
    /// --device cuda: largest decode batch replayed from a graph (buckets 1, 2, 4, …, 256 up
    /// to this); larger decode steps run eagerly.
    #[arg(long, default_value_t = crate::backend::decode_graph::DEFAULT_MAX_BUCKET)]
    pub max_graph_batch: usize,
}

impl CudaGraphArgs {
    /// Graphs on unless --enforce-eager; the default when no flags were parsed.
    pub fn on() -> Self {
        CudaGraphArgs {
            enforce_eager: false,
            max_graph_batch: crate::backend::decode_graph::DEFAULT_MAX_BUCKET,
        }
    }

    #[cfg(feature = "cuda")]
    pub fn apply(&self, be: &crate::backend::cuda::CudaBackend) {
        use crate::backend::cuda::GraphMode;
        let mode = if self.enforce_eager {
            GraphMode::Eager
        } else {
            GraphMode::Graphs
        };
        be.set_cuda_graphs(mode, self.max_graph_batch);
    }

    /// The backend for --device cuda, GPU 0, with these settings.
    #[cfg(feature = "cuda")]
    pub fn cuda_backend(&self) -> Result<crate::backend::cuda::CudaBackend> {
        let be = crate::backend::cuda::CudaBackend::new(0)?;
        self.apply(&be);
        Ok(be)
    }
}

/// How much memory the KV cache gets.
#[derive(Args, Debug, Clone, PartialEq)]
pub struct KvMemoryArgs {
    /// KV cache memory in MiB. Default: on the CPU, what --max-num-seqs sequences at the
    /// model's full length can fill, at most 1024; on a GPU, what --gpu-memory-utilization
    /// leaves.
    #[arg(long)]
    pub kv_cache_mb: Option<usize>,
    /// Fraction of the GPU's memory this process may use (weights, activations and KV cache
    /// together), as vLLM's flag.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f32,
}

impl KvMemoryArgs {
    pub fn fixed_mb(mb: usize) -> Self {
        KvMemoryArgs {
            kv_cache_mb: Some(mb),
            gpu_memory_utilization: 0.9,
        }
    }

    /// `cfg` with as many KV blocks as these flags give `model` on its backend.
    pub fn apply<B: crate::backend::Backend>(
        &self,
        cfg: crate::engine::EngineConfig,
        model: &crate::model::Qwen3<B>,
    ) -> Result<crate::engine::EngineConfig> {
        cfg.with_kv_memory(model, self.kv_cache_mb, self.gpu_memory_utilization)
    }
}

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, safetensors, tokenizer.json).
    /// Without it: the trained products model embedded in the binary
    /// (models/asyncthink-products); `demo` and `experiment` start from a fresh model instead.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Load the weights without checking them for NaN and Inf. The check is one pass over
    /// the weights as they load; a corrupt checkpoint then fails later, at its first NaN
    /// logits, request by request.
    #[arg(long)]
    pub skip_weight_check: bool,
    /// Arithmetic of the CPU backend: `f32` (the reference the parity tests hold against
    /// transformers' f32 run) or `bf16` (rounds where transformers' bf16 run rounds; its
    /// products run on the CPU's bf16 units, AMX where present). Both are batch-invariant.
    /// Ignored by --device cuda, which computes in bf16.
    #[arg(long, default_value_t = crate::backend::cpu::Precision::F32)]
    pub precision: crate::backend::cpu::Precision,
}

impl ModelArgs {
    pub fn source(&self) -> ModelSource {
        ModelSource::from_arg(self.model.as_deref())
    }

    /// The CPU backend at --precision.
    pub fn cpu_backend(&self) -> crate::backend::cpu::CpuBackend {
        crate::backend::cpu::CpuBackend::new(self.precision)
    }

    /// Process-wide settings every model-running command applies first: CPU threads (with
    /// this thread, which drives the engine, in the pool) and the load-time weight check.
    pub fn init_threads(&self) -> Result<()> {
        if self.precision == crate::backend::cpu::Precision::Bf16 {
            let kernel = crate::backend::cpu::bf16_linear::Bf16Kernel::best();
            eprintln!("cpu precision bf16: products on {}", kernel.name());
        }
        crate::model::checkpoint::set_weight_check(!self.skip_weight_check);
        crate::backend::cpu::threads::drive_from_this_thread(self.threads)
    }
}

/// Parses "1,2,3" (spaces allowed) into token ids.
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| Error::InvalidInput(format!("--ids: {t:?} is not a token id")))
        })
        .collect()
}

/// A comma-separated list of integers, each at least `min`, for flag `flag`.
pub fn parse_usize_list(flag: &str, s: &str, min: usize) -> Result<Vec<usize>> {
    s.split(',')
        .map(|t| t.trim().parse::<usize>().ok().filter(|&n| n >= min))
        .collect::<Option<_>>()
        .ok_or_else(|| Error::InvalidInput(format!("{flag} {s:?}: expected integers >= {min}")))
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Logits(a) => logits::run(a),
        Command::Batch(a) => batch::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchBatch(a) => bench_batch::run(a),
        Command::BenchExecutor(a) => bench_executor::run(a),
        Command::BenchGpu(a) => bench_gpu::run(a),
        Command::Data { cmd } => data::run(cmd),
        Command::Sft(a) => sft::run(a),
        Command::Think(a) => think::run(a),
        Command::Demo(a) => demo::run(a),
        Command::Grpo(a) => grpo::run(a),
        Command::Eval(a) => eval::run(a),
        #[cfg(feature = "cuda")]
        Command::Kernels { cmd } => kernels::run(cmd),
        #[cfg(feature = "cuda")]
        Command::GpuProbe(a) => gpu_probe::run(a),
    }
}

/// Token-budget flags take 1 or more: as in vLLM and the OpenAI API, a request for zero
/// new tokens is refused rather than quietly producing one.
pub fn token_budget() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}
