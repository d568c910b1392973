//! What benchmarks (`asyncthink bench-gpu`) need from the device beyond the `Backend` ops:
//! draining the stream, timing queued work with CUDA events, a device-to-device copy as the
//! bandwidth yardstick, and facts about the device (memory, driver, SM count).

use cudarc::driver::sys::{CUevent_flags, cuDriverGetVersion};

use super::device::{CudaBackend, cuda_err};
use crate::Result;

impl CudaBackend {
    /// Waits until every op queued on the backend's stream has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream()
            .synchronize()
            .map_err(|e| cuda_err(format!("stream synchronize: {e:?}")))
    }

    /// (free, total) device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.inner
            .ctx
            .mem_get_info()
            .map_err(|e| cuda_err(format!("memory info: {e:?}")))
    }

    /// Streaming multiprocessors on the device.
    pub fn sm_count(&self) -> usize {
        self.inner.sm_count
    }

    /// The newest CUDA version the installed driver supports, as (major, minor).
    pub fn driver_cuda_version(&self) -> Result<(i32, i32)> {
        let mut v = 0i32;
        // SAFETY: libcuda is loaded (this backend exists, so `new` found and initialised it);
        // the call writes one int through a pointer to a live local.
        unsafe { cuDriverGetVersion(&mut v) }
            .result()
            .map_err(|e| cuda_err(format!("cuDriverGetVersion: {e:?}")))?;
        Ok((v / 1000, (v % 1000) / 10))
    }

    /// Milliseconds of device time between the start and the end of the work `f` queues.
    /// The stream is drained first, so earlier work is not counted; host time spent inside
    /// `f` while the device idles is (it is part of what an op costs).
    pub fn time_ms(&self, f: impl FnOnce() -> Result<()>) -> Result<f64> {
        self.synchronize()?;
        let err = |e| cuda_err(format!("timing event: {e:?}"));
        // Timing events (the default flag); cudarc's own default disables timing.
        let flags = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let start = self.stream().record_event(flags).map_err(err)?;
        f()?;
        let end = self.stream().record_event(flags).map_err(err)?;
        // elapsed_ms waits for both events.
        Ok(start.elapsed_ms(&end).map_err(err)? as f64)
    }

    /// Milliseconds of each of `repeats` device-to-device copies of `bytes` bytes between
    /// two fresh buffers, after `warmup` untimed copies. Each copy reads and writes `bytes`.
    pub fn time_copy_ms(&self, bytes: usize, warmup: usize, repeats: usize) -> Result<Vec<f64>> {
        let err = |e| cuda_err(format!("copy of {bytes} bytes: {e:?}"));
        let s = self.stream().clone();
        let src = s.alloc_zeros::<u8>(bytes.max(1)).map_err(err)?;
        let mut dst = s.alloc_zeros::<u8>(bytes.max(1)).map_err(err)?;
        for _ in 0..warmup {
            s.memcpy_dtod(&src, &mut dst).map_err(err)?;
        }
        (0..repeats)
            .map(|_| self.time_ms(|| s.memcpy_dtod(&src, &mut dst).map_err(err)))
            .collect()
    }
}

impl CudaBackend {
    /// The device's default memory pool, which cudarc's stream-ordered allocations draw from.
    fn default_pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool> {
        let mut pool = std::ptr::null_mut();
        // SAFETY: the context is live; the call writes one pool handle through a pointer to a
        // live local.
        unsafe {
            cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, self.inner.ctx.cu_device())
        }
        .result()
        .map_err(|e| cuda_err(format!("default memory pool: {e:?}")))?;
        Ok(pool)
    }

    /// The most bytes the default pool has had in use since the last `reset_peak_memory`:
    /// the true high-water mark of the backend's buffers (not a sample after the fact).
    pub fn peak_memory_bytes(&self) -> Result<u64> {
        use cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        let pool = self.default_pool()?;
        let mut v = 0u64;
        // SAFETY: a valid pool handle; USED_MEM_HIGH is a u64 attribute written into `v`.
        unsafe {
            cudarc::driver::sys::cuMemPoolGetAttribute(
                pool,
                CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut v) as *mut u64 as *mut _,
            )
        }
        .result()
        .map_err(|e| cuda_err(format!("memory pool peak: {e:?}")))?;
        Ok(v)
    }

    /// Starts a new high-water mark for `peak_memory_bytes`.
    pub fn reset_peak_memory(&self) -> Result<()> {
        use cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
        self.synchronize()?;
        let pool = self.default_pool()?;
        let mut zero = 0u64;
        // SAFETY: a valid pool handle; resetting USED_MEM_HIGH takes a u64 zero.
        unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                (&mut zero) as *mut u64 as *mut _,
            )
        }
        .result()
        .map_err(|e| cuda_err(format!("memory pool peak reset: {e:?}")))
    }
}
