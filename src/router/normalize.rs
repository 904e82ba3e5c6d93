//! Path normalization for matching, and the upstream path join.
//!
//! Role: turn a client's request path into the one canonical form the router matches on, so that
//! equivalent spellings (`/public/../admin`, `//admin`, `/%61dmin`) cannot select a different route
//! than `/admin`; and build the path sent upstream from a service path and the unstripped remainder.
//!
//! Invariants of [`normalize_path`]'s output:
//! - starts with '/', contains no "//" run, and no "." or ".." segment (after decoding);
//! - the only remaining percent-escapes encode reserved / non-unreserved bytes, with upper-case hex
//!   (`%2F` stays encoded: a decoded '/' is data, never a segment separator; `proxy::prepare`
//!   refuses a path that would select another route with its `%2F`s read as '/');
//! - it is never longer than the input, so one `reserve(raw.len())` is the only possible growth of
//!   the caller's buffer.
//!
//! Choices (the README's "Routing" section repeats them):
//! - **Duplicate slashes are merged** (like nginx's default `merge_slashes on`): `//admin` matches a
//!   route for `/admin`. Upstream receives the normalized form, so the gateway and the upstream agree.
//! - **Paths are case-sensitive**: `/ADMIN` does not match a route for `/admin`.
//! - **A dot segment with path parameters is a dot segment**: `/public/..;/admin` is `/admin`
//!   (Tomcat and other servlet containers drop `;parameters` before resolving dot segments, so
//!   keeping it would route `/public` and serve `/admin`).
//! - **A segment of parameters only is an empty segment**, merged like `//`: `/;x/admin` is
//!   `/admin` (servlet containers and Spring strip the parameters, then merge the slashes, so
//!   keeping it would route `/` and serve `/admin`, past `/admin`'s plugins).
//! - An invalid escape (`%`, `%4`, `%zz`) is an error; the caller answers 400.
//! - **A backslash is an error**, raw or as `%5C`: IIS, ASP.NET and some Node routers read it as
//!   a '/', so `/public\..\admin` would be routed as `/public` and served as `/admin`. No URI
//!   has a raw one (RFC 3986), and APIs do not put one in a path.

use crate::http::query::hex_val;
use std::fmt;

/// Why a path cannot be normalized (the caller answers 400 Bad Request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormalizeError {
    /// A '%' not followed by two hex digits.
    InvalidEscape,
    /// The path is empty or does not start with '/' (origin-form only).
    NotAbsolute,
    /// A '\\' or `%5C` (a separator to some servers).
    Backslash,
}

impl fmt::Display for NormalizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormalizeError::InvalidEscape => f.write_str("invalid percent-escape in path"),
            NormalizeError::NotAbsolute => f.write_str("path does not start with '/'"),
            NormalizeError::Backslash => f.write_str("backslash in path"),
        }
    }
}

impl std::error::Error for NormalizeError {}

/// Normalizes `raw` (the request path without the query, starting with '/') into `out`.
///
/// `out` is cleared first; its capacity is reused (at most one `reserve(raw.len())`).
/// Steps, in one pass, segment by segment:
/// 1. percent-escapes of unreserved bytes (ALPHA DIGIT `-` `.` `_` `~`) are decoded, every other
///    escape is kept with upper-case hex (`%2f` -> `%2F`);
/// 2. runs of '/' are merged into one;
/// 3. "." and ".." segments are removed as in RFC 3986 §5.2.4, also when they only appear after
///    decoding (`/%2e%2e/admin` -> `/admin`) or carry path parameters (`/public/..;/admin` ->
///    `/admin`, as servlet containers resolve it); ".." at the root stays at the root (`/..` -> `/`);
/// 4. a segment of path parameters only (`;x`, `;`) is dropped like an empty one (`/;x/admin` ->
///    `/admin`).
///
/// A trailing '/' is kept (`/a/b/` stays `/a/b/`; `/a/b/..` -> `/a/`), as RFC 3986 does.
pub fn normalize_path(raw: &[u8], out: &mut Vec<u8>) -> Result<(), NormalizeError> {
    out.clear();
    let Some((&b'/', rest)) = raw.split_first() else {
        return Err(NormalizeError::NotAbsolute);
    };
    if memchr::memchr(b'\\', raw).is_some() {
        return Err(NormalizeError::Backslash);
    }
    out.reserve(raw.len());
    out.push(b'/');
    // Invariant between segments: `out` ends with '/'.
    let mut segments = rest.split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        push_segment(segment, last, out)?;
    }
    Ok(())
}

/// Appends one raw segment (decoded) to `out`, which ends with '/', applying dot-segment removal.
/// Leaves `out` ending with '/' unless `last` and the segment was kept.
fn push_segment(segment: &[u8], last: bool, out: &mut Vec<u8>) -> Result<(), NormalizeError> {
    let start = out.len();
    decode_segment(segment, out)?;
    // A dot segment followed by `;parameters` (`..;`, `..;jsessionid=x`, `.;x`) is a dot segment to
    // servlet containers, which drop path parameters before resolving dot segments; it is one here
    // too, or `/public/..;/admin` would be routed as `/public` and served as `/admin`.
    let decoded = out.get(start..).unwrap_or_default();
    // Only a segment starting with '.' can be a dot segment, and one starting with ';' is all
    // parameters: the others skip the search for ';'.
    let bare = match decoded.first() {
        Some(b'.' | b';') => without_params(decoded),
        _ => decoded,
    };
    match bare {
        // An empty segment is a duplicate or trailing slash: `out` already ends with '/'. A
        // segment of parameters only (`;x`) is one too: servlet containers strip the parameters
        // and merge the slashes, so `/;x/admin` is served as `/admin` and must be routed so.
        b"" => out.truncate(start),
        b"." => out.truncate(start),
        b".." => {
            out.truncate(start);
            pop_last_segment(out);
        }
        _ => {
            if !last {
                out.push(b'/');
            }
        }
    }
    Ok(())
}

/// Appends `path` with every segment's `;parameters` left out: servlet and other matrix-parameter
/// backends serve `/a;x` and `/a;y` as `/a` (a `limit_by = "path"` key must not differ, and a
/// regex route must not be skipped for it). A segment that was parameters only leaves no empty
/// segment behind (`/a/;x/b` is `/a/b`; `normalize_path` already drops those, this stays right on
/// its own).
pub fn push_path_without_params(out: &mut Vec<u8>, path: &[u8]) {
    let mut in_params = false;
    let mut after_slash = false;
    for &b in path {
        match b {
            b'/' => in_params = false,
            b';' => in_params = true,
            _ => {}
        }
        if in_params || (b == b'/' && after_slash) {
            continue;
        }
        after_slash = b == b'/';
        out.push(b);
    }
}

/// Whether a normalized path holds a dot segment once its encoded slashes (`%2F`) are read as
/// separators: `/files/..%2F..%2Fadmin`. The router reads `%2F` as data, so such a path is routed
/// as one segment, but an upstream that decodes it before resolving dot segments (nginx, Python's
/// `http.server`) serves a path outside the route's prefix or the service's base path. (`%5C` never
/// gets here: `normalize_path` refuses a backslash, encoded or not.) `normalized` comes from `normalize_path`: escapes are
/// upper-case and unreserved ones (`%2E`) already decoded, and no literal dot segment is left, so
/// any dot segment found here was formed by an encoded separator. A segment's `;parameters` are
/// left out as `normalize_path` does (`..;x` is a dot segment to servlet containers).
pub fn has_encoded_dot_segment(normalized: &[u8]) -> bool {
    let mut rest = normalized;
    loop {
        // The next separator: '/', or a three-byte `%2F`.
        let mut end = rest.len();
        let mut skip = 0;
        let mut i = 0;
        while let Some(&b) = rest.get(i) {
            if b == b'/' {
                (end, skip) = (i, 1);
                break;
            }
            if b == b'%' && rest.get(i + 1..i + 3) == Some(b"2F") {
                (end, skip) = (i, 3);
                break;
            }
            i += 1;
        }
        let segment = rest.get(..end).unwrap_or_default();
        if matches!(without_params(segment), b"." | b"..") {
            return true;
        }
        if skip == 0 {
            return false;
        }
        rest = rest.get(end + skip..).unwrap_or_default();
    }
}

/// A segment up to its `;parameters` (servlet containers drop them before resolving dot segments).
fn without_params(segment: &[u8]) -> &[u8] {
    memchr::memchr(b';', segment).map_or(segment, |i| segment.get(..i).unwrap_or_default())
}

/// `out` is "/" or "/.../name/": removes "name/" (nothing at the root).
fn pop_last_segment(out: &mut Vec<u8>) {
    if out.len() <= 1 {
        return;
    }
    let without_slash = out.len() - 1;
    let keep = out
        .get(..without_slash)
        .and_then(|s| s.iter().rposition(|&b| b == b'/'))
        .map_or(1, |i| i + 1);
    out.truncate(keep);
}

/// Appends `segment` to `out`, decoding unreserved escapes and upper-casing the others.
fn decode_segment(segment: &[u8], out: &mut Vec<u8>) -> Result<(), NormalizeError> {
    let mut i = 0;
    while let Some(rest) = segment.get(i..).filter(|r| !r.is_empty()) {
        // Copy the run up to the next escape in one go (most segments have none).
        let run = memchr::memchr(b'%', rest).unwrap_or(rest.len());
        out.extend_from_slice(rest.get(..run).unwrap_or_default());
        i += run;
        if run == rest.len() {
            break;
        }
        let (hi, lo) = match (segment.get(i + 1), segment.get(i + 2)) {
            (Some(&h), Some(&l)) => (hex_val(h), hex_val(l)),
            _ => (None, None),
        };
        let (Some(hi), Some(lo)) = (hi, lo) else {
            return Err(NormalizeError::InvalidEscape);
        };
        let decoded = hi << 4 | lo;
        if decoded == b'\\' {
            return Err(NormalizeError::Backslash);
        }
        if is_unreserved(decoded) {
            out.push(decoded);
        } else {
            out.extend_from_slice(&[b'%', hex_upper(hi), hex_upper(lo)]);
        }
        i += 3;
    }
    Ok(())
}

/// The upper-case hex digit of a nibble (masked, so always in bounds).
fn hex_upper(nibble: u8) -> u8 {
    b"0123456789ABCDEF"[usize::from(nibble & 0xf)]
}

/// RFC 3986 §2.3 unreserved characters: safe to decode without changing the path's meaning.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Builds the path sent upstream (without the query; the caller appends `?query`).
///
/// Kong's default `path_handling = "v0"`, with ringgate's segment-aware prefixes:
/// `remainder = normalized[strip_len..]`; then
/// - if `remainder` is empty: `service_path`, or "/" when that is empty too;
/// - else: `service_path` without one trailing '/', then exactly one '/', then `remainder` without
///   one leading '/'.
///
/// A `strip_len` past the end of `normalized` is treated as stripping everything.
///
/// The asterisk-form target of `OPTIONS *` (routed as `*`, only by a route without `paths`) goes
/// upstream as `*` whatever the service path: it names the server, not a resource, and RFC 9112
/// §3.2.4 has the last proxy send `*` (joining it would ask the upstream about `/*` instead).
///
/// Examples (route prefix `/users`; "strip" = `strip_path`, which makes `strip_len` 6):
///
/// | service path | request    | strip | upstream path    |
/// |--------------|------------|-------|------------------|
/// | ""           | /users     | false | /users           |
/// | ""           | /users     | true  | /                |
/// | ""           | /users/    | false | /users/          |
/// | ""           | /users/    | true  | /                |
/// | ""           | /users/1   | false | /users/1         |
/// | ""           | /users/1   | true  | /1               |
/// | "/"          | /users     | false | /users           |
/// | "/"          | /users     | true  | /                |
/// | "/"          | /users/    | false | /users/          |
/// | "/"          | /users/    | true  | /                |
/// | "/"          | /users/1   | false | /users/1         |
/// | "/"          | /users/1   | true  | /1               |
/// | "/base"      | /users     | false | /base/users      |
/// | "/base"      | /users     | true  | /base            |
/// | "/base"      | /users/    | false | /base/users/     |
/// | "/base"      | /users/    | true  | /base/           |
/// | "/base"      | /users/1   | false | /base/users/1    |
/// | "/base"      | /users/1   | true  | /base/1          |
/// | "/base/"     | /users     | false | /base/users      |
/// | "/base/"     | /users     | true  | /base/           |
/// | "/base/"     | /users/    | false | /base/users/     |
/// | "/base/"     | /users/    | true  | /base/           |
/// | "/base/"     | /users/1   | false | /base/users/1    |
/// | "/base/"     | /users/1   | true  | /base/1          |
///
/// (The config loader stores service paths without a trailing '/' except "/", so the "/base/" rows
/// only document the behaviour.) A trailing '/' of the request survives stripping (`/users/` ->
/// `/base/`), as in Kong.
pub fn upstream_path(service_path: &str, normalized: &[u8], strip_len: usize, out: &mut Vec<u8>) {
    out.clear();
    if normalized == b"*" {
        out.push(b'*');
        return;
    }
    let remainder = normalized.get(strip_len..).unwrap_or_default();
    let service = service_path.as_bytes();
    if remainder.is_empty() {
        out.extend_from_slice(if service.is_empty() { b"/" } else { service });
        return;
    }
    let head = service.strip_suffix(b"/").unwrap_or(service);
    let cut_in_segment = strip_len > 0 && normalized.get(strip_len - 1) != Some(&b'/');
    if remainder.first() == Some(&b'.') && cut_in_segment {
        // A format suffix left by stripping `/users` from `/users.json` (see
        // `PathIndex::format_suffixes`; no other strip ends inside a segment): it stays on the
        // last segment, `/base.json` (or `/.json` with no service path, as nginx and Kong strip
        // it). A regex strip of `/files/` from `/files/.well-known` joins as usual.
        out.reserve(head.len() + 1 + remainder.len());
        if head.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(head);
        out.extend_from_slice(remainder);
        return;
    }
    let tail = remainder.strip_prefix(b"/").unwrap_or(remainder);
    out.reserve(head.len() + 1 + tail.len());
    out.extend_from_slice(head);
    out.push(b'/');
    out.extend_from_slice(tail);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, NormalizeError> {
        let mut out = Vec::new();
        normalize_path(raw.as_bytes(), &mut out)?;
        Ok(String::from_utf8(out).unwrap_or_default())
    }

    fn ok(raw: &str, want: &str) {
        assert_eq!(norm(raw), Ok(want.to_string()), "normalize {raw:?}");
    }

    #[test]
    fn security_cases_reach_admin() {
        ok("/public/../admin", "/admin");
        ok("//admin", "/admin");
        ok("/%61dmin", "/admin");
        ok("/%2e%2e/admin", "/admin");
        ok("/%2E%2E/admin", "/admin");
        ok("/.%2e/admin", "/admin");
        ok("/public/%2e%2e/admin", "/admin");
        ok("/public/./../admin", "/admin");
        ok("///public//..//admin", "/admin");
    }

    #[test]
    fn encoded_separators_forming_dot_segments() {
        let dotted = |raw: &str| {
            let mut out = Vec::new();
            normalize_path(raw.as_bytes(), &mut out).map(|_| has_encoded_dot_segment(&out))
        };
        for raw in [
            "/..%2F..%2Fadmin/users",
            "/files/..%2fadmin",
            "/a/%2E%2E%2Fadmin",
            "/a/.%2Fb",
            "/a%2F..",
            "/a%2F..%2F",
            "/a%2F..;x/b",
        ] {
            assert_eq!(dotted(raw), Ok(true), "{raw}");
        }
        for raw in [
            "/projects/group%2Fname",
            "/a/..b%2Fc",
            "/a/b..%2Fc",
            "/a/...%2Fb",
            "/a/%2F%2Fb",
            "/a/%2Fetc%2Fpasswd",
            "/a/.well-known%2Fx",
            "/a/b",
            "/",
            "/a/%25%32%46..",
        ] {
            assert_eq!(dotted(raw), Ok(false), "{raw}");
        }
    }

    #[test]
    fn dot_segments() {
        ok("/a/./b", "/a/b");
        ok("/..", "/");
        ok("/.", "/");
        ok("/../..", "/");
        ok("/../a", "/a");
        ok("/a/b/..", "/a/");
        ok("/a/b/.", "/a/b/");
        ok("/a/b/../c", "/a/c");
        ok("/a/b/c/../../d", "/a/d");
        ok("/a/../../b", "/b");
        // Not dot segments: dots inside a name stay.
        ok("/a/.../b", "/a/.../b");
        ok("/a/..b/.c", "/a/..b/.c");
        ok("/a.", "/a.");
    }

    /// Servlet containers drop `;parameters` before resolving dot segments, so `..;` must be
    /// resolved here too or `/public/..;/admin` is routed as `/public` and served as `/admin`.
    #[test]
    fn dot_segments_with_path_parameters() {
        ok("/public/..;/admin", "/admin");
        ok("/public/..;jsessionid=1/admin", "/admin");
        ok("/public/%2e%2e;x/admin", "/admin");
        ok("/public/.;x/admin", "/public/admin");
        ok("/a/b/..;", "/a/");
        ok("/a/.;", "/a/");
        ok("/..;/..;/admin", "/admin");
        // Not dot segments: a name before ';'.
        ok("/a/..x;/b", "/a/..x;/b");
        ok("/a/...;/b", "/a/...;/b");
        ok("/a;x/b", "/a;x/b");
        // Parameters only: an empty segment, merged like `//` (servlet containers serve
        // `/;x/admin` as `/admin`).
        ok("/a/;x/b", "/a/b");
        ok("/a/;/b", "/a/b");
        ok("/;x/admin", "/admin");
        ok("/;x;y/;/admin", "/admin");
        ok("//;x//admin", "/admin");
        ok("/admin/;x", "/admin/");
        ok("/;", "/");
        ok("/a/%3Bx/b", "/a/%3Bx/b");
        // An escaped ';' is data, not a parameter separator.
        ok("/public/..%3B/admin", "/public/..%3B/admin");
    }

    #[test]
    fn slashes_merged_and_trailing_slash_kept() {
        ok("/", "/");
        ok("//", "/");
        ok("/a//b", "/a/b");
        ok("/a/b/", "/a/b/");
        ok("/a/b//", "/a/b/");
        ok("////a", "/a");
    }

    #[test]
    fn escapes() {
        ok("/%7euser", "/~user");
        ok("/%41%5A%30%2D%5F", "/AZ0-_");
        ok("/a%2fb", "/a%2Fb");
        ok("/a%2Fb", "/a%2Fb");
        ok("/a%2f..%2fb", "/a%2F..%2Fb");
        ok("/%20x", "/%20x");
        ok("/%c3%a9", "/%C3%A9");
        ok("/%00", "/%00");
        // A decoded '/' is data, so it does not make a dot segment: "%2F.." is one segment.
        ok("/a/%2F../b", "/a/%2F../b");
    }

    #[test]
    fn case_is_preserved() {
        ok("/ADMIN", "/ADMIN");
        ok("/Admin/X", "/Admin/X");
    }

    #[test]
    fn invalid_escapes_are_errors() {
        for raw in ["/%", "/%4", "/%zz", "/a%g0", "/%%41", "/a/%2", "/%4/"] {
            assert_eq!(norm(raw), Err(NormalizeError::InvalidEscape), "{raw:?}");
        }
    }

    #[test]
    fn backslashes_are_errors() {
        for raw in ["/a\\b", "/public\\..\\admin", "/a/%5Cb", "/a/%5c", "/\\"] {
            assert_eq!(norm(raw), Err(NormalizeError::Backslash), "{raw:?}");
        }
        assert_eq!(norm("/a/%5D"), Ok("/a/%5D".to_owned()));
    }

    #[test]
    fn not_absolute_is_error() {
        assert_eq!(norm(""), Err(NormalizeError::NotAbsolute));
        assert_eq!(norm("a/b"), Err(NormalizeError::NotAbsolute));
        assert_eq!(norm("*"), Err(NormalizeError::NotAbsolute));
    }

    #[test]
    fn reuses_capacity() {
        let mut out = Vec::with_capacity(64);
        let before = out.as_ptr();
        assert_eq!(normalize_path(b"/a/../b/%61", &mut out), Ok(()));
        assert_eq!(out, b"/b/a");
        assert_eq!(out.as_ptr(), before);
        assert_eq!(normalize_path(b"/x", &mut out), Ok(()));
        assert_eq!(out, b"/x");
        assert_eq!(out.as_ptr(), before);
    }

    #[test]
    fn idempotent_on_samples() {
        for raw in ["/a/./b/../c//d/", "/%2e%2e/%61/%2f", "/x/y/..", "/~/%7E"] {
            let once = norm(raw).unwrap_or_default();
            assert_eq!(norm(&once), Ok(once.clone()), "{raw:?}");
        }
    }

    /// Random paths over an alphabet rich in slashes, dots and escapes: the output keeps its
    /// invariants, is idempotent, and errors exactly when the input has an invalid escape.
    #[test]
    fn random_paths_keep_invariants() {
        use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
        let atoms = [
            "/", "/", "a", "B", ".", "..", "%2e", "%2E", "%2f", "%61", "%7e", "%", "%4", "%zz",
            "~", ";",
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        for _ in 0..20_000 {
            let n = rng.gen_range(0..12);
            let mut raw = String::from("/");
            for _ in 0..n {
                raw.push_str(atoms.choose(&mut rng).copied().unwrap_or("a"));
            }
            let invalid = raw.match_indices('%').any(|(i, _)| {
                let hex = raw.get(i + 1..i + 3).unwrap_or("");
                hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            let res = normalize_path(raw.as_bytes(), &mut out);
            assert_eq!(res.is_err(), invalid, "{raw:?}");
            if invalid {
                continue;
            }
            let s = String::from_utf8(out.clone()).unwrap_or_default();
            assert!(s.starts_with('/') && !s.contains("//"), "{raw:?} -> {s:?}");
            assert!(
                s.split('/')
                    .map(|seg| seg.split(';').next().unwrap_or(seg))
                    .all(|seg| seg != "." && seg != ".."),
                "{raw:?} -> {s:?}"
            );
            assert!(
                !s.contains("%2e") && !s.contains("%2f") && !s.contains("%61"),
                "{raw:?} -> {s:?}"
            );
            assert!(s.len() <= raw.len());
            assert_eq!(norm(&s), Ok(s.clone()), "not idempotent: {raw:?}");
        }
    }

    fn up(service: &str, path: &str, strip_len: usize) -> String {
        let mut out = Vec::new();
        upstream_path(service, path.as_bytes(), strip_len, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn upstream_path_table() {
        // (service path, request path, strip, expected); prefix "/users" => strip_len 6.
        let table: &[(&str, &str, bool, &str)] = &[
            ("", "/users", false, "/users"),
            ("", "/users", true, "/"),
            ("", "/users/", false, "/users/"),
            ("", "/users/", true, "/"),
            ("", "/users/1", false, "/users/1"),
            ("", "/users/1", true, "/1"),
            ("/", "/users", false, "/users"),
            ("/", "/users", true, "/"),
            ("/", "/users/", false, "/users/"),
            ("/", "/users/", true, "/"),
            ("/", "/users/1", false, "/users/1"),
            ("/", "/users/1", true, "/1"),
            ("/base", "/users", false, "/base/users"),
            ("/base", "/users", true, "/base"),
            ("/base", "/users/", false, "/base/users/"),
            ("/base", "/users/", true, "/base/"),
            ("/base", "/users/1", false, "/base/users/1"),
            ("/base", "/users/1", true, "/base/1"),
            ("/base/", "/users", false, "/base/users"),
            ("/base/", "/users", true, "/base/"),
            ("/base/", "/users/", false, "/base/users/"),
            ("/base/", "/users/", true, "/base/"),
            ("/base/", "/users/1", false, "/base/users/1"),
            ("/base/", "/users/1", true, "/base/1"),
        ];
        for &(service, path, strip, want) in table {
            let strip_len = if strip { "/users".len() } else { 0 };
            assert_eq!(
                up(service, path, strip_len),
                want,
                "{service:?} {path:?} strip={strip}"
            );
        }
    }

    #[test]
    fn upstream_path_edges() {
        // Root request, no strip.
        assert_eq!(up("", "/", 0), "/");
        assert_eq!(up("/base", "/", 0), "/base/");
        // Regex strips may leave a remainder without a leading '/': exactly one '/' is inserted.
        assert_eq!(up("/base", "/v1users/1", 3), "/base/users/1");
        assert_eq!(up("", "/v1users", 3), "/users");
        // OPTIONS *: the asterisk goes upstream as it came, never joined into "/*".
        assert_eq!(up("", "*", 0), "*");
        assert_eq!(up("/base", "*", 0), "*");
        // strip_len past the end is "strip everything", never a panic.
        assert_eq!(up("/base", "/a", 99), "/base");
        assert_eq!(up("", "/a", 99), "/");
    }
}
