//! Path index of one host group: a segment trie of exact and prefix paths, regexes, path-less routes.
//!
//! Every bucket (a trie node's prefix or exact list, the regex list, the path-less list) holds [`Entry`]s
//! sorted by descending rank, so a scan can stop at the first entry that passes its checks, or at the
//! first entry that cannot beat the best match found so far.
//!
//! Lookup cost: one hash probe per segment of the request path, walking the trie from the root and
//! stopping at the first missing segment (a segment with `;parameters` also matches the node of its
//! part before the ';'). Prefix nodes match segment-aware by construction: node
//! `/users` is reached from `/users`, `/users/` and `/users/1`, never from `/users-admin`. Exact paths
//! live on the node where their last segment ends (`/users/` on the empty segment after `users`) and
//! are visited only when the walk consumed the whole request path. Then the regex list of this group,
//! which is linear in the number of regex routes of the group (pruned by rank).

use crate::router::hash::FastMap;
use crate::router::rank::Rank;

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
    /// For regex entries: the regex reads the request path without its trailing '/' (and the entry
    /// applies only to a path that has one; see `Builder::add_path`).
    pub trimmed: bool,
}

#[derive(Debug, Default)]
struct TrieNode {
    children: FastMap<Box<[u8]>, usize>,
    /// Prefix entries whose prefix ends at this node.
    prefix: Vec<Entry>,
    /// Exact entries whose path ends at this node.
    exact: Vec<Entry>,
}

/// Exact, prefix, regex and path-less candidates for one host group.
#[derive(Debug)]
pub(crate) struct PathIndex {
    /// Node 0 is the root "/".
    trie: Vec<TrieNode>,
    regex: Vec<Entry>,
    any: Vec<Entry>,
}

impl Default for PathIndex {
    fn default() -> Self {
        PathIndex {
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
    /// `path` is normalized.
    pub fn add_exact(&mut self, path: &[u8], e: Entry) {
        if let Some(n) = self.node_for(path) {
            n.exact.push(e);
        }
    }

    /// `prefix` is normalized, without a trailing '/' (except the root "/").
    pub fn add_prefix(&mut self, prefix: &[u8], e: Entry) {
        if let Some(n) = self.node_for(prefix) {
            n.prefix.push(e);
        }
    }

    /// The node for `path`'s segments, created as needed.
    fn node_for(&mut self, path: &[u8]) -> Option<&mut TrieNode> {
        let mut node = 0;
        for seg in segments(path) {
            node = self.child(node, seg);
        }
        self.trie.get_mut(node)
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
        for n in &mut self.trie {
            n.prefix.sort_unstable_by(by_rank);
            n.exact.sort_unstable_by(by_rank);
        }
        self.regex.sort_unstable_by(by_rank);
        self.any.sort_unstable_by(by_rank);
    }

    /// Passes every bucket that may hold a match for `path` to `visit`, with how many bytes of
    /// `path` lead to that bucket's node (what a prefix route's `strip_path` removes; it differs
    /// from the configured prefix's length when a segment matched without its `;parameters`), and
    /// whether the node was reached through a format suffix (its entries then rank lower; see
    /// `walk`).
    pub fn buckets<'a>(&'a self, path: &[u8], mut visit: impl FnMut(&'a [Entry], usize, bool)) {
        if path.starts_with(b"/") {
            self.walk(path, &mut visit);
        }
        visit(&self.regex, 0, false);
        visit(&self.any, 0, false);
    }

    /// Visits the prefix bucket of every node along `path`, and the exact bucket of the node where
    /// `path` ends (if the walk gets there).
    fn walk<'a>(&'a self, path: &[u8], visit: &mut impl FnMut(&'a [Entry], usize, bool)) {
        let Some(mut node) = self.trie.first() else {
            return;
        };
        visit(&node.prefix, 0, false);
        let mut consumed = 0;
        let mut segs = segments(path).peekable();
        while let Some(seg) = segs.next() {
            // `/admin;jsessionid=x` is `/admin` to servlet containers and other backends that
            // strip path parameters, so it must not slip past the `/admin` route's plugins: when
            // the literal segment has no node, its part before ';' is tried.
            let bare = seg.split(|&b| b == b';').next().unwrap_or(seg);
            // The last segment, but for a trailing '/' (normalized paths have no other empty
            // segment; Rails drops a trailing '/' before routing).
            if segs.peek().is_none_or(|next| next.is_empty()) {
                self.format_suffixes(node, bare, consumed, visit);
            }
            let found = node.children.get(seg).or_else(|| {
                (bare.len() < seg.len())
                    .then(|| node.children.get(bare))
                    .flatten()
            });
            match found.and_then(|&id| self.trie.get(id)) {
                Some(next) => node = next,
                None => return,
            }
            consumed += 1 + seg.len();
            visit(&node.prefix, consumed, false);
        }
        visit(&node.exact, path.len(), false);
    }

    /// The readings of the last segment `bare` (of a path that reached `node` in `consumed` bytes)
    /// as a name and a format suffix: `/admin.json` and `/admin.tar.gz` run `/admin`'s handler in
    /// Rails (`(.:format)` on every route) and in Spring's suffix matching, so they must not reach
    /// a catch-all past `/admin`'s plugins (found by a review; nginx, Kong and Envoy match prefixes
    /// by bytes, so `/admin.json` is under `/admin` there too). The prefix and exact entries of
    /// each name's node are visited as reached through a suffix: ranked as a prefix just below
    /// their own path (`Search::bucket`), so whatever names the request literally (a route for
    /// `/admin.json`, a regex) wins, and `strip_path` removes only the name (the suffix stays on
    /// what goes upstream). A hidden name (`/.env`) has no such reading.
    fn format_suffixes<'a>(
        &'a self,
        node: &'a TrieNode,
        bare: &[u8],
        consumed: usize,
        visit: &mut impl FnMut(&'a [Entry], usize, bool),
    ) {
        let mut end = bare.len();
        while let Some(dot) = bare.get(..end).and_then(|b| memchr::memrchr(b'.', b)) {
            if dot == 0 {
                return;
            }
            let named = bare.get(..dot).and_then(|name| node.children.get(name));
            if let Some(n) = named.and_then(|&id| self.trie.get(id)) {
                visit(&n.prefix, consumed + 1 + dot, true);
                visit(&n.exact, consumed + 1 + dot, true);
            }
            end = dot;
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
