//! Text of a growing token sequence, one token at a time, without decoding the whole
//! sequence again for every token (which made the executor's host work quadratic in each
//! agent's length). The window trick is the one streaming servers use: decode a few
//! tokens of context plus the new ones, and emit what the new ones added.

use super::Tokenizer;
use crate::Result;

#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    /// Start of the context window: tokens before it are never decoded again.
    prefix_offset: usize,
    /// Tokens up to here have been emitted as text.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The text that `tokens` (the whole sequence so far) adds to what was emitted, or ""
    /// while the last token ends inside a multi-byte character.
    pub fn step(&mut self, tokenizer: &Tokenizer, tokens: &[u32]) -> Result<String> {
        let prefix = tokenizer.decode(&tokens[self.prefix_offset..self.read_offset], false)?;
        let full = tokenizer.decode(&tokens[self.prefix_offset..], false)?;
        if full.len() <= prefix.len() || full.ends_with('\u{fffd}') || !full.starts_with(&prefix) {
            return Ok(String::new());
        }
        let delta = full[prefix.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = tokens.len();
        Ok(delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::model::ModelSource;

    #[test]
    fn deltas_add_up_to_the_full_decode() {
        let (_, tok) = ModelSource::Embedded.load(CpuBackend::default()).unwrap();
        for text in [
            "plain ascii <FORK-1>a query</FORK-1> and more",
            "ünïcödé 漢字 and 🙂 emoji, split across byte tokens",
            "  leading spaces\n\nnew lines\t<ANSWER>42</ANSWER>",
        ] {
            let ids = tok.encode(text).unwrap();
            let mut dec = IncrementalDecoder::new();
            let mut out = String::new();
            for k in 1..=ids.len() {
                out.push_str(&dec.step(&tok, &ids[..k]).unwrap());
            }
            assert_eq!(out, tok.decode(&ids, false).unwrap());
        }
    }
}
