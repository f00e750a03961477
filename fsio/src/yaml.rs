//! Untrusted YAML text, checked before a YAML parser sees it: UTF-8, a leading byte order mark
//! stripped, nesting bounded. Every recipe reader (UKI recipes in `imgctl-builder`, extension
//! recipes in `imgctl-extensions`) goes through [`checked_text`], so the two schemas share one
//! bound and one set of rules.
//!
//! Why the bound is here and not left to serde: the YAML parser builds every event before
//! serde's own recursion limit applies, which takes tens of seconds for a 200 KB recipe nested
//! 100k levels deep. Counting is linear in the text.

/// Deepest nesting of YAML collections a recipe may have (the schemas need at most 4).
pub const MAX_NESTING: usize = 32;

/// Why recipe text was refused, with the 1-based line when there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct TextError {
    pub line: Option<usize>,
    pub message: String,
}

/// The YAML text of `data`: UTF-8, without a leading byte order mark (some Windows editors
/// write one; it is not part of the document), and nested at most [`MAX_NESTING`] levels.
pub fn checked_text(data: &[u8]) -> Result<&str, TextError> {
    let text = std::str::from_utf8(data).map_err(|e| TextError {
        line: None,
        message: format!("not UTF-8 text: {e}"),
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_nesting(text).map_err(|(line, message)| TextError {
        line: Some(line),
        message,
    })?;
    Ok(text)
}

/// Flow collections (`[`, `{`) are counted outside quotes and comments; block nesting is bounded
/// by the indentation plus the `- `/`? ` indicators that start a line.
fn check_nesting(text: &str) -> Result<(), (usize, String)> {
    let mut flow = 0usize;
    for (i, line) in text.lines().enumerate() {
        let lead = line
            .bytes()
            .take_while(|b| matches!(b, b' ' | b'-' | b'?' | b'\t'))
            .count();
        if lead > MAX_NESTING * 8 {
            return Err((
                i + 1,
                format!(
                    "indented {lead} columns deep; a recipe nests at most {MAX_NESTING} levels"
                ),
            ));
        }
        let mut quote: Option<u8> = None;
        let mut prev = b' ';
        for b in line.bytes() {
            match (quote, b) {
                (Some(q), _) if b == q => quote = None,
                (Some(_), _) => {}
                (None, b'\'' | b'"') if matches!(prev, b' ' | b'[' | b'{' | b',' | b':') => {
                    quote = Some(b)
                }
                (None, b'#') if prev == b' ' => break,
                (None, b'[' | b'{') => {
                    flow += 1;
                    if flow > MAX_NESTING {
                        return Err((i + 1, format!("nested more than {MAX_NESTING} levels deep")));
                    }
                }
                (None, b']' | b'}') => flow = flow.saturating_sub(1),
                _ => {}
            }
            prev = b;
        }
    }
    Ok(())
}

/// A serde_yaml message in the words a recipe author reads: Rust's primitive type names become
/// what to write (`expected u32` → `expected a whole number`), and a string field is called a
/// scalar, since a plain YAML scalar (`1.10`, `yes`) is kept as written.
pub fn plain_serde_message(message: &str) -> String {
    let mut m = message.replace(
        "expected a string",
        "expected a scalar (text or a number, kept as written)",
    );
    for t in [
        "u8", "u16", "u32", "u64", "usize", "i8", "i16", "i32", "i64", "isize",
    ] {
        m = m.replace(&format!("expected {t}"), "expected a whole number");
    }
    m.replace("expected a boolean", "expected true or false")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_byte_order_mark_is_stripped_and_non_utf8_refused() {
        assert_eq!(checked_text(b"\xef\xbb\xbfname: x\n"), Ok("name: x\n"));
        let e = checked_text(b"name: \xff\n").unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
    }

    #[test]
    fn deep_nesting_is_refused_quickly_and_quotes_do_not_count() {
        let started = std::time::Instant::now();
        let deep = format!("a: 1\nb: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(checked_text(deep.as_bytes()).unwrap_err().line, Some(2));
        let block: String = (0..2000)
            .map(|i| format!("{}- \n", " ".repeat(i * 2)))
            .collect();
        assert!(checked_text(block.as_bytes()).is_err());
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let quoted = format!("a: \"{}\" # {}\n", "[".repeat(100), "{".repeat(100));
        assert!(checked_text(quoted.as_bytes()).is_ok());
        let nested_ok = format!(
            "a: {}{}\n",
            "[".repeat(MAX_NESTING),
            "]".repeat(MAX_NESTING)
        );
        assert!(checked_text(nested_ok.as_bytes()).is_ok());
    }
}
