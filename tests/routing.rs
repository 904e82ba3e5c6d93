//! Routing: hosts (exact, wildcard), paths (segment-aware prefix, exact, regex), methods, headers,
//! query parameters, strip_path with X-Forwarded-Prefix, matching on the normalized path, and the 404
//! JSON when nothing matches. Which route won is read from the upstream that answered (`X-Upstream`).

mod common;

use common::*;

/// One upstream per route name, each a `url` service; `routes` is the TOML of the `[[routes]]` tables,
/// referring to services named after the upstreams.
struct Setup {
    ups: Vec<Upstream>,
    gw: Gateway,
}

impl Setup {
    fn new(names: &[&str], routes: &str) -> Setup {
        let ups: Vec<Upstream> = names.iter().map(|n| Upstream::echo(n)).collect();
        let mut toml = String::from("[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n");
        for u in &ups {
            toml.push_str(&format!(
                "[[services]]\nname = \"{}\"\nurl = \"{}\"\n\n",
                u.name(),
                u.url()
            ));
        }
        toml.push_str(routes);
        let gw = Gateway::start(&toml);
        Setup { ups, gw }
    }

    /// The upstream name that answered `GET path` with `host`, or the status if it was not a 200.
    fn who(&self, method: &str, host: &str, path: &str, extra_headers: &str) -> String {
        let mut c = Conn::connect(self.gw.addr());
        let r = c.request(
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}\r\n").as_bytes(),
        );
        match r.status {
            200 => r.header("x-upstream").unwrap_or("?").to_string(),
            404 => {
                r.assert_json_error(404);
                "404".into()
            }
            s => s.to_string(),
        }
    }

    fn get(&self, host: &str, path: &str) -> String {
        self.who("GET", host, path, "")
    }

    fn up(&self, name: &str) -> &Upstream {
        self.ups
            .iter()
            .find(|u| u.name() == name)
            .expect("upstream")
    }
}

#[test]
fn exact_and_wildcard_hosts() {
    let s = Setup::new(
        &["exact", "wild"],
        r#"
[[routes]]
name = "exact"
service = "exact"
hosts = ["api.example.com"]

[[routes]]
name = "wild"
service = "wild"
hosts = ["*.example.org"]
"#,
    );
    assert_eq!(s.get("api.example.com", "/"), "exact");
    assert_eq!(
        s.get("API.Example.COM", "/"),
        "exact",
        "hosts are case-insensitive"
    );
    assert_eq!(
        s.get("api.example.com:8080", "/"),
        "exact",
        "the port is ignored"
    );
    assert_eq!(s.get("other.example.com", "/"), "404");
    assert_eq!(s.get("foo.example.org", "/"), "wild");
    assert_eq!(s.get("bar.example.org:1234", "/x"), "wild");
    assert_eq!(
        s.get("example.org", "/"),
        "404",
        "the wildcard needs a label"
    );
    assert_eq!(s.get("fooexample.org", "/"), "404");
}

#[test]
fn prefix_paths_are_segment_aware() {
    let s = Setup::new(
        &["users"],
        r#"
[[routes]]
name = "users"
service = "users"
paths = ["/users"]
strip_path = false
"#,
    );
    assert_eq!(s.get(HOST, "/users"), "users");
    assert_eq!(s.get(HOST, "/users/"), "users");
    assert_eq!(s.get(HOST, "/users/42"), "users");
    assert_eq!(s.get(HOST, "/users?page=2"), "users");
    assert_eq!(s.get(HOST, "/users-admin"), "404");
    assert_eq!(s.get(HOST, "/usersx"), "404");
    assert_eq!(s.get(HOST, "/"), "404");
    assert_eq!(s.get(HOST, "/api/users"), "404");
}

#[test]
fn exact_and_regex_paths() {
    let s = Setup::new(
        &["health", "versioned"],
        r#"
[[routes]]
name = "health"
service = "health"
paths = ["=/health"]
strip_path = false

[[routes]]
name = "versioned"
service = "versioned"
paths = ["~^/v\\d+/users"]
strip_path = false
"#,
    );
    assert_eq!(s.get(HOST, "/health"), "health");
    assert_eq!(s.get(HOST, "/health?verbose=1"), "health");
    assert_eq!(s.get(HOST, "/health/x"), "404");
    assert_eq!(s.get(HOST, "/healthz"), "404");
    assert_eq!(s.get(HOST, "/v1/users"), "versioned");
    assert_eq!(s.get(HOST, "/v22/users/9"), "versioned");
    assert_eq!(s.get(HOST, "/vx/users"), "404");
    assert_eq!(
        s.get(HOST, "/api/v1/users"),
        "404",
        "regexes are anchored at the path start"
    );
}

#[test]
fn methods_restrict_a_route() {
    let s = Setup::new(
        &["reader", "writer"],
        r#"
[[routes]]
name = "reader"
service = "reader"
paths = ["/items"]
methods = ["GET", "HEAD"]
strip_path = false

[[routes]]
name = "writer"
service = "writer"
paths = ["/items"]
methods = ["POST"]
strip_path = false
"#,
    );
    assert_eq!(s.who("GET", HOST, "/items", ""), "reader");
    assert_eq!(
        s.who("POST", HOST, "/items", "Content-Length: 0\r\n"),
        "writer"
    );
    assert_eq!(s.who("DELETE", HOST, "/items", ""), "404");
}

/// TRACE reflects the request (cookies, credentials) back: a 405 unless a route lists it, as
/// nginx and Kong answer; a route that lists it proxies it.
#[test]
fn trace_is_refused_unless_a_route_lists_it() {
    let s = Setup::new(
        &["any", "tracer"],
        r#"
[[routes]]
name = "any"
service = "any"
paths = ["/"]

[[routes]]
name = "tracer"
service = "tracer"
paths = ["/debug"]
methods = ["TRACE"]
"#,
    );
    assert_eq!(s.who("TRACE", HOST, "/items", "Cookie: s=1\r\n"), "405");
    // A 405 names what the resource allows (RFC 9110 §15.5.6).
    let r = Conn::connect(s.gw.addr())
        .request(format!("TRACE /items HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    r.assert_json_error(405);
    assert_eq!(
        r.header("allow"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
    );
    assert_eq!(s.who("GET", HOST, "/items", ""), "any");
    assert_eq!(s.who("TRACE", HOST, "/debug", ""), "tracer");
    // IIS's TRACK, and TRACE as a method override (Express's method-override runs it), are
    // refused the same way (found by a review: they were proxied).
    assert_eq!(s.who("TRACK", HOST, "/items", ""), "405");
    assert_eq!(
        s.who("GET", HOST, "/items", "X-HTTP-Method-Override: TRACE\r\n"),
        "405"
    );
    assert_eq!(s.who("POST", HOST, "/items?_method=trace", ""), "405");
    // A header value is a list to Express (it runs the first part): every part counts.
    assert_eq!(
        s.who(
            "GET",
            HOST,
            "/items",
            "X-HTTP-Method-Override: TRACE ,trace\r\n"
        ),
        "405"
    );
    assert_eq!(
        s.who(
            "GET",
            HOST,
            "/items",
            "X-HTTP-Method-Override: TRACE, GET\r\n"
        ),
        "400",
        "conflicting overrides"
    );
    // (A GET on /debug is the catch-all's, which does not list TRACE.)
    assert_eq!(
        s.who("GET", HOST, "/debug", "X-HTTP-Method-Override: TRACE\r\n"),
        "405"
    );
    assert!(s.up("any").requests().iter().all(|r| r.method != "TRACE"
        && r.method != "TRACK"
        && r.header("x-http-method-override").is_none()));
}

/// An encoded NUL in the path is a 400, as nginx answers: C-string code behind would read
/// `/admin%00.json` as `/admin` (found by a review).
#[test]
fn an_encoded_nul_in_the_path_is_refused() {
    let s = Setup::new(
        &["any"],
        r#"
[[routes]]
name = "any"
service = "any"
paths = ["/"]
"#,
    );
    assert_eq!(s.who("GET", HOST, "/admin%00", ""), "400");
    assert_eq!(s.who("GET", HOST, "/a/b%00.json?x=1", ""), "400");
    assert_eq!(
        s.who("GET", HOST, "/a?x=%00", ""),
        "any",
        "the query is not the path"
    );
    assert_eq!(s.who("GET", HOST, "/a%01", ""), "any");
    assert!(s
        .up("any")
        .requests()
        .iter()
        .all(|r| !r.target.contains("%00") || r.target.contains('?')));
}

#[test]
fn header_versioning_exact_and_regex() {
    let s = Setup::new(
        &["v1", "v2", "default"],
        r#"
[[routes]]
name = "v2"
service = "v2"
paths = ["/api"]
headers = { "X-API-Version" = ["2"] }
priority = 10

[[routes]]
name = "v1"
service = "v1"
paths = ["/api"]
headers = { "X-API-Version" = ["~^1(\\.\\d+)?$"] }
priority = 10

[[routes]]
name = "default"
service = "default"
paths = ["/api"]
"#,
    );
    assert_eq!(s.who("GET", HOST, "/api/x", "X-API-Version: 2\r\n"), "v2");
    assert_eq!(
        s.who("GET", HOST, "/api/x", "x-api-version: 2\r\n"),
        "v2",
        "names are case-insensitive"
    );
    assert_eq!(s.who("GET", HOST, "/api/x", "X-API-Version: 1\r\n"), "v1");
    assert_eq!(s.who("GET", HOST, "/api/x", "X-API-Version: 1.3\r\n"), "v1");
    assert_eq!(
        s.who("GET", HOST, "/api/x", "X-API-Version: 3\r\n"),
        "default"
    );
    assert_eq!(
        s.who("GET", HOST, "/api/x", "X-API-Version: 22\r\n"),
        "default"
    );
    assert_eq!(s.who("GET", HOST, "/api/x", ""), "default");
}

#[test]
fn query_parameters() {
    let s = Setup::new(
        &["beta", "default"],
        r#"
[[routes]]
name = "beta"
service = "beta"
paths = ["/q"]
query = { version = ["2"] }
priority = 5
strip_path = false

[[routes]]
name = "default"
service = "default"
paths = ["/q"]
strip_path = false
"#,
    );
    assert_eq!(s.get(HOST, "/q?version=2"), "beta");
    assert_eq!(s.get(HOST, "/q?a=1&version=2&b=3"), "beta");
    assert_eq!(s.get(HOST, "/q?version=3"), "default");
    assert_eq!(s.get(HOST, "/q?xversion=2"), "default");
    assert_eq!(s.get(HOST, "/q"), "default");
    // The query string reaches the upstream unchanged.
    assert_eq!(s.up("beta").last_request().target, "/q?a=1&version=2&b=3");
}

#[test]
fn strip_path_removes_the_matched_prefix_and_records_it() {
    let s = Setup::new(
        &["stripped", "kept"],
        r#"
[[routes]]
name = "stripped"
service = "stripped"
paths = ["/api"]
strip_path = true

[[routes]]
name = "kept"
service = "kept"
paths = ["/keep"]
strip_path = false
"#,
    );
    assert_eq!(s.get(HOST, "/api/hello?x=1"), "stripped");
    let r = s.up("stripped").last_request();
    assert_eq!(r.target, "/hello?x=1");
    assert_eq!(r.header_all("x-forwarded-prefix"), vec!["/api"]);

    assert_eq!(s.get(HOST, "/api"), "stripped");
    let r = s.up("stripped").last_request();
    assert_eq!(r.target, "/", "stripping the whole path leaves /");
    assert_eq!(r.header("x-forwarded-prefix"), Some("/api"));

    assert_eq!(s.get(HOST, "/keep/it"), "kept");
    let r = s.up("kept").last_request();
    assert_eq!(r.target, "/keep/it");
    assert!(!r.has_header("x-forwarded-prefix"));
}

#[test]
fn strip_path_with_a_regex_path() {
    let s = Setup::new(
        &["re"],
        r#"
[[routes]]
name = "re"
service = "re"
paths = ["~^/v\\d+"]
strip_path = true
"#,
    );
    assert_eq!(s.get(HOST, "/v3/items/1"), "re");
    let r = s.up("re").last_request();
    assert_eq!(r.target, "/items/1");
    assert_eq!(r.header("x-forwarded-prefix"), Some("/v3"));
}

#[test]
fn matching_uses_the_normalized_path() {
    let s = Setup::new(
        &["admin", "public"],
        r#"
[[routes]]
name = "admin"
service = "admin"
paths = ["/admin"]
strip_path = false

[[routes]]
name = "public"
service = "public"
paths = ["/public"]
strip_path = false
"#,
    );
    assert_eq!(s.get(HOST, "/admin"), "admin");
    assert_eq!(s.get(HOST, "/public/../admin"), "admin");
    assert_eq!(s.get(HOST, "//admin"), "admin");
    assert_eq!(s.get(HOST, "/%61dmin"), "admin");
    assert_eq!(s.get(HOST, "/public/./x"), "public");
    assert_eq!(s.get(HOST, "/./public"), "public");
}

#[test]
fn dot_segments_cannot_escape_a_public_prefix() {
    // Only /public is routed: /public/../admin normalizes to /admin and must not reach the public
    // upstream (which would resolve the dot segments itself and serve /admin).
    let s = Setup::new(
        &["public"],
        r#"
[[routes]]
name = "public"
service = "public"
paths = ["/public"]
strip_path = false
"#,
    );
    for p in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/./../admin",
    ] {
        assert_eq!(s.get(HOST, p), "404", "{p} escaped the prefix");
    }
    // Backends that read '\\' as '/' (IIS, ASP.NET, some Node routers) would serve /admin: a
    // backslash, raw or encoded, is a 400.
    for p in ["/public\\..\\admin", "/public/%5C../admin", "/public/a%5cb"] {
        assert_eq!(s.get(HOST, p), "400", "{p}");
    }
    assert_eq!(s.up("public").request_count(), 0);
}

#[test]
fn dot_segments_with_path_parameters_cannot_escape_a_public_prefix() {
    // Tomcat and other servlet containers drop `;parameters` before resolving dot segments, so
    // `/public/..;/admin` is `/admin` to them: it must be routed as `/admin`, not as `/public`.
    let s = Setup::new(
        &["public", "admin"],
        r#"
[[routes]]
name = "public"
service = "public"
paths = ["/public"]
strip_path = false

[[routes]]
name = "admin"
service = "admin"
paths = ["=/admin"]
strip_path = false
"#,
    );
    for p in [
        "/public/..;/admin",
        "/public/..;jsessionid=1/admin",
        "/public/%2e%2e;x/admin",
        "/public/.;/..;/admin",
    ] {
        assert_eq!(s.get(HOST, p), "admin", "{p} escaped to the public route");
        assert_eq!(s.up("admin").last_request().target, "/admin", "{p}");
    }
    assert_eq!(s.up("public").request_count(), 0);
    // A name with parameters is still a name.
    assert_eq!(s.get(HOST, "/public/a;b"), "public");
}

/// A regex route sees the path as written, so `~^/admin$` would let `/admin;x` (served as `/admin`
/// by servlet containers) fall through to a catch-all: a path whose parameters decide the route is
/// a 400. Parameters that change nothing route as usual.
#[test]
fn path_parameters_cannot_skip_a_regex_route() {
    let s = Setup::new(
        &["admin", "rest"],
        r#"
[[routes]]
name = "admin"
service = "admin"
paths = ["~/admin$"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    assert_eq!(s.get(HOST, "/admin"), "admin");
    for p in ["/admin;x", "/admin;jsessionid=1", "/admin;"] {
        assert_eq!(s.get(HOST, p), "400", "{p}");
    }
    assert_eq!(s.get(HOST, "/other;x"), "rest");
    assert_eq!(s.up("rest").last_request().target, "/other;x");
    assert_eq!(s.up("admin").request_count(), 1);
}

#[test]
fn options_asterisk_goes_upstream_as_an_asterisk() {
    // Only a route without `paths` can take `OPTIONS *`; the upstream must be asked about the
    // server (`*`), not about a resource `/*`.
    let s = Setup::new(
        &["server"],
        r#"
[[routes]]
name = "server"
service = "server"
hosts = ["api.example.com"]
"#,
    );
    assert_eq!(s.who("OPTIONS", "api.example.com", "*", ""), "server");
    assert_eq!(s.up("server").last_request().target, "*");
    // The absolute form of the same question (RFC 9112 §3.2.4: the last proxy sends `*`); with a
    // path or a query it asks about a resource.
    for (target, upstream) in [
        ("http://api.example.com", "*"),
        ("http://api.example.com/", "/"),
        ("http://api.example.com?x=1", "/?x=1"),
    ] {
        let req = format!("OPTIONS {target} HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
        assert_eq!(
            send_raw(s.gw.addr(), req.as_bytes()).status,
            200,
            "{target}"
        );
        assert_eq!(s.up("server").last_request().target, upstream, "{target}");
    }
}

#[test]
fn no_match_is_404_json() {
    let s = Setup::new(
        &["only"],
        r#"
[[routes]]
name = "only"
service = "only"
paths = ["/only"]
"#,
    );
    let r = send_raw(
        s.gw.addr(),
        b"GET /nothing HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    r.assert_json_error(404);
    assert!(
        !r.closed,
        "a 404 needs no close: the request framing was fine"
    );
    assert_eq!(s.up("only").request_count(), 0);
}

#[test]
fn priority_breaks_ties_between_overlapping_routes() {
    let s = Setup::new(
        &["low", "high"],
        r#"
[[routes]]
name = "low"
service = "low"
hosts = ["p.example"]
priority = 1

[[routes]]
name = "high"
service = "high"
hosts = ["p.example"]
priority = 100
"#,
    );
    for _ in 0..3 {
        assert_eq!(s.get("p.example", "/"), "high");
    }
}

/// `%2F` stays data (it is forwarded as it came), but a path that would select another route once
/// an upstream decodes it into '/' is a 400: `/admin%2Fusers` is routed by `/` and served by a
/// WSGI or Rack app as `/admin/users`, past `/admin`'s plugins. One that routes the same either
/// way (an encoded slash inside a project name under `/api`) goes through unchanged.
#[test]
fn an_encoded_slash_cannot_select_another_route() {
    let s = Setup::new(
        &["admin", "api", "rest"],
        r#"
[[routes]]
name = "admin"
service = "admin"
paths = ["/admin"]

[[routes]]
name = "api"
service = "api"
paths = ["/api"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    for path in [
        "/admin%2Fusers",
        "/admin%2fusers",
        "/public%2F..%2Fadmin",
        "/x/..%2Fadmin",
        "/%2Fadmin",
    ] {
        assert_eq!(s.get("h", path), "400", "{path}");
    }
    assert_eq!(s.get("h", "/api/projects/group%2Fname"), "api");
    assert_eq!(
        s.up("api").last_request().target,
        "/api/projects/group%2Fname"
    );
    assert_eq!(s.get("h", "/files/a%2Fb"), "rest");
    assert_eq!(s.up("rest").last_request().target, "/files/a%2Fb");
    // Double encoding is data all the way: `%252F` is no slash to anyone.
    assert_eq!(s.get("h", "/admin%252Fusers"), "rest");
}

/// A dot segment behind an encoded slash is a 400 even where it selects the same route: a route
/// without paths (or with `/`) takes every path, so the route check above never fires, and an
/// upstream that decodes `%2F` before resolving dot segments (nginx, Python's `http.server`)
/// served `/public/v2/..%2F..%2Fadmin/users` from outside the service's base path (found by a
/// review, against a real nginx). An encoded slash next to dots that form no segment passes.
#[test]
fn a_dot_segment_behind_an_encoded_slash_is_400_on_any_route() {
    let up = Upstream::echo("files");
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[[services]]\nname = \"files\"\nurl = \"{}/public/v2\"\n\n[[routes]]\nname = \"files\"\nservice = \"files\"\nhosts = [\"files.test\"]\n",
        up.url()
    ));
    let get = |path: &str| {
        let mut c = Conn::connect(gw.addr());
        c.request(format!("GET {path} HTTP/1.1\r\nHost: files.test\r\n\r\n").as_bytes())
    };
    for path in [
        "/..%2F..%2Fadmin/users",
        "/a/..%2f..%2fadmin",
        "/a/%2e%2e%2Fadmin",
        "/a/.%2Fb",
        "/a%2F..",
        "/a%2F..;x/b",
    ] {
        let r = get(path);
        assert_eq!(r.status, 400, "{path}");
        r.assert_json_error(400);
    }
    for (path, upstream) in [
        ("/projects/group%2Fname", "/public/v2/projects/group%2Fname"),
        ("/a/b..%2Fc", "/public/v2/a/b..%2Fc"),
        ("/a/...%2Fb", "/public/v2/a/...%2Fb"),
    ] {
        assert_eq!(get(path).status, 200, "{path}");
        assert_eq!(up.last_request().target, upstream);
    }
}

/// A repeated header or query parameter that a route condition reads: the router reads the first
/// header (and any parameter), an upstream may read the last, so a request whose readings select
/// different routes (a v2 route with its own plugins, and a catch-all) is a 400; a repeat with one
/// value, or one no condition reads, routes as usual.
#[test]
fn repeated_condition_inputs_that_select_another_route_are_400() {
    let s = Setup::new(
        &["v2", "beta", "rest"],
        r#"
[[routes]]
name = "v2"
service = "v2"
paths = ["/api"]
headers = { x-version = ["2"] }
strip_path = false

[[routes]]
name = "beta"
service = "beta"
paths = ["/api"]
query = { version = ["beta"] }
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    let hdr = |lines: &str| s.who("GET", HOST, "/api/x", lines);
    assert_eq!(hdr("X-Version: 2\r\n"), "v2");
    assert_eq!(hdr("X-Version: 1\r\n"), "rest");
    for repeated in [
        "X-Version: 1\r\nX-Version: 2\r\n",
        "X-Version: 2\r\nX-Version: 1\r\n",
        "x-version: 1\r\nX-VERSION: 2\r\n",
    ] {
        assert_eq!(hdr(repeated), "400", "{repeated:?}");
    }
    assert_eq!(hdr("X-Version: 2\r\nX-Version: 2\r\n"), "v2");
    // Both values outside the condition: every reading picks the catch-all.
    assert_eq!(hdr("X-Version: 1\r\nX-Version: 3\r\n"), "rest");
    assert_eq!(s.get(HOST, "/api/x?version=beta"), "beta");
    assert_eq!(s.get(HOST, "/api/x?version=1&version=beta"), "400");
    assert_eq!(s.get(HOST, "/api/x?version=beta&version=1"), "400");
    assert_eq!(s.get(HOST, "/api/x?version=beta&version=bet%61"), "beta");
    assert_eq!(s.get(HOST, "/api/x?other=1&other=2"), "rest");
    assert_eq!(s.up("rest").request_count(), 3);
}

/// A route for GET takes HEAD: frameworks run their GET handler for a HEAD, so a HEAD that fell
/// through to the catch-all would run it past the GET route's plugins.
#[test]
fn a_get_route_takes_head() {
    let s = Setup::new(
        &["read", "rest"],
        r#"
[[routes]]
name = "read"
service = "read"
paths = ["/report"]
methods = ["GET"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    assert_eq!(s.who("HEAD", HOST, "/report", ""), "read");
    assert_eq!(s.up("read").last_request().method, "HEAD");
    assert_eq!(s.get(HOST, "/report"), "read");
    assert_eq!(
        s.who("POST", HOST, "/report", "Content-Length: 0\r\n"),
        "rest"
    );
    assert_eq!(s.up("rest").request_count(), 1);
}

/// A regex route strips whole segments: `/docs/v1../admin` against `~/docs/v\d+` goes up as
/// `/v1../admin`, not `/../admin` (a dot segment an upstream resolves, past `/admin`'s plugins).
#[test]
fn regex_strip_path_strips_whole_segments() {
    let s = Setup::new(
        &["docs"],
        r#"
[[routes]]
name = "docs"
service = "docs"
paths = ["~/docs/v\\d+"]
strip_path = true
"#,
    );
    assert_eq!(s.get(HOST, "/docs/v1/guide"), "docs");
    assert_eq!(s.up("docs").last_request().target, "/guide");
    assert_eq!(s.get(HOST, "/docs/v1../admin/secret"), "docs");
    assert_eq!(s.up("docs").last_request().target, "/v1../admin/secret");
    assert_eq!(s.get(HOST, "/docs/v1admin"), "docs");
    assert_eq!(s.up("docs").last_request().target, "/v1admin");
}

/// An exact route takes its path with one trailing '/' more or less: Express (by default) and
/// Flask (with strict_slashes off) serve `/secret/` as `/secret`, which used to fall through to a
/// catch-all past the exact route's plugins. A route spelled like the request still wins.
#[test]
fn an_exact_route_takes_one_trailing_slash_more_or_less() {
    let s = Setup::new(
        &["secret", "dir", "dir-bare", "rest"],
        r#"
[[routes]]
name = "secret"
service = "secret"
paths = ["=/secret"]
strip_path = false

[[routes]]
name = "dir"
service = "dir"
paths = ["=/dir/"]
strip_path = false

[[routes]]
name = "dir-bare"
service = "dir-bare"
paths = ["=/dir"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    for p in [
        "/secret",
        "/secret/",
        "/secret/.",
        "/secret//",
        "/secret;x/",
    ] {
        assert_eq!(s.get(HOST, p), "secret", "{p}");
    }
    assert_eq!(s.get(HOST, "/secret/x"), "rest");
    assert_eq!(s.get(HOST, "/dir/"), "dir");
    assert_eq!(s.get(HOST, "/dir"), "dir-bare");
    // `%2F` read as '/' would select the exact route: refused, as any such path.
    assert_eq!(s.get(HOST, "/secret%2F"), "400");
}

/// A method-override header (`X-HTTP-Method-Override`, `X-HTTP-Method`, `X-Method-Override`) that
/// would select another route is a 400: Flask's and Express's method-override middleware run the
/// handler of the method it names, so `GET /items` + `X-HTTP-Method-Override: DELETE` reached the
/// DELETE handler through the public catch-all, past the DELETE route's key-auth (found by a probe).
#[test]
fn a_method_override_that_selects_another_route_is_400() {
    let s = Setup::new(
        &["writes", "rest"],
        r#"
[[routes]]
name = "writes"
service = "writes"
paths = ["/items"]
methods = ["DELETE", "PUT"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    for header in [
        "X-HTTP-Method-Override: DELETE",
        "x-http-method: put",
        "X-Method-Override: Delete",
    ] {
        assert_eq!(
            s.who("GET", HOST, "/items/1", &format!("{header}\r\n")),
            "400",
            "{header}"
        );
    }
    assert_eq!(
        s.who(
            "POST",
            HOST,
            "/items/1",
            "X-HTTP-Method-Override: DELETE\r\nContent-Length: 0\r\n"
        ),
        "400"
    );
    // Overrides that route the same go up as they came (a method no route names included).
    for same in ["GET", "FROB"] {
        assert_eq!(
            s.who(
                "GET",
                HOST,
                "/items/1",
                &format!("X-HTTP-Method-Override: {same}\r\n")
            ),
            "rest"
        );
    }
    assert_eq!(
        s.who(
            "DELETE",
            HOST,
            "/items/1",
            "X-HTTP-Method-Override: PUT\r\n"
        ),
        "writes"
    );
    assert_eq!(
        s.up("writes")
            .last_request()
            .header("x-http-method-override"),
        Some("PUT")
    );
    assert_eq!(s.up("rest").request_count(), 2);
}

/// A route that lists HEAD itself takes HEAD before a route for GET does, whatever their order.
#[test]
fn an_explicit_head_route_wins_over_a_get_route() {
    let s = Setup::new(
        &["get", "head"],
        r#"
[[routes]]
name = "get"
service = "get"
paths = ["/r"]
methods = ["GET"]
strip_path = false

[[routes]]
name = "head"
service = "head"
paths = ["/r"]
methods = ["HEAD"]
strip_path = false
"#,
    );
    assert_eq!(s.who("HEAD", HOST, "/r", ""), "head");
    assert_eq!(s.get(HOST, "/r"), "get");
}

/// Repeated header and query parameter read in mixed ways (the last header with the first
/// parameter, as some upstreams do): refused when that reading selects another route.
#[test]
fn mixed_readings_of_repeated_inputs_are_checked_too() {
    let s = Setup::new(
        &["admin", "rest"],
        r#"
[[routes]]
name = "admin"
service = "admin"
paths = ["/"]
headers = { x-mode = ["admin"] }
query = { v = ["2"] }

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
"#,
    );
    assert_eq!(
        s.who(
            "GET",
            HOST,
            "/x?v=2&v=1",
            "X-Mode: other\r\nX-Mode: admin\r\n"
        ),
        "400"
    );
    assert_eq!(s.who("GET", HOST, "/x?v=2", "X-Mode: admin\r\n"), "admin");
}

/// The other readings are checked in every combination: a method override with a `%2F` path or
/// with `;parameters` against a regex route, and `_method` in the query (Express's
/// `methodOverride('_method')`). Each alone routed the same; together they did not (found in
/// review).
#[test]
fn alternative_readings_are_checked_in_combination() {
    let s = Setup::new(
        &["admin", "regex", "rest"],
        r#"
[[routes]]
name = "admin"
service = "admin"
paths = ["/admin"]
methods = ["DELETE"]
strip_path = false

[[routes]]
name = "regex"
service = "regex"
paths = ["~/panel$"]
methods = ["DELETE"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    let who = |path: &str, headers: &str| s.who("GET", HOST, path, headers);
    assert_eq!(
        who("/admin%2Fusers", "X-HTTP-Method-Override: DELETE\r\n"),
        "400"
    );
    assert_eq!(who("/panel;x", "X-HTTP-Method-Override: DELETE\r\n"), "400");
    assert_eq!(who("/admin/users?_method=DELETE", ""), "400");
    assert_eq!(who("/admin/users?_method=delete&a=1", ""), "400");
    assert_eq!(who("/admin/users?%5Fmethod=DEL%45TE", ""), "400");
    // PHP (Laravel, Symfony) reads these names as `_method` too (found by a review).
    for q in [".method", "+_method", "%20_method"] {
        assert_eq!(who(&format!("/admin/users?{q}=DELETE"), ""), "400", "{q}");
    }
    // Two distinct overrides are refused outright (which one runs depends on the framework),
    // repeats are one.
    let two = "_method=PUT&_method=PATCH";
    assert_eq!(who(&format!("/other?{two}"), ""), "400");
    let same: String = (0..50).map(|_| "_method=GET&").collect();
    assert_eq!(who(&format!("/other?{same}"), ""), "rest");
    // Readings that all route alike pass.
    assert_eq!(who("/other?_method=GET", ""), "rest");
    assert_eq!(
        who("/other%2Fx;y", "X-HTTP-Method-Override: GET\r\n"),
        "rest"
    );
    assert_eq!(s.up("rest").request_count(), 3);
}

/// A catch-all that lists HEAD among its methods does not take HEAD from a more specific GET route
/// (HEAD runs `/admin`'s GET handler in Flask and Express): listing HEAD only breaks ties (found in
/// review).
#[test]
fn a_catch_all_listing_head_does_not_take_head_from_a_specific_get_route() {
    let s = Setup::new(
        &["admin", "rest"],
        r#"
[[routes]]
name = "admin"
service = "admin"
paths = ["/admin"]
methods = ["GET"]
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
methods = ["GET", "HEAD", "POST"]
strip_path = false
"#,
    );
    assert_eq!(s.who("HEAD", HOST, "/admin", ""), "admin");
    assert_eq!(s.who("HEAD", HOST, "/other", ""), "rest");
}

/// Query condition names as lenient frameworks read them: PHP trims leading spaces, cuts a name at
/// a NUL and reads `debug[]` as `debug`; qs (Express) reads `debug[]` and `debug[x]` as `debug`;
/// Rack 2 splits on `;`; ASP.NET ignores case; PHP reads `.`, space and an unmatched `[` in a name
/// as `_` (`debug.mode`, `debug+mode` and `debug[mode` are `debug_mode`, found by a review). A
/// request whose route depends on that reading is a 400, so `?%20debug=1` cannot reach the `debug`
/// route's handler through the catch-all (found by a probe with real PHP and Express upstreams).
#[test]
fn query_condition_names_read_leniently_must_route_alike() {
    let s = Setup::new(
        &["debug", "rest"],
        r#"
[[routes]]
name = "debug"
service = "debug"
paths = ["/report"]
query = { debug = ["*"] }
strip_path = false

[[routes]]
name = "debug-mode"
service = "debug"
paths = ["/mode"]
query = { debug_mode = ["*"] }
strip_path = false

[[routes]]
name = "rest"
service = "rest"
paths = ["/"]
strip_path = false
"#,
    );
    for q in [
        "?debug.mode=1",
        "?debug+mode=1",
        "?debug%20mode=1",
        "?debug%5Bmode=1",
        "?DEBUG_MODE=1",
    ] {
        assert_eq!(s.get(HOST, &format!("/mode{q}")), "400", "{q}");
    }
    assert_eq!(s.get(HOST, "/mode?debug_mode=1"), "debug");
    assert_eq!(s.get(HOST, "/mode?debug[mode]=1"), "rest");
    for q in [
        "?%20debug=1",
        "?+debug=1",
        "?debug[]=1",
        "?debug%5B%5D=1",
        "?debug[x]=1",
        "?Debug=1",
        "?debug%00x=1",
        "?x=1;debug=1",
    ] {
        assert_eq!(s.get(HOST, &format!("/report{q}")), "400", "{q}");
    }
    assert_eq!(s.get(HOST, "/report?debug=1"), "debug");
    assert_eq!(s.get(HOST, "/report?debug"), "debug");
    // Both spellings present: every reading picks the debug route.
    assert_eq!(s.get(HOST, "/report?debug=1&Debug=1"), "debug");
    for q in ["?debugger=1", "?other=1", "?x=1;y=2", ""] {
        assert_eq!(s.get(HOST, &format!("/report{q}")), "rest", "{q}");
    }
}
