//! `cors`: answers preflights at the gateway and adds `Access-Control-*` headers to responses.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered 204 by
//!   the gateway and never proxied, unless `preflight_continue`. An allowed origin gets
//!   `Access-Control-Allow-Origin` (+ `Vary: Origin` unless it is `*`), `-Allow-Credentials`,
//!   `-Allow-Methods`, `-Allow-Headers` (configured, or the requested ones echoed, as Kong) and
//!   `-Max-Age`; a disallowed one gets a 204 without them, which the browser treats as a refusal.
//! - Other requests from an allowed origin get `-Allow-Origin` (+ `Vary`), `-Allow-Credentials` and
//!   `-Expose-Headers` on the response; a disallowed origin gets none (the browser hides the
//!   response), as in Kong. Requests without `Origin` are not CORS requests and get none.
//! - `Vary: Origin` goes on every response of a policy other than a plain `*` (without
//!   credentials), allowed origin or not, `Origin` or not: the answer depends on it, and a shared
//!   cache must key on it (as Kong does).
//! - `credentials = true` with `*`: the request's origin is echoed instead of `*` (browsers refuse
//!   `*` with credentials), with `Vary: Origin`, as Kong does; except `Origin: null`, never allowed
//!   with credentials.
//!
//! The headers go into the chain's response-header buffer, so plugin answers after this step
//! (401/403/429 from auth and rate limiting, which run later by priority) and gateway errors after
//! the chain (502/504) carry them too. The
//! route's upstream `Access-Control-*` headers are dropped when the plugin ran (`drops_upstream`):
//! the plugin is the route's CORS policy, and an upstream's own `*` must not widen it.
//! Every line but the echoed origin is prebuilt at load.

use crate::config::matchers::{origin_regex, plain_origin};
use crate::config::model::CorsDef;
use crate::http::headers::eq_ignore_case;
use crate::http::parse::RequestHead;

#[derive(Debug, Clone)]
enum Origin {
    Exact(Box<[u8]>),
    /// `scheme://*.suffix`: `prefix` = `scheme://`, `suffix` = `.suffix`.
    Subdomain {
        prefix: Box<[u8]>,
        suffix: Box<[u8]>,
    },
    /// Kong's regex form, anchored at both ends (`config::matchers::origin_regex`).
    Regex(regex::Regex),
}

impl PartialEq for Origin {
    fn eq(&self, other: &Origin) -> bool {
        match (self, other) {
            (Origin::Exact(a), Origin::Exact(b)) => a == b,
            (
                Origin::Subdomain { prefix, suffix },
                Origin::Subdomain {
                    prefix: p,
                    suffix: s,
                },
            ) => prefix == p && suffix == s,
            (Origin::Regex(a), Origin::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Origin {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsRt {
    any: bool,
    origins: Box<[Origin]>,
    credentials: bool,
    /// Whole lines, empty when not configured.
    methods: Box<[u8]>,
    headers: Option<Box<[u8]>>,
    expose: Box<[u8]>,
    max_age: Box<[u8]>,
    preflight_continue: bool,
}

/// What the step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// Answer the preflight with 204 and the headers written.
    AnswerPreflight,
}

fn line(name: &str, values: &[String]) -> Box<[u8]> {
    if values.is_empty() {
        return Box::default();
    }
    format!("{name}: {}\r\n", values.join(", "))
        .into_bytes()
        .into_boxed_slice()
}

impl CorsRt {
    pub fn new(def: &CorsDef) -> CorsRt {
        let origins = def
            .origins
            .iter()
            .filter(|o| *o != "*")
            // Validation compiled every regex already; one that failed would have stopped the load.
            .filter_map(|o| match o.split_once("://*.") {
                _ if !plain_origin(o) => origin_regex(o).ok().map(Origin::Regex),
                Some((scheme, rest)) => Some(Origin::Subdomain {
                    prefix: format!("{scheme}://").into_bytes().into(),
                    suffix: format!(".{rest}").into_bytes().into(),
                }),
                None => Some(Origin::Exact(o.as_bytes().into())),
            })
            .collect();
        CorsRt {
            any: def.origins.iter().any(|o| o == "*"),
            origins,
            credentials: def.credentials,
            methods: line("Access-Control-Allow-Methods", &def.methods),
            headers: def
                .headers
                .as_ref()
                .map(|h| line("Access-Control-Allow-Headers", h)),
            expose: line("Access-Control-Expose-Headers", &def.exposed_headers),
            max_age: def.max_age.map_or_else(Box::default, |n| {
                format!("Access-Control-Max-Age: {n}\r\n")
                    .into_bytes()
                    .into()
            }),
            preflight_continue: def.preflight_continue,
        }
    }

    /// Whether `origin` may read responses. Scheme and host compare case-insensitively (regexes
    /// too).
    /// `*` with credentials echoes the origin, but never `null` (sandboxed iframes, `file:` pages
    /// and redirects send it; echoing it with credentials would let any of them read responses).
    pub fn allows(&self, origin: &[u8]) -> bool {
        // `null` with credentials never: not by `*`, not by a regex that happens to match it.
        if self.credentials && eq_ignore_case(origin, b"null") {
            return false;
        }
        self.any
            || self.origins.iter().any(|o| match o {
                Origin::Exact(e) => eq_ignore_case(e, origin),
                Origin::Subdomain { prefix, suffix } => {
                    origin.len() > prefix.len() + suffix.len()
                        && origin
                            .get(..prefix.len())
                            .is_some_and(|p| eq_ignore_case(p, prefix))
                        && origin
                            .get(origin.len() - suffix.len()..)
                            .is_some_and(|s| eq_ignore_case(s, suffix))
                        && origin
                            .get(prefix.len()..origin.len() - suffix.len())
                            .is_some_and(|sub| {
                                sub.iter()
                                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
                            })
                }
                Origin::Regex(re) => std::str::from_utf8(origin).is_ok_and(|o| re.is_match(o)),
            })
    }
}

/// The only value of header `name`; `None` when absent or repeated (an ambiguous `Origin` is
/// treated as no origin: nothing is allowed on its account).
fn single<'b>(head: &RequestHead, buf: &'b [u8], name: &[u8]) -> Option<&'b [u8]> {
    let mut found = None;
    for h in &head.headers {
        if eq_ignore_case(h.name.get(buf), name) {
            if found.is_some() {
                return None;
            }
            found = Some(h.value.get(buf));
        }
    }
    found
}

/// Runs the step, writing response header lines into `resp_headers`.
pub fn on_request(
    rt: &CorsRt,
    head: &RequestHead,
    buf: &[u8],
    resp_headers: &mut Vec<u8>,
) -> Outcome {
    let origin = single(head, buf, b"origin");
    let preflight = head.method.get(buf) == b"OPTIONS"
        && origin.is_some()
        && single(head, buf, b"access-control-request-method").is_some();
    let answer = if preflight && !rt.preflight_continue {
        Outcome::AnswerPreflight
    } else {
        Outcome::Continue
    };
    // Unless the policy is a plain `*`, the answer depends on `Origin` whether or not this one is
    // allowed (or present): a shared cache must not serve a response stored without CORS headers
    // to an allowed origin, or one stored for another origin (Kong always sends it too).
    let star = rt.any && !rt.credentials;
    if !star {
        resp_headers.extend_from_slice(b"Vary: Origin\r\n");
    }
    let Some(origin) = origin.filter(|o| !o.is_empty() && rt.allows(o)) else {
        return answer;
    };
    resp_headers.extend_from_slice(b"Access-Control-Allow-Origin: ");
    if star {
        resp_headers.extend_from_slice(b"*\r\n");
    } else {
        resp_headers.extend_from_slice(origin);
        resp_headers.extend_from_slice(b"\r\n");
    }
    if rt.credentials {
        resp_headers.extend_from_slice(b"Access-Control-Allow-Credentials: true\r\n");
    }
    if preflight {
        resp_headers.extend_from_slice(&rt.methods);
        match &rt.headers {
            Some(h) => resp_headers.extend_from_slice(h),
            None => {
                if let Some(asked) = single(head, buf, b"access-control-request-headers") {
                    resp_headers.extend_from_slice(b"Access-Control-Allow-Headers: ");
                    resp_headers.extend_from_slice(asked);
                    resp_headers.extend_from_slice(b"\r\n");
                }
            }
        }
        resp_headers.extend_from_slice(&rt.max_age);
    } else {
        resp_headers.extend_from_slice(&rt.expose);
    }
    answer
}

/// Whether an upstream response header is one the plugin owns (dropped from upstream responses on
/// routes where the plugin ran).
pub fn owned(name: &[u8]) -> bool {
    name.len() > 15 && crate::http::headers::starts_with_ignore_case(name, b"access-control-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(origins: &[&str], credentials: bool) -> CorsRt {
        CorsRt::new(&CorsDef {
            origins: origins.iter().map(|s| (*s).to_owned()).collect(),
            methods: vec!["GET".into()],
            headers: None,
            exposed_headers: vec![],
            credentials,
            max_age: None,
            preflight_continue: false,
        })
    }

    #[test]
    fn matching() {
        let r = rt(&["https://app.example.com", "https://*.example.org"], false);
        assert!(r.allows(b"https://app.example.com"));
        assert!(r.allows(b"HTTPS://APP.example.com"));
        assert!(!r.allows(b"https://app.example.com.evil.net"));
        assert!(!r.allows(b"http://app.example.com"));
        assert!(r.allows(b"https://a.b.example.org"));
        assert!(!r.allows(b"https://example.org"));
        assert!(!r.allows(b"https://evil.net/.example.org"));
        assert!(!r.allows(b"https://evilexample.org"));
        assert!(rt(&["*"], false).allows(b"https://anything"));
        assert!(rt(&["*"], false).allows(b"null"));
        assert!(!rt(&["*"], true).allows(b"null"));
        // Nor by a regex that matches it, with credentials.
        assert!(!rt(&["https?://.*|null"], true).allows(b"null"));
        assert!(rt(&["https?://.*|null"], false).allows(b"null"));
        assert!(rt(&["*"], true).allows(b"https://anything"));
    }

    #[test]
    fn owned_names() {
        assert!(owned(b"Access-Control-Allow-Origin"));
        assert!(owned(b"access-control-max-age"));
        assert!(!owned(b"Access-Control-"));
        assert!(!owned(b"Vary"));
    }
}
