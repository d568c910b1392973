//! Which sequences run in the next step, and how many of their tokens.
//!
//! Running sequences go first, oldest first (decodes and unfinished prompt chunks),
//! then waiting ones in arrival order, while the token budget and the sequence cap
//! allow. When KV blocks run out, the youngest running sequence is preempted: its
//! blocks are freed and it waits to be recomputed from its tokens, which gives the same
//! output as if it had never stopped (draws are counted by generated tokens, not RNG state).

use super::engine::Engine;
use super::sequence::{FinishReason, SeqId, Status};
use crate::backend::Backend;
use crate::kv::block_hash;
use crate::{Error, Result};

#[derive(Debug, Default)]
pub(super) struct Plan {
    /// (sequence, tokens to compute this step), in batch order.
    pub chunks: Vec<(SeqId, usize)>,
    /// Sequences ended because they cannot fit the cache even alone.
    pub cache_full: Vec<SeqId>,
}

impl<B: Backend> Engine<'_, B> {
    pub(super) fn schedule(&mut self) -> Result<Plan> {
        let mut plan = Plan::default();
        let mut budget = self.cfg.max_batched_tokens;
        let mut preempted_any = false;

        let mut i = 0;
        // A resumed organizer makes the running set larger than max_num_seqs for a step
        // or two; the batch itself never is.
        while i < self.running.len() && budget > 0 && plan.chunks.len() < self.cfg.max_num_seqs {
            let id = self.running[i];
            let s = &self.seqs[&id];
            if s.paused || s.num_pending() == 0 {
                i += 1;
                continue;
            }
            let n = self.chunk_len(s.num_pending(), budget, plan.chunks.is_empty());
            if n == 0 {
                i += 1;
                continue;
            }
            match self.reserve(id, n) {
                Ok(()) => {
                    plan.chunks.push((id, n));
                    budget = budget.saturating_sub(n);
                    i += 1;
                }
                Err(Error::KvCacheFull(_)) => {
                    preempted_any = true;
                    let victim = self
                        .running
                        .iter()
                        .copied()
                        .filter(|v| *v != id && !plan.chunks.iter().any(|(c, _)| c == v))
                        .max_by_key(|v| self.seqs[v].arrival);
                    match victim {
                        // Retry the same sequence with the victim's blocks freed.
                        Some(v) => {
                            let pos = self.running.iter().position(|&r| r == v);
                            self.preempt(v);
                            if pos.is_some_and(|p| p < i) {
                                i -= 1;
                            }
                        }
                        None if plan.chunks.is_empty() && self.running.len() == 1 => {
                            // Alone and still too big: it can never run.
                            self.finish(id, FinishReason::CacheFull);
                            plan.cache_full.push(id);
                        }
                        None => self.preempt(id),
                    }
                }
                Err(e) => return Err(e),
            }
        }

        // Admit waiting sequences, unless this step already had to take blocks back. A
        // paused one (an organizer preempted while it waits on a JOIN) stays queued: run
        // now, it would sample a token before the executor resumes it.
        // max_num_seqs bounds the sequences a step computes; a paused one computes nothing,
        // so it holds no slot. Counting it let organizers waiting on JOINs fill every slot
        // while the workers they wait for queued behind them: a deadlock once the number of
        // concurrent episodes reached max_num_seqs.
        let mut active = self.running.iter().filter(|r| !self.seqs[r].paused).count();
        while !preempted_any
            && budget > 0
            && active < self.cfg.max_num_seqs
            && plan.chunks.len() < self.cfg.max_num_seqs
        {
            let Some(pos) = self.waiting.iter().position(|w| !self.seqs[w].paused) else {
                break;
            };
            let id = self.waiting[pos];
            if self.cfg.prefix_caching && self.seqs[&id].block_table.is_empty() {
                self.match_prefix(id);
            }
            let n = self.chunk_len(self.seqs[&id].num_pending(), budget, plan.chunks.is_empty());
            if n == 0 {
                self.release_blocks(id);
                break;
            }
            match self.reserve(id, n) {
                Ok(()) => {
                    self.waiting.remove(pos);
                    self.running.push(id);
                    if let Some(s) = self.seqs.get_mut(&id) {
                        s.status = Status::Running;
                    }
                    plan.chunks.push((id, n));
                    budget = budget.saturating_sub(n);
                    active += 1;
                }
                Err(Error::KvCacheFull(_)) => {
                    self.release_blocks(id);
                    if self.running.is_empty() {
                        // Nothing else holds blocks (a sequence that grew while it waited,
                        // e.g. by injected tokens): it can never fit.
                        self.finish(id, FinishReason::CacheFull);
                        plan.cache_full.push(id);
                        continue;
                    }
                    // Nothing can run and blocks are held by paused sequences (an
                    // organizer waiting on this very worker): make room by preempting one.
                    let paused_victim = self
                        .running
                        .iter()
                        .copied()
                        .filter(|v| self.seqs[v].paused)
                        .max_by_key(|v| self.seqs[v].arrival);
                    match paused_victim {
                        Some(v) if plan.chunks.is_empty() => self.preempt(v),
                        _ => break,
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(plan)
    }

    /// Tokens of a sequence with `pending` to compute that fit in `budget`.
    fn chunk_len(&self, pending: usize, budget: usize, batch_empty: bool) -> usize {
        if self.cfg.chunked_prefill {
            pending.min(budget)
        } else if pending <= budget || batch_empty {
            // Without chunking a long prompt runs whole, alone in its step.
            pending
        } else {
            0
        }
    }

    /// Blocks for the next `n` tokens of `id`, copying a shared partly filled last block
    /// first (copy-on-write). On failure nothing new is held.
    fn reserve(&mut self, id: SeqId, n: usize) -> Result<()> {
        let bs = self.cfg.block_size;
        let s = &self.seqs[&id];
        let computed = s.num_computed;
        let target_blocks = (computed + n).div_ceil(bs);
        let mut fresh = Vec::new();
        let cow = (!computed.is_multiple_of(bs))
            .then(|| (computed / bs, s.block_table[computed / bs]))
            .filter(|&(_, b)| self.blocks.ref_count(b) > 1);
        let have = s.block_table.len();
        let needed = target_blocks.saturating_sub(have) + usize::from(cow.is_some());
        for _ in 0..needed {
            match self.blocks.allocate() {
                Ok(b) => fresh.push(b),
                Err(e) => {
                    for b in fresh {
                        self.blocks.release(b);
                    }
                    return Err(e);
                }
            }
        }
        if let Some((index, shared)) = cow {
            let copy = fresh.remove(0);
            self.model.backend.copy_block(&mut self.kv, shared, copy)?;
            self.blocks.release(shared);
            if let Some(s) = self.seqs.get_mut(&id) {
                s.block_table[index] = copy;
            }
        }
        if let Some(s) = self.seqs.get_mut(&id) {
            s.block_table.extend(fresh);
        }
        Ok(())
    }

    /// Takes the longest cached run of full prompt blocks. The last token is always
    /// computed (its logits are needed), so at most (len - 1) / block_size blocks hit.
    fn match_prefix(&mut self, id: SeqId) {
        let bs = self.cfg.block_size;
        let Some(s) = self.seqs.get_mut(&id) else {
            return;
        };
        let max_blocks = (s.tokens.len() - 1) / bs;
        let mut parent = None;
        for i in 0..max_blocks {
            let tokens = &s.tokens[i * bs..(i + 1) * bs];
            let hash = block_hash(parent, tokens);
            let Some(b) = self.blocks.lookup(hash, tokens) else {
                break;
            };
            s.block_table.push(b);
            s.block_hashes.push(hash);
            parent = Some(hash);
        }
        s.num_computed = s.block_table.len() * bs;
        let hit = s
            .num_computed
            .min(s.prompt_len.saturating_sub(s.cached_prompt_tokens));
        s.cached_prompt_tokens += hit;
        self.stats.prefix_hit_tokens += s.num_computed as u64;
    }

    fn preempt(&mut self, id: SeqId) {
        self.release_blocks(id);
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        self.stats.preemptions += 1;
        if let Some(s) = self.seqs.get_mut(&id) {
            s.status = Status::Waiting;
            s.num_preemptions += 1;
        }
    }
}
