//! Next-token selection on the device (kernels/sampling.cu): `Backend::select_tokens` for
//! `CudaBackend` runs the repetition penalty on f32 copies of the rows that use it, the
//! sample kernel (forced token, greedy argmax, or seeded temperature/top-k/top-p/min-p whose
//! draw is `counter_uniform(seed, step)`), and a kernel giving each row's log-sum-exp and the
//! chosen token's log-prob. Only ids, log-probs and non-finite flags come back to the host
//! (plus the logits rows of sequences asking for top alternatives, ranked there), and
//! `engine::sampling::select_on_host` on the same logits picks the same tokens.

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::device::{CudaBackend, grid};
use super::ops::{CudaTensor, launch_err, shape_err};
use crate::Result;
use crate::engine::sampling::{
    Chosen, NonFinite, RowChoice, TokenChoice, check_choices, penalty_tokens, top_log_probs,
};

/// "None" in the kernels' u32 per-row parameters (kernels/sampling.cu `NO_ROW`).
const NO_ROW: u32 = u32::MAX;
const SAMPLE_THREADS: u32 = 1024;
const PENALTY_THREADS: u32 = 256;

/// The host-side packing of one `select_tokens` call: per-row parameters in the kernels'
/// layout and the repetition penalty's token lists (CSR over the penalized rows).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct SelectPlan {
    /// `[rows][3]`: temperature (0 = greedy), top_p, min_p.
    pub fparams: Vec<f32>,
    /// `[rows][3]`: top_k, forced token or NO_ROW, penalized-copy index or NO_ROW.
    pub uparams: Vec<u32>,
    /// `[rows][2]`: seed, step.
    pub counters: Vec<u64>,
    /// Per penalized copy: the logits row it copies, and its penalty.
    pub pen_src: Vec<u32>,
    pub pen_factor: Vec<f32>,
    /// `pen_src.len() + 1` offsets into `pen_ids` (distinct tokens < vocab per copy).
    pub pen_offsets: Vec<u32>,
    pub pen_ids: Vec<u32>,
}

impl SelectPlan {
    /// A row gets a penalized copy only if it samples (not forced), its penalty is not 1
    /// and its history has a token inside the vocabulary.
    pub(crate) fn new(rows: &[TokenChoice<'_>], vocab: usize) -> SelectPlan {
        let mut plan = SelectPlan {
            pen_offsets: vec![0],
            ..Default::default()
        };
        for (r, c) in rows.iter().enumerate() {
            let p = c.params;
            let mut pen_row = NO_ROW;
            if c.forced.is_none() && p.repetition_penalty != 1.0 {
                let ids = penalty_tokens(c.history, vocab);
                if !ids.is_empty() {
                    pen_row = plan.pen_src.len() as u32;
                    plan.pen_src.push(r as u32);
                    plan.pen_factor.push(p.repetition_penalty);
                    plan.pen_ids.extend(ids);
                    plan.pen_offsets.push(plan.pen_ids.len() as u32);
                }
            }
            plan.fparams.extend([p.temperature, p.top_p, p.min_p]);
            plan.uparams.extend([
                p.top_k.min(u32::MAX as usize) as u32,
                c.forced.unwrap_or(NO_ROW),
                pen_row,
            ]);
            plan.counters.extend([p.seed, c.step]);
        }
        plan
    }
}

impl CudaBackend {
    fn alloc_u32(&self, n: usize, op: &str) -> Result<CudaSlice<u32>> {
        self.stream()
            .alloc_zeros::<u32>(n.max(1))
            .map_err(|e| shape_err(op, format!("{e:?}")))
    }

    /// `Backend::select_tokens` on the device (see the module doc).
    pub(super) fn select_tokens_on_device(
        &self,
        logits: &CudaTensor,
        rows: &[TokenChoice<'_>],
    ) -> Result<Vec<RowChoice>> {
        check_choices(rows, logits.rows, logits.cols)?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let n = rows.len();
        let vocab = logits.cols;
        let vocab_i = vocab as i32;
        let plan = SelectPlan::new(rows, vocab);

        // Penalized f32 copies (one placeholder element when no row uses the penalty).
        let npen = plan.pen_src.len();
        let mut penalized = self.alloc_f32(npen * vocab)?;
        if npen > 0 {
            let src = self.upload(&plan.pen_src)?;
            let offsets = self.upload(&plan.pen_offsets)?;
            // Non-empty: a row gets a copy only if it has a token to penalize.
            let ids = self.upload(&plan.pen_ids)?;
            let factor = self.upload(&plan.pen_factor)?;
            let mut b = self
                .stream()
                .launch_builder(self.func("repetition_penalty")?);
            b.arg(&logits.data)
                .arg(&mut penalized)
                .arg(&src)
                .arg(&offsets)
                .arg(&ids)
                .arg(&factor)
                .arg(&vocab_i);
            // SAFETY: one block per penalized copy; `penalized` holds npen·vocab f32, every
            // src row < logits.rows, offsets has npen + 1 entries bounding `ids`, and every id
            // is < vocab (SelectPlan::new keeps only those).
            unsafe { b.launch(grid(npen, 1, 1, PENALTY_THREADS)) }
                .map_err(launch_err("repetition_penalty"))?;
        }

        let fparams = self.upload(&plan.fparams)?;
        let uparams = self.upload(&plan.uparams)?;
        let counters = self.upload(&plan.counters)?;
        let mut tokens = self.alloc_u32(n, "sample")?;
        let mut b = self.stream().launch_builder(self.func("sample")?);
        b.arg(&logits.data)
            .arg(&penalized)
            .arg(&fparams)
            .arg(&uparams)
            .arg(&counters)
            .arg(&mut tokens)
            .arg(&vocab_i);
        // SAFETY: one block per row of `vocab` logits; fparams/uparams hold 3 and counters 2
        // entries per row; a penalized-copy index is < npen (rows of `penalized`); forced
        // tokens are < vocab (check_choices); `tokens` holds one id per row.
        unsafe { b.launch(grid(n, 1, 1, SAMPLE_THREADS)) }.map_err(launch_err("sample"))?;

        let mut lse = self.alloc_f32(n)?;
        let mut result = self.alloc_u32(3 * n, "token_logprob")?;
        let mut b = self.stream().launch_builder(self.func("token_logprob")?);
        b.arg(&logits.data)
            .arg(&tokens)
            .arg(&mut lse)
            .arg(&mut result)
            .arg(&vocab_i);
        // SAFETY: one block per row; every token the sample kernel wrote is < vocab; lse holds
        // one and result three entries per row.
        unsafe { b.launch(grid(n, 1, 1, SAMPLE_THREADS)) }.map_err(launch_err("token_logprob"))?;

        let host = self
            .stream()
            .clone_dtoh(&result)
            .map_err(|e| shape_err("select_tokens", format!("{e:?}")))?;
        let mut chosen: Vec<RowChoice> = host
            .chunks_exact(3)
            .take(n)
            .map(|c| {
                if c[2] != NO_ROW {
                    return Err(NonFinite {
                        token: c[2] as usize,
                    });
                }
                Ok(Chosen {
                    token: c[0],
                    logprob: f32::from_bits(c[1]),
                    top: Vec::new(),
                })
            })
            .collect();
        self.add_top_log_probs(logits, rows, &mut chosen)?;
        Ok(chosen)
    }

    /// Fills `Chosen::top` for the rows that ask for alternatives. The sample kernel does not
    /// rank tokens, so each such row's raw logits (bf16, `vocab` × 2 bytes: ~300 KB for
    /// Qwen3's vocabulary) are copied to the host and ranked by `top_log_probs`, the host
    /// sampler's own code. That costs one extra synchronous copy per asking row per step and
    /// nothing when no row asks; the values are f64 log-softmax of the bf16 logits, so they
    /// can differ from the kernel's f32 `logprob` of the same token in the last bits.
    fn add_top_log_probs(
        &self,
        logits: &CudaTensor,
        rows: &[TokenChoice<'_>],
        chosen: &mut [RowChoice],
    ) -> Result<()> {
        let vocab = logits.cols;
        for (r, (c, out)) in rows.iter().zip(chosen.iter_mut()).enumerate() {
            let (k, Ok(out)) = (c.params.top_logprobs, out) else {
                continue;
            };
            if k == 0 {
                continue;
            }
            let row = self
                .stream()
                .clone_dtoh(&logits.data.slice(r * vocab..(r + 1) * vocab))
                .map_err(|e| shape_err("select_tokens", format!("{e:?}")))?;
            let row: Vec<f32> = row.iter().map(|v| v.to_f32()).collect();
            out.top = top_log_probs(&row, k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SamplingParams;

    #[test]
    fn plan_packs_rows_and_penalty_lists() {
        let greedy_pen = SamplingParams {
            repetition_penalty: 1.5,
            ..Default::default()
        };
        let sampled = SamplingParams {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.9,
            min_p: 0.1,
            seed: 42,
            ..Default::default()
        };
        let rows = [
            TokenChoice {
                params: &greedy_pen,
                step: 3,
                history: &[5, 3, 5, 100, 3, 9],
                forced: None,
            },
            // Forced: no penalty copy even though the penalty is set.
            TokenChoice {
                params: &greedy_pen,
                step: 0,
                history: &[1, 2],
                forced: Some(7),
            },
            // Penalty 1: nothing to do.
            TokenChoice {
                params: &sampled,
                step: 9,
                history: &[1, 2],
                forced: None,
            },
            // Penalty set but no history token inside the vocabulary.
            TokenChoice {
                params: &greedy_pen,
                step: 1,
                history: &[10, 11],
                forced: None,
            },
        ];
        let plan = SelectPlan::new(&rows, 10);
        assert_eq!(plan.pen_src, vec![0]);
        assert_eq!(plan.pen_factor, vec![1.5]);
        assert_eq!(plan.pen_offsets, vec![0, 3]);
        assert_eq!(plan.pen_ids, vec![5, 3, 9]);
        assert_eq!(
            plan.uparams,
            vec![
                0, NO_ROW, 0, 0, 7, NO_ROW, 20, NO_ROW, NO_ROW, 0, NO_ROW, NO_ROW
            ]
        );
        assert_eq!(
            plan.fparams,
            vec![0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.7, 0.9, 0.1, 0.0, 1.0, 0.0]
        );
        assert_eq!(plan.counters, vec![0, 3, 0, 0, 42, 9, 0, 1]);
    }
}
