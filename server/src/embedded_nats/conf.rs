//! A parser for the nats-server configuration format, into a generic value tree.
//!
//! Accepted syntax (the subset of nats-server's format that configuration files use):
//! - `key: value`, `key = value` and `key value`; a block `key { ... }` needs no separator;
//! - entries separated by newlines, `,` or `;`;
//! - comments from `#` or `//` to the end of the line (outside quoted strings and not inside a
//!   bare word, so `nats://host` stays a value);
//! - values: double-quoted strings (with `\"`, `\\`, `\n`, `\t`, `\r` escapes), single-quoted
//!   strings (raw), bare words, booleans (`true/false/yes/no/on/off`, any case), integers with an
//!   optional size suffix (`k`=1000, `kb`/`ki`/`kib`=1024, likewise `m`, `g`, `t`), floats,
//!   arrays `[a, b]` and maps `{k: v}`;
//! - `$NAME` as a whole bare value: an earlier top-level key, else the environment variable.
//!
//! `include` directives are recorded as an ordinary key (the caller decides what to do; ours
//! ignore them with a warning).
//!
//! Invariants: never panics on any input; every error names the 1-based line it was found on;
//! nesting depth is bounded ([`MAX_DEPTH`]) so hostile input cannot overflow the stack.

/// Maximum nesting of maps and arrays.
pub const MAX_DEPTH: usize = 64;

/// A configuration value.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfValue {
    /// A string (quoted or bare).
    String(String),
    /// An integer, size suffixes applied.
    Integer(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// An array.
    Array(Vec<ConfValue>),
    /// A map, in file order (later duplicates are kept; the consumer takes the last).
    Map(Vec<(String, ConfValue)>),
}

/// A syntax error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ConfError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses a whole configuration text into its top-level entries.
pub fn parse(text: &str) -> Result<Vec<(String, ConfValue)>, ConfError> {
    let mut p = ConfParser {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
        top: Vec::new(),
    };
    p.top_level()?;
    Ok(p.top)
}

struct ConfParser {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    /// Top-level entries parsed so far (also the scope for `$NAME`).
    top: Vec<(String, ConfValue)>,
}

fn is_inline_space(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn ends_bare_word(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | ';' | '}' | ']')
}

fn ends_key(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            ':' | '=' | '{' | '}' | ',' | ';' | '[' | ']' | '"' | '\''
        )
}

impl ConfParser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T, ConfError> {
        Err(ConfError {
            line: self.line,
            message: message.into(),
        })
    }

    fn at_comment(&self) -> bool {
        self.peek() == Some('#') || (self.peek() == Some('/') && self.peek_at(1) == Some('/'))
    }

    fn skip_comment(&mut self) {
        while let Some(c) = self.peek() {
            if c == '\n' {
                break;
            }
            self.bump();
        }
    }

    /// Skips spaces, tabs, comments and, if `newlines`, line breaks and entry separators.
    fn skip_filler(&mut self, newlines: bool) {
        loop {
            match self.peek() {
                Some(c) if is_inline_space(c) || c == '\r' => {
                    self.bump();
                }
                Some('\n' | ',' | ';') if newlines => {
                    self.bump();
                }
                Some(_) if self.at_comment() => self.skip_comment(),
                _ => return,
            }
        }
    }

    fn top_level(&mut self) -> Result<(), ConfError> {
        loop {
            self.skip_filler(true);
            match self.peek() {
                None => return Ok(()),
                Some('}') => return self.err("unexpected `}`"),
                Some(_) => {
                    let entry = self.entry(0)?;
                    self.top.push(entry);
                }
            }
        }
    }

    fn map_body(&mut self, depth: usize) -> Result<Vec<(String, ConfValue)>, ConfError> {
        let mut entries = Vec::new();
        loop {
            self.skip_filler(true);
            match self.peek() {
                None => return self.err("unclosed `{`"),
                Some('}') => {
                    self.bump();
                    return Ok(entries);
                }
                Some(_) => entries.push(self.entry(depth)?),
            }
        }
    }

    fn entry(&mut self, depth: usize) -> Result<(String, ConfValue), ConfError> {
        let key = self.key()?;
        self.skip_filler(false);
        if matches!(self.peek(), Some(':' | '=')) {
            self.bump();
            self.skip_filler(false);
        }
        match self.peek() {
            None | Some('\n' | ',' | ';' | '}') => self.err(format!("key `{key}` has no value")),
            Some(_) => {
                let value = self.value(depth)?;
                Ok((key, value))
            }
        }
    }

    fn key(&mut self) -> Result<String, ConfError> {
        match self.peek() {
            Some(q @ ('"' | '\'')) => {
                self.bump();
                self.quoted(q)
            }
            _ => {
                let mut key = String::new();
                while let Some(c) = self.peek() {
                    if ends_key(c) {
                        break;
                    }
                    key.push(c);
                    self.bump();
                }
                if key.is_empty() {
                    return self.err("expected a key");
                }
                Ok(key)
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<ConfValue, ConfError> {
        if depth >= MAX_DEPTH {
            return self.err("nesting too deep");
        }
        match self.peek() {
            Some('{') => {
                self.bump();
                Ok(ConfValue::Map(self.map_body(depth + 1)?))
            }
            Some('[') => {
                self.bump();
                self.array(depth + 1)
            }
            Some(q @ ('"' | '\'')) => {
                self.bump();
                Ok(ConfValue::String(self.quoted(q)?))
            }
            _ => {
                let mut word = String::new();
                while let Some(c) = self.peek() {
                    if ends_bare_word(c) {
                        break;
                    }
                    word.push(c);
                    self.bump();
                }
                if word.is_empty() {
                    return self.err("expected a value");
                }
                self.bare(&word)
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<ConfValue, ConfError> {
        let mut items = Vec::new();
        loop {
            self.skip_filler(true);
            match self.peek() {
                None => return self.err("unclosed `[`"),
                Some(']') => {
                    self.bump();
                    return Ok(ConfValue::Array(items));
                }
                Some(_) => items.push(self.value(depth)?),
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Result<String, ConfError> {
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return self.err("unterminated string"),
                Some(c) if c == quote => return Ok(s),
                Some('\\') if quote == '"' => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('r') => s.push('\r'),
                    Some(c @ ('"' | '\\' | '/')) => s.push(c),
                    Some(c) => {
                        s.push('\\');
                        s.push(c);
                    }
                    None => return self.err("unterminated string"),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn bare(&self, word: &str) -> Result<ConfValue, ConfError> {
        if let Some(name) = word.strip_prefix('$') {
            if let Some((_, v)) = self.top.iter().rev().find(|(k, _)| k == name) {
                return Ok(v.clone());
            }
            return match std::env::var(name) {
                Ok(v) => self.bare(&v),
                Err(_) => self.err(format!("variable `${name}` is not defined")),
            };
        }
        match word.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" => return Ok(ConfValue::Bool(true)),
            "false" | "no" | "off" => return Ok(ConfValue::Bool(false)),
            _ => {}
        }
        if let Some(n) = parse_sized_integer(word) {
            return match n {
                Ok(n) => Ok(ConfValue::Integer(n)),
                Err(msg) => self.err(format!("`{word}`: {msg}")),
            };
        }
        if word.contains('.')
            && word
                .chars()
                .all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        {
            if let Ok(f) = word.parse::<f64>() {
                return Ok(ConfValue::Float(f));
            }
        }
        Ok(ConfValue::String(word.to_owned()))
    }
}

/// `Some(Ok)` for an integer with an optional size suffix, `Some(Err)` for digits followed by
/// an unknown suffix that looks like a size, `None` when the word is not numeric at all.
fn parse_sized_integer(word: &str) -> Option<Result<i64, &'static str>> {
    let digits_end = word
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && c == '-')))
        .map_or(word.len(), |(i, _)| i);
    let (num, suffix) = word.split_at(digits_end);
    if num.is_empty() || num == "-" {
        return None;
    }
    let multiplier: i64 = match suffix.to_ascii_lowercase().as_str() {
        "" => 1,
        "k" => 1000,
        "kb" | "ki" | "kib" => 1 << 10,
        "m" => 1_000_000,
        "mb" | "mi" | "mib" => 1 << 20,
        "g" => 1_000_000_000,
        "gb" | "gi" | "gib" => 1 << 30,
        "t" => 1_000_000_000_000,
        "tb" | "ti" | "tib" => 1 << 40,
        // Digits followed by other text: a string such as a duration ("10s") or an address.
        _ => return None,
    };
    let Ok(n) = num.parse::<i64>() else {
        return Some(Err("number out of range"));
    };
    Some(n.checked_mul(multiplier).ok_or("number out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(entries: &'a [(String, ConfValue)], key: &str) -> Option<&'a ConfValue> {
        entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn separators_comments_and_types() {
        let text = r#"
# a comment
// another
host: 127.0.0.1
port = 4333   # trailing comment
max_payload 1MB
max_pending: 64KB; debug: true
write_deadline: "10s"
name: 'raw \n'
ratio: 0.5
url: nats://example:4222
cluster {
  listen: 0.0.0.0:6222
  routes = [
    nats://a:6222, nats://b:6222
    "nats://c:6222"
  ]
}
"#;
        let e = parse(text).expect("parses");
        assert_eq!(
            get(&e, "host"),
            Some(&ConfValue::String("127.0.0.1".into()))
        );
        assert_eq!(get(&e, "port"), Some(&ConfValue::Integer(4333)));
        assert_eq!(get(&e, "max_payload"), Some(&ConfValue::Integer(1 << 20)));
        assert_eq!(get(&e, "max_pending"), Some(&ConfValue::Integer(64 << 10)));
        assert_eq!(get(&e, "debug"), Some(&ConfValue::Bool(true)));
        assert_eq!(
            get(&e, "write_deadline"),
            Some(&ConfValue::String("10s".into()))
        );
        assert_eq!(get(&e, "name"), Some(&ConfValue::String("raw \\n".into())));
        assert_eq!(get(&e, "ratio"), Some(&ConfValue::Float(0.5)));
        assert_eq!(
            get(&e, "url"),
            Some(&ConfValue::String("nats://example:4222".into()))
        );
        match get(&e, "cluster") {
            Some(ConfValue::Map(m)) => match get(m, "routes") {
                Some(ConfValue::Array(a)) => assert_eq!(a.len(), 3),
                other => panic!("routes: {other:?}"),
            },
            other => panic!("cluster: {other:?}"),
        }
    }

    #[test]
    fn sizes() {
        let e = parse("a: 1k\nb: 2KB\nc: 3m\nd: 1gb\ne: -5\nf: 10s").expect("parses");
        assert_eq!(get(&e, "a"), Some(&ConfValue::Integer(1000)));
        assert_eq!(get(&e, "b"), Some(&ConfValue::Integer(2048)));
        assert_eq!(get(&e, "c"), Some(&ConfValue::Integer(3_000_000)));
        assert_eq!(get(&e, "d"), Some(&ConfValue::Integer(1 << 30)));
        assert_eq!(get(&e, "e"), Some(&ConfValue::Integer(-5)));
        assert_eq!(get(&e, "f"), Some(&ConfValue::String("10s".into())));
        assert!(parse("a: 99999999999tb").is_err());
    }

    #[test]
    fn variables() {
        let e = parse("limit: 2MB\nmax_payload: $limit").expect("parses");
        assert_eq!(get(&e, "max_payload"), Some(&ConfValue::Integer(2 << 20)));
        assert!(parse("x: $SURELY_NOT_DEFINED_DRAWBRIDGE_VAR").is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("a: 1\nb {\n c: 2\n").expect_err("unclosed");
        assert_eq!(err.line, 4);
        assert!(parse("a: \"open").is_err());
        assert!(parse("a:\n").is_err());
        assert!(parse("}").is_err());
        let deep = "a: ".to_owned() + &"[".repeat(200);
        assert!(parse(&deep).is_err());
    }
}
