//! PTX text to tokens. PTX is regular enough that one token kind covers dotted opcodes,
//! registers (`%r12`, `%tid.x`), labels and symbols; punctuation is single characters.

use crate::error::{EmuError, Result};

#[derive(Debug, Clone, PartialEq)]
pub enum Tok {
    /// Opcodes, directives, registers, labels, symbols, and numbers (classified later).
    Word(String),
    Punct(char),
}

#[derive(Debug, Clone)]
pub struct Token {
    pub tok: Tok,
    pub line: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '$' | '%')
}

pub fn tokenize(src: &str) -> Result<Vec<Token>> {
    let mut out = Vec::new();
    for (i, raw) in src.lines().enumerate() {
        let line = i + 1;
        let text = raw.split("//").next().unwrap_or("");
        let mut chars = text.char_indices().peekable();
        while let Some(&(start, c)) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if is_word_char(c) {
                let mut end = start;
                while let Some(&(j, c)) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    end = j + c.len_utf8();
                    chars.next();
                }
                out.push(Token {
                    tok: Tok::Word(text[start..end].to_string()),
                    line,
                });
            } else if c == '"' {
                // Strings appear only as `.pragma "nounroll";`; kept whole.
                chars.next();
                let mut end = text.len();
                for (j, c) in chars.by_ref() {
                    if c == '"' {
                        end = j + 1;
                        break;
                    }
                }
                out.push(Token {
                    tok: Tok::Word(text[start..end].to_string()),
                    line,
                });
            } else if "{}[](),;:+-|@!=<>".contains(c) {
                out.push(Token {
                    tok: Tok::Punct(c),
                    line,
                });
                chars.next();
            } else {
                return Err(EmuError::Parse {
                    line,
                    msg: format!("unexpected character `{c}`"),
                });
            }
        }
    }
    Ok(out)
}

/// The value of an immediate as raw bits: `0f` is an f32's bits, `0d` an f64's, anything
/// else an integer (decimal or `0x`, optional `U` suffix) in two's complement.
pub fn parse_number(w: &str) -> Option<u64> {
    if let Some(hex) = w.strip_prefix("0f").or_else(|| w.strip_prefix("0F"))
        && hex.len() == 8
    {
        return u32::from_str_radix(hex, 16).ok().map(u64::from);
    }
    if let Some(hex) = w.strip_prefix("0d").or_else(|| w.strip_prefix("0D"))
        && hex.len() == 16
    {
        return u64::from_str_radix(hex, 16).ok();
    }
    let w = w.trim_end_matches('U');
    if let Some(hex) = w.strip_prefix("0x").or_else(|| w.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    if w.starts_with(|c: char| c.is_ascii_digit()) {
        return w.parse::<u64>().ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_raw_bits() {
        assert_eq!(parse_number("0f3F800000"), Some(0x3F80_0000));
        assert_eq!(parse_number("0d3FF0000000000000"), Some(1f64.to_bits()));
        assert_eq!(parse_number("0x1F"), Some(31));
        assert_eq!(parse_number("4180"), Some(4180));
        assert_eq!(parse_number("%r1"), None);
    }

    #[test]
    fn comments_and_punctuation() {
        let t = tokenize("@!%p1 bra $L__BB0_2; // done\n[%rd1+8]").unwrap();
        let words: Vec<_> = t.iter().map(|t| t.tok.clone()).collect();
        assert_eq!(words[0], Tok::Punct('@'));
        assert_eq!(words[1], Tok::Punct('!'));
        assert_eq!(words[2], Tok::Word("%p1".into()));
        assert_eq!(t.last().unwrap().line, 2);
    }
}
