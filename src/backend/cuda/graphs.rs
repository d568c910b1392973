//! CUDA graphs of pure-decode steps, one per batch-size bucket (docs/kernels.md, "CUDA graphs").
//!
//! A decode step of `n` sequences is padded to its bucket (`backend::decode_graph`). Each
//! bucket owns persistent device buffers: the packed u32 metadata (token ids, positions,
//! slots, row tables, logits rows, block tables padded to the longest context), the RoPE
//! frequencies, and the logits `[bucket, vocab]`. A step uploads the metadata with one copy,
//! then replays the bucket's graph, then copies its `n` real rows of logits out.
//!
//! While a step's metadata is *active* (warm-up and capture), ops read it from the persistent
//! buffers instead of uploading their own copy, and attention uses the bucket's fixed split
//! count; outside a graph step nothing changes.
//!
//! The first step of a bucket runs the padded forward eagerly (the warm-up: kernels loaded,
//! cuBLAS heuristics chosen; its logits are that step's answer), then captures the same
//! forward into a graph. Capture only records, so the cache is written once.
//!
//! Memory inside the capture: cudarc allocates with `cuMemAllocAsync` on the stream, which
//! capture turns into graph memory nodes. Every intermediate tensor of the forward is dropped
//! inside the capture (a free node), so the graph owns no memory across replays. The output
//! is the exception: the forward's logits tensor is copied (a device-to-device node) into the
//! bucket's `logits` buffer, allocated before the capture, and then dropped inside it too.
//! The graph's transient memory comes from the driver's graph memory pool and stays reserved
//! for replays: about one forward's peak of intermediates per bucket.
//!
//! Invalidation: a graph holds device addresses of the weights, the KV pools and its own
//! buffers, and every scalar of every launch. Each step fingerprints the weights' and pools'
//! addresses, the cache layout and the model's launch key (config, RoPE); a different
//! fingerprint drops every graph (recaptured lazily). In-place weight updates (AdamW) keep the
//! addresses, so replays read the new weights; anything that reallocates changes the
//! fingerprint.
//!
//! Threads: the backend has one stream. A graph step holds the graph state's lock from the
//! metadata upload to the end of capture or replay, so graph steps never interleave, but
//! other work launched on the same backend from another thread during a capture would be
//! recorded into the graph (or break it). The engine, the executor and GRPO drive a backend
//! from one thread; sharing one across threads mid-step is not supported.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::ThreadId;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaSlice, DevicePtr};
use half::bf16;

use super::device::{CudaBackend, cuda_err};
use super::ops::{CudaKvCache, CudaTensor, CudaWeight};
use crate::Result;
use crate::backend::decode_graph::{
    DEFAULT_MAX_BUCKET, DecodePlan, MetaField, MetaLayout, bucket_for, graph_decode_splits,
    max_pages,
};
use crate::backend::{EagerForward, StepContext};
use crate::model::batch::ForwardBatch;

// Decode attention's limits: larger GQA groups use the prefill kernel, whose tiles are built
// per batch, so those models run every step eagerly.
use super::attention::{MAX_DECODE_GROUP, MAX_HEAD_DIM};

/// How pure-decode steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphMode {
    /// Op by op, exactly as every other step (`--enforce-eager`).
    Eager,
    /// Padded to the bucket with its persistent metadata and fixed splits, but never captured:
    /// the same kernels and shapes as a replay (tests compare the two bit for bit).
    Padded,
    /// Captured on a bucket's first step, replayed afterwards (the default).
    Graphs,
}

/// Counters for tests and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct GraphStats {
    /// Graphs captured (a recapture after invalidation counts again).
    pub captures: u64,
    pub replays: u64,
    /// Steps that ran padded but eagerly (warm-ups, `Padded` mode, failed captures).
    pub padded_eager: u64,
    /// Times every graph was dropped because weights or the cache moved.
    pub invalidations: u64,
    /// Buckets whose capture failed; they run padded and eager from then on.
    pub failed_buckets: Vec<usize>,
    /// Buckets holding a graph now.
    pub live_buckets: Vec<usize>,
}

/// A captured graph. `CudaGraph` holds raw driver handles and so is neither Send nor Sync.
struct SendGraph(CudaGraph);

// SAFETY: CUDA graph objects may be used from any thread provided calls on one object are
// serialized (CUDA driver API, "Graph object thread safety"); every access goes through the
// `GraphState` mutex, and the graph's stream is the backend's own.
unsafe impl Send for SendGraph {}

/// Persistent buffers of one bucket, read by the ops while its step is active.
pub(super) struct StepMeta {
    pub layout: MetaLayout,
    /// Fixed decode attention split of this bucket.
    pub splits: usize,
    pub pages_per_split: usize,
    /// Host copy of what `dev` holds (ops check that their arguments match it).
    pub host: Vec<u32>,
    pub dev: CudaSlice<u32>,
    pub freq_host: Vec<f32>,
    pub freq: CudaSlice<f32>,
}

impl StepMeta {
    /// The device address of `field` if the op's host data is exactly what was uploaded.
    fn field_ptr(&self, be: &CudaBackend, field: MetaField, host: &[u32]) -> Option<u64> {
        let range = self.layout.range(field);
        if self.host[range.clone()] != *host {
            return None;
        }
        let (base, _guard) = self.dev.device_ptr(be.stream());
        Some(base + (range.start * std::mem::size_of::<u32>()) as u64)
    }
}

struct Bucket {
    meta: Arc<StepMeta>,
    logits: CudaSlice<bf16>,
    graph: Option<SendGraph>,
    failed: bool,
}

pub(super) struct GraphState {
    mode: GraphMode,
    max_bucket: usize,
    fingerprint: Option<u64>,
    buckets: HashMap<usize, Bucket>,
    stats: GraphStats,
}

impl Default for GraphState {
    fn default() -> Self {
        GraphState {
            mode: GraphMode::Graphs,
            max_bucket: DEFAULT_MAX_BUCKET,
            fingerprint: None,
            buckets: HashMap::new(),
            stats: GraphStats::default(),
        }
    }
}

/// The step whose metadata the ops read, on the thread running it.
pub(super) struct ActiveStep {
    thread: ThreadId,
    pub meta: Arc<StepMeta>,
    /// Inside a stream capture: nothing may be uploaded (pageable copies are not capturable).
    pub capturing: bool,
}

/// A u32 argument of a kernel: the step's persistent buffer, or a fresh upload. Either way
/// the kernel gets a device address; the owner stays alive until the launch is queued.
#[allow(dead_code)] // the Arc is held, not read: it keeps the buffer alive
pub(super) enum MetaArg {
    Uploaded(CudaSlice<u32>),
    Persistent(u64, Arc<StepMeta>),
}

impl MetaArg {
    pub fn ptr(&self, be: &CudaBackend) -> u64 {
        match self {
            MetaArg::Uploaded(s) => s.device_ptr(be.stream()).0,
            MetaArg::Persistent(p, _) => *p,
        }
    }
}

/// Clears the active step when dropped (also on an error or a panic inside the forward).
struct ActiveGuard<'a>(&'a CudaBackend);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        *lock(&self.0.inner.active) = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CudaBackend {
    /// How pure-decode steps run from now on (default `Graphs`), and the largest bucket
    /// (steps with more sequences run eagerly). Drops every captured graph and zeroes the
    /// counters.
    pub fn set_cuda_graphs(&self, mode: GraphMode, max_bucket: usize) {
        let mut g = lock(&self.inner.graphs);
        g.mode = mode;
        g.max_bucket = max_bucket;
        g.buckets.clear();
        g.fingerprint = None;
        g.stats = GraphStats::default();
    }

    pub fn graph_mode(&self) -> GraphMode {
        lock(&self.inner.graphs).mode
    }

    pub fn graph_stats(&self) -> GraphStats {
        let g = lock(&self.inner.graphs);
        let mut s = g.stats.clone();
        s.live_buckets = g
            .buckets
            .iter()
            .filter(|(_, b)| b.graph.is_some())
            .map(|(&k, _)| k)
            .collect();
        s.live_buckets.sort_unstable();
        s
    }

    /// The active step's metadata, if this thread is running one.
    pub(super) fn active_step(&self) -> Option<(Arc<StepMeta>, bool)> {
        let a = lock(&self.inner.active);
        a.as_ref()
            .filter(|a| a.thread == std::thread::current().id())
            .map(|a| (a.meta.clone(), a.capturing))
    }

    pub(super) fn capturing(&self) -> bool {
        self.active_step().is_some_and(|(_, c)| c)
    }

    /// `host` on the device for a kernel: the active step's copy of `field` when it holds
    /// exactly this data, else an upload (refused while capturing).
    pub(super) fn meta_arg(&self, field: MetaField, host: &[u32]) -> Result<MetaArg> {
        if let Some((meta, capturing)) = self.active_step() {
            if let Some(p) = meta.field_ptr(self, field, host) {
                return Ok(MetaArg::Persistent(p, meta));
            }
            if capturing {
                return Err(cuda_err(format!(
                    "{field:?} differs from the step's metadata inside a graph capture"
                )));
            }
        }
        Ok(MetaArg::Uploaded(self.upload(host)?))
    }

    /// RoPE frequencies for a kernel: the active step's persistent copy, or an upload.
    pub(super) fn freq_arg(&self, host: &[f32]) -> Result<(u64, FreqOwner)> {
        if let Some((meta, capturing)) = self.active_step() {
            if meta.freq_host == host {
                let p = meta.freq.device_ptr(self.stream()).0;
                return Ok((p, FreqOwner::Persistent(meta)));
            }
            if capturing {
                return Err(cuda_err(
                    "RoPE frequencies differ from the step's inside a graph capture",
                ));
            }
        }
        let s = self.upload(host)?;
        let p = s.device_ptr(self.stream()).0;
        Ok((p, FreqOwner::Uploaded(s)))
    }

    /// Decode attention's (splits, pages per split) when the active step fixes them.
    pub(super) fn fixed_decode_split(&self, rows: usize) -> Option<(usize, usize, usize)> {
        self.active_step()
            .filter(|(m, _)| m.layout.bucket == rows)
            .map(|(m, _)| (m.splits, m.pages_per_split, m.layout.max_pages))
    }

    fn set_active(&self, meta: &Arc<StepMeta>, capturing: bool) -> ActiveGuard<'_> {
        *lock(&self.inner.active) = Some(ActiveStep {
            thread: std::thread::current().id(),
            meta: meta.clone(),
            capturing,
        });
        ActiveGuard(self)
    }

    /// Rows `0..n` of a `[_, cols]` buffer as a fresh tensor.
    fn first_rows(&self, src: &CudaSlice<bf16>, n: usize, cols: usize) -> Result<CudaTensor> {
        let mut out = self.tensor(n, cols)?;
        if n * cols > 0 {
            self.stream()
                .memcpy_dtod(
                    &src.slice(0..n * cols),
                    &mut out.data.slice_mut(0..n * cols),
                )
                .map_err(|e| cuda_err(format!("copy of graph logits: {e:?}")))?;
        }
        Ok(out)
    }

    pub(super) fn graph_forward_step(
        &self,
        batch: &ForwardBatch,
        kv: &mut CudaKvCache,
        ctx: &StepContext<'_, CudaWeight>,
        eager: &mut EagerForward<'_, Self>,
    ) -> Result<CudaTensor> {
        let mut g = lock(&self.inner.graphs);
        if g.mode == GraphMode::Eager {
            drop(g);
            return eager(batch, kv);
        }
        let a = ctx.attention;
        let layout = kv.layout;
        let pages = max_pages(ctx.max_model_len, &layout);
        let plan = bucket_for(batch.num_tokens(), g.max_bucket)
            .filter(|_| {
                a.num_kv_heads > 0
                    && a.num_heads.is_multiple_of(a.num_kv_heads)
                    && a.num_heads / a.num_kv_heads <= MAX_DECODE_GROUP
                    && a.head_dim <= MAX_HEAD_DIM
            })
            .and_then(|bucket| DecodePlan::build(batch, bucket, pages, &layout, ctx.vocab_size));
        let Some(plan) = plan else {
            drop(g);
            return eager(batch, kv);
        };

        let fp = self.fingerprint(kv, ctx);
        if g.fingerprint != Some(fp) {
            if !g.buckets.is_empty() {
                g.stats.invalidations += 1;
            }
            g.buckets.clear();
            g.fingerprint = Some(fp);
        }
        let bucket_size = plan.layout.bucket;
        let mode = g.mode;
        let vocab = ctx.vocab_size;
        let GraphState { buckets, stats, .. } = &mut *g;
        let bucket = match buckets.entry(bucket_size) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_)
                if stats.failed_buckets.contains(&bucket_size) =>
            {
                return eager(batch, kv);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                match self.new_bucket(&plan, ctx, layout.block_size) {
                    Ok(b) => e.insert(b),
                    // Out of memory for the bucket's buffers: this size runs eagerly.
                    Err(err) => {
                        eprintln!(
                            "warning: no CUDA graph for decode bucket {bucket_size}, it runs \
                             eagerly: {err}"
                        );
                        stats.failed_buckets.push(bucket_size);
                        return eager(batch, kv);
                    }
                }
            }
        };

        // The one metadata upload of the step. Stream order puts it after the previous
        // replay's reads and before this step's kernels.
        {
            let meta = Arc::get_mut(&mut bucket.meta)
                .ok_or_else(|| cuda_err("graph metadata still shared after a step"))?;
            meta.host.copy_from_slice(&plan.meta);
            self.stream()
                .memcpy_htod(&plan.meta, &mut meta.dev)
                .map_err(|e| cuda_err(format!("graph metadata upload: {e:?}")))?;
        }

        match bucket.graph.as_ref().map(|graph| graph.0.launch()) {
            Some(Ok(())) => {
                stats.replays += 1;
                return self.first_rows(&bucket.logits, plan.real, vocab);
            }
            // A launch the driver refuses (e.g. no memory to map the graph's pool) leaves the
            // step to the padded eager path below, and the bucket to it from then on.
            Some(Err(e)) => {
                eprintln!(
                    "warning: CUDA graph launch of decode bucket {bucket_size} failed, it runs \
                     eagerly: {e:?}"
                );
                bucket.graph = None;
                bucket.failed = true;
                stats.failed_buckets.push(bucket_size);
            }
            None => {}
        }

        // Warm-up (or every step, in Padded mode or after a failed capture): the padded
        // forward, eagerly, over the persistent metadata.
        let out = {
            let _active = self.set_active(&bucket.meta, false);
            eager(&plan.batch, kv)?
        };
        stats.padded_eager += 1;
        let result = self.first_rows(&out.data, plan.real, vocab)?;
        drop(out);
        if mode == GraphMode::Graphs && !bucket.failed {
            match self.capture(bucket, &plan.batch, kv, eager, vocab) {
                Ok(graph) => {
                    bucket.graph = Some(SendGraph(graph));
                    stats.captures += 1;
                }
                Err(e) => {
                    eprintln!(
                        "warning: CUDA graph capture of decode bucket {bucket_size} failed, \
                         it runs eagerly: {e}"
                    );
                    bucket.failed = true;
                    stats.failed_buckets.push(bucket_size);
                }
            }
        }
        Ok(result)
    }

    /// Records the padded forward into a graph whose output lands in `bucket.logits`.
    fn capture(
        &self,
        bucket: &mut Bucket,
        batch: &ForwardBatch,
        kv: &mut CudaKvCache,
        eager: &mut EagerForward<'_, Self>,
        vocab: usize,
    ) -> Result<CudaGraph> {
        let stream = self.stream();
        let n = bucket.meta.layout.bucket * vocab;
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| cuda_err(format!("begin capture: {e:?}")))?;
        let recorded = {
            let _active = self.set_active(&bucket.meta, true);
            eager(batch, kv).and_then(|out| {
                if out.data.len() < n {
                    return Err(cuda_err("captured forward returned too few logits"));
                }
                stream
                    .memcpy_dtod(&out.data.slice(0..n), &mut bucket.logits)
                    .map_err(|e| cuda_err(format!("captured logits copy: {e:?}")))
                // `out` and every intermediate are dropped here, inside the capture.
            })
        };
        // Always end the capture, so the stream leaves capture mode whatever happened. cudarc
        // keeps errors of Drop (e.g. a free inside an invalidated capture) and returns them
        // from the next call's context check, which would make `end_capture` bail out before
        // ending the capture: take them first.
        let deferred = self.inner.ctx.check_err();
        let ended = stream.end_capture(CUgraphInstantiate_flags(0));
        recorded?;
        deferred.map_err(|e| cuda_err(format!("during capture: {e:?}")))?;
        let graph = ended
            .map_err(|e| cuda_err(format!("end capture: {e:?}")))?
            .ok_or_else(|| cuda_err("capture produced no graph"))?;
        graph
            .upload()
            .map_err(|e| cuda_err(format!("graph upload: {e:?}")))?;
        Ok(graph)
    }

    fn new_bucket(
        &self,
        plan: &DecodePlan,
        ctx: &StepContext<'_, CudaWeight>,
        kv_block_size: usize,
    ) -> Result<Bucket> {
        let layout = plan.layout;
        let (splits, pages_per_split) = graph_decode_splits(
            layout.bucket,
            ctx.attention,
            kv_block_size,
            self.inner.sm_count,
            layout.max_pages,
        );
        let err = |what: &'static str| move |e| cuda_err(format!("graph {what} buffer: {e:?}"));
        let dev = self
            .stream()
            .alloc_zeros::<u32>(layout.len())
            .map_err(err("metadata"))?;
        let logits = self
            .stream()
            .alloc_zeros::<bf16>((layout.bucket * ctx.vocab_size).max(1))
            .map_err(err("logits"))?;
        let freq_host = ctx.rope_inv_freq.to_vec();
        let freq = self.upload(&freq_host)?;
        Ok(Bucket {
            meta: Arc::new(StepMeta {
                layout,
                splits,
                pages_per_split,
                host: vec![0; layout.len()],
                dev,
                freq_host,
                freq,
            }),
            logits,
            graph: None,
            failed: false,
        })
    }

    /// Addresses and shapes a graph bakes in.
    fn fingerprint(&self, kv: &CudaKvCache, ctx: &StepContext<'_, CudaWeight>) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ctx.model_key.hash(&mut h);
        ctx.max_model_len.hash(&mut h);
        ctx.vocab_size.hash(&mut h);
        format!("{:?}", kv.layout).hash(&mut h);
        let s = self.stream();
        kv.k.device_ptr(s).0.hash(&mut h);
        kv.v.device_ptr(s).0.hash(&mut h);
        for w in &ctx.weights {
            w.data.device_ptr(s).0.hash(&mut h);
            w.data.len().hash(&mut h);
        }
        h.finish()
    }
}

/// Keeps the uploaded RoPE frequencies alive until their launch is queued.
#[allow(dead_code)] // held, not read
pub(super) enum FreqOwner {
    Uploaded(CudaSlice<f32>),
    Persistent(Arc<StepMeta>),
}
