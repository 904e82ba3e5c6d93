//! The total order between candidate matches (the routing priority rule).
//!
//! Every index entry is one (route, host pattern, path pattern) triple; its [`Rank`] is computed once
//! at build time from static facts only, so `find` compares ranks without looking at the request.
//! Invariant: two entries of different routes never have equal ranks (the route index is part of
//! the rank), and two entries of the same route have equal ranks only when they would produce the
//! same `Match`, so "the greatest rank among passing entries" is a deterministic answer.

use std::cmp::Reverse;

/// Path pattern classes, most specific last so the derived order ranks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PathClass {
    /// The route has no `paths`: it matches every path.
    Any,
    Prefix,
    Regex,
    Exact,
}

/// Host pattern classes, most specific last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostClass {
    /// The route has no `hosts`.
    Any,
    Wildcard,
    Exact,
}

/// Greater is better. Fields compare lexicographically in declaration order, which *is* the rule:
/// priority, path class, path length, host class, host length, condition count, then config order
/// (earlier route, then earlier path pattern, then earlier host pattern).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    pub priority: i32,
    pub path_class: PathClass,
    /// For prefix and exact paths, the normalized pattern length on a doubled scale
    /// (`path_rank`), so a reading can rank just below a length and above every shorter one
    /// (`just_below`); 0 for regex and "any".
    pub path_len: u32,
    pub host_class: HostClass,
    /// Length of the wildcard suffix (`.example.com`) or exact name; 0 for "any".
    pub host_len: u32,
    /// `methods` (1 when non-empty) + number of header conditions + number of query conditions.
    pub conditions: u32,
    pub route: Reverse<u32>,
    pub path_idx: Reverse<u32>,
    pub host_idx: Reverse<u32>,
}

impl Rank {
    /// The part of the rank before the condition count: how specific the match is by priority,
    /// path and host alone. Two matches equal here differ only in conditions and config order.
    pub fn specificity(&self) -> (i32, PathClass, u32, HostClass, u32) {
        (
            self.priority,
            self.path_class,
            self.path_len,
            self.host_class,
            self.host_len,
        )
    }
}

/// The `path_len` of a path pattern `len` bytes long: twice its length.
pub(crate) fn path_rank(len: usize) -> u32 {
    to_u32(len).saturating_mul(2)
}

/// The `path_len` of a reading ranked as a prefix just below a path `len` bytes long and above
/// every shorter one (an exact route's trailing-slash variant, a format suffix, a regex's
/// trailing-slash reading): a one-character `/a` read so still beats a catch-all `/`.
pub(crate) fn just_below(len: usize) -> u32 {
    path_rank(len).saturating_sub(1)
}

/// Saturating conversion for lengths and counts stored in a `Rank` (configs never come close).
pub(crate) fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
