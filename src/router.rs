//! Route matching: picks the route for a request from an index built once per config.
//!
//! [`Router::new`] compiles `&[RouteDef]` into a read-only index (`Send + Sync`; workers share one
//! `Arc<Router>`); [`Router::find`] returns the best matching route, never allocates (beyond the
//! regex crate's own per-thread cache on first use) and never panics on request data.
//!
//! # Routing (README "Routing" section)
//!
//! **Matching.** A route matches when *all* of its stated conditions hold; an absent condition
//! matches anything.
//! - `hosts`: the request's Host (port removed) equals one of the names, ASCII case-insensitively
//!   (one trailing '.' is ignored), or matches a wildcard `*.example.com`. A wildcard matches one
//!   **or more** leftmost labels (`a.example.com`, `a.b.example.com`), never `example.com` itself
//!   (Kong's behaviour).
//! - `paths` are matched against the *normalized* path: percent-escapes of unreserved characters
//!   decoded, others upper-cased (`%2f` -> `%2F`, never a separator), **runs of '/' merged** (like
//!   nginx's `merge_slashes`: `//admin` is `/admin`), dot-segments removed (`/public/../admin` and
//!   `/%2e%2e/admin` are `/admin`, and so is `/public/..;/admin`: a dot segment with `;parameters`
//!   is one to servlet containers); an invalid escape is a 400. **Paths are case-sensitive**:
//!   `/ADMIN` does not match `/admin`.
//!   - `"/users"` is a segment-aware prefix: it matches `/users`, `/users/` and `/users/1`, not
//!     `/users-admin`; `"/"` matches every path.
//!   - `"=/health"` matches exactly `/health`.
//!   - `"~^/v\\d+/users"` is a regex, anchored at the start of the path (as if it began with `^`).
//!   - config paths are normalized the same way (and prefixes lose a trailing '/').
//! - `methods`: exact, case-sensitive (`GET`).
//! - `headers`: all must match; `"*"` = present; exact values compare case-insensitively (as Kong);
//!   `"~regex"` searches the value (unanchored unless the regex says `^`/`$`). Only the first value of
//!   a repeated header is considered.
//! - `query`: all must match; names and values are compared after percent-decoding (`+` is a space),
//!   case-sensitively; any occurrence of a repeated parameter may satisfy the condition; `"*"` also
//!   accepts `?flag`.
//!
//! **Priority** (when several routes match; total and deterministic):
//! 1. higher `priority` wins;
//! 2. path specificity: exact > regex > prefix > no `paths`; between prefixes, the longer
//!    (normalized) prefix wins;
//! 3. host specificity: exact host > wildcard host > no `hosts`; between wildcards, the longer
//!    suffix wins (`*.b.example.com` beats `*.example.com`);
//! 4. more conditions wins: (1 if `methods` is set) + number of `headers` + number of `query` entries;
//! 5. the route defined earlier in the config wins.
//!
//! When one route matches through several of its own paths, the most specific of them (by the same
//! rules, then the earlier one in its `paths` list) is the one that counts, and gives `strip_len`.
//!
//! **strip_path.** With `strip_path = true` the matched part is removed before proxying: the whole
//! prefix for a prefix path (nothing for the root prefix `/`), the whole path for an exact path, the
//! text matched by a regex path. The upstream path is then `service.path` joined to the remainder
//! with exactly one '/' (see [`normalize::upstream_path`] for the full table):
//!
//! | service path | request    | strip_path | upstream path |
//! |--------------|------------|------------|---------------|
//! | ""  or "/"   | /users     | false      | /users        |
//! | ""  or "/"   | /users     | true       | /             |
//! | ""  or "/"   | /users/1   | true       | /1            |
//! | "/base"      | /users     | false      | /base/users   |
//! | "/base"      | /users     | true       | /base         |
//! | "/base"      | /users/    | true       | /base/        |
//! | "/base"      | /users/1   | false      | /base/users/1 |
//! | "/base"      | /users/1   | true       | /base/1       |
//!
//! # Index and cost
//!
//! Routes are grouped by host pattern (one group per exact host, per wildcard suffix, and one for
//! routes without hosts). `find` visits: the exact-host group (one hash probe), one wildcard group per
//! dot-suffix of the Host (one pass over the Host), and the host-less group. In each group: a segment
//! trie of exact and prefix paths walked along the request path (one hash probe per segment), the
//! group's regex routes, and its path-less routes. Every bucket is pre-sorted by rank,
//! so a scan stops at the first passing entry or at the first entry that cannot beat the best so far.
//! Cost therefore depends on the request's size and on how many routes share the *same* host and
//! path pattern, not on the total number of routes — except regex routes, which are tried one by
//! one within each visited group (pruned by rank).

pub mod normalize;

mod conds;
mod hash;
mod host;
mod paths;
mod rank;
#[cfg(test)]
mod tests;

use crate::config::model::{PathMatch, RouteDef};
use conds::Conditions;
use host::{HostHit, HostIndex};
use paths::{Entry, PathIndex};
use rank::{just_below, path_rank, to_u32, HostClass, PathClass, Rank};
use regex::Regex;
use std::cmp::Reverse;
use std::collections::HashMap;

pub use normalize::{
    has_encoded_dot_segment, normalize_path, push_path_without_params, upstream_path,
    NormalizeError,
};

/// What the router needs from a request besides host, method, path and query.
pub trait RequestView {
    /// The value of the header `name_lower` (ASCII lower-case) a header condition looks at, if
    /// present: the first one (or the last, for `Router::ambiguous`'s second reading).
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]>;
    /// Whether the header `name_lower` occurs more than once with different values.
    fn header_varies(&self, name_lower: &[u8]) -> bool;
    /// Which occurrence of a repeated query parameter a query condition looks at.
    fn query_reading(&self) -> Occurrence {
        Occurrence::Any
    }
    /// Whether a route for GET takes a HEAD request (see `conds`).
    fn head_as_get(&self) -> bool {
        true
    }
    /// Whether query conditions compare parameter names as the most lenient frameworks read them
    /// (`Router::ambiguous`'s lenient reading; see `conds::lenient_eq`).
    fn lenient_names(&self) -> bool {
        false
    }
}

/// Which occurrence of a repeated header or query parameter a condition reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occurrence {
    /// Any occurrence may satisfy it (query conditions, as Kong).
    Any,
    First,
    Last,
}

/// A successful match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    /// Index into `Config::routes`.
    pub route: usize,
    /// How many leading bytes of the normalized path `strip_path` removes (0 when the route does not strip).
    pub strip_len: usize,
}

/// A path regex made start-anchored at build time.
#[derive(Debug)]
struct PathRegex {
    re: Regex,
    /// True when anchoring by rewriting failed (size limits): then a match must start at 0.
    check_start: bool,
}

impl PathRegex {
    fn new(re: &Regex) -> PathRegex {
        match Regex::new(&format!("^(?:{})", re.as_str())) {
            Ok(re) => PathRegex {
                re,
                check_start: false,
            },
            Err(_) => PathRegex {
                re: re.clone(),
                check_start: true,
            },
        }
    }

    /// The length of the match at the start of `path`.
    fn match_len(&self, path: &str) -> Option<usize> {
        let m = self.re.find(path)?;
        (!self.check_start || m.start() == 0).then_some(m.end())
    }
}

/// The compiled, read-only route index.
#[derive(Debug)]
pub struct Router {
    conds: Vec<Conditions>,
    /// Every header name (lower-case) and query parameter name some route's conditions read:
    /// what `ambiguous` looks for repeats of (both empty in most configs: then it costs nothing).
    cond_headers: Vec<Box<[u8]>>,
    cond_query: Vec<Box<[u8]>>,
    regexes: Vec<PathRegex>,
    /// Index 0 holds the routes without hosts.
    groups: Vec<PathIndex>,
    hosts: HostIndex,
}

/// A host pattern of a route, resolved to its group.
struct HostSlot {
    group: usize,
    class: HostClass,
    len: usize,
    idx: usize,
}

/// Build-time state: host-pattern -> group id.
#[derive(Default)]
struct GroupMap {
    exact: HashMap<Vec<u8>, usize>,
    wildcard: HashMap<Vec<u8>, usize>,
}

const ANY_HOST_GROUP: usize = 0;

impl Router {
    pub fn new(routes: &[RouteDef]) -> Router {
        let mut router = Router {
            conds: Vec::with_capacity(routes.len()),
            cond_headers: Vec::new(),
            cond_query: Vec::new(),
            regexes: Vec::new(),
            groups: vec![PathIndex::default()],
            hosts: HostIndex::default(),
        };
        let mut groups = GroupMap::default();
        for (idx, route) in routes.iter().enumerate() {
            router.add_route(idx, route, &mut groups);
        }
        router.groups.iter_mut().for_each(PathIndex::finish);
        router
    }

    fn add_route(&mut self, idx: usize, route: &RouteDef, groups: &mut GroupMap) {
        let cond = Conditions::new(route);
        for name in cond.header_names() {
            if !self.cond_headers.iter().any(|n| **n == *name) {
                self.cond_headers.push(name.into());
            }
        }
        for name in cond.query_names() {
            if !self.cond_query.iter().any(|n| **n == *name) {
                self.cond_query.push(name.into());
            }
        }
        let conditions = to_u32(cond.count());
        self.conds.push(cond);
        let hosts = self.host_slots(route, groups);
        let base = Rank {
            priority: route.priority,
            path_class: PathClass::Any,
            path_len: 0,
            host_class: HostClass::Any,
            host_len: 0,
            conditions,
            route: Reverse(to_u32(idx)),
            path_idx: Reverse(0),
            host_idx: Reverse(0),
        };
        let entry = Entry {
            rank: base,
            route: to_u32(idx),
            strip_len: 0,
            regex: None,
            strip_path: route.strip_path,
            trimmed: false,
        };
        if route.paths.is_empty() {
            for h in &hosts {
                let e = with_host(entry, h);
                self.group(h.group).add_any(e);
            }
        }
        for (path_idx, path) in route.paths.iter().enumerate() {
            let mut e = entry;
            e.rank.path_idx = Reverse(to_u32(path_idx));
            self.add_path(path, e, &hosts);
        }
    }

    fn add_path(&mut self, path: &PathMatch, mut e: Entry, hosts: &[HostSlot]) {
        match path {
            PathMatch::Prefix(p) => {
                let p = normalize_config_path(p, true);
                e.rank.path_class = PathClass::Prefix;
                e.rank.path_len = path_rank(p.len());
                let strips = e.strip_path && p.as_slice() != b"/";
                e.strip_len = if strips { to_u32(p.len()) } else { 0 };
                for h in hosts {
                    self.group(h.group).add_prefix(&p, with_host(e, h));
                }
            }
            PathMatch::Exact(p) => {
                let p = normalize_config_path(p, false);
                e.rank.path_class = PathClass::Exact;
                e.rank.path_len = path_rank(p.len());
                e.strip_len = if e.strip_path { to_u32(p.len()) } else { 0 };
                // The same path with one trailing '/' more or less matches too: frameworks that
                // ignore it (Express by default, Flask with strict_slashes off) serve `/secret/`
                // as `/secret`, so it must not fall through to a catch-all past this route's
                // plugins. It ranks as a prefix just below the path without its '/': above every
                // shorter prefix such as a catch-all `/`, below a prefix route for the path itself
                // (`=/docs` redirecting to the `/docs/` site keeps working), a regex and an exact
                // route spelled like the request.
                let variant = match p.strip_suffix(b"/") {
                    Some(b"") => None,
                    Some(without) => Some(without.to_vec()),
                    None => Some([p.as_slice(), b"/"].concat()),
                };
                let bare_len = p.strip_suffix(b"/").unwrap_or(&p).len();
                let mut v = e;
                v.rank.path_class = PathClass::Prefix;
                v.rank.path_len = just_below(bare_len);
                for h in hosts {
                    self.group(h.group).add_exact(&p, with_host(e, h));
                    if let Some(variant) = &variant {
                        self.group(h.group).add_exact(variant, with_host(v, h));
                    }
                }
            }
            PathMatch::Regex(re) => {
                e.rank.path_class = PathClass::Regex;
                e.regex = Some(to_u32(self.regexes.len()));
                self.regexes.push(PathRegex::new(re));
                // The request path without its trailing '/' is read too, as for an exact route:
                // `~^/admin$` must take `/admin/`, which Express and Flask (strict_slashes off)
                // serve as `/admin`, or a catch-all would pass it on without this route's
                // plugins (found by a review). Ranked as a prefix just below the regex's literal
                // start (`/admin`): above every shorter prefix such as a catch-all, below a prefix
                // route for the literal start itself (a `~^/docs$` redirecting to the `/docs/`
                // site keeps working) and below any true regex match.
                let mut v = e;
                v.trimmed = true;
                v.rank.path_class = PathClass::Prefix;
                v.rank.path_len = just_below(literal_start(re.as_str()));
                for h in hosts {
                    self.group(h.group).add_regex(with_host(e, h));
                    self.group(h.group).add_regex(with_host(v, h));
                }
            }
        }
    }

    /// The groups a route's host patterns lead to (the host-less group when it has none).
    fn host_slots(&mut self, route: &RouteDef, groups: &mut GroupMap) -> Vec<HostSlot> {
        if route.hosts.is_empty() {
            return vec![HostSlot {
                group: ANY_HOST_GROUP,
                class: HostClass::Any,
                len: 0,
                idx: 0,
            }];
        }
        let mut slots = Vec::with_capacity(route.hosts.len());
        for (idx, pattern) in route.hosts.iter().enumerate() {
            let (class, key, map) = match host::parse_pattern(pattern) {
                Ok(suffix) => (HostClass::Wildcard, suffix, &mut groups.wildcard),
                Err(name) => (HostClass::Exact, name, &mut groups.exact),
            };
            let len = key.len();
            let group = match map.get(&key) {
                Some(&g) => g,
                None => {
                    let g = self.groups.len();
                    self.groups.push(PathIndex::default());
                    match class {
                        HostClass::Wildcard => self.hosts.insert_wildcard(&key, g),
                        _ => self.hosts.insert_exact(&key, g),
                    }
                    map.insert(key, g);
                    g
                }
            };
            slots.push(HostSlot {
                group,
                class,
                len,
                idx,
            });
        }
        slots
    }

    fn group(&mut self, g: usize) -> &mut PathIndex {
        if g >= self.groups.len() {
            self.groups.resize_with(g + 1, PathIndex::default);
        }
        &mut self.groups[g]
    }

    /// Whether the request repeats, with different values, a header or query parameter some
    /// route's conditions read. Then the route found may depend on which occurrence is read, and
    /// an upstream may read another one than the router did (many take the last): the caller
    /// routes again with the first and with the last of each and refuses the request when the
    /// readings disagree. False at once when no route has header or query conditions.
    pub fn ambiguous<R: RequestView>(&self, query: &[u8], req: &R) -> bool {
        self.cond_headers.iter().any(|name| req.header_varies(name))
            || self.cond_query.iter().any(|name| {
                conds::query_varies(query, name) || conds::query_name_lenient(query, name)
            })
    }

    /// `host`: the Host header without port (any case); `path`: normalized; `query`: raw, without '?'.
    pub fn find<R: RequestView>(
        &self,
        host: &[u8],
        method: &[u8],
        path: &[u8],
        query: &[u8],
        req: &R,
    ) -> Option<Match> {
        self.find_ranked(host, method, path, query, req)
            .map(|(_, m)| m)
    }

    /// `find`, with the winning entry's rank.
    pub(crate) fn find_ranked<R: RequestView>(
        &self,
        host: &[u8],
        method: &[u8],
        path: &[u8],
        query: &[u8],
        req: &R,
    ) -> Option<(Rank, Match)> {
        let mut search = Search {
            router: self,
            method,
            path,
            path_str: if self.regexes.is_empty() {
                None
            } else {
                std::str::from_utf8(path).ok()
            },
            query,
            req,
            best: None,
        };
        self.hosts.lookup(host, |hit| {
            let g = match hit {
                HostHit::Exact(g) | HostHit::Wildcard(g) => g,
            };
            search.group(g);
        });
        search.group(ANY_HOST_GROUP);
        search.best
    }
}

/// The length of the literal text every match of a path regex starts with (`^/v1/admin$` ->
/// `/v1/admin`; `/v\d+` -> `/v`; `(?i)/admin` -> `/`), from `regex-syntax`'s prefix extractor:
/// the longest common prefix of the literals matches can start with. It may fall short (the
/// extractor gives up on large classes), never exceed it: it only ranks the trailing-slash
/// reading of the route.
fn literal_start(re: &str) -> usize {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let Ok(hir) = regex_syntax::Parser::new().parse(re) else {
        return 0;
    };
    let seq = Extractor::new().kind(ExtractKind::Prefix).extract(&hir);
    seq.longest_common_prefix().map_or(0, <[u8]>::len)
}

/// What a regex route's `strip_path` removes of `path` when its match is `len` bytes long: the
/// match, if it ends at a segment boundary (the end of the path, a '/' next, or a '/' last);
/// otherwise only up to the last '/' inside it, as prefix routes strip whole segments. Stripping
/// in the middle of a segment would join the rest to the service path as a segment of its own:
/// `~/docs/v\d+` on `/docs/v1../admin` left `../admin`, sent up as `/base/../admin`, which an
/// upstream resolving dot segments served as `/admin`, past that route's plugins.
fn segment_boundary(path: &[u8], len: usize) -> usize {
    let len = len.min(path.len());
    let at_boundary = len == path.len()
        || path.get(len) == Some(&b'/')
        || (len > 0 && path.get(len - 1) == Some(&b'/'));
    if at_boundary {
        return len;
    }
    path.get(..len)
        .and_then(|m| m.iter().rposition(|&b| b == b'/'))
        .unwrap_or(0)
}

fn with_host(mut e: Entry, h: &HostSlot) -> Entry {
    e.rank.host_class = h.class;
    e.rank.host_len = to_u32(h.len);
    e.rank.host_idx = Reverse(to_u32(h.idx));
    e
}

/// Config paths go through the request normalization so both sides compare alike; a prefix also
/// loses its trailing '/' (segment-aware matching already covers it). An invalid config path
/// (unreachable after validation) is kept as written.
fn normalize_config_path(p: &str, prefix: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if normalize_path(p.as_bytes(), &mut out).is_err() {
        out = p.as_bytes().to_vec();
    }
    if prefix && out.len() > 1 && out.ends_with(b"/") {
        out.pop();
    }
    out
}

/// The state of one `find`: the request and the best candidate so far.
struct Search<'a, R> {
    router: &'a Router,
    method: &'a [u8],
    path: &'a [u8],
    path_str: Option<&'a str>,
    query: &'a [u8],
    req: &'a R,
    best: Option<(Rank, Match)>,
}

impl<R: RequestView> Search<'_, R> {
    fn group(&mut self, g: usize) {
        let router = self.router;
        let Some(index) = router.groups.get(g) else {
            return;
        };
        index.buckets(self.path, |bucket, consumed, suffixed| {
            self.bucket(bucket, consumed, suffixed)
        });
    }

    /// Buckets are sorted by descending rank: stop at the first passing entry, or as soon as the
    /// remaining entries cannot beat the best match already found. `suffixed`: the bucket's node
    /// was reached through a format suffix (`PathIndex::format_suffixes`), so its entries rank as
    /// prefixes just below their own path (one step down the doubled length scale of
    /// `rank::path_rank`). That keeps the bucket's order (its prefix entries share one length; in
    /// an exact bucket the exact entries stay above the trailing-slash variants, a step lower
    /// already), so the early stop still holds.
    fn bucket(&mut self, bucket: &[Entry], consumed: usize, suffixed: bool) {
        for e in bucket {
            let rank = if suffixed {
                Rank {
                    path_class: PathClass::Prefix,
                    path_len: e.rank.path_len.saturating_sub(1),
                    ..e.rank
                }
            } else {
                e.rank
            };
            if self.best.is_some_and(|(best, _)| rank <= best) {
                return;
            }
            if let Some(m) = self.check(e, consumed) {
                self.best = Some((rank, m));
                return;
            }
        }
    }

    /// The index already established host and (for non-regex entries) path; check the rest.
    /// `consumed`: request-path bytes that led to the entry's trie node.
    fn check(&self, e: &Entry, consumed: usize) -> Option<Match> {
        // A trailing-slash reading applies only to a path with a trailing '/' (checked first: the
        // conditions cost more).
        if e.trimmed && !(self.path.len() > 1 && self.path.ends_with(b"/")) {
            return None;
        }
        let cond = self.router.conds.get(e.route as usize)?;
        if !cond.matches(self.method, self.query, self.req) {
            return None;
        }
        let strip_len = match e.regex {
            // The request's own bytes, not the configured prefix's length: they differ when a
            // segment matched without its `;parameters`.
            None if e.strip_len > 0 => consumed,
            None => 0,
            Some(k) => {
                let re = self.router.regexes.get(k as usize)?;
                let path = self.path_str?;
                let read = if e.trimmed {
                    path.strip_suffix('/').filter(|p| !p.is_empty())?
                } else {
                    path
                };
                let len = re.match_len(read)?;
                if !e.strip_path {
                    0
                } else if e.trimmed && len == read.len() {
                    // All of it, as an exact route strips `/health/` whole.
                    self.path.len()
                } else {
                    segment_boundary(self.path, len)
                }
            }
        };
        Some(Match {
            route: e.route as usize,
            strip_len,
        })
    }
}
