//! NATS subject syntax: validation and single-pattern matching.
//!
//! A subject is a non-empty sequence of non-empty tokens separated by `.`, with no whitespace.
//! In a subscription pattern two whole tokens are wildcards:
//! - `*` matches exactly one token;
//! - `>` matches one or more tokens and may only be the last token.
//!
//! A `*` or `>` that is part of a longer token (`foo*`) is an ordinary character, as in
//! nats-server. A literal subject (what a publisher sends) contains no wildcard token.
//!
//! A subject may have at most [`MAX_TOKENS`] tokens. nats-server has no such limit; we keep one
//! because the subscription trie is walked recursively, one level per token, so the limit bounds
//! stack depth whatever `max_control_line` is configured to.
//!
//! Invariants: every function here is total (never panics) and runs in O(subject length).

/// The token separator.
pub const SEP: char = '.';
/// The single-token wildcard.
pub const PWC: &str = "*";
/// The full (trailing) wildcard.
pub const FWC: &str = ">";
/// Most tokens a valid subject may have.
pub const MAX_TOKENS: usize = 256;

/// True when `token` contains a byte that nats-server refuses anywhere in a subject.
fn has_bad_byte(token: &str) -> bool {
    token.bytes().any(is_bad_byte)
}

/// True for a byte that nats-server refuses anywhere in a subject (whitespace, NUL).
fn is_bad_byte(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | 0)
}

/// Is `subject` a valid subscription pattern (wildcards allowed)?
pub fn is_valid_pattern(subject: &str) -> bool {
    if subject.is_empty() {
        return false;
    }
    let mut tokens = subject.split(SEP).peekable();
    let mut count = 0;
    while let Some(token) = tokens.next() {
        count += 1;
        if count > MAX_TOKENS || token.is_empty() || has_bad_byte(token) {
            return false;
        }
        if token == FWC && tokens.peek().is_some() {
            return false;
        }
    }
    true
}

/// Is `subject` a valid literal subject (no wildcard tokens), as a publisher must send?
///
/// One pass over the bytes (it runs for every message published in-process): each token is
/// non-empty, has no whitespace or NUL byte and is not a lone `*` or `>`, and there are
/// at most [`MAX_TOKENS`] of them.
pub fn is_valid_literal(subject: &str) -> bool {
    let mut tokens = 1;
    // Length of the current token, and whether it is exactly one wildcard byte so far.
    let (mut len, mut wildcard) = (0usize, false);
    for b in subject.bytes() {
        match b {
            b'.' => {
                if len == 0 || (len == 1 && wildcard) {
                    return false;
                }
                tokens += 1;
                if tokens > MAX_TOKENS {
                    return false;
                }
                len = 0;
            }
            b if is_bad_byte(b) => return false,
            _ => {
                wildcard = len == 0 && (b == b'*' || b == b'>');
                len += 1;
            }
        }
    }
    len > 0 && !(len == 1 && wildcard)
}

/// Does the pattern `pattern` match the literal subject `subject`?
///
/// Both are assumed valid; on invalid input the answer is simply `false` or a token-wise
/// comparison, never a panic.
pub fn pattern_matches(pattern: &str, subject: &str) -> bool {
    let mut pat = pattern.split(SEP);
    let mut sub = subject.split(SEP);
    loop {
        match (pat.next(), sub.next()) {
            (None, None) => return true,
            (Some(FWC), Some(_)) => return true,
            (Some(PWC), Some(_)) => {}
            (Some(p), Some(s)) if p == s => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        for ok in [
            "foo", "foo.bar", "foo.*", "*", ">", "foo.>", "*.*.>", "foo*.b>r", "_INBOX.x",
        ] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "foo.",
            ".foo",
            "foo..bar",
            ">.foo",
            "foo.>.bar",
            "a b",
            "a\tb",
        ] {
            assert!(!is_valid_pattern(bad), "{bad:?}");
        }
        assert!(is_valid_literal("foo.bar"));
        assert!(is_valid_literal("foo*.bar"));
        assert!(!is_valid_literal("foo.*"));
        assert!(!is_valid_literal("foo.>"));
        assert!(!is_valid_literal(""));
        let long = vec!["a"; MAX_TOKENS].join(".");
        assert!(is_valid_literal(&long));
        assert!(!is_valid_literal(&format!("{long}.a")));
    }

    /// The one-pass [`is_valid_literal`] agrees with its definition: a valid pattern none of
    /// whose tokens is a wildcard.
    #[test]
    fn literal_check_agrees_with_its_definition() {
        let by_definition =
            |s: &str| is_valid_pattern(s) && s.split(SEP).all(|t| t != PWC && t != FWC);
        let alphabet = [
            "a", "b.", ".", "*", ">", "*a", "a>", " ", "\t", "\0", "é", ".>", "*.",
        ];
        // Every string of up to four pieces of the alphabet (13^4 + ... ≈ 31k cases).
        let mut cases = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..4 {
            let next: Vec<String> = last
                .iter()
                .flat_map(|p| alphabet.iter().map(move |a| format!("{p}{a}")))
                .collect();
            cases.extend(next.iter().cloned());
            last = next;
        }
        let long = vec!["a"; MAX_TOKENS].join(".");
        cases.push(long.clone());
        cases.push(format!("{long}.a"));
        cases.push(format!("{long}."));
        for c in &cases {
            assert_eq!(is_valid_literal(c), by_definition(c), "{c:?}");
        }
    }

    #[test]
    fn matching() {
        assert!(pattern_matches("foo.bar", "foo.bar"));
        assert!(!pattern_matches("foo.bar", "foo.baz"));
        assert!(pattern_matches("foo.*", "foo.bar"));
        assert!(!pattern_matches("foo.*", "foo.bar.baz"));
        assert!(!pattern_matches("foo.*", "foo"));
        assert!(pattern_matches("foo.>", "foo.bar.baz"));
        assert!(!pattern_matches("foo.>", "foo"));
        assert!(pattern_matches(">", "a"));
        assert!(pattern_matches("*.b.>", "a.b.c.d"));
        assert!(!pattern_matches("*.b.>", "a.c.c.d"));
    }
}
