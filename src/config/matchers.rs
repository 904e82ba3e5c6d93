//! Compiling a route's matchers: paths, methods, header and query conditions.
//!
//! Invariants of the output (the router relies on them): prefix paths start with '/' and have no
//! trailing '/' except the root "/"; exact paths start with '/'; path regexes are anchored at the
//! start; methods are upper-case tokens; header names are lower-case tokens; a `ValueMatch::Exact`
//! list is never empty. Regexes are compiled with a size limit so a config cannot exhaust memory.

use regex::{Regex, RegexBuilder};

use super::model::{PathMatch, ValueMatch};
use super::net::{is_path_char, unnormalized, Unnormalized, BAD_ESCAPE};

/// Compiled-size limit per regex: generous for routing patterns, small enough to bound memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// RFC 9110 `tchar`.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Compiles `pattern`, turning the regex crate's multi-line report into one line that quotes
/// `written` (the pattern as the user wrote it, before anchoring).
pub fn compile_regex(pattern: &str, written: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                "regex is too large once compiled (limit 1 MiB); simplify it".to_owned()
            }
            other => {
                let text = other.to_string();
                let detail = text
                    .lines()
                    .rev()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .unwrap_or(text.trim());
                format!("invalid regex `{written}`: {detail}")
            }
        })
}

/// A plain cors origin: `*`, `scheme://host[:port]`, or `scheme://*.suffix` (any subdomain).
pub fn plain_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some(rest) = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
    else {
        return false;
    };
    let (wild, rest) = match rest.strip_prefix("*.") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    // Brackets only around a whole IPv6 literal (`http://[::1]:8080`).
    // (host, `:port` or "")
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((ip, port)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => ("", port),
            _ => return false,
        },
        None => rest.find(':').map_or((rest, ""), |i| rest.split_at(i)),
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    // A wildcard over a single label (`*.com`) would admit every site under a top-level domain.
    !rest.is_empty()
        && port_ok
        && (!wild || host.trim_end_matches('.').contains('.'))
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
}

/// Why a regex cors origin looks like a mistyped glob or an unescaped host, whose `*` and `.`
/// would let through domains anyone can register (`https://app.example.com/*` matches
/// `https://app-example.com`): a `*` with nothing to repeat but a separator, or an unescaped `.`
/// outside a character class that is not repeated (`[a-z0-9-]+.example`, `(app|www).corp`,
/// `(www.)?example`: reviews found those loading and admitting `https://evil-example.com`);
/// `.*`, `.+` and `.{n,m}` stay a regex's "anything". Refused with a hint rather than compiled.
pub fn origin_regex_trap(o: &str) -> Option<String> {
    let b = o.as_bytes();
    let mut escaped = false;
    let mut in_class = false;
    for (i, &c) in b.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        if in_class {
            match c {
                b'\\' => escaped = true,
                b']' => in_class = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'\\' => escaped = true,
            b'[' => in_class = true,
            b'*' if i == 0 || b"/:".contains(&b[i - 1]) => {
                return Some(format!(
                    "{o:?} looks like a glob, and as a regex its `*` repeats the character before it; write \"https://*.example.com\" for any subdomain, or a regex such as \"https://[a-z0-9-]+\\\\.example\\\\.com\""
                ))
            }
            // Only a repeated `.` (`.*`, `.+`, `.{2,}`) is meant as "anything"; any other is
            // a mistyped literal dot (`(www.)?example`, `app.(a|b)`, `[a-z]+.example`).
            b'.' if !matches!(b.get(i + 1), Some(b'*' | b'+' | b'{')) =>
            {
                return Some(format!(
                    "{o:?}: in a regex an unescaped `.` matches any character, so this would also allow look-alike domains; write `\\\\.` for a dot"
                ))
            }
            _ => {}
        }
    }
    None
}

/// Whether a cors origin that is not plain is meant as a regex: Kong's rule, any character
/// outside `[A-Za-z0-9.:/-]` (`\.`, `.*`, `(a|b)`, `[0-9]+`). One without is a mistyped plain
/// origin (`app.example.com`, a trailing `/`), reported as such.
pub fn origin_is_regex(o: &str) -> bool {
    o.bytes()
        .any(|b| !(b.is_ascii_alphanumeric() || b".:/-".contains(&b)))
}

/// Compiles a regex cors origin. Like Kong's, it must match the whole `Origin` (a leading `^` and
/// trailing `$` are optional); unlike Kong's, case-insensitively, as plain origins compare.
pub fn origin_regex(o: &str) -> Result<Regex, String> {
    let body = o.strip_prefix('^').unwrap_or(o);
    let body = body.strip_suffix('$').unwrap_or(body);
    compile_regex(&format!("(?i)^(?:{body})$"), o)
}

/// A route path: `/prefix`, `=/exact` or `~regex`.
pub fn path(s: &str) -> Result<PathMatch, String> {
    if let Some(re) = s.strip_prefix('~') {
        if re.is_empty() {
            return Err("empty regex after '~'".to_owned());
        }
        // Anchor at the start so `~/v\d+` cannot match in the middle of a path.
        let anchored = if re.starts_with('^') {
            re.to_owned()
        } else {
            format!("^(?:{re})")
        };
        return compile_regex(&anchored, re).map(PathMatch::Regex);
    }
    let (exact, p) = match s.strip_prefix('=') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if !p.starts_with('/') {
        return Err(format!(
            "{s:?}: a path must start with '/' (prefix), '=/' (exact) or '~' (regex)"
        ));
    }
    if let Some(c) = p.chars().find(|&c| !is_path_char(c)) {
        return Err(format!(
            "{s:?}: {c:?} is not allowed in a path (no spaces, '?' or '#')"
        ));
    }
    // Request paths are normalized before matching (and refused with 400 on a bad escape), so a
    // route path that is not normalized could never match.
    match unnormalized(p) {
        Some(Unnormalized::BadEscape) => {
            return Err(format!("{s:?} can never match: {BAD_ESCAPE}"));
        }
        Some(Unnormalized::Segments) => {
            return Err(format!(
                "{s:?} can never match: request paths are normalized (no '//', '.' or '..' segments)"
            ));
        }
        None => {}
    }
    if exact {
        return Ok(PathMatch::Exact(p.to_owned()));
    }
    let trimmed = p.trim_end_matches('/');
    Ok(PathMatch::Prefix(if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }))
}

/// An HTTP method, upper-cased.
/// A route's method: letters, `-` and `_` (any case, stored upper-case), what the request parser
/// takes, so a route never names a method no request can have.
pub fn method(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_')
    {
        Ok(s.to_ascii_uppercase())
    } else {
        Err(format!(
            "{s:?} is not a valid HTTP method (letters, '-' and '_', like \"GET\")"
        ))
    }
}

/// A header/query value condition: `["*"]` = present, `["~re"]` = regex, else exact values.
pub fn values(vals: &[String]) -> Result<ValueMatch, String> {
    match vals {
        [] => Err("needs at least one value (use \"*\" to match any value)".to_owned()),
        [one] if one == "*" => Ok(ValueMatch::Present),
        [one] if one.starts_with('~') => {
            let re = &one[1..];
            if re.is_empty() {
                return Err("empty regex after '~'".to_owned());
            }
            compile_regex(re, re).map(ValueMatch::Regex)
        }
        many => {
            if let Some(v) = many.iter().find(|v| *v == "*" || v.starts_with('~')) {
                return Err(format!(
                    "{v:?} must be the only value: \"*\" and \"~regex\" cannot be combined with others"
                ));
            }
            if let Some(v) = many
                .iter()
                .find(|v| v.chars().any(|c| c.is_ascii_control()))
            {
                return Err(format!("{v:?} contains a control character"));
            }
            Ok(ValueMatch::Exact(many.to_vec()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> Option<String> {
        match path(s) {
            Ok(PathMatch::Prefix(p)) => Some(p),
            _ => None,
        }
    }

    #[test]
    fn paths() {
        assert_eq!(prefix("/api/").as_deref(), Some("/api"));
        assert_eq!(prefix("/").as_deref(), Some("/"));
        assert!(matches!(path("=/health"), Ok(PathMatch::Exact(p)) if p == "/health"));
        let Ok(PathMatch::Regex(re)) = path("~/v\\d+/users") else {
            panic!("regex path")
        };
        assert!(re.is_match("/v2/users"));
        assert!(!re.is_match("/x/v2/users"));
        for bad in [
            "api", "=api", "~", "~(", "/a b", "/a?x", "/a//b", "/a/../b", "",
        ] {
            assert!(path(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_with_invalid_escapes_are_refused() {
        for bad in ["/100%", "/a%zz", "=/a%4", "/%/x", "=/a%g0/b"] {
            assert!(path(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(prefix("/a%2fb%25").as_deref(), Some("/a%2fb%25"));
        assert!(matches!(path("=/%7Euser"), Ok(PathMatch::Exact(_))));
        // A regex is not a path: '%' is just a character in it.
        assert!(matches!(path("~/100%"), Ok(PathMatch::Regex(_))));
    }

    #[test]
    fn value_forms() {
        assert!(matches!(values(&["*".into()]), Ok(ValueMatch::Present)));
        assert!(matches!(
            values(&["~^v[12]$".into()]),
            Ok(ValueMatch::Regex(_))
        ));
        assert!(
            matches!(values(&["1".into(), "2".into()]), Ok(ValueMatch::Exact(v)) if v.len() == 2)
        );
        assert!(values(&[]).is_err());
        assert!(values(&["1".into(), "*".into()]).is_err());
        assert!(values(&["~(".into()]).is_err());
    }

    #[test]
    fn huge_regex_is_refused() {
        assert!(compile_regex("\\w{1000}\\w{1000}\\w{1000}", "big").is_err());
    }

    #[test]
    fn methods() {
        assert_eq!(method("get"), Ok("GET".to_owned()));
        assert!(method("GE T").is_err());
        assert!(method("").is_err());
    }
}
