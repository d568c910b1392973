//! A choice's text as it streams: token deltas from the incremental decoder, with the tail
//! that could still become a stop string held back, so no text past a stop is ever sent
//! and what was sent is always a prefix of the final (cut) text.

use crate::Result;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

#[derive(Debug, Default)]
pub struct StreamText {
    decoder: IncrementalDecoder,
    /// All text decoded so far.
    text: String,
    /// Bytes of `text` already handed out.
    sent: usize,
}

impl StreamText {
    /// Takes in the generated ids so far (a final eos already dropped); returns the text
    /// that is safe to send now. `finished` flushes everything up to the first stop string.
    pub fn push(
        &mut self,
        tokenizer: &Tokenizer,
        ids: &[u32],
        stop: &[String],
        finished: bool,
    ) -> Result<String> {
        if finished {
            // The whole decode, as `Sequence::output_text` gives it (a last token that
            // ends inside a character comes out as a replacement character).
            self.text = tokenizer.decode(ids, false)?;
        } else if !ids.is_empty() {
            self.text.push_str(&self.decoder.step(tokenizer, ids)?);
        }
        let end = if finished {
            if let Some(cut) = stop.iter().filter_map(|s| self.text.find(s.as_str())).min() {
                self.text.truncate(cut);
            }
            self.text.len()
        } else {
            self.text.len() - held_back(&self.text, stop)
        };
        // What was sent is a prefix of the text (see the module doc); never slice past it.
        if end < self.sent || !self.text.is_char_boundary(self.sent) {
            return Ok(String::new());
        }
        let delta = self.text[self.sent..end].to_string();
        self.sent = end;
        Ok(delta)
    }
}

/// Length of the longest tail of `text` that is a proper prefix of a stop string.
fn held_back(text: &str, stop: &[String]) -> usize {
    let mut best = 0;
    for s in stop {
        for k in (best + 1..s.len().min(text.len() + 1)).rev() {
            let start = text.len() - k;
            if text.is_char_boundary(start) && s.starts_with(&text[start..]) {
                best = k;
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_a_possible_stop() {
        let stop = vec!["END".to_string(), "xy".to_string()];
        assert_eq!(held_back("abcE", &stop), 1);
        assert_eq!(held_back("abcEN", &stop), 2);
        assert_eq!(held_back("abcx", &stop), 1);
        assert_eq!(held_back("abc", &stop), 0);
        assert_eq!(held_back("", &stop), 0);
        assert_eq!(held_back("é", &["éa".to_string()]), 2);
    }
}
