//! Path index of one host group: exact paths, a segment trie of prefixes, regexes, and path-less routes.
//!
//! Every bucket (an exact path, a trie node, the regex list, the path-less list) holds [`Entry`]s
//! sorted by descending rank, so a scan can stop at the first entry that passes its checks, or at the
//! first entry that cannot beat the best match found so far.
//!
//! Lookup cost: one hash probe for the exact path, one hash probe per segment of the request path for
//! prefixes (walked from the root; prefix nodes match segment-aware by construction: node `/users`
//! is reached from `/users`, `/users/` and `/users/1`, never from `/users-admin`), then the regex list
//! of this group, which is linear in the number of regex routes of the group (pruned by rank).

use crate::router::rank::Rank;
use std::collections::HashMap;

/// One (route, host pattern, path pattern) candidate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub rank: Rank,
    pub route: u32,
    /// For exact/prefix entries: the `strip_len` to report (already 0 when the route keeps the path).
    pub strip_len: u32,
    /// For regex entries: index into `Router::regexes`.
    pub regex: Option<u32>,
    pub strip_path: bool,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: HashMap<Box<[u8]>, usize>,
    entries: Vec<Entry>,
}

/// Exact, prefix, regex and path-less candidates for one host group.
#[derive(Debug)]
pub(crate) struct PathIndex {
    exact: HashMap<Box<[u8]>, Vec<Entry>>,
    /// Node 0 is the root prefix "/".
    trie: Vec<TrieNode>,
    regex: Vec<Entry>,
    any: Vec<Entry>,
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex {
            exact: HashMap::new(),
            trie: vec![TrieNode::default()],
            regex: Vec::new(),
            any: Vec::new(),
        }
    }
}

/// Segments of a prefix or path after the leading '/': "/a/b" -> ["a", "b"]; "/" -> [].
fn segments(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let rest = path.strip_prefix(b"/").unwrap_or_default();
    rest.split(|&b| b == b'/')
        .take_while(move |_| !rest.is_empty())
}

impl PathIndex {
    pub fn add_exact(&mut self, path: &[u8], e: Entry) {
        self.exact.entry(path.into()).or_default().push(e);
    }

    /// `prefix` is normalized, without a trailing '/' (except the root "/").
    pub fn add_prefix(&mut self, prefix: &[u8], e: Entry) {
        let mut node = 0;
        for seg in segments(prefix) {
            node = self.child(node, seg);
        }
        if let Some(n) = self.trie.get_mut(node) {
            n.entries.push(e);
        }
    }

    fn child(&mut self, node: usize, seg: &[u8]) -> usize {
        let next = self.trie.len();
        let Some(n) = self.trie.get_mut(node) else {
            return 0;
        };
        let id = *n.children.entry(seg.into()).or_insert(next);
        if id == next {
            self.trie.push(TrieNode::default());
        }
        id
    }

    pub fn add_regex(&mut self, e: Entry) {
        self.regex.push(e);
    }

    pub fn add_any(&mut self, e: Entry) {
        self.any.push(e);
    }

    /// Sorts every bucket by descending rank; call once after the last `add_*`.
    pub fn finish(&mut self) {
        let by_rank = |a: &Entry, b: &Entry| b.rank.cmp(&a.rank);
        self.exact
            .values_mut()
            .for_each(|v| v.sort_unstable_by(by_rank));
        self.trie
            .iter_mut()
            .for_each(|n| n.entries.sort_unstable_by(by_rank));
        self.regex.sort_unstable_by(by_rank);
        self.any.sort_unstable_by(by_rank);
    }

    /// Passes every bucket that may hold a match for `path` to `visit`.
    pub fn buckets<'a>(&'a self, path: &[u8], mut visit: impl FnMut(&'a [Entry])) {
        if let Some(v) = self.exact.get(path) {
            visit(v);
        }
        if path.starts_with(b"/") {
            self.walk_prefixes(path, &mut visit);
        }
        visit(&self.regex);
        visit(&self.any);
    }

    fn walk_prefixes<'a>(&'a self, path: &[u8], visit: &mut impl FnMut(&'a [Entry])) {
        let Some(mut node) = self.trie.first() else {
            return;
        };
        visit(&node.entries);
        for seg in segments(path) {
            match node.children.get(seg).and_then(|&id| self.trie.get(id)) {
                Some(next) => node = next,
                None => return,
            }
            visit(&node.entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_split() {
        let s = |p: &str| {
            segments(p.as_bytes())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(s("/"), Vec::<String>::new());
        assert_eq!(s("/a"), vec!["a"]);
        assert_eq!(s("/a/b"), vec!["a", "b"]);
        assert_eq!(s("/a/"), vec!["a", ""]);
    }
}
