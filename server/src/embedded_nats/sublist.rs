//! The subscription index ("sublist"): a trie keyed by subject token, plus a match cache.
//!
//! Each trie level maps a literal token to a node and has two optional wildcard children (`*`
//! and `>`). A node holds the plain subscriptions and the queue subscriptions (grouped by queue
//! name) whose pattern ends there. Matching a literal subject of `n` tokens walks at most three
//! branches per level, so its cost is bounded by the trie's shape, not by the number of
//! subscriptions.
//!
//! Results are cached per literal subject. Invariants:
//! 1. The cache never holds a stale result: every insert or remove of pattern `p` runs under the
//!    trie's write lock and evicts every cached subject that `p` matches; a lookup computes and
//!    caches its result while holding the trie's read lock, so no insert/remove can interleave.
//! 2. Lock order is always trie, then cache.
//! 3. Entries are compared by `Arc` identity: inserting the same `Arc` twice stores it twice, and
//!    `remove` removes one occurrence.
//! 4. Empty nodes and levels are pruned on removal, so the trie's size follows the live
//!    subscriptions.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::subject::{pattern_matches, FWC, PWC, SEP};

/// Maximum number of literal subjects whose match result is cached.
const CACHE_MAX: usize = 1024;

/// The subscriptions a literal subject matches.
#[derive(Debug)]
pub struct Matches<T> {
    /// Plain subscriptions: each gets a copy.
    pub plain: Vec<Arc<T>>,
    /// Queue groups (merged by name across patterns): one member of each gets a copy.
    pub queues: Vec<(String, Vec<Arc<T>>)>,
}

impl<T> Matches<T> {
    /// True when nothing matched.
    pub fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty()
    }
}

#[derive(Debug)]
struct Node<T> {
    next: Option<Box<Level<T>>>,
    plain: Vec<Arc<T>>,
    queues: HashMap<String, Vec<Arc<T>>>,
}

impl<T> Default for Node<T> {
    fn default() -> Self {
        Self {
            next: None,
            plain: Vec::new(),
            queues: HashMap::new(),
        }
    }
}

impl<T> Node<T> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.queues.is_empty() && self.next.is_none()
    }
}

#[derive(Debug)]
struct Level<T> {
    literal: HashMap<String, Node<T>>,
    pwc: Option<Box<Node<T>>>,
    fwc: Option<Box<Node<T>>>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            pwc: None,
            fwc: None,
        }
    }
}

impl<T> Level<T> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty() && self.pwc.is_none() && self.fwc.is_none()
    }

    fn node_mut(&mut self, token: &str) -> &mut Node<T> {
        match token {
            PWC => self.pwc.get_or_insert_with(Box::default),
            FWC => self.fwc.get_or_insert_with(Box::default),
            _ => self.literal.entry(token.to_owned()).or_default(),
        }
    }
}

/// A concurrent subscription index. See the module documentation for its invariants.
#[derive(Debug)]
pub struct Sublist<T> {
    root: RwLock<Level<T>>,
    cache: Mutex<HashMap<String, Arc<Matches<T>>>>,
}

impl<T> Default for Sublist<T> {
    fn default() -> Self {
        Self {
            root: RwLock::new(Level::default()),
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Sublist<T> {
    /// Creates an empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `entry` under the (already validated) pattern `subject`, in queue group `queue` if
    /// given.
    pub fn insert(&self, subject: &str, queue: Option<&str>, entry: Arc<T>) {
        let mut root = self.root.write();
        let mut level: &mut Level<T> = &mut root;
        let mut tokens = subject.split(SEP).peekable();
        while let Some(token) = tokens.next() {
            let node = level.node_mut(token);
            if tokens.peek().is_none() {
                match queue {
                    Some(q) => node.queues.entry(q.to_owned()).or_default().push(entry),
                    None => node.plain.push(entry),
                }
                break;
            }
            level = node.next.get_or_insert_with(Box::default);
        }
        self.cache
            .lock()
            .retain(|cached, _| !pattern_matches(subject, cached));
    }

    /// Removes one occurrence of `entry` (by identity) from under `subject`/`queue`. Returns
    /// whether it was found.
    pub fn remove(&self, subject: &str, queue: Option<&str>, entry: &Arc<T>) -> bool {
        let mut root = self.root.write();
        let tokens: Vec<&str> = subject.split(SEP).collect();
        let found = remove_from_level(&mut root, &tokens, queue, entry);
        if found {
            self.cache
                .lock()
                .retain(|cached, _| !pattern_matches(subject, cached));
        }
        found
    }

    /// The subscriptions matching the literal subject `subject`.
    pub fn matches(&self, subject: &str) -> Arc<Matches<T>> {
        let root = self.root.read();
        if let Some(hit) = self.cache.lock().get(subject) {
            return Arc::clone(hit);
        }
        let tokens: Vec<&str> = subject.split(SEP).collect();
        let mut collector = Collector {
            plain: Vec::new(),
            queues: Vec::new(),
        };
        match_level(&root, &tokens, &mut collector);
        let result = Arc::new(Matches {
            plain: collector.plain,
            queues: collector.queues,
        });
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_MAX {
            let victim = cache.keys().next().cloned();
            if let Some(victim) = victim {
                cache.remove(&victim);
            }
        }
        cache.insert(subject.to_owned(), Arc::clone(&result));
        drop(cache);
        drop(root);
        result
    }

    /// Number of cached match results (for tests and diagnostics).
    pub fn cache_len(&self) -> usize {
        self.cache.lock().len()
    }

    /// True when no subscription is stored.
    pub fn is_empty(&self) -> bool {
        self.root.read().is_empty()
    }
}

struct Collector<T> {
    plain: Vec<Arc<T>>,
    queues: Vec<(String, Vec<Arc<T>>)>,
}

impl<T> Collector<T> {
    fn add(&mut self, node: &Node<T>) {
        self.plain.extend(node.plain.iter().cloned());
        for (name, members) in &node.queues {
            if members.is_empty() {
                continue;
            }
            match self.queues.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => existing.extend(members.iter().cloned()),
                None => self.queues.push((name.clone(), members.clone())),
            }
        }
    }
}

fn match_level<T>(level: &Level<T>, tokens: &[&str], out: &mut Collector<T>) {
    let Some((first, rest)) = tokens.split_first() else {
        return;
    };
    if let Some(fwc) = &level.fwc {
        out.add(fwc);
    }
    if let Some(pwc) = &level.pwc {
        match_node(pwc, rest, out);
    }
    if let Some(node) = level.literal.get(*first) {
        match_node(node, rest, out);
    }
}

fn match_node<T>(node: &Node<T>, rest: &[&str], out: &mut Collector<T>) {
    if rest.is_empty() {
        out.add(node);
    } else if let Some(next) = &node.next {
        match_level(next, rest, out);
    }
}

fn remove_from_level<T>(
    level: &mut Level<T>,
    tokens: &[&str],
    queue: Option<&str>,
    entry: &Arc<T>,
) -> bool {
    let Some((first, rest)) = tokens.split_first() else {
        return false;
    };
    let node: &mut Node<T> = match *first {
        PWC => match level.pwc.as_deref_mut() {
            Some(n) => n,
            None => return false,
        },
        FWC => match level.fwc.as_deref_mut() {
            Some(n) => n,
            None => return false,
        },
        literal => match level.literal.get_mut(literal) {
            Some(n) => n,
            None => return false,
        },
    };
    let found = if rest.is_empty() {
        remove_from_node(node, queue, entry)
    } else {
        match node.next.as_deref_mut() {
            Some(next) => {
                let found = remove_from_level(next, rest, queue, entry);
                if next.is_empty() {
                    node.next = None;
                }
                found
            }
            None => false,
        }
    };
    if node.is_empty() {
        match *first {
            PWC => level.pwc = None,
            FWC => level.fwc = None,
            literal => {
                level.literal.remove(literal);
            }
        }
    }
    found
}

fn remove_from_node<T>(node: &mut Node<T>, queue: Option<&str>, entry: &Arc<T>) -> bool {
    let list = match queue {
        None => &mut node.plain,
        Some(q) => match node.queues.get_mut(q) {
            Some(list) => list,
            None => return false,
        },
    };
    let Some(pos) = list.iter().position(|e| Arc::ptr_eq(e, entry)) else {
        return false;
    };
    list.swap_remove(pos);
    if let Some(q) = queue {
        if list.is_empty() {
            node.queues.remove(q);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: &Matches<&'static str>) -> Vec<&'static str> {
        let mut v: Vec<_> = m.plain.iter().map(|a| **a).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn literal_and_wildcards() {
        let s = Sublist::new();
        let a = Arc::new("a");
        let b = Arc::new("b");
        let c = Arc::new("c");
        let d = Arc::new("d");
        s.insert("foo.bar", None, a.clone());
        s.insert("foo.*", None, b.clone());
        s.insert("foo.>", None, c.clone());
        s.insert(">", None, d.clone());
        assert_eq!(names(&s.matches("foo.bar")), vec!["a", "b", "c", "d"]);
        assert_eq!(names(&s.matches("foo.baz")), vec!["b", "c", "d"]);
        assert_eq!(names(&s.matches("foo.bar.baz")), vec!["c", "d"]);
        assert_eq!(names(&s.matches("foo")), vec!["d"]);
        assert_eq!(names(&s.matches("other")), vec!["d"]);
    }

    #[test]
    fn cache_is_invalidated_on_insert_and_remove() {
        let s = Sublist::new();
        let a = Arc::new("a");
        assert!(s.matches("foo.bar").is_empty());
        assert_eq!(s.cache_len(), 1);
        s.insert("foo.*", None, a.clone());
        assert_eq!(names(&s.matches("foo.bar")), vec!["a"]);
        assert!(s.remove("foo.*", None, &a));
        assert!(s.matches("foo.bar").is_empty());
        assert!(!s.remove("foo.*", None, &a));
        assert!(s.is_empty(), "trie pruned after the last removal");
    }

    #[test]
    fn queues_merge_by_name() {
        let s = Sublist::new();
        let a = Arc::new("a");
        let b = Arc::new("b");
        let c = Arc::new("c");
        s.insert("foo.bar", Some("q"), a.clone());
        s.insert("foo.*", Some("q"), b.clone());
        s.insert("foo.*", Some("r"), c.clone());
        let m = s.matches("foo.bar");
        assert!(m.plain.is_empty());
        assert_eq!(m.queues.len(), 2);
        let q = m
            .queues
            .iter()
            .find(|(n, _)| n == "q")
            .map(|(_, v)| v.len());
        assert_eq!(q, Some(2));
        assert!(s.remove("foo.bar", Some("q"), &a));
        assert!(s.remove("foo.*", Some("q"), &b));
        assert!(s.remove("foo.*", Some("r"), &c));
        assert!(s.is_empty());
    }

    #[test]
    fn same_entry_twice_removes_one_at_a_time() {
        let s = Sublist::new();
        let a = Arc::new("a");
        s.insert("x", None, a.clone());
        s.insert("x", None, a.clone());
        assert_eq!(s.matches("x").plain.len(), 2);
        assert!(s.remove("x", None, &a));
        assert_eq!(s.matches("x").plain.len(), 1);
        assert!(s.remove("x", None, &a));
        assert!(s.is_empty());
    }

    #[test]
    fn cache_is_bounded() {
        let s: Sublist<&'static str> = Sublist::new();
        for i in 0..(CACHE_MAX + 50) {
            let _ = s.matches(&format!("subject.{i}"));
        }
        assert!(s.cache_len() <= CACHE_MAX);
    }
}
