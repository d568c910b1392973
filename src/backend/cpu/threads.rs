//! The CPU backend's threads: rayon's global pool, with the thread that drives the engine
//! as one of its workers.
//!
//! A parallel op started from a thread outside the pool is injected into the pool while
//! the caller sleeps on a latch: two context switches per op, dozens of ops per decode
//! step. With the driving thread inside the pool the op runs in place and the other
//! workers steal from it, which on a small model is most of a step's overhead.

use crate::{Error, Result};

/// Builds rayon's global pool with the calling thread as worker 0 and `threads` workers in
/// all (default: `RAYON_NUM_THREADS`, else every core). Call it on the thread that will
/// run the engine, before any parallel work. When the pool exists already (a test process, a second server) the
/// existing one is kept, unless `threads` asked for a size, which is then an error.
pub fn drive_from_this_thread(threads: Option<usize>) -> Result<()> {
    if threads == Some(0) {
        return Err(Error::InvalidInput("--threads must be at least 1".into()));
    }
    // 0 lets rayon choose as it would lazily: RAYON_NUM_THREADS, else every core.
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .use_current_thread()
        .build_global();
    match (built, threads) {
        (Ok(()), _) | (Err(_), None) => Ok(()),
        (Err(e), Some(n)) => Err(Error::InvalidInput(format!(
            "--threads {n}: cannot set up the thread pool: {e}"
        ))),
    }
}
