//! Host index: maps a request's Host to the route groups whose host patterns accept it.
//!
//! Patterns are exact names (`api.example.com`) and leading wildcards (`*.example.com`, stored here as
//! the suffix `.example.com`). A wildcard matches one **or more** leftmost labels — `a.example.com`
//! and `a.b.example.com`, never `example.com` itself — as Kong's router does. Comparison is ASCII
//! case-insensitive, and one trailing '.' (absolute DNS form) is ignored on both sides.
//!
//! Lookup cost is independent of the number of patterns: one right-to-left pass over at most
//! `max_len` bytes of the host computes a hash of every dot-delimited suffix (FNV-1a over the
//! lower-cased bytes, fed from the end), and each suffix is one hash-map probe; a hit is confirmed
//! by a case-insensitive byte comparison. Bounding the pass by the longest configured pattern keeps
//! a hostile `a.a.a.a…` Host linear and short. Nothing is allocated.

use crate::router::hash::FastMap;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_step(h: u64, b: u8) -> u64 {
    (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME)
}

/// The hash `HostIndex` files a pattern under: FNV-1a over the lower-cased bytes, last byte first.
fn reverse_hash(s: &[u8]) -> u64 {
    s.iter().rev().fold(FNV_OFFSET, |h, &b| fnv_step(h, b))
}

/// Which group a matched host pattern leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostHit {
    Exact(usize),
    Wildcard(usize),
}

/// A lower-case pattern and its group; a slot holds several only on a hash collision.
type Slot = Vec<(Box<[u8]>, usize)>;

#[derive(Debug, Default)]
struct Table {
    slots: FastMap<u64, Slot>,
    max_len: usize,
}

impl Table {
    fn insert(&mut self, pattern: &[u8], group: usize) {
        self.max_len = self.max_len.max(pattern.len());
        self.slots
            .entry(reverse_hash(pattern))
            .or_default()
            .push((pattern.into(), group));
    }

    fn get(&self, hash: u64, candidate: &[u8]) -> Option<usize> {
        let slot = self.slots.get(&hash)?;
        slot.iter()
            .find(|(p, _)| p.eq_ignore_ascii_case(candidate))
            .map(|&(_, g)| g)
    }
}

/// Exact names and wildcard suffixes, each leading to a group id chosen by the caller.
#[derive(Debug, Default)]
pub(crate) struct HostIndex {
    exact: Table,
    wildcard: Table,
}

/// Strips one trailing '.' (absolute DNS form).
pub(crate) fn trim_host(host: &[u8]) -> &[u8] {
    host.strip_suffix(b".").unwrap_or(host)
}

/// A config host pattern, canonicalized: `Ok(suffix)` for `*.x` (suffix `.x`), `Err(name)` for exact.
pub(crate) fn parse_pattern(pattern: &str) -> Result<Vec<u8>, Vec<u8>> {
    let lower = pattern.to_ascii_lowercase().into_bytes();
    let trimmed = trim_host(&lower).to_vec();
    match trimmed.strip_prefix(b"*") {
        Some(suffix) if suffix.starts_with(b".") && suffix.len() > 1 => Ok(suffix.to_vec()),
        _ => Err(trimmed),
    }
}

impl HostIndex {
    pub fn insert_exact(&mut self, name: &[u8], group: usize) {
        self.exact.insert(name, group);
    }

    pub fn insert_wildcard(&mut self, suffix: &[u8], group: usize) {
        self.wildcard.insert(suffix, group);
    }

    /// The exact group for `host` and the wildcard group of every matching suffix are each passed to
    /// `visit` (in no particular order; the caller ranks candidates itself).
    pub fn lookup(&self, host: &[u8], mut visit: impl FnMut(HostHit)) {
        let host = trim_host(host);
        let bound = self.exact.max_len.max(self.wildcard.max_len);
        let mut h = FNV_OFFSET;
        for (i, &b) in host.iter().enumerate().rev() {
            if host.len() - i > bound {
                return;
            }
            h = fnv_step(h, b);
            // A wildcard needs a non-empty label on its left, so never at i == 0.
            if b == b'.' && i > 0 {
                if let Some(g) = host
                    .get(i..)
                    .and_then(|suffix| self.wildcard.get(h, suffix))
                {
                    visit(HostHit::Wildcard(g));
                }
            }
        }
        if host.len() <= self.exact.max_len {
            if let Some(g) = self.exact.get(h, host) {
                visit(HostHit::Exact(g));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(idx: &HostIndex, host: &str) -> Vec<HostHit> {
        let mut v = Vec::new();
        idx.lookup(host.as_bytes(), |h| v.push(h));
        v
    }

    #[test]
    fn patterns_parse() {
        assert_eq!(parse_pattern("*.Example.com"), Ok(b".example.com".to_vec()));
        assert_eq!(
            parse_pattern("api.example.com."),
            Err(b"api.example.com".to_vec())
        );
        assert_eq!(parse_pattern("*"), Err(b"*".to_vec()));
    }

    #[test]
    fn exact_and_wildcards() {
        let mut idx = HostIndex::default();
        idx.insert_exact(b"api.example.com", 0);
        idx.insert_wildcard(b".example.com", 1);
        idx.insert_wildcard(b".b.example.com", 2);
        assert_eq!(
            hits(&idx, "API.Example.COM"),
            vec![HostHit::Wildcard(1), HostHit::Exact(0)]
        );
        assert_eq!(
            hits(&idx, "api.example.com."),
            vec![HostHit::Wildcard(1), HostHit::Exact(0)]
        );
        assert_eq!(hits(&idx, "a.example.com"), vec![HostHit::Wildcard(1)]);
        assert_eq!(
            hits(&idx, "a.b.example.com"),
            vec![HostHit::Wildcard(1), HostHit::Wildcard(2)]
        );
        assert_eq!(hits(&idx, "example.com"), vec![]);
        assert_eq!(hits(&idx, ".example.com"), vec![]);
        assert_eq!(hits(&idx, "xexample.com"), vec![]);
        assert_eq!(hits(&idx, ""), vec![]);
        let long = "a.".repeat(10_000) + "example.com";
        assert_eq!(hits(&idx, &long), vec![HostHit::Wildcard(1)]);
    }
}
