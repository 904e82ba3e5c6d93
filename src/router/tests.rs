//! Router tests: every matching and priority rule, the security cases the proxy relies on, a
//! no-allocation check of `find`, and a randomized differential test against a naive linear
//! reference implementation of the documented rules.

use super::*;
use crate::config::model::{HeaderMatch, QueryMatch, ValueMatch};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

// ---------------------------------------------------------------- helpers

fn re(s: &str) -> Regex {
    Regex::new(s).unwrap_or_else(|e| panic!("bad test regex {s:?}: {e}"))
}

/// A route builder with the config defaults (strip_path = true, priority 0).
#[derive(Clone)]
struct R(RouteDef);

fn r() -> R {
    R(RouteDef {
        name: String::new(),
        service: 0,
        hosts: vec![],
        paths: vec![],
        methods: vec![],
        headers: vec![],
        query: vec![],
        strip_path: true,
        preserve_host: false,
        priority: 0,
        max_body_bytes: None,
    })
}

impl R {
    fn host(mut self, h: &str) -> R {
        self.0.hosts.push(h.to_string());
        self
    }
    fn prefix(mut self, p: &str) -> R {
        self.0.paths.push(PathMatch::Prefix(p.to_string()));
        self
    }
    fn exact(mut self, p: &str) -> R {
        self.0.paths.push(PathMatch::Exact(p.to_string()));
        self
    }
    fn regex(mut self, p: &str) -> R {
        self.0.paths.push(PathMatch::Regex(re(p)));
        self
    }
    fn method(mut self, m: &str) -> R {
        self.0.methods.push(m.to_string());
        self
    }
    fn header(mut self, name: &str, value: ValueMatch) -> R {
        self.0.headers.push(HeaderMatch {
            name: name.to_string(),
            value,
        });
        self
    }
    fn query(mut self, name: &str, value: ValueMatch) -> R {
        self.0.query.push(QueryMatch {
            name: name.to_string(),
            value,
        });
        self
    }
    fn strip(mut self, s: bool) -> R {
        self.0.strip_path = s;
        self
    }
    fn priority(mut self, p: i32) -> R {
        self.0.priority = p;
        self
    }
}

fn exact_vals(v: &[&str]) -> ValueMatch {
    ValueMatch::Exact(v.iter().map(|s| s.to_string()).collect())
}

#[derive(Default, Clone, Debug)]
struct Req(Vec<(String, String)>);

impl Req {
    fn with(mut self, name: &str, value: &str) -> Req {
        self.0.push((name.to_string(), value.to_string()));
        self
    }
}

impl RequestView for Req {
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(n, _)| n.as_bytes() == name_lower)
            .map(|(_, v)| v.as_bytes())
    }

    fn header_varies(&self, name_lower: &[u8]) -> bool {
        let mut values = self.0.iter().filter(|(n, _)| n.as_bytes() == name_lower);
        let first = values.next();
        values.any(|v| Some(v) != first)
    }
}

fn router(routes: &[R]) -> (Router, Vec<RouteDef>) {
    let defs: Vec<RouteDef> = routes.iter().map(|r| r.0.clone()).collect();
    (Router::new(&defs), defs)
}

/// `find` with GET, no query, no headers.
fn get(rt: &Router, host: &str, path: &str) -> Option<usize> {
    rt.find(
        host.as_bytes(),
        b"GET",
        path.as_bytes(),
        b"",
        &Req::default(),
    )
    .map(|m| m.route)
}

fn find_full(
    rt: &Router,
    host: &str,
    method: &str,
    path: &str,
    query: &str,
    req: &Req,
) -> Option<Match> {
    rt.find(
        host.as_bytes(),
        method.as_bytes(),
        path.as_bytes(),
        query.as_bytes(),
        req,
    )
}

// ---------------------------------------------------------------- hosts

#[test]
fn host_exact_is_case_insensitive() {
    let (rt, _) = router(&[r().host("api.example.com")]);
    assert_eq!(get(&rt, "api.example.com", "/"), Some(0));
    assert_eq!(get(&rt, "API.Example.COM", "/"), Some(0));
    assert_eq!(get(&rt, "api.example.com.", "/"), Some(0));
    assert_eq!(get(&rt, "api.example.org", "/"), None);
    assert_eq!(get(&rt, "xapi.example.com", "/"), None);
    assert_eq!(get(&rt, "", "/"), None);
}

#[test]
fn host_wildcard_matches_one_or_more_labels_not_apex() {
    let (rt, _) = router(&[r().host("*.example.com")]);
    assert_eq!(get(&rt, "a.example.com", "/"), Some(0));
    assert_eq!(get(&rt, "A.b.EXAMPLE.com", "/"), Some(0));
    assert_eq!(get(&rt, "example.com", "/"), None);
    assert_eq!(get(&rt, ".example.com", "/"), None);
    assert_eq!(get(&rt, "aexample.com", "/"), None);
    assert_eq!(get(&rt, "a.example.org", "/"), None);
}

#[test]
fn hostless_route_matches_any_host() {
    let (rt, _) = router(&[r().prefix("/x")]);
    assert_eq!(get(&rt, "whatever.net", "/x"), Some(0));
    assert_eq!(get(&rt, "", "/x"), Some(0));
}

#[test]
fn host_specificity() {
    let (rt, _) = router(&[
        r(),
        r().host("*.example.com"),
        r().host("*.b.example.com"),
        r().host("a.b.example.com"),
    ]);
    assert_eq!(get(&rt, "a.b.example.com", "/"), Some(3));
    assert_eq!(get(&rt, "c.b.example.com", "/"), Some(2));
    assert_eq!(get(&rt, "c.example.com", "/"), Some(1));
    assert_eq!(get(&rt, "other.org", "/"), Some(0));
}

#[test]
fn route_with_several_hosts() {
    let (rt, _) = router(&[r().host("a.com").host("*.b.com").prefix("/p")]);
    assert_eq!(get(&rt, "a.com", "/p"), Some(0));
    assert_eq!(get(&rt, "x.b.com", "/p/q"), Some(0));
    assert_eq!(get(&rt, "b.com", "/p"), None);
}

#[test]
fn hostile_hosts_do_not_panic() {
    let (rt, _) = router(&[r().host("*.example.com"), r().host("a.example.com")]);
    let dots = ".".repeat(20_000);
    let labels = "a.".repeat(20_000) + "example.com";
    assert_eq!(get(&rt, &dots, "/"), None);
    assert_eq!(get(&rt, &labels, "/"), Some(0));
    assert_eq!(
        rt.find(b"\xff\x00.example.com", b"GET", b"/", b"", &Req::default())
            .map(|m| m.route),
        Some(0)
    );
}

// ---------------------------------------------------------------- paths

#[test]
fn prefix_is_segment_aware() {
    let (rt, _) = router(&[r().prefix("/users")]);
    for p in ["/users", "/users/", "/users/1", "/users/1/x"] {
        assert_eq!(get(&rt, "h", p), Some(0), "{p}");
    }
    for p in ["/users-admin", "/user", "/usersx/1", "/", "/x/users"] {
        assert_eq!(get(&rt, "h", p), None, "{p}");
    }
}

#[test]
fn root_prefix_matches_everything() {
    let (rt, _) = router(&[r().prefix("/")]);
    for p in ["/", "/a", "/a/b/", "/%2F"] {
        assert_eq!(get(&rt, "h", p), Some(0), "{p}");
    }
}

#[test]
fn config_prefix_with_trailing_slash_is_a_plain_prefix() {
    let (rt, _) = router(&[r().prefix("/users/")]);
    assert_eq!(get(&rt, "h", "/users"), Some(0));
    assert_eq!(get(&rt, "h", "/users/1"), Some(0));
    assert_eq!(get(&rt, "h", "/users-x"), None);
}

#[test]
fn exact_path() {
    let (rt, _) = router(&[r().exact("/health"), r().exact("/dir/")]);
    assert_eq!(get(&rt, "h", "/health"), Some(0));
    assert_eq!(get(&rt, "h", "/health/x"), None);
    assert_eq!(get(&rt, "h", "/dir/"), Some(1));
    assert_eq!(get(&rt, "h", "/dir/x"), None);
    // One trailing '/' more or less still matches (Express, and Flask with strict_slashes off,
    // serve both alike): not a way around the exact route to a catch-all.
    assert_eq!(get(&rt, "h", "/health/"), Some(0));
    assert_eq!(get(&rt, "h", "/dir"), Some(1));
    // An exact route for each spelling: each gets its own.
    let (rt, _) = router(&[r().exact("/a"), r().exact("/a/"), r().prefix("/")]);
    assert_eq!(get(&rt, "h", "/a"), Some(0));
    assert_eq!(get(&rt, "h", "/a/"), Some(1));
    let m = find_full(&rt, "h", "GET", "/a/", "", &Req::default());
    assert_eq!(m.map(|m| m.strip_len), Some(3));
}

#[test]
fn regex_is_anchored_at_start() {
    let (rt, _) = router(&[r().regex(r"/v\d+/users")]);
    assert_eq!(get(&rt, "h", "/v1/users"), Some(0));
    assert_eq!(get(&rt, "h", "/v12/users/7"), Some(0));
    assert_eq!(get(&rt, "h", "/api/v1/users"), None);
    let (rt, _) = router(&[r().regex(r"^/only$")]);
    assert_eq!(get(&rt, "h", "/only"), Some(0));
    assert_eq!(get(&rt, "h", "/only/x"), None);
}

/// A regex route also reads the path without its trailing '/' (`~^/admin$` takes `/admin/`, which
/// Express and Flask serve as `/admin`), ranked as a prefix just below the regex's
/// literal start: above a catch-all and shorter prefixes, below a prefix route for that start
/// itself and any true regex match (found by a review).
#[test]
fn a_regex_route_takes_its_path_with_a_trailing_slash() {
    let (rt, _) = router(&[
        r().prefix("/"),
        r().regex(r"^/admin$"),
        r().prefix("/v1"),
        r().regex(r"/v1/keys$").strip(true),
        r().prefix("/docs"),
        r().regex(r"^/docs$"),
        r().regex(r"/ping/$"),
    ]);
    assert_eq!(get(&rt, "h", "/admin"), Some(1));
    assert_eq!(get(&rt, "h", "/admin/"), Some(1), "not the catch-all");
    assert_eq!(get(&rt, "h", "/admin/x/"), Some(0));
    assert_eq!(get(&rt, "h", "/v1/keys/"), Some(3), "above the shorter /v1");
    assert_eq!(get(&rt, "h", "/v1/other/"), Some(2));
    assert_eq!(get(&rt, "h", "/docs"), Some(5));
    assert_eq!(
        get(&rt, "h", "/docs/"),
        Some(4),
        "the prefix for the literal start keeps it"
    );
    assert_eq!(get(&rt, "h", "/ping/"), Some(6));
    assert_eq!(get(&rt, "h", "/"), Some(0));
    let strip = |p: &str| find_full(&rt, "h", "GET", p, "", &Req::default()).map(|m| m.strip_len);
    assert_eq!(strip("/v1/keys"), Some(8));
    assert_eq!(
        strip("/v1/keys/"),
        Some(9),
        "stripped whole, as an exact route"
    );
    assert_eq!(super::literal_start(r"^/v1/admin$"), 9);
    assert_eq!(super::literal_start(r"/v\d+"), 2);
    assert_eq!(super::literal_start(r"/users?"), 5);
    assert_eq!(super::literal_start(r"(?i)/admin"), 1);
    assert_eq!(super::literal_start(r"/a.b"), 2);
    assert_eq!(super::literal_start(r"/admin|/keys"), 1);
    // As the config compiles `~/admin$` (wrapped, anchored).
    assert_eq!(super::literal_start(r"^(?:/admin$)"), 6);
    assert_eq!(super::literal_start(r"^(?:/a)?/b"), 1);
    assert_eq!(super::literal_start(r"^(?:/a)?(?:/b)"), 1);
    assert_eq!(super::literal_start(r"x|/admin"), 0);
    // A one-character literal start still ranks above a catch-all listed first with conditions.
    let (rt, _) = router(&[r().prefix("/").method("GET"), r().regex(r"^/a$")]);
    assert_eq!(get(&rt, "h", "/a/"), Some(1));
}

/// A regex route's `strip_path` removes whole segments: a match ending inside a segment strips
/// only up to the last '/' in it, so the rest never starts with part of a segment (`../admin`
/// joined to the service path would be a dot segment upstream).
#[test]
fn regex_strip_ends_at_a_segment_boundary() {
    let (rt, _) = router(&[
        r().regex(r"/docs/v\d+").strip(true),
        r().regex(r"/files/").strip(true),
    ]);
    let strip = |p: &str| find_full(&rt, "h", "GET", p, "", &Req::default()).map(|m| m.strip_len);
    assert_eq!(strip("/docs/v1"), Some(8));
    assert_eq!(strip("/docs/v1/x"), Some(8));
    assert_eq!(strip("/docs/v12/x"), Some(9));
    assert_eq!(
        strip("/docs/v1../admin"),
        Some(5),
        "up to /docs: /v1../admin stays"
    );
    assert_eq!(strip("/docs/v1admin"), Some(5));
    assert_eq!(strip("/files/a/b"), Some(7), "a match ending in '/'");
    let mut up = Vec::new();
    upstream_path("/base", b"/docs/v1../admin", 5, &mut up);
    assert_eq!(up, b"/base/v1../admin");
    // A remainder starting with '.' after a '/' is a segment of its own (not a format suffix).
    upstream_path("/base", b"/files/.well-known/x", 7, &mut up);
    assert_eq!(up, b"/base/.well-known/x");
}

#[test]
fn no_paths_matches_any_path() {
    let (rt, _) = router(&[r().host("h")]);
    let m = find_full(&rt, "h", "GET", "/anything/at/all", "", &Req::default());
    assert_eq!(
        m,
        Some(Match {
            route: 0,
            strip_len: 0
        })
    );
}

#[test]
fn paths_are_case_sensitive() {
    let (rt, _) = router(&[r().prefix("/admin")]);
    assert_eq!(get(&rt, "h", "/admin"), Some(0));
    assert_eq!(get(&rt, "h", "/ADMIN"), None);
    assert_eq!(get(&rt, "h", "/Admin/x"), None);
}

/// The cases the proxy's security depends on: every spelling of /admin reaches the /admin route.
#[test]
fn normalized_spellings_reach_admin_route() {
    let (rt, _) = router(&[r().prefix("/public"), r().prefix("/admin").priority(-5)]);
    let mut buf = Vec::new();
    for raw in [
        "/public/../admin",
        "//admin",
        "/%61dmin",
        "/%2e%2e/admin",
        "/public/%2E%2E/admin/x",
    ] {
        assert_eq!(normalize_path(raw.as_bytes(), &mut buf), Ok(()), "{raw}");
        assert!(buf.starts_with(b"/admin"), "{raw}");
        let m = rt.find(b"h", b"GET", &buf, b"", &Req::default());
        assert_eq!(m.map(|m| m.route), Some(1), "{raw}");
    }
    assert_eq!(normalize_path(b"/ADMIN", &mut buf), Ok(()));
    assert_eq!(rt.find(b"h", b"GET", &buf, b"", &Req::default()), None);
}

#[test]
fn odd_paths_do_not_panic() {
    let (rt, _) = router(&[r().prefix("/a"), r().exact("/"), r().regex("/x")]);
    for p in ["", "*", "a", "\u{7f}", "/\u{e9}"] {
        let _ = get(&rt, "h", p);
    }
    let mut raw = b"/".to_vec();
    raw.extend_from_slice(&[0xff, 0xfe]);
    assert_eq!(rt.find(b"h", b"GET", &raw, b"", &Req::default()), None);
}

// ---------------------------------------------------------------- strip_len

#[test]
fn strip_len_per_path_kind() {
    let routes = [
        r().prefix("/users"),
        r().exact("/health"),
        r().regex(r"/v\d+"),
        r().prefix("/keep").strip(false),
        r().host("root").prefix("/"),
        r().exact("/keep-exact").strip(false),
    ];
    let (rt, _) = router(&routes);
    let f = |host: &str, path: &str| find_full(&rt, host, "GET", path, "", &Req::default());
    assert_eq!(
        f("h", "/users/1"),
        Some(Match {
            route: 0,
            strip_len: 6
        })
    );
    assert_eq!(
        f("h", "/users"),
        Some(Match {
            route: 0,
            strip_len: 6
        })
    );
    assert_eq!(
        f("h", "/health"),
        Some(Match {
            route: 1,
            strip_len: 7
        })
    );
    assert_eq!(
        f("h", "/v12/x"),
        Some(Match {
            route: 2,
            strip_len: 4
        })
    );
    assert_eq!(
        f("h", "/keep/x"),
        Some(Match {
            route: 3,
            strip_len: 0
        })
    );
    // Stripping the root prefix is a no-op: strip_len 0 keeps the remainder starting with '/'.
    assert_eq!(
        f("root", "/a/b"),
        Some(Match {
            route: 4,
            strip_len: 0
        })
    );
    assert_eq!(
        f("h", "/keep-exact"),
        Some(Match {
            route: 5,
            strip_len: 0
        })
    );
}

#[test]
fn most_specific_path_of_a_route_gives_strip_len() {
    let (rt, _) = router(&[r().prefix("/a").prefix("/a/b")]);
    let m = find_full(&rt, "h", "GET", "/a/b/c", "", &Req::default());
    assert_eq!(
        m,
        Some(Match {
            route: 0,
            strip_len: 4
        })
    );
    let (rt, _) = router(&[r().regex("/a").regex("/a/b")]);
    let m = find_full(&rt, "h", "GET", "/a/b/c", "", &Req::default());
    assert_eq!(
        m,
        Some(Match {
            route: 0,
            strip_len: 2
        }),
        "regexes: earlier in the list wins"
    );
}

#[test]
fn strip_len_composes_with_upstream_path() {
    let (rt, _) = router(&[r().prefix("/api"), r().prefix("/raw").strip(false)]);
    let mut norm = Vec::new();
    let mut up = Vec::new();
    let mut upstream = |raw: &str, service: &str| {
        assert_eq!(normalize_path(raw.as_bytes(), &mut norm), Ok(()));
        let m = rt.find(b"h", b"GET", &norm, b"", &Req::default());
        let strip = m.map_or(0, |m| m.strip_len);
        upstream_path(service, &norm, strip, &mut up);
        String::from_utf8(up.clone()).unwrap_or_default()
    };
    assert_eq!(upstream("/api/users/1", "/base"), "/base/users/1");
    assert_eq!(upstream("/api", "/base"), "/base");
    assert_eq!(upstream("//api//x", ""), "/x");
    assert_eq!(upstream("/raw/x", "/base"), "/base/raw/x");
}

/// A format suffix on the last segment (`/admin.json`, Rails' `(.:format)`, Spring's suffix
/// matching) selects `/admin`'s route, not a catch-all (found by a review); a route for the literal
/// name wins, inner segments and hidden names (`/.env`) are read as they are, and strip_path keeps
/// the suffix on what goes upstream.
#[test]
fn a_format_suffix_selects_the_route_of_its_name() {
    let (rt, _) = router(&[
        r().prefix("/"),
        r().prefix("/admin"),
        r().exact("/secret"),
        r().prefix("/admin.csv"),
        r().prefix("/api/v1"),
    ]);
    assert_eq!(get(&rt, "h", "/admin.json"), Some(1));
    assert_eq!(get(&rt, "h", "/admin.tar.gz"), Some(1));
    assert_eq!(get(&rt, "h", "/admin.json;x"), Some(1));
    assert_eq!(get(&rt, "h", "/secret.json"), Some(2));
    assert_eq!(
        get(&rt, "h", "/admin.csv"),
        Some(3),
        "the literal route wins"
    );
    assert_eq!(get(&rt, "h", "/api/v1.json"), Some(4));
    assert_eq!(get(&rt, "h", "/api/v1.2"), Some(4));
    assert_eq!(
        get(&rt, "h", "/admin.json/users"),
        Some(0),
        "inner segments are literal"
    );
    assert_eq!(get(&rt, "h", "/admins.json"), Some(0));
    assert_eq!(get(&rt, "h", "/.admin"), Some(0));
    assert_eq!(get(&rt, "h", "/adminx"), Some(0));
    assert_eq!(
        get(&rt, "h", "/admin.json/"),
        Some(1),
        "a trailing '/' after the suffix"
    );
    // Whatever names the request literally wins over a suffix reading, whatever its class or
    // host; a literal node for another route's method still leaves the suffix reading.
    let (rt, _) = router(&[
        r().prefix("/"),
        r().exact("/admin"),
        r().regex(r"^/admin\.json$"),
        r().exact("/keys.json").method("POST"),
        r().prefix("/keys"),
        r().prefix("/me.txt").host("h"),
        r().exact("/me"),
    ]);
    assert_eq!(get(&rt, "h", "/admin.json"), Some(2));
    assert_eq!(get(&rt, "h", "/admin.xml"), Some(1));
    assert_eq!(
        get(&rt, "h", "/keys.json"),
        Some(4),
        "GET: the suffix reading"
    );
    assert_eq!(get(&rt, "h", "/me.txt"), Some(5));
    assert_eq!(get(&rt, "other", "/me.txt"), Some(6));
    // A one-character name still ranks above a catch-all listed first with conditions (one step
    // down the doubled length scale, not one byte).
    let (rt, _) = router(&[
        r().prefix("/").method("GET"),
        r().prefix("/a"),
        r().exact("/b"),
    ]);
    assert_eq!(get(&rt, "h", "/a.json"), Some(1));
    assert_eq!(get(&rt, "h", "/b.json"), Some(2));
    assert_eq!(get(&rt, "h", "/b/"), Some(2));
    let (rt, _) = router(&[
        r().prefix("/users").strip(true),
        r().exact("/me").strip(true),
    ]);
    let mut up = Vec::new();
    let mut upstream = |path: &str, service: &str| {
        let m = rt.find(b"h", b"GET", path.as_bytes(), b"", &Req::default());
        upstream_path(
            service,
            path.as_bytes(),
            m.map_or(0, |m| m.strip_len),
            &mut up,
        );
        String::from_utf8(up.clone()).unwrap_or_default()
    };
    assert_eq!(upstream("/users.json", "/base"), "/base.json");
    assert_eq!(upstream("/users.json", ""), "/.json");
    assert_eq!(upstream("/users/1.json", "/base"), "/base/1.json");
    assert_eq!(upstream("/me.json", "/base"), "/base.json");
    assert_eq!(upstream("/users.json/", "/base"), "/base.json/");
}

// ---------------------------------------------------------------- methods, headers, query

#[test]
fn methods() {
    let (rt, _) = router(&[r().method("GET").method("HEAD")]);
    let f = |m: &str| find_full(&rt, "h", m, "/", "", &Req::default()).map(|m| m.route);
    assert_eq!(f("GET"), Some(0));
    assert_eq!(f("HEAD"), Some(0));
    assert_eq!(f("POST"), None);
    assert_eq!(f("get"), None, "methods are case-sensitive");
    // GET takes HEAD (frameworks run the GET handler for it); not the other way round, and a
    // route for HEAD alone or for other methods takes no GET.
    let (rt, _) = router(&[r().method("GET"), r().method("HEAD").method("POST"), r()]);
    let f = |m: &str| find_full(&rt, "h", m, "/", "", &Req::default()).map(|m| m.route);
    assert_eq!(f("HEAD"), Some(0));
    assert_eq!(f("GET"), Some(0));
    assert_eq!(f("POST"), Some(1));
    assert_eq!(f("PUT"), Some(2));
    let (rt, _) = router(&[r().method("HEAD"), r()]);
    let f = |m: &str| find_full(&rt, "h", m, "/", "", &Req::default()).map(|m| m.route);
    assert_eq!(f("GET"), Some(1));
}

#[test]
fn headers_all_must_match() {
    let routes = [r()
        .header("x-version", exact_vals(&["2", "Beta"]))
        .header("x-key", ValueMatch::Present)
        .header("x-id", ValueMatch::Regex(re(r"^\d+$")))];
    let (rt, _) = router(&routes);
    let ok = Req::default()
        .with("x-version", "beta")
        .with("x-key", "")
        .with("x-id", "42");
    let f = |req: &Req| find_full(&rt, "h", "GET", "/", "", req).map(|m| m.route);
    assert_eq!(f(&ok), Some(0));
    assert_eq!(
        f(&Req::default()
            .with("x-version", "2")
            .with("x-key", "k")
            .with("x-id", "1")),
        Some(0)
    );
    assert_eq!(
        f(&Req::default()
            .with("x-version", "3")
            .with("x-key", "k")
            .with("x-id", "1")),
        None
    );
    assert_eq!(
        f(&Req::default().with("x-version", "2").with("x-id", "1")),
        None
    );
    assert_eq!(
        f(&Req::default()
            .with("x-version", "2")
            .with("x-key", "k")
            .with("x-id", "1a")),
        None
    );
    assert_eq!(f(&Req::default()), None);
}

#[test]
fn header_names_are_looked_up_lower_case() {
    let (rt, _) = router(&[r().header("X-Mixed", ValueMatch::Present)]);
    let req = Req::default().with("x-mixed", "1");
    assert_eq!(
        find_full(&rt, "h", "GET", "/", "", &req).map(|m| m.route),
        Some(0)
    );
}

#[test]
fn query_all_must_match() {
    let (rt, _) = router(&[r()
        .query("version", exact_vals(&["2"]))
        .query("debug", ValueMatch::Present)]);
    let f = |q: &str| find_full(&rt, "h", "GET", "/", q, &Req::default()).map(|m| m.route);
    assert_eq!(f("version=2&debug"), Some(0));
    assert_eq!(f("debug=1&version=%32"), Some(0));
    assert_eq!(f("version=1&version=2&debug="), Some(0));
    assert_eq!(f("version=2"), None);
    assert_eq!(f("version=3&debug"), None);
    assert_eq!(f(""), None);
}

// ---------------------------------------------------------------- priority

#[test]
fn priority_field_beats_everything() {
    let (rt, _) = router(&[
        r().host("h").exact("/a/b").method("GET"),
        r().prefix("/").priority(1),
    ]);
    assert_eq!(get(&rt, "h", "/a/b"), Some(1));
}

#[test]
fn exact_beats_regex_beats_prefix() {
    let (rt, _) = router(&[r().prefix("/a/b/c"), r().regex("/a"), r().exact("/a/b/c")]);
    assert_eq!(get(&rt, "h", "/a/b/c"), Some(2));
    assert_eq!(get(&rt, "h", "/a/b/c/d"), Some(1));
    let (rt, _) = router(&[r().prefix("/a/b/c"), r().regex("/x")]);
    assert_eq!(get(&rt, "h", "/a/b/c"), Some(0));
}

#[test]
fn longer_prefix_wins() {
    let (rt, _) = router(&[r().prefix("/"), r().prefix("/a"), r().prefix("/a/b")]);
    assert_eq!(get(&rt, "h", "/a/b/c"), Some(2));
    assert_eq!(get(&rt, "h", "/a/bc"), Some(1));
    assert_eq!(get(&rt, "h", "/b"), Some(0));
}

#[test]
fn prefix_beats_no_paths() {
    let (rt, _) = router(&[r(), r().prefix("/")]);
    assert_eq!(get(&rt, "h", "/x"), Some(1));
}

#[test]
fn path_specificity_beats_host_specificity() {
    let (rt, _) = router(&[r().host("h.com").prefix("/a"), r().prefix("/a/b")]);
    assert_eq!(get(&rt, "h.com", "/a/b"), Some(1));
    assert_eq!(get(&rt, "h.com", "/a/c"), Some(0));
}

#[test]
fn more_conditions_win_then_config_order() {
    let routes = [
        r().prefix("/a"),
        r().prefix("/a").method("GET"),
        r().prefix("/a")
            .method("GET")
            .header("x", ValueMatch::Present),
    ];
    let (rt, _) = router(&routes);
    let with_x = Req::default().with("x", "1");
    assert_eq!(
        find_full(&rt, "h", "GET", "/a", "", &with_x).map(|m| m.route),
        Some(2)
    );
    assert_eq!(
        find_full(&rt, "h", "GET", "/a", "", &Req::default()).map(|m| m.route),
        Some(1)
    );
    assert_eq!(
        find_full(&rt, "h", "POST", "/a", "", &with_x).map(|m| m.route),
        Some(0)
    );
    let (rt, _) = router(&[r().prefix("/a"), r().prefix("/a")]);
    assert_eq!(get(&rt, "h", "/a"), Some(0));
}

#[test]
fn empty_router() {
    let rt = Router::new(&[]);
    assert_eq!(get(&rt, "h", "/"), None);
}

#[test]
fn router_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Router>();
}

// ---------------------------------------------------------------- no allocation in find

/// Counts allocations made by the current thread, so `find` can be checked allocation-free.
struct CountingAlloc;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System` unchanged; the counter is a const-initialized thread-local Cell,
// which never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[test]
fn find_and_normalize_do_not_allocate() {
    let routes = [
        r().host("api.example.com").prefix("/v1").method("GET"),
        r().host("*.example.com")
            .regex(r"/v\d+/items")
            .header("x-v", ValueMatch::Regex(re("^2$"))),
        r().prefix("/").query("q", ValueMatch::Regex(re("^a b$"))),
        r().exact("/health"),
    ];
    let (rt, _) = router(&routes);
    let req = Req::default().with("x-v", "2");
    let run = || {
        let mut hits = 0;
        for (host, path, query) in [
            ("API.example.com", "/v1/x", ""),
            ("a.example.com", "/v2/items", ""),
            ("other", "/z", "q=a+b"),
            ("other", "/health", ""),
            ("nope.org", "/nothing", "x=%zz"),
        ] {
            hits += usize::from(find_full(&rt, host, "GET", path, query, &req).is_some());
        }
        hits
    };
    run(); // warm the regex crate's per-thread caches
    let mut hits = 0;
    assert_eq!(allocations_during(|| hits = run()), 0);
    assert_eq!(
        hits, 4,
        "nope.org lacks the query the catch-all route needs"
    );
    let mut out = Vec::with_capacity(64);
    let mut up = Vec::with_capacity(64);
    let n = allocations_during(|| {
        let _ = normalize_path(b"/a/./b/../%63//d/%2f", &mut out);
        upstream_path("/base", &out, 2, &mut up);
    });
    assert_eq!(n, 0);
    assert_eq!(out, b"/a/c/d/%2F");
    assert_eq!(up, b"/base/c/d/%2F");
}

// ---------------------------------------------------------------- differential test

/// Naive reference: scan every route, apply the documented rules directly, keep the best key.
fn reference(
    routes: &[RouteDef],
    host: &str,
    method: &str,
    path: &str,
    query: &str,
    req: &Req,
) -> Option<Match> {
    type Key = (
        i32,
        u8,
        usize,
        u8,
        usize,
        usize,
        Reverse<usize>,
        Reverse<usize>,
        Reverse<usize>,
    );
    let mut best: Option<(Key, Match)> = None;
    let host = host.to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    for (i, route) in routes.iter().enumerate() {
        if !ref_conditions(route, method, query, req) {
            continue;
        }
        let conds =
            usize::from(!route.methods.is_empty()) + route.headers.len() + route.query.len();
        let hosts: Vec<(u8, usize, usize)> = if route.hosts.is_empty() {
            vec![(0, 0, 0)]
        } else {
            route
                .hosts
                .iter()
                .enumerate()
                .filter_map(|(hi, h)| ref_host(h, host).map(|(c, l)| (c, l, hi)))
                .collect()
        };
        let paths: Vec<(u8, usize, usize, usize)> = if route.paths.is_empty() {
            vec![(0, 0, 0, 0)]
        } else {
            let found = route.paths.iter().enumerate();
            found
                .filter_map(|(pi, p)| {
                    ref_path(p, path, route.strip_path).map(|(c, l, s)| (c, l, s, pi))
                })
                .collect()
        };
        for &(hc, hl, hi) in &hosts {
            for &(pc, pl, strip, pi) in &paths {
                let key = (
                    route.priority,
                    pc,
                    pl,
                    hc,
                    hl,
                    conds,
                    Reverse(i),
                    Reverse(pi),
                    Reverse(hi),
                );
                if best.as_ref().is_none_or(|(b, _)| key > *b) {
                    best = Some((
                        key,
                        Match {
                            route: i,
                            strip_len: strip,
                        },
                    ));
                }
            }
        }
    }
    best.map(|(_, m)| m)
}

/// (class, length) of a host pattern matching the lower-cased `host`.
fn ref_host(pattern: &str, host: &str) -> Option<(u8, usize)> {
    match pattern.strip_prefix('*') {
        Some(suffix) => {
            (host.len() > suffix.len() && host.ends_with(suffix)).then_some((1, suffix.len()))
        }
        None => (pattern == host).then_some((2, pattern.len())),
    }
}

/// (class, length, strip_len) of a path pattern matching `path` (config paths here are clean), the
/// best of its readings. Lengths are on the doubled scale: 2L for a pattern of L bytes, 2L-1 for a
/// reading ranked just below it.
fn ref_path(p: &PathMatch, path: &str, strip: bool) -> Option<(u8, usize, usize)> {
    let strip_of = |n: usize| if strip { n } else { 0 };
    let mut readings: Vec<(u8, usize, usize)> = Vec::new();
    // Format-suffix readings: the last segment (before a trailing '/') cut at each '.' past its
    // first byte, ranked one step below the pattern they match.
    let body = match path.strip_suffix('/') {
        Some(b) if !b.is_empty() => b,
        _ => path,
    };
    let seg_start = body.rfind('/').map_or(0, |i| i + 1);
    let names: Vec<&str> = body[seg_start..]
        .match_indices('.')
        .filter(|&(d, _)| d > 0)
        .map(|(d, _)| &body[..seg_start + d])
        .collect();
    match p {
        PathMatch::Prefix(pre) if pre == "/" => {
            if path.starts_with('/') {
                readings.push((1, 2, 0));
            }
        }
        PathMatch::Prefix(pre) => {
            let hit = path == pre
                || path
                    .strip_prefix(pre.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
            if hit {
                readings.push((1, 2 * pre.len(), strip_of(pre.len())));
            }
            for name in &names {
                if name == pre {
                    readings.push((1, 2 * pre.len() - 1, strip_of(name.len())));
                }
            }
        }
        PathMatch::Exact(e) => {
            if path == e {
                readings.push((3, 2 * e.len(), strip_of(e.len())));
            }
            // One trailing '/' more or less: ranked as a prefix just below the bare path.
            let bare = e.strip_suffix('/').unwrap_or(e);
            let variant = match e.strip_suffix('/') {
                Some("") => false,
                Some(without) => path == without,
                None => path.strip_suffix('/') == Some(e.as_str()),
            };
            if variant {
                readings.push((1, (2 * bare.len()).saturating_sub(1), strip_of(path.len())));
            }
            for name in &names {
                if name == e {
                    readings.push((1, 2 * e.len() - 1, strip_of(name.len())));
                }
                if e.strip_suffix('/') == Some(name) {
                    readings.push((1, 2 * bare.len() - 2, strip_of(name.len())));
                }
            }
        }
        PathMatch::Regex(re) => {
            // Whole segments only: up to the last '/' in the match unless it ends at a boundary.
            let (b, strip_at) = (path.as_bytes(), |end: usize| {
                let b = path.as_bytes();
                let boundary = end == b.len() || b[end] == b'/' || (end > 0 && b[end - 1] == b'/');
                if boundary {
                    end
                } else {
                    path[..end].rfind('/').unwrap_or(0)
                }
            });
            // Leftmost-first: a match starting at 0 exists iff the leftmost match starts at 0.
            if let Some(m) = re.find(path).filter(|m| m.start() == 0) {
                readings.push((2, 0, strip_of(strip_at(m.end()))));
            }
            // Without a trailing '/': a prefix just below the regex's literal start.
            if let Some(trimmed) = path.strip_suffix('/').filter(|t| !t.is_empty()) {
                if let Some(m) = re.find(trimmed).filter(|m| m.start() == 0) {
                    let strip = if m.end() == trimmed.len() {
                        b.len()
                    } else {
                        strip_at(m.end())
                    };
                    let len = (2 * super::literal_start(re.as_str())).saturating_sub(1);
                    readings.push((1, len, strip_of(strip)));
                }
            }
        }
    }
    readings.into_iter().max_by_key(|&(c, l, _)| (c, l))
}

fn ref_conditions(route: &RouteDef, method: &str, query: &str, req: &Req) -> bool {
    let method_ok = route.methods.is_empty()
        || route
            .methods
            .iter()
            .any(|m| m == method || (method == "HEAD" && m == "GET"));
    let header_ok = |h: &HeaderMatch| {
        let value = req
            .0
            .iter()
            .find(|(n, _)| *n == h.name)
            .map(|(_, v)| v.as_str());
        value.is_some_and(|v| ref_value(&h.value, v, true))
    };
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (ref_decode(n), ref_decode(v)),
            None => (ref_decode(p), String::new()),
        })
        .collect();
    let query_ok = |q: &QueryMatch| {
        params
            .iter()
            .any(|(n, v)| *n == q.name && ref_value(&q.value, v, false))
    };
    method_ok && route.headers.iter().all(header_ok) && route.query.iter().all(query_ok)
}

fn ref_value(want: &ValueMatch, value: &str, ignore_case: bool) -> bool {
    match want {
        ValueMatch::Present => true,
        ValueMatch::Exact(vals) => vals.iter().any(|w| {
            if ignore_case {
                w.eq_ignore_ascii_case(value)
            } else {
                w == value
            }
        }),
        ValueMatch::Regex(re) => re.is_match(value),
    }
}

/// Form decoding with allocation (test generator only produces ASCII).
fn ref_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 3 <= b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(0));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ------------------------------------------------ random generation

const HOSTS: &[&str] = &[
    "a.example.com",
    "b.example.com",
    "*.example.com",
    "*.b.example.com",
    "other.org",
    "*.org",
];
const REQ_HOSTS: &[&str] = &[
    "a.example.com",
    "A.Example.COM",
    "b.example.com",
    "x.b.example.com",
    "example.com",
    "other.org",
    "z.other.org",
    "nomatch.net",
    "a.example.com.",
    "",
];
const PREFIXES: &[&str] = &["/", "/a", "/a/b", "/b", "/a/b/c", "/ab", "/users"];
const EXACTS: &[&str] = &["/a", "/a/b", "/", "/b/", "/users/1"];
const REGEXES: &[&str] = &[
    r"/a/[0-9]+",
    "/b",
    "/(a|b)/b",
    "/users/?",
    r"^/a/\d+$",
    "^(?:/ab$)",
];
const REQ_PATHS: &[&str] = &[
    "/",
    "/a",
    "/a/",
    "/a/b",
    "/a/b/c",
    "/a/1",
    "/a/12/x",
    "/ab",
    "/b",
    "/b/",
    "/b/c",
    "/users",
    "/users/1",
    "/users-admin",
    "/c",
    "/a/b/c/d",
    "/a.json",
    "/a.json/",
    "/a/b.tar.gz",
    "/users/1.xml",
    "/ab.c",
    "/ab/",
    "/b/.x",
    "/a/1/",
];
const METHODS: &[&str] = &["GET", "POST", "PUT"];
const QUERIES: &[&str] = &[
    "",
    "q=1",
    "q=2",
    "q",
    "a=1&q=1",
    "q=%31",
    "q=1+2",
    "p=x&q=2&q=1",
];

fn random_route(rng: &mut StdRng) -> RouteDef {
    let mut b = r();
    for _ in 0..rng.gen_range(0..=2) {
        b = b.host(HOSTS.choose(rng).copied().unwrap_or("x"));
    }
    for _ in 0..rng.gen_range(0..=2) {
        b = match rng.gen_range(0..10) {
            0..=5 => b.prefix(PREFIXES.choose(rng).copied().unwrap_or("/")),
            6..=7 => b.exact(EXACTS.choose(rng).copied().unwrap_or("/")),
            _ => b.regex(REGEXES.choose(rng).copied().unwrap_or("/")),
        };
    }
    if rng.gen_bool(0.3) {
        let count = rng.gen_range(1..=2);
        for m in METHODS.choose_multiple(rng, count) {
            b = b.method(m);
        }
    }
    if rng.gen_bool(0.25) {
        let v = match rng.gen_range(0..3) {
            0 => ValueMatch::Present,
            1 => exact_vals(&["1", "Two"]),
            _ => ValueMatch::Regex(re("^[12]$")),
        };
        b = b.header("x-v", v);
    }
    if rng.gen_bool(0.1) {
        b = b.header("x-w", ValueMatch::Present);
    }
    if rng.gen_bool(0.2) {
        let v = match rng.gen_range(0..3) {
            0 => ValueMatch::Present,
            1 => exact_vals(&["1", "1 2"]),
            _ => ValueMatch::Regex(re("^1")),
        };
        b = b.query("q", v);
    }
    b = b.strip(rng.gen_bool(0.5));
    b.priority(*[0, 0, 0, 0, 1, -1].choose(rng).unwrap_or(&0)).0
}

fn random_req(rng: &mut StdRng) -> Req {
    let mut req = Req::default();
    if rng.gen_bool(0.5) {
        req = req.with(
            "x-v",
            ["1", "2", "3", "two", "TWO"]
                .choose(rng)
                .copied()
                .unwrap_or("1"),
        );
    }
    if rng.gen_bool(0.3) {
        req = req.with("x-w", "");
    }
    req
}

fn differential(seed: u64, sets: usize, requests: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut matched = 0;
    for set in 0..sets {
        let n = rng.gen_range(1..=40);
        let routes: Vec<RouteDef> = (0..n).map(|_| random_route(&mut rng)).collect();
        let rt = Router::new(&routes);
        for _ in 0..requests {
            let host = REQ_HOSTS.choose(&mut rng).copied().unwrap_or("");
            let method = METHODS.choose(&mut rng).copied().unwrap_or("GET");
            let path = REQ_PATHS.choose(&mut rng).copied().unwrap_or("/");
            let query = QUERIES.choose(&mut rng).copied().unwrap_or("");
            let req = random_req(&mut rng);
            let got = find_full(&rt, host, method, path, query, &req);
            let want = reference(&routes, host, method, path, query, &req);
            matched += usize::from(want.is_some());
            assert_eq!(
                got, want,
                "seed {seed} set {set}: {method} {host:?} {path}?{query} {req:?}\nroutes: {routes:#?}"
            );
        }
    }
    // Guard against a generator that never matches anything (a vacuous test).
    assert!(
        matched * 4 > sets * requests,
        "only {matched} of {} requests matched",
        sets * requests
    );
}

#[test]
fn differential_fixed_seed() {
    differential(0x5eed_0001, 300, 40);
}

#[test]
fn differential_time_seed() {
    let seed = std::env::var("RINGGATE_ROUTER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64)
        });
    println!("router differential seed: {seed} (rerun with RINGGATE_ROUTER_SEED={seed})");
    differential(seed, 300, 40);
}

// ---------------------------------------------------------------- repeated condition inputs

/// `req` read with the first or the last occurrence of each header and query parameter.
struct Reading<'a>(&'a Req, Occurrence);

impl RequestView for Reading<'_> {
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]> {
        let mut named = (self.0)
            .0
            .iter()
            .filter(|(n, _)| n.as_bytes() == name_lower);
        let hit = match self.1 {
            Occurrence::Last => named.next_back(),
            _ => named.next(),
        };
        hit.map(|(_, v)| v.as_bytes())
    }

    fn header_varies(&self, name_lower: &[u8]) -> bool {
        self.0.header_varies(name_lower)
    }

    fn query_reading(&self) -> Occurrence {
        self.1
    }
}

#[test]
fn repeated_condition_inputs_are_ambiguous_and_readable_both_ways() {
    let (rt, _) = router(&[
        r().prefix("/").header("x-version", exact_vals(&["2"])),
        r().prefix("/").query("v", exact_vals(&["2"])),
        r().prefix("/"),
    ]);
    let route = |req: &Req, query: &str, occ: Occurrence| {
        rt.find(b"h", b"GET", b"/x", query.as_bytes(), &Reading(req, occ))
            .map(|m| m.route)
    };
    // One value, or the same value twice: not ambiguous.
    let once = Req::default().with("x-version", "2");
    assert!(!rt.ambiguous(b"", &once));
    assert!(!rt.ambiguous(b"", &once.clone().with("x-version", "2")));
    assert!(!rt.ambiguous(b"v=2&v=%32", &Req::default()));
    assert!(
        !rt.ambiguous(b"w=1&w=2", &Req::default()),
        "no condition reads w"
    );
    // Different values: ambiguous, and the readings pick different routes.
    let twice = Req::default().with("x-version", "1").with("x-version", "2");
    assert!(rt.ambiguous(b"", &twice));
    assert_eq!(route(&twice, "", Occurrence::First), Some(2));
    assert_eq!(route(&twice, "", Occurrence::Last), Some(0));
    let none = Req::default();
    assert!(rt.ambiguous(b"v=1&v=2", &none));
    assert_eq!(route(&none, "v=1&v=2", Occurrence::Any), Some(1));
    assert_eq!(route(&none, "v=1&v=2", Occurrence::First), Some(2));
    assert_eq!(route(&none, "v=1&v=2", Occurrence::Last), Some(1));
    // A router without header or query conditions never looks.
    let (plain, _) = router(&[r().prefix("/")]);
    assert!(!plain.ambiguous(b"v=1&v=2", &twice));
}

/// The trailing-slash variant of an exact route ranks as a prefix just below its path:
/// it beats a catch-all, never a prefix route for the path itself (`=/docs` redirecting to the
/// `/docs/` site), a regex, or a host-specific route of the same kind.
#[test]
fn an_exact_routes_slash_variant_yields_to_routes_spelled_for_the_request() {
    let (rt, _) = router(&[r().exact("/docs"), r().prefix("/docs/"), r().prefix("/")]);
    assert_eq!(get(&rt, "h", "/docs"), Some(0));
    assert_eq!(get(&rt, "h", "/docs/"), Some(1));
    let (rt, _) = router(&[r().exact("/api"), r().regex("/api/$"), r().prefix("/")]);
    assert_eq!(get(&rt, "h", "/api/"), Some(1));
    let (rt, _) = router(&[r().exact("/secret"), r().prefix("/")]);
    assert_eq!(get(&rt, "h", "/secret/"), Some(0));
    let (rt, _) = router(&[r().exact("/secret"), r().host("h").prefix("/secret")]);
    assert_eq!(get(&rt, "h", "/secret/"), Some(1));
}
