//! Qwen3's think block, split off a chat answer as it streams: `<think>\n…\n</think>\n\n`
//! becomes `reasoning_content` (vLLM's field) and the rest `content`. Text that could be the
//! start of a tag is held until it is known not to be one.

const OPEN: &str = "<think>";
const CLOSE: &str = "</think>";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing decided yet: the answer may open with a think block.
    Start,
    Reasoning,
    /// After the block, or with none.
    Content,
}

#[derive(Debug)]
pub struct ReasoningSplitter {
    state: State,
    /// Newlines that open the current section are still to be dropped.
    at_start: bool,
    /// Received text not yet handed out.
    buf: String,
}

/// One delta, split.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl Default for ReasoningSplitter {
    fn default() -> Self {
        ReasoningSplitter {
            state: State::Start,
            at_start: false,
            buf: String::new(),
        }
    }
}

impl ReasoningSplitter {
    pub fn push(&mut self, delta: &str, finished: bool) -> Split {
        self.buf.push_str(delta);
        let mut out = Split::default();
        loop {
            if self.state != State::Start && self.at_start {
                let rest = self.buf.trim_start_matches('\n');
                if rest.is_empty() && !finished {
                    self.buf.clear();
                    return out;
                }
                self.buf = rest.to_string();
                self.at_start = false;
            }
            match self.state {
                State::Start => {
                    let t = self.buf.trim_start();
                    if let Some(rest) = t.strip_prefix(OPEN) {
                        self.buf = rest.to_string();
                        self.enter(State::Reasoning);
                    } else if OPEN.starts_with(t) && !finished {
                        return out;
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Reasoning => {
                    if let Some((before, after)) = self.buf.split_once(CLOSE) {
                        out.reasoning.push_str(before.trim_end_matches('\n'));
                        self.buf = after.to_string();
                        self.enter(State::Content);
                        continue;
                    }
                    let keep = if finished { 0 } else { held(&self.buf) };
                    let cut = self.buf.len() - keep;
                    out.reasoning.push_str(&self.buf[..cut]);
                    self.buf.drain(..cut);
                    return out;
                }
                State::Content => {
                    out.content.push_str(&self.buf);
                    self.buf.clear();
                    return out;
                }
            }
        }
    }

    /// Moves to `state`, whose leading newlines are dropped.
    fn enter(&mut self, state: State) {
        self.state = state;
        self.at_start = true;
    }
}

/// Bytes at the end of reasoning text to hold: newlines (dropped if `</think>` follows)
/// and any tail that is a prefix of `</think>`.
fn held(buf: &str) -> usize {
    let tag = (1..CLOSE.len().min(buf.len() + 1))
        .rev()
        .find(|&k| buf.is_char_boundary(buf.len() - k) && CLOSE.starts_with(&buf[buf.len() - k..]))
        .unwrap_or(0);
    let body = &buf[..buf.len() - tag];
    tag + (body.len() - body.trim_end_matches('\n').len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_in_pieces(text: &str, piece: usize) -> Split {
        let mut s = ReasoningSplitter::default();
        let mut all = Split::default();
        let chars: Vec<char> = text.chars().collect();
        let chunks: Vec<String> = chars.chunks(piece).map(|c| c.iter().collect()).collect();
        for (i, c) in chunks.iter().enumerate() {
            let d = s.push(c, i + 1 == chunks.len());
            all.reasoning.push_str(&d.reasoning);
            all.content.push_str(&d.content);
        }
        all
    }

    #[test]
    fn think_block_becomes_reasoning_in_any_chunking() {
        for piece in [1, 2, 3, 7, 100] {
            let s = split_in_pieces("<think>\nlet me see\n2+2\n</think>\n\nIt is 4.", piece);
            assert_eq!(s.reasoning, "let me see\n2+2", "piece {piece}");
            assert_eq!(s.content, "It is 4.", "piece {piece}");
            let s = split_in_pieces("no block <think> here", piece);
            assert_eq!(
                (s.reasoning.as_str(), s.content.as_str()),
                ("", "no block <think> here")
            );
            let s = split_in_pieces("<think>\nunfinished </thi", piece);
            assert_eq!(
                (s.reasoning.as_str(), s.content.as_str()),
                ("unfinished </thi", "")
            );
            let s = split_in_pieces("<th", piece);
            assert_eq!(s.content, "<th");
        }
    }
}
