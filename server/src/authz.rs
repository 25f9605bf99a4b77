//! Authorization of client API calls (`tls.client.authz.*`), Liftbridge-compatible.
//!
//! Liftbridge enforces a casbin model: each call is a request `(sub, obj, act)` where `sub` is
//! the client identity (the common name of its verified certificate, see [`crate::tls`]),
//! `obj` the stream the call names (`*` for calls that name no stream: FetchMetadata,
//! consumer-group calls) and `act` the RPC name (`CreateStream`, `Subscribe`, ...). A policy
//! CSV lists what is allowed, one rule a line: `p, client1, foo, CreateStream`.
//!
//! Rather than a full casbin engine this module evaluates the subset of the casbin model
//! language that ACL models use, and refuses anything else at load time (so a model that
//! would mean more than we evaluate never silently allows or denies):
//! - `[request_definition]` `r = a, b, c` and `[policy_definition]` `p = a, b, c` (any field
//!   names, the request's in the order sub, obj, act);
//! - `[policy_effect]` `e = some(where (p.eft == allow))`: a request is allowed when at least
//!   one rule matches it;
//! - `[matchers]` `m = ...`: `r.x`, `p.x`, `"literal"`, `==`, `!=`, `&&`, `||`, `!`,
//!   parentheses, and `keyMatch(a, b)` (`*` in `b` matches any run of characters).
//!
//! Invariants:
//! 1. A decision reads one consistent (model, policy) pair; [`Authorizer::reload`] (SIGHUP)
//!    swaps the pair atomically and keeps the old one when the new files do not load.
//! 2. A call with no client identity is denied (Liftbridge: "no client id").

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;

/// Why a model or policy could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The model uses something this evaluator does not support, or is malformed.
    #[error("authorization model: {0}")]
    Model(String),
    /// A policy line is malformed.
    #[error("authorization policy line {line}: {reason}")]
    Policy {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A parsed matcher expression.
#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Req(usize),
    Pol(usize),
    Lit(String),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    KeyMatch(Box<Expr>, Box<Expr>),
}

/// A casbin ACL model: the policy's field names and the matcher (request fields are resolved
/// to positions when the matcher is parsed).
#[derive(Debug, Clone)]
pub struct Model {
    policy: Vec<String>,
    matcher: Expr,
}

/// A loaded model with its policy rules.
#[derive(Debug, Clone)]
pub struct Enforcer {
    model: Model,
    rules: Vec<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Eq,
    Ne,
    And,
    Or,
    Not,
    LParen,
    RParen,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, AuthzError> {
    let err = |m: String| AuthzError::Model(m);
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        let two = b.get(i..i + 2);
        match c {
            b' ' | b'\t' => i += 1,
            b'(' => {
                out.push(Tok::LParen);
                i += 1
            }
            b')' => {
                out.push(Tok::RParen);
                i += 1
            }
            b',' => {
                out.push(Tok::Comma);
                i += 1
            }
            _ if two == Some(b"==") => {
                out.push(Tok::Eq);
                i += 2
            }
            _ if two == Some(b"!=") => {
                out.push(Tok::Ne);
                i += 2
            }
            _ if two == Some(b"&&") => {
                out.push(Tok::And);
                i += 2
            }
            _ if two == Some(b"||") => {
                out.push(Tok::Or);
                i += 2
            }
            b'!' => {
                out.push(Tok::Not);
                i += 1
            }
            b'"' | b'\'' => {
                let end = s[i + 1..]
                    .find(c as char)
                    .ok_or_else(|| err(format!("unterminated string in {s:?}")))?;
                out.push(Tok::Str(s[i + 1..i + 1 + end].to_owned()));
                i += end + 2;
            }
            _ if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.')
                {
                    i += 1;
                }
                out.push(Tok::Ident(s[start..i].to_owned()));
            }
            _ => {
                return Err(err(format!(
                    "unsupported character {:?} in {s:?}",
                    c as char
                )))
            }
        }
    }
    Ok(out)
}

/// Recursive-descent parser: or := and ('||' and)*; and := unary ('&&' unary)*;
/// unary := '!' unary | cmp; cmp := atom (('=='|'!=') atom)?.
struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
    request: &'a [String],
    policy: &'a [String],
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn expect(&mut self, t: Tok) -> Result<(), AuthzError> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(AuthzError::Model(format!(
                "expected {t:?} at token {}, found {:?}",
                self.pos,
                self.peek()
            )))
        }
    }

    fn or(&mut self) -> Result<Expr, AuthzError> {
        let mut e = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, AuthzError> {
        let mut e = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            e = Expr::And(Box::new(e), Box::new(self.unary()?));
        }
        Ok(e)
    }

    fn unary(&mut self) -> Result<Expr, AuthzError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        let a = self.atom()?;
        match self.peek() {
            Some(Tok::Eq) => {
                self.pos += 1;
                Ok(Expr::Eq(Box::new(a), Box::new(self.atom()?)))
            }
            Some(Tok::Ne) => {
                self.pos += 1;
                Ok(Expr::Ne(Box::new(a), Box::new(self.atom()?)))
            }
            _ => Ok(a),
        }
    }

    fn atom(&mut self) -> Result<Expr, AuthzError> {
        let t = self.peek().cloned();
        self.pos += 1;
        match t {
            Some(Tok::LParen) => {
                let e = self.or()?;
                self.expect(Tok::RParen)?;
                Ok(e)
            }
            Some(Tok::Str(s)) => Ok(Expr::Lit(s)),
            Some(Tok::Ident(name)) if name == "keyMatch" => {
                self.expect(Tok::LParen)?;
                let a = self.or()?;
                self.expect(Tok::Comma)?;
                let b = self.or()?;
                self.expect(Tok::RParen)?;
                Ok(Expr::KeyMatch(Box::new(a), Box::new(b)))
            }
            Some(Tok::Ident(name)) => {
                let field = |prefix: &str, fields: &[String]| {
                    name.strip_prefix(prefix)
                        .and_then(|f| fields.iter().position(|x| x == f))
                };
                if let Some(i) = field("r.", self.request) {
                    Ok(Expr::Req(i))
                } else if let Some(i) = field("p.", self.policy) {
                    Ok(Expr::Pol(i))
                } else {
                    Err(AuthzError::Model(format!(
                        "unsupported name {name:?} in the matcher (supported: r.<field>, \
                         p.<field>, keyMatch)"
                    )))
                }
            }
            other => Err(AuthzError::Model(format!(
                "unexpected {other:?} in the matcher"
            ))),
        }
    }
}

fn fields(def: &str) -> Vec<String> {
    def.split(',').map(|f| f.trim().to_owned()).collect()
}

impl Model {
    /// Parses a casbin model (see the module docs for the supported subset).
    pub fn parse(text: &str) -> Result<Model, AuthzError> {
        let mut section = String::new();
        let (mut r, mut p, mut e, mut m) = (None, None, None, None);
        for raw in text.lines() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(s) = line.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                section = s.trim().to_owned();
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| AuthzError::Model(format!("expected key = value: {line:?}")))?;
            let (k, v) = (k.trim(), v.trim().to_owned());
            match (section.as_str(), k) {
                ("request_definition", "r") => r = Some(v),
                ("policy_definition", "p") => p = Some(v),
                ("policy_effect", "e") => e = Some(v),
                ("matchers", "m") => m = Some(v),
                ("role_definition", _) => {
                    return Err(AuthzError::Model(
                        "role definitions (RBAC) are not supported".into(),
                    ))
                }
                _ => {
                    return Err(AuthzError::Model(format!(
                        "unsupported entry {k:?} in section [{section}]"
                    )))
                }
            }
        }
        let missing = |what: &str| AuthzError::Model(format!("missing {what}"));
        let request = fields(&r.ok_or_else(|| missing("[request_definition] r"))?);
        let policy = fields(&p.ok_or_else(|| missing("[policy_definition] p"))?);
        if request.len() != 3 {
            return Err(AuthzError::Model(format!(
                "the request must have three fields (sub, obj, act), got {request:?}"
            )));
        }
        let effect: String = e
            .ok_or_else(|| missing("[policy_effect] e"))?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if effect != "some(where(p.eft==allow))" {
            return Err(AuthzError::Model(format!(
                "unsupported policy effect {effect:?} (supported: some(where (p.eft == allow)))"
            )));
        }
        let m = m.ok_or_else(|| missing("[matchers] m"))?;
        let toks = tokenize(&m)?;
        let mut parser = Parser {
            toks: &toks,
            pos: 0,
            request: &request,
            policy: &policy,
        };
        let matcher = parser.or()?;
        if parser.pos != toks.len() {
            return Err(AuthzError::Model(format!(
                "trailing tokens in the matcher {m:?}"
            )));
        }
        Ok(Model { policy, matcher })
    }
}

/// casbin's `keyMatch`: `*` in `pattern` matches any run of characters.
fn key_match(key: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return key == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !key.starts_with(first) || key.len() < first.len() + last.len() || !key.ends_with(last) {
        return false;
    }
    let mut rest = &key[first.len()..key.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

enum Val<'a> {
    S(&'a str),
    B(bool),
}

fn eval<'a>(e: &'a Expr, r: &[&'a str], p: &'a [String]) -> Val<'a> {
    let s = |e: &'a Expr| match eval(e, r, p) {
        Val::S(s) => s,
        Val::B(true) => "true",
        Val::B(false) => "false",
    };
    let b = |e: &'a Expr| match eval(e, r, p) {
        Val::B(b) => b,
        Val::S(s) => !s.is_empty(),
    };
    match e {
        Expr::Req(i) => Val::S(r.get(*i).copied().unwrap_or("")),
        Expr::Pol(i) => Val::S(p.get(*i).map(String::as_str).unwrap_or("")),
        Expr::Lit(l) => Val::S(l),
        Expr::Eq(a, c) => Val::B(s(a) == s(c)),
        Expr::Ne(a, c) => Val::B(s(a) != s(c)),
        Expr::And(a, c) => Val::B(b(a) && b(c)),
        Expr::Or(a, c) => Val::B(b(a) || b(c)),
        Expr::Not(a) => Val::B(!b(a)),
        Expr::KeyMatch(a, c) => Val::B(key_match(s(a), s(c))),
    }
}

impl Enforcer {
    /// A model with the rules of a policy CSV (`p, sub, obj, act` lines; blank lines and `#`
    /// comments skipped).
    pub fn new(model: Model, policy_csv: &str) -> Result<Enforcer, AuthzError> {
        let mut rules = Vec::new();
        for (n, raw) in policy_csv.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<String> = line.split(',').map(|c| c.trim().to_owned()).collect();
            let err = |reason: String| AuthzError::Policy {
                line: n + 1,
                reason,
            };
            match cols.first().map(String::as_str) {
                Some("p") => {}
                Some(other) => {
                    return Err(err(format!(
                        "unsupported rule type {other:?} (only p lines)"
                    )))
                }
                None => continue,
            }
            let values = cols[1..].to_vec();
            if values.len() != model.policy.len() {
                return Err(err(format!(
                    "expected {} values ({}), got {}",
                    model.policy.len(),
                    model.policy.join(", "),
                    values.len()
                )));
            }
            rules.push(values);
        }
        Ok(Enforcer { model, rules })
    }

    /// Loads the model and policy files.
    pub fn load(model: &Path, policy: &Path) -> Result<Enforcer, AuthzError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| AuthzError::Io {
                path: p.to_owned(),
                source,
            })
        };
        Enforcer::new(Model::parse(&read(model)?)?, &read(policy)?)
    }

    /// Does some rule allow `(sub, obj, act)`?
    pub fn enforce(&self, sub: &str, obj: &str, act: &str) -> bool {
        let r = [sub, obj, act];
        self.rules
            .iter()
            .any(|p| matches!(eval(&self.model.matcher, &r, p), Val::B(true)))
    }
}

/// The server's authorizer: the enforcer in force and where it was loaded from.
#[derive(Debug)]
pub struct Authorizer {
    model_path: PathBuf,
    policy_path: PathBuf,
    enforcer: RwLock<Arc<Enforcer>>,
}

impl Authorizer {
    /// Loads the model and policy files.
    pub fn load(model: &Path, policy: &Path) -> Result<Authorizer, AuthzError> {
        Ok(Authorizer {
            model_path: model.to_owned(),
            policy_path: policy.to_owned(),
            enforcer: RwLock::new(Arc::new(Enforcer::load(model, policy)?)),
        })
    }

    /// Re-reads both files; on error the rules in force stay.
    pub fn reload(&self) -> Result<(), AuthzError> {
        let fresh = Enforcer::load(&self.model_path, &self.policy_path)?;
        *self.enforcer.write() = Arc::new(fresh);
        Ok(())
    }

    /// Is the client `sub` (None: no verified identity) allowed to call `act` on `obj`?
    pub fn allows(&self, sub: Option<&str>, obj: &str, act: &str) -> bool {
        let Some(sub) = sub else { return false };
        let enforcer = self.enforcer.read().clone();
        enforcer.enforce(sub, obj, act)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACL: &str = "\
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
";

    fn enforcer(model: &str, policy: &str) -> Enforcer {
        Enforcer::new(Model::parse(model).expect("model"), policy).expect("policy")
    }

    #[test]
    fn exact_acl() {
        let e = enforcer(
            ACL,
            "p, client1, foo, CreateStream\np, client1, *, FetchMetadata\n\n# c\n",
        );
        assert!(e.enforce("client1", "foo", "CreateStream"));
        assert!(!e.enforce("client1", "bar", "CreateStream"));
        assert!(!e.enforce("client2", "foo", "CreateStream"));
        assert!(!e.enforce("client1", "foo", "DeleteStream"));
        assert!(e.enforce("client1", "*", "FetchMetadata"));
        // The exact model gives `*` no meaning of its own.
        assert!(!e.enforce("client1", "foo", "FetchMetadata"));
    }

    #[test]
    fn key_match_and_wildcards() {
        let model = ACL.replace(
            "r.obj == p.obj",
            "(keyMatch(r.obj, p.obj) || p.obj == \"*\")",
        );
        let e = enforcer(
            &model,
            "p, admin, *, DeleteStream\np, app, orders-*, Publish",
        );
        assert!(e.enforce("admin", "anything", "DeleteStream"));
        assert!(e.enforce("app", "orders-eu", "Publish"));
        assert!(!e.enforce("app", "payments", "Publish"));
        assert!(key_match("a/b/c", "a/*"));
        assert!(key_match("abc", "a*c"));
        assert!(!key_match("ab", "a*bc"));
        assert!(key_match("x", "x"));
    }

    #[test]
    fn unsupported_models_are_refused() {
        let rbac = format!("{ACL}\n[role_definition]\ng = _, _\n");
        assert!(Model::parse(&rbac).is_err());
        let deny = ACL.replace(
            "some(where (p.eft == allow))",
            "!some(where (p.eft == deny))",
        );
        assert!(Model::parse(&deny).is_err());
        let func = ACL.replace("r.sub == p.sub", "regexMatch(r.sub, p.sub)");
        assert!(Model::parse(&func).is_err());
        let bad_field = ACL.replace("r.sub == p.sub", "r.who == p.sub");
        assert!(Model::parse(&bad_field).is_err());
    }

    #[test]
    fn bad_policy_lines_are_refused() {
        let m = || Model::parse(ACL).expect("model");
        assert!(Enforcer::new(m(), "p, a, b").is_err());
        assert!(Enforcer::new(m(), "g, a, b").is_err());
    }

    #[test]
    fn no_identity_is_denied_and_reload_swaps_rules() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mp, pp) = (dir.path().join("m.conf"), dir.path().join("p.csv"));
        std::fs::write(&mp, ACL).expect("write");
        std::fs::write(&pp, "p, c1, foo, Publish\n").expect("write");
        let a = Authorizer::load(&mp, &pp).expect("load");
        assert!(a.allows(Some("c1"), "foo", "Publish"));
        assert!(!a.allows(None, "foo", "Publish"));
        std::fs::write(&pp, "p, c2, foo, Publish\n").expect("write");
        a.reload().expect("reload");
        assert!(!a.allows(Some("c1"), "foo", "Publish"));
        assert!(a.allows(Some("c2"), "foo", "Publish"));
        std::fs::write(&pp, "p, broken\n").expect("write");
        assert!(a.reload().is_err());
        assert!(a.allows(Some("c2"), "foo", "Publish"));
    }
}
