//! What one forward step computes: the new tokens of several sequences, flattened,
//! with where each token's K/V goes in the paged cache and which rows need logits.
//! Prefill chunks and single decode tokens mix freely in one batch.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeqChunk {
    /// First row of this sequence's tokens in the flattened batch.
    pub query_start: usize,
    pub query_len: usize,
    /// Tokens in the cache once this chunk is written (cached prefix + query_len).
    pub context_len: usize,
    pub block_table: Vec<u32>,
}

/// Which of a pushed sequence's rows need logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// A prefill chunk that does not reach the end of the known tokens.
    None,
    /// The next token is sampled after the last row.
    Last,
    /// Every position (parity checks, training).
    All,
}

#[derive(Debug, Clone, Default)]
pub struct ForwardBatch {
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    /// Cache slot (block * block_size + offset) each token's K/V is written to.
    pub slot_mapping: Vec<u32>,
    pub seqs: Vec<SeqChunk>,
    /// Flattened rows whose logits are wanted (usually each sequence's last token).
    pub logits_rows: Vec<u32>,
}

impl ForwardBatch {
    /// Appends a sequence's next `tokens`, which follow `cached` tokens already in its
    /// blocks. `block_table` must already cover `cached + tokens.len()` positions.
    pub fn push(
        &mut self,
        tokens: &[u32],
        cached: usize,
        block_table: &[u32],
        block_size: usize,
        logits: Logits,
    ) {
        let query_start = self.token_ids.len();
        for (i, &t) in tokens.iter().enumerate() {
            let pos = cached + i;
            let block = block_table[pos / block_size] as usize;
            self.token_ids.push(t);
            self.positions.push(pos as u32);
            self.slot_mapping
                .push((block * block_size + pos % block_size) as u32);
        }
        match logits {
            Logits::All => self
                .logits_rows
                .extend((query_start..query_start + tokens.len()).map(|r| r as u32)),
            Logits::Last if !tokens.is_empty() => self
                .logits_rows
                .push((query_start + tokens.len() - 1) as u32),
            _ => {}
        }
        self.seqs.push(SeqChunk {
            query_start,
            query_len: tokens.len(),
            context_len: cached + tokens.len(),
            block_table: block_table.to_vec(),
        });
    }

    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}
