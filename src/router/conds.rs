//! Per-route conditions checked after the index narrowed the candidates: methods, headers, query.
//!
//! Semantics:
//! - methods: exact, case-sensitive byte comparison (HTTP methods are case-sensitive tokens; the
//!   config stores them upper-case); an empty list matches any method; GET takes HEAD too
//!   (unless the view says otherwise: the proxy first looks for a route that lists HEAD itself);
//! - headers: the request's first value of the header (the view decides: `Router::ambiguous`
//!   reads the last one too); `Exact` compares ASCII case-insensitively
//!   (as Kong does); `Regex` is an unanchored search on the value as written (anchor with `^`/`$`),
//!   and a value that is not UTF-8 never matches a regex;
//! - query: parsed from the raw query (`a=1&b&c=`) without allocating; names and values are
//!   compared after percent-decoding on the fly (`+` is a space, an invalid escape is taken
//!   literally); comparisons are case-sensitive; a condition holds when *any* occurrence of the
//!   name satisfies it (or the first or the last only, as the view's `query_reading` says); `Present` also accepts `?flag` and `?flag=`. A `Regex` runs on the decoded
//!   value (UTF-8 only); values whose raw form exceeds [`QUERY_REGEX_MAX`] bytes never match a regex.
//!
//! Invariant: nothing here allocates at match time or panics on request data.

use crate::config::model::{HeaderMatch, QueryMatch, RouteDef, ValueMatch};
use crate::http::query::{decode as decode_query, params};
use crate::router::{Occurrence, RequestView};
use regex::Regex;

/// Largest raw query value a query regex is evaluated on (decoded into a stack buffer).
pub const QUERY_REGEX_MAX: usize = 8192;

/// A route's conditions, compiled for matching.
#[derive(Debug)]
pub(crate) struct Conditions {
    methods: Vec<Box<[u8]>>,
    headers: Vec<(Box<[u8]>, Value)>,
    query: Vec<(Box<[u8]>, Value)>,
}

#[derive(Debug)]
enum Value {
    Present,
    Exact(Vec<Box<[u8]>>),
    Regex(Regex),
}

impl Value {
    fn compile(v: &ValueMatch) -> Value {
        match v {
            ValueMatch::Present => Value::Present,
            ValueMatch::Exact(vals) => {
                Value::Exact(vals.iter().map(|s| s.as_bytes().into()).collect())
            }
            ValueMatch::Regex(re) => Value::Regex(re.clone()),
        }
    }
}

impl Conditions {
    pub fn new(route: &RouteDef) -> Conditions {
        let header = |h: &HeaderMatch| {
            (
                h.name.to_ascii_lowercase().into_bytes().into(),
                Value::compile(&h.value),
            )
        };
        let query = |q: &QueryMatch| (q.name.as_bytes().into(), Value::compile(&q.value));
        Conditions {
            methods: route.methods.iter().map(|m| m.as_bytes().into()).collect(),
            headers: route.headers.iter().map(header).collect(),
            query: route.query.iter().map(query).collect(),
        }
    }

    /// The header names (lower-case) the conditions read.
    pub fn header_names(&self) -> impl Iterator<Item = &[u8]> {
        self.headers.iter().map(|(n, _)| &**n)
    }

    /// The query parameter names the conditions read.
    pub fn query_names(&self) -> impl Iterator<Item = &[u8]> {
        self.query.iter().map(|(n, _)| &**n)
    }

    /// How many conditions the route states (for the priority rule).
    pub fn count(&self) -> usize {
        usize::from(!self.methods.is_empty()) + self.headers.len() + self.query.len()
    }

    pub fn matches<R: RequestView>(&self, method: &[u8], query: &[u8], req: &R) -> bool {
        self.method_ok(method, req.head_as_get())
            && self
                .headers
                .iter()
                .all(|(name, v)| header_ok(req.header(name), v))
            && self
                .query
                .iter()
                .all(|(name, v)| query_ok(query, name, v, req.query_reading(), req.lenient_names()))
    }

    /// A route for GET takes HEAD too: frameworks answer HEAD with their GET handler (Flask and
    /// Express run it), so a HEAD that fell through to another route would run it past this
    /// route's plugins (nginx's `limit_except GET` covers HEAD the same way).
    fn method_ok(&self, method: &[u8], head_as_get: bool) -> bool {
        self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|m| **m == *method || (head_as_get && method == b"HEAD" && **m == *b"GET"))
    }
}

fn header_ok(value: Option<&[u8]>, want: &Value) -> bool {
    let Some(value) = value else { return false };
    match want {
        Value::Present => true,
        Value::Exact(vals) => vals.iter().any(|v| v.eq_ignore_ascii_case(value)),
        Value::Regex(re) => std::str::from_utf8(value).is_ok_and(|s| re.is_match(s)),
    }
}

fn query_ok(query: &[u8], name: &[u8], want: &Value, reading: Occurrence, lenient: bool) -> bool {
    let ok = |value: &[u8]| match want {
        Value::Present => true,
        Value::Exact(vals) => vals.iter().any(|v| decoded_eq(value, v)),
        Value::Regex(re) => query_regex_ok(value, re),
    };
    if lenient {
        let values = lenient_pairs(query).filter(|(n, _)| lenient_eq(n, name));
        return read(values.map(|(_, v)| v), reading, ok);
    }
    let values = query_pairs(query).filter(|(n, _)| decoded_eq(n, name));
    read(values.map(|(_, v)| v), reading, ok)
}

/// Whether the occurrence(s) `reading` picks among `values` satisfy `ok`.
fn read<'a>(
    mut values: impl Iterator<Item = &'a [u8]>,
    reading: Occurrence,
    ok: impl Fn(&[u8]) -> bool,
) -> bool {
    match reading {
        Occurrence::Any => values.any(&ok),
        Occurrence::First => values.next().is_some_and(&ok),
        Occurrence::Last => values.last().is_some_and(&ok),
    }
}

/// The query split as the most lenient frameworks split it: on `&` and `;` (Rack 2).
fn lenient_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&' || b == b';')
        .filter(|p| !p.is_empty())
        .map(|p| match memchr::memchr(b'=', p) {
            Some(i) => (
                p.get(..i).unwrap_or_default(),
                p.get(i + 1..).unwrap_or_default(),
            ),
            None => (p, &b""[..]),
        })
}

/// Whether a raw parameter name is `want` as some framework reads it (`query::lenient_name_eq`).
fn lenient_eq(raw: &[u8], want: &[u8]) -> bool {
    crate::http::query::lenient_name_eq(raw, want)
}

/// Whether some parameter of `query` is `name` only as a lenient framework reads it (see
/// `lenient_eq`, `lenient_pairs`): then the route picked may depend on the upstream's reading.
pub fn query_name_lenient(query: &[u8], name: &[u8]) -> bool {
    // Linear: a name read leniently that is not the exact name, or any match where `;` splits
    // the query otherwise (a scan of the strict pairs per match would be quadratic in the
    // query's length).
    let semicolon = memchr::memchr(b';', query).is_some();
    lenient_pairs(query).any(|(n, _)| lenient_eq(n, name) && (semicolon || !decoded_eq(n, name)))
}

/// Whether the query parameter `name` occurs more than once with different (decoded) values.
pub fn query_varies(query: &[u8], name: &[u8]) -> bool {
    if query.is_empty() {
        return false;
    }
    let mut named = query_pairs(query).filter(|(n, _)| decoded_eq(n, name));
    let Some((_, first)) = named.next() else {
        return false;
    };
    named.any(|(_, v)| !decode_query(v).eq(decode_query(first)))
}

/// `a=1&b&c=` -> ("a","1"), ("b",""), ("c",""); empty pairs (`&&`) are skipped.
fn query_pairs(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    params(query).map(|p| (p.name, p.value))
}

fn decoded_eq(raw: &[u8], want: &[u8]) -> bool {
    // Decoding never lengthens, so a raw form shorter than `want` cannot equal it.
    raw.len() >= want.len() && decode_query(raw).eq(want.iter().copied())
}

/// Kept out of line so the stack buffer only exists when a query regex is evaluated.
#[inline(never)]
fn query_regex_ok(raw: &[u8], re: &Regex) -> bool {
    if !raw.iter().any(|&b| b == b'%' || b == b'+') {
        return std::str::from_utf8(raw).is_ok_and(|s| re.is_match(s));
    }
    if raw.len() > QUERY_REGEX_MAX {
        return false;
    }
    let mut buf = [0u8; QUERY_REGEX_MAX];
    let mut len = 0;
    for (slot, b) in buf.iter_mut().zip(decode_query(raw)) {
        *slot = b;
        len += 1;
    }
    buf.get(..len)
        .and_then(|s| std::str::from_utf8(s).ok())
        .is_some_and(|s| re.is_match(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_names_are_what_lenient_frameworks_read() {
        for raw in [
            &b"debug"[..],
            b"%20debug",
            b"+debug",
            b"debug[]",
            b"debug%5Bx%5D",
            b"DEBUG",
            b"debug%00x",
        ] {
            assert!(lenient_eq(raw, b"debug"), "{raw:?}");
        }
        for raw in [&b"debugger"[..], b"xdebug", b"de%20bug", b""] {
            assert!(!lenient_eq(raw, b"debug"), "{raw:?}");
        }
        assert!(!query_name_lenient(b"debug=1&a=2", b"debug"));
        assert!(!query_name_lenient(b"a=1", b"debug"));
        assert!(query_name_lenient(b"a=1;debug=1", b"debug"));
        assert!(query_name_lenient(b"Debug=1", b"debug"));
        assert!(
            query_name_lenient(b"debug=1;x=2", b"debug"),
            "Rack 2 reads debug=1"
        );
    }

    #[test]
    fn query_pairs_parse() {
        let pairs: Vec<_> = query_pairs(b"a=1&&b&c=&d=x=y").collect();
        assert_eq!(
            pairs,
            vec![
                (&b"a"[..], &b"1"[..]),
                (b"b", b""),
                (b"c", b""),
                (b"d", b"x=y")
            ]
        );
        assert_eq!(query_pairs(b"").count(), 0);
    }

    #[test]
    fn decoding_compare() {
        assert!(decoded_eq(b"a%20b", b"a b"));
        assert!(decoded_eq(b"a+b", b"a b"));
        assert!(decoded_eq(b"%41", b"A"));
        assert!(decoded_eq(b"100%", b"100%"));
        assert!(decoded_eq(b"%zz", b"%zz"));
        assert!(!decoded_eq(b"%41", b"a"));
        assert!(!decoded_eq(b"ab", b"abc"));
        assert!(!decoded_eq(b"abc", b"ab"));
    }

    #[test]
    fn query_conditions() {
        let exact = Value::Exact(vec![b"2".to_vec().into(), b"a b".to_vec().into()]);
        assert!(query_ok(
            b"x=1&version=2",
            b"version",
            &exact,
            Occurrence::Any,
            false
        ));
        assert!(query_ok(
            b"version=1&version=2",
            b"version",
            &exact,
            Occurrence::Any,
            false
        ));
        assert!(query_ok(
            b"version=a+b",
            b"version",
            &exact,
            Occurrence::Any,
            false
        ));
        assert!(query_ok(
            b"v%65rsion=a%20b",
            b"version",
            &exact,
            Occurrence::Any,
            false
        ));
        assert!(!query_ok(
            b"version=3",
            b"version",
            &exact,
            Occurrence::Any,
            false
        ));
        assert!(!query_ok(
            b"versions=2",
            b"version",
            &exact,
            Occurrence::Any,
            false
        ));
        assert!(!query_ok(b"", b"version", &exact, Occurrence::Any, false));
        assert!(query_ok(
            b"flag",
            b"flag",
            &Value::Present,
            Occurrence::Any,
            false
        ));
        assert!(query_ok(
            b"flag=",
            b"flag",
            &Value::Present,
            Occurrence::Any,
            false
        ));
        assert!(!query_ok(
            b"flags",
            b"flag",
            &Value::Present,
            Occurrence::Any,
            false
        ));
        let re = Value::Regex(Regex::new("^v[0-9]+$").unwrap_or_else(|e| panic!("{e}")));
        assert!(query_ok(b"api=v12", b"api", &re, Occurrence::Any, false));
        assert!(query_ok(b"api=%7612", b"api", &re, Occurrence::Any, false));
        assert!(!query_ok(b"api=v1x", b"api", &re, Occurrence::Any, false));
        assert!(!query_ok(b"api=%ff", b"api", &re, Occurrence::Any, false));
    }

    #[test]
    fn header_conditions() {
        let exact = Value::Exact(vec![b"Json".to_vec().into()]);
        assert!(header_ok(Some(b"json"), &exact));
        assert!(header_ok(Some(b"JSON"), &exact));
        assert!(!header_ok(Some(b"jsonx"), &exact));
        assert!(!header_ok(None, &exact));
        assert!(header_ok(Some(b""), &Value::Present));
        assert!(!header_ok(None, &Value::Present));
        let re = Value::Regex(Regex::new("^2(\\.[0-9]+)?$").unwrap_or_else(|e| panic!("{e}")));
        assert!(header_ok(Some(b"2.1"), &re));
        assert!(!header_ok(Some(b"3"), &re));
        assert!(!header_ok(Some(b"\xff"), &re));
    }
}
