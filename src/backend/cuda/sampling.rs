//! Next-token selection on the device (kernels/sampling.cu): greedy argmax, and seeded
//! temperature/top-k/top-p/min-p sampling whose draw is `counter_uniform(seed, step)`, so
//! `engine::sampling::sample_with_draw` on the host picks the same token.

use cudarc::driver::PushKernelArg;

use super::device::{CudaBackend, grid};
use super::ops::{CudaTensor, launch_err, shape_err};
use crate::Result;
use crate::engine::SamplingParams;

/// One row's sampling settings and its counter (the decode step).
#[derive(Debug, Clone)]
pub struct RowSampling {
    pub params: SamplingParams,
    pub step: u64,
}

impl CudaBackend {
    /// First index of each row's maximum.
    pub fn argmax(&self, logits: &CudaTensor) -> Result<Vec<u32>> {
        if logits.rows == 0 || logits.cols == 0 {
            return Ok(vec![0; logits.rows]);
        }
        let mut out = self
            .stream()
            .alloc_zeros::<u32>(logits.rows)
            .map_err(|e| shape_err("argmax", format!("{e:?}")))?;
        let vocab = logits.cols as i32;
        let mut b = self.stream().launch_builder(self.func("argmax")?);
        b.arg(&logits.data).arg(&mut out).arg(&vocab);
        // SAFETY: one block per row of `vocab` logits; out holds one id per row.
        unsafe { b.launch(grid(logits.rows, 1, 1, 1024)) }.map_err(launch_err("argmax"))?;
        self.stream()
            .clone_dtoh(&out)
            .map_err(|e| shape_err("argmax", format!("{e:?}")))
    }

    /// One token per row. Repetition penalty is not applied here (the host applies it to the
    /// logits when used); greedy rows (temperature 0) take the argmax.
    pub fn sample(&self, logits: &CudaTensor, rows: &[RowSampling]) -> Result<Vec<u32>> {
        if rows.len() != logits.rows {
            return Err(shape_err(
                "sample",
                format!("{} settings for {} rows", rows.len(), logits.rows),
            ));
        }
        for r in rows {
            r.params.validate()?;
        }
        if rows.iter().all(|r| r.params.is_greedy()) || logits.cols == 0 {
            return self.argmax(logits);
        }
        let greedy = self.argmax(logits)?;
        // Greedy rows run through the kernel with temperature 1 and are replaced afterwards.
        let temp: Vec<f32> = rows
            .iter()
            .map(|r| {
                if r.params.is_greedy() {
                    1.0
                } else {
                    r.params.temperature
                }
            })
            .collect();
        let top_k: Vec<u32> = rows
            .iter()
            .map(|r| r.params.top_k.min(u32::MAX as usize) as u32)
            .collect();
        let top_p: Vec<f32> = rows.iter().map(|r| r.params.top_p).collect();
        let min_p: Vec<f32> = rows.iter().map(|r| r.params.min_p).collect();
        let seed: Vec<u64> = rows.iter().map(|r| r.params.seed).collect();
        let step: Vec<u64> = rows.iter().map(|r| r.step).collect();
        let (temp_d, top_k_d, top_p_d) = (
            self.upload(&temp)?,
            self.upload(&top_k)?,
            self.upload(&top_p)?,
        );
        let (min_p_d, seed_d, step_d) = (
            self.upload(&min_p)?,
            self.upload(&seed)?,
            self.upload(&step)?,
        );
        let mut out = self
            .stream()
            .alloc_zeros::<u32>(logits.rows)
            .map_err(|e| shape_err("sample", format!("{e:?}")))?;
        let vocab = logits.cols as i32;
        let mut b = self.stream().launch_builder(self.func("sample")?);
        b.arg(&logits.data)
            .arg(&temp_d)
            .arg(&top_k_d)
            .arg(&top_p_d)
            .arg(&min_p_d);
        b.arg(&seed_d).arg(&step_d).arg(&mut out).arg(&vocab);
        // SAFETY: one block per row; every per-row array holds logits.rows entries.
        unsafe { b.launch(grid(logits.rows, 1, 1, 1024)) }.map_err(launch_err("sample"))?;
        let mut ids = self
            .stream()
            .clone_dtoh(&out)
            .map_err(|e| shape_err("sample", format!("{e:?}")))?;
        for (i, r) in rows.iter().enumerate() {
            if r.params.is_greedy() {
                ids[i] = greedy[i];
            }
        }
        Ok(ids)
    }
}
