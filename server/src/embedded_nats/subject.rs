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
    token
        .bytes()
        .any(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' | 0))
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
pub fn is_valid_literal(subject: &str) -> bool {
    is_valid_pattern(subject) && subject.split(SEP).all(|t| t != PWC && t != FWC)
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
