//! Finding the final answer in a reply: the last `\boxed{…}`, else the text after the last
//! "the answer is" / "final answer:", else the whole reply.

/// Content of the last `\boxed{…}` (or `\fbox{…}`, or `\boxed 5`), braces matched with
/// nesting. `None` when there is none or its braces never close.
pub fn extract_boxed(text: &str) -> Option<String> {
    let (pos, kw) = ["\\boxed", "\\fbox"]
        .iter()
        .filter_map(|kw| text.rfind(kw).map(|p| (p, *kw)))
        .max_by_key(|(p, _)| *p)?;
    let rest = &text[pos + kw.len()..];
    let trimmed = rest.trim_start();
    if let Some(inner) = trimmed.strip_prefix('{') {
        return brace_group(inner).map(|(g, _)| g.to_string());
    }
    if rest.starts_with(char::is_whitespace) {
        let word: String = trimmed
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '$')
            .collect();
        return (!word.is_empty()).then_some(word);
    }
    None
}

/// Given the text just after an opening `{`, the group content and the text after its `}`.
pub fn brace_group(s: &str) -> Option<(&str, &str)> {
    let mut depth = 1usize;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[..i], &s[i + 1..]));
                }
            }
            _ => {}
        }
    }
    None
}

/// Longer phrases first, so "final answer is" wins over "answer is" at the same place.
const PHRASES: [&str; 5] = [
    "final answer is",
    "final answer:",
    "the answer is",
    "answer is",
    "answer:",
];

/// The answer stated in prose, from the last "The answer is 7." or "Final answer: 7": the
/// rest of that line, up to a sentence end (a period followed by a space), without
/// markdown emphasis.
pub fn extract_stated(text: &str) -> Option<String> {
    // ASCII lowercasing keeps byte offsets, so positions index `text` too.
    let lower = text.to_ascii_lowercase();
    let end = PHRASES
        .iter()
        .filter_map(|p| lower.rfind(p).map(|i| i + p.len()))
        .max()?;
    let mut rest = text[end..].trim_start_matches([':', '*', ' ', '\t']);
    if let Some(nl) = rest.find('\n') {
        rest = &rest[..nl];
    }
    if let Some(stop) = rest.find(". ") {
        rest = &rest[..stop];
    }
    let answer = rest.trim().trim_end_matches(['*', '.']).trim();
    (!answer.is_empty()).then(|| answer.to_string())
}

/// The part of a reply to grade.
pub fn final_answer(reply: &str) -> String {
    extract_boxed(reply)
        .or_else(|| extract_stated(reply))
        .unwrap_or_else(|| reply.to_string())
}
