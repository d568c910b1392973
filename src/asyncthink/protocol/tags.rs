//! Tag strings of the protocol, configurable so a model trained with other markers
//! (or special tokens) can be served without code changes.

use serde::{Deserialize, Serialize};

use super::ProtocolError;

/// The placeholder for the worker index inside an indexed tag template.
pub const INDEX_PLACEHOLDER: &str = "{i}";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProtocolTags {
    pub fork_open: String,
    pub fork_close: String,
    pub join_open: String,
    pub join_close: String,
    pub answer_open: String,
    pub answer_close: String,
    pub return_open: String,
    pub return_close: String,
}

impl Default for ProtocolTags {
    fn default() -> Self {
        Self {
            fork_open: "<FORK-{i}>".into(),
            fork_close: "</FORK-{i}>".into(),
            join_open: "<JOIN-{i}>".into(),
            join_close: "</JOIN-{i}>".into(),
            answer_open: "<ANSWER>".into(),
            answer_close: "</ANSWER>".into(),
            return_open: "<RETURN>".into(),
            return_close: "</RETURN>".into(),
        }
    }
}

impl ProtocolTags {
    pub fn fork_open(&self, id: u32) -> String {
        fill(&self.fork_open, id)
    }
    pub fn fork_close(&self, id: u32) -> String {
        fill(&self.fork_close, id)
    }
    pub fn join_open(&self, id: u32) -> String {
        fill(&self.join_open, id)
    }
    pub fn join_close(&self, id: u32) -> String {
        fill(&self.join_close, id)
    }

    /// `<FORK-i>query</FORK-i>`
    pub fn fork(&self, id: u32, query: &str) -> String {
        format!("{}{query}{}", self.fork_open(id), self.fork_close(id))
    }

    /// `<ANSWER>text</ANSWER>`
    pub fn answer(&self, text: &str) -> String {
        format!("{}{text}{}", self.answer_open, self.answer_close)
    }

    /// `<RETURN>text</RETURN>`
    pub fn ret(&self, text: &str) -> String {
        format!("{}{text}{}", self.return_open, self.return_close)
    }

    /// Splits every tag into the pieces the scanner matches, rejecting sets a streaming
    /// parser could not read unambiguously.
    pub(crate) fn compile(&self) -> Result<Vec<Pattern>, ProtocolError> {
        use TagKind::*;
        let specs = [
            (ForkOpen, &self.fork_open, true),
            (ForkClose, &self.fork_close, true),
            (JoinOpen, &self.join_open, true),
            (JoinClose, &self.join_close, true),
            (AnswerOpen, &self.answer_open, false),
            (AnswerClose, &self.answer_close, false),
            (ReturnOpen, &self.return_open, false),
            (ReturnClose, &self.return_close, false),
        ];
        let mut pats = Vec::with_capacity(specs.len());
        for (kind, template, indexed) in specs {
            let bad =
                |why: &str| ProtocolError::InvalidTags(format!("{kind:?} `{template}`: {why}"));
            let n_ph = template.matches(INDEX_PLACEHOLDER).count();
            let pat = if indexed {
                if n_ph != 1 {
                    return Err(bad("needs exactly one {i}"));
                }
                let (pre, suf) = template
                    .split_once(INDEX_PLACEHOLDER)
                    .ok_or_else(|| bad("needs exactly one {i}"))?;
                if pre.is_empty() || suf.is_empty() {
                    return Err(bad("needs text before and after {i}"));
                }
                if suf.starts_with(|c: char| c.is_ascii_digit()) {
                    return Err(bad("text after {i} must not start with a digit"));
                }
                Pattern {
                    kind,
                    prefix: pre.to_string(),
                    suffix: Some(suf.to_string()),
                }
            } else {
                if n_ph != 0 || template.is_empty() {
                    return Err(bad("must be non-empty and have no {i}"));
                }
                Pattern {
                    kind,
                    prefix: template.to_string(),
                    suffix: None,
                }
            };
            pats.push(pat);
        }
        for a in &pats {
            for b in &pats {
                if a.kind != b.kind && b.prefix.starts_with(&a.prefix) {
                    return Err(ProtocolError::InvalidTags(format!(
                        "{:?} starts like {:?} (`{}` / `{}`)",
                        b.kind, a.kind, b.prefix, a.prefix
                    )));
                }
            }
        }
        Ok(pats)
    }
}

fn fill(template: &str, id: u32) -> String {
    template.replace(INDEX_PLACEHOLDER, &id.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TagKind {
    ForkOpen,
    ForkClose,
    JoinOpen,
    JoinClose,
    AnswerOpen,
    AnswerClose,
    ReturnOpen,
    ReturnClose,
}

/// A tag as the scanner sees it: literal prefix, then (if indexed) digits and a suffix.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    pub kind: TagKind,
    pub prefix: String,
    pub suffix: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_compile_and_render() {
        let t = ProtocolTags::default();
        assert_eq!(t.compile().map(|p| p.len()).ok(), Some(8));
        assert_eq!(t.fork(3, "q"), "<FORK-3>q</FORK-3>");
        assert_eq!(t.join_close(12), "</JOIN-12>");
    }

    #[test]
    fn ambiguous_or_broken_sets_are_rejected() {
        let t = ProtocolTags {
            answer_open: "<FORK".into(),
            ..Default::default()
        };
        assert!(matches!(t.compile(), Err(ProtocolError::InvalidTags(_))));
        let t = ProtocolTags {
            fork_open: "<FORK>".into(),
            ..Default::default()
        };
        assert!(t.compile().is_err());
        let t = ProtocolTags {
            join_open: "{i}>".into(),
            ..Default::default()
        };
        assert!(t.compile().is_err());
        let t = ProtocolTags {
            answer_close: String::new(),
            ..Default::default()
        };
        assert!(t.compile().is_err());
    }

    #[test]
    fn custom_tags_work() {
        let t = ProtocolTags {
            fork_open: "[[fork {i}]]".into(),
            fork_close: "[[/fork {i}]]".into(),
            ..Default::default()
        };
        assert!(t.compile().is_ok());
        assert_eq!(t.fork(1, "x"), "[[fork 1]]x[[/fork 1]]");
    }
}
