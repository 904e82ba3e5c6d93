//! One test per class of config error: each asserts the exact `line:column`, the key path and a
//! fragment of the message, so error positions cannot silently drift. Fixtures are inline variants
//! of `BASE` (a minimal valid config) whose line numbers are listed next to it.

use std::path::Path;

use ringgate::config::{check, load, load_str, ConfigError};

/// A minimal valid config. Line numbers matter to the tests below.
const BASE: &str = r#"[server]
listen = ["127.0.0.1:8080"]

[[upstreams]]
name = "u"
targets = [{ target = "127.0.0.1:9001" }]

[[services]]
name = "s"
upstream = "u"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#;
// Lines: 1 [server] | 2 listen | 4 [[upstreams]] | 5 name | 6 targets | 8 [[services]] | 9 name
//        10 upstream | 12 [[routes]] | 13 name | 14 service | 15 paths

/// `BASE` with `from` replaced by `to` (which must occur exactly once).
fn base_with(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "fixture: {from:?} must occur once in BASE"
    );
    BASE.replacen(from, to, 1)
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text, "test.toml") {
        Ok(_) => panic!("config loaded but should not:\n{text}"),
        Err(e) => e,
    }
}

/// Exactly one error, at `line:col`, for `key`, whose message contains `fragment`.
#[track_caller]
fn expect_one(text: &str, line: usize, col: usize, key: &str, fragment: &str) {
    let errs = errors(text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        errs.len(),
        1,
        "expected one error, got:\n{}",
        shown.join("\n")
    );
    expect(&errs[0], line, col, key, fragment);
}

#[track_caller]
fn expect(e: &ConfigError, line: usize, col: usize, key: &str, fragment: &str) {
    assert_eq!(e.file, "test.toml", "{e}");
    assert_eq!((e.line, e.column, e.key.as_str()), (line, col, key), "{e}");
    assert!(
        e.message.contains(fragment),
        "message lacks {fragment:?}: {e}"
    );
}

#[test]
fn base_is_valid() {
    assert!(load_str(BASE, "test.toml").is_ok());
}

#[test]
fn display_format() {
    let e = &errors(&base_with("service = \"s\"", "service = \"x\""))[0];
    assert_eq!(
        e.to_string(),
        "test.toml:14:11: routes[0].service: no service named \"x\" (defined: \"s\")"
    );
}

#[test]
fn an_empty_file_is_an_error() {
    // A file truncated mid-rewrite must not reload into a gateway that routes nothing.
    for text in ["", "\n\n", "# only a comment\n"] {
        let e = errors(text);
        assert_eq!(e.len(), 1, "{text:?}: {e:?}");
        expect(&e[0], 1, 1, "(file)", "the config is empty");
    }
}

#[test]
fn a_file_with_no_routes_is_an_error() {
    // A file cut short after its [server] part (a rewrite caught by a reload) would otherwise
    // load into a gateway answering 404 to everything.
    let head = &BASE[..BASE.find("[[routes]]").unwrap_or(0)];
    assert!(
        head.contains("[server]") && !head.contains("[[routes]]"),
        "{head}"
    );
    expect_one(head, 1, 1, "routes", "defines no [[routes]]");
    // A misspelt `[[route]]` is the error shown, alone.
    let misspelt = BASE.replace("[[routes]]", "[[route]]");
    let errs = errors(&misspelt);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "route", "{}", errs[0]);
}

/// Duplicate targets are found by address, not spelling: a leading-zero port or another way to
/// write an IPv6 address is the same backend, which would get its weight twice.
#[test]
fn duplicate_targets_by_address() {
    for (first, second) in [
        ("127.0.0.1:9001", "127.0.0.1:09001"),
        ("[::1]:9001", "[0:0::1]:9001"),
        ("LocalHost:9001", "localhost:9001"),
    ] {
        expect_one(
            &base_with(
                "targets = [{ target = \"127.0.0.1:9001\" }]",
                &format!("targets = [{{ target = \"{first}\" }}, {{ target = \"{second}\" }}]"),
            ),
            6,
            40 + first.len(),
            "upstreams[0].targets[1].target",
            &format!("duplicate target {second:?} in this upstream"),
        );
    }
}

#[test]
fn syntax_error() {
    expect_one(
        &base_with("[[routes]]", "[[routes]"),
        12,
        9,
        "(syntax)",
        "invalid TOML",
    );
}

/// A value the parser refuses (an integer over i64, a bad escape, a malformed date) is a syntax
/// error, but the key it belongs to is known from the text: it is named, with the element index
/// of an array of tables.
#[test]
fn a_bad_value_names_its_key() {
    expect_one(
        &base_with(
            "[[routes]]",
            "[[routes]]\nmax_body_bytes = 99999999999999999999",
        ),
        13,
        18,
        "routes[0].max_body_bytes",
        "number too large",
    );
    expect_one(
        &format!("{BASE}\n[[routes]]\nname = \"s\"\npaths = [\"/s\"]\nservice = \"\\q\"\n"),
        20,
        14,
        "routes[1].service",
        "invalid escape",
    );
    // Inside a multi-line string, `x = …` is text, not a key.
    let e = errors(&base_with(
        "[[routes]]",
        "[[routes]]\ntags = \"\"\"\nx = y \\q\n\"\"\"",
    ));
    assert_eq!(e.first().map(|e| e.key.as_str()), Some("(syntax)"), "{e:?}");
    // Where the error is not after a `key =`, it stays a plain syntax error.
    expect_one(&format!("{BASE}\n= 1\n"), 17, 1, "(syntax)", "invalid key");
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    expect_one(
        &base_with("name = \"r\"", "name = \"r\"\nname = \"q\""),
        14,
        1,
        "(syntax)",
        "duplicate key `name`",
    );
}

#[test]
fn unknown_top_level_key() {
    // Top-level keys must come before the first [table] header (later ones belong to that table).
    expect_one(
        &format!("rutes = []\n{BASE}"),
        1,
        1,
        "rutes",
        "unknown top-level key `rutes` (did you mean `routes`?)",
    );
}

#[test]
fn unknown_nested_key() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"127.0.0.1:8080\"]\ntimeouts = { keepalivee = \"5s\" }",
    );
    expect_one(
        &text,
        3,
        14,
        "server.timeouts.keepalivee",
        "unknown field `keepalivee` (did you mean `keepalive`?)",
    );
}

#[test]
fn unknown_key_in_array_element() {
    let text = base_with(
        "{ target = \"127.0.0.1:9001\" }",
        "{ target = \"127.0.0.1:9001\", wieght = 5 }",
    );
    expect_one(
        &text,
        6,
        41,
        "upstreams[0].targets[0].wieght",
        "unknown field `wieght` (did you mean `weight`?), expected one of `target`, `weight`, `max_conns`",
    );
}

#[test]
fn wrong_type() {
    expect_one(
        &base_with("paths = [\"/\"]", "paths = \"/\""),
        15,
        9,
        "routes[0].paths",
        // The value is not repeated: the position shows it, and the message reaches logs and
        // POST /reload's answer, where a secret must not (`token = 98765432109876`).
        "invalid type: string, expected an array",
    );
    let errs = errors(&format!(
        "{BASE}\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken = 98765432109876\n"
    ));
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["test.toml:19:9: admin.token: invalid type: integer, expected a string"],
    );
}

#[test]
fn wrong_type_integer() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "max_headers = \"lots\"");
    expect_one(&text, 2, 15, "server.max_headers", "expected an integer");
}

#[test]
fn missing_required_key() {
    expect_one(
        &base_with("service = \"s\"\n", ""),
        12,
        1,
        "routes[0]",
        "missing field `service`",
    );
}

#[test]
fn bad_duration_without_unit() {
    let text = base_with(
        "upstream = \"u\"",
        "upstream = \"u\"\nread_timeout = \"30\"",
    );
    expect_one(
        &text,
        11,
        16,
        "services[0].read_timeout",
        "\"30\" has no unit",
    );
}

#[test]
fn bad_duration_negative() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "drain_timeout = \"-1s\"");
    expect_one(&text, 2, 17, "server.drain_timeout", "negative");
}

#[test]
fn bad_duration_integer() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "drain_timeout = 30");
    expect_one(
        &text,
        2,
        17,
        "server.drain_timeout",
        "expected a duration string with a unit",
    );
}

#[test]
fn zero_duration() {
    let text = base_with(
        "upstream = \"u\"",
        "upstream = \"u\"\nconnect_timeout = \"0ms\"",
    );
    expect_one(
        &text,
        11,
        19,
        "services[0].connect_timeout",
        "must be greater than zero",
    );
}

#[test]
fn keepalive_zero_is_allowed() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "timeouts.keepalive = \"0s\"",
    );
    let cfg = load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(cfg.server.timeouts.keepalive.is_zero());
}

/// `upstream_retry` sets services' `retry_timeout`; `"0s"` lifts it, there or per service.
#[test]
fn retry_timeout_defaults_and_zero_means_no_limit() {
    let text = base_with(
        "upstream = \"u\"",
        "upstream = \"u\"\n\n[[services]]\nname = \"t\"\nupstream = \"u\"\nretry_timeout = \"0s\"\n\n[[services]]\nname = \"v\"\nupstream = \"u\"\nretry_timeout = \"2s\"",
    )
    .replace(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"127.0.0.1:8080\"]\ntimeouts.upstream_retry = \"10s\"",
    );
    let cfg = load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e:?}"));
    let windows: Vec<_> = cfg.services.iter().map(|s| s.retry_timeout).collect();
    assert_eq!(
        windows,
        [
            Some(std::time::Duration::from_secs(10)),
            None,
            Some(std::time::Duration::from_secs(2))
        ]
    );
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "timeouts.upstream_retry = \"0s\"",
    );
    let cfg = load_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(cfg.services[0].retry_timeout, None, "no limit by default");
    expect_one(
        &base_with("upstream = \"u\"", "upstream = \"u\"\nretry_timeout = 5"),
        11,
        17,
        "services[0].retry_timeout",
        "duration",
    );
}

#[test]
fn bad_size() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "max_body_bytes = \"10mb\"");
    expect_one(&text, 2, 18, "server.max_body_bytes", "unknown unit \"mb\"");
}

#[test]
fn dangling_service_reference() {
    expect_one(
        &base_with("service = \"s\"", "service = \"nope\""),
        14,
        11,
        "routes[0].service",
        "no service named \"nope\" (defined: \"s\")",
    );
}

#[test]
fn dangling_upstream_reference() {
    expect_one(
        &base_with("upstream = \"u\"", "upstream = \"nope\""),
        10,
        12,
        "services[0].upstream",
        "no upstream named \"nope\" (defined: \"u\")",
    );
}

#[test]
fn duplicate_route_name() {
    let text = format!("{BASE}\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/b\"]\n");
    expect_one(
        &text,
        18,
        8,
        "routes[1].name",
        "duplicate route name \"r\": already used by routes[0]",
    );
}

#[test]
fn duplicate_upstream_name() {
    let text = base_with(
        "[[services]]",
        "[[upstreams]]\nname = \"u\"\ntargets = [{ target = \"127.0.0.1:9002\" }]\n\n[[services]]",
    );
    expect_one(
        &text,
        9,
        8,
        "upstreams[1].name",
        "duplicate upstream name \"u\"",
    );
}

/// The wildcard and a specific address of one family on the same port cannot both bind: an error
/// at the later entry (before, `check` passed it and `run` failed with "another process listens").
/// IPv4 and IPv6 wildcards go together (IPv6 listeners are IPv6-only).
#[test]
fn overlapping_listen_addresses() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"0.0.0.0:8080\", \"127.0.0.1:8080\"]",
    );
    expect_one(
        &text,
        2,
        27,
        "server.listen[1]",
        "overlaps \"0.0.0.0:8080\"",
    );
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"[::1]:8080\", \"[::]:8080\"]",
    );
    expect_one(&text, 2, 25, "server.listen[1]", "overlaps \"[::1]:8080\"");
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"[::ffff:10.0.0.5]:8080\"]",
    );
    expect_one(
        &text,
        2,
        11,
        "server.listen[0]",
        "write it as \"10.0.0.5:8080\"",
    );
    for fine in [
        "listen = [\"0.0.0.0:8080\", \"[::]:8080\"]",
        "listen = [\"127.0.0.1:8080\", \"127.0.0.2:8080\", \"[::1]:8080\"]",
        "listen = [\"0.0.0.0:8080\", \"127.0.0.1:8081\"]",
    ] {
        let text = base_with("listen = [\"127.0.0.1:8080\"]", fine);
        assert!(load_str(&text, "test.toml").is_ok(), "{fine}");
    }
}

#[test]
fn workers_zero() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "workers = 0");
    expect_one(
        &text,
        2,
        11,
        "server.workers",
        "workers must be 1..=1024, got 0",
    );
}

#[test]
fn workers_not_auto() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "workers = \"all\"");
    expect_one(
        &text,
        2,
        11,
        "server.workers",
        "expected \"auto\" or a number of workers",
    );
}

#[test]
fn max_headers_over_cap() {
    let text = base_with("listen = [\"127.0.0.1:8080\"]", "max_headers = 1000");
    expect_one(&text, 2, 15, "server.max_headers", "must be 1..=256");
}

#[test]
fn uri_limit_above_header_limit() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "max_header_bytes = \"2k\"\nmax_uri_bytes = \"4k\"",
    );
    expect_one(
        &text,
        3,
        17,
        "server.max_uri_bytes",
        "must not exceed max_header_bytes (2048)",
    );
}

#[test]
fn pool_max_idle_too_large() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "pool = { max_idle = 20000 }",
    );
    expect_one(&text, 2, 21, "server.pool.max_idle", "must be 0..=10000");
}

#[test]
fn weight_zero() {
    let text = base_with(
        "{ target = \"127.0.0.1:9001\" }",
        "{ target = \"127.0.0.1:9001\", weight = 0 }",
    );
    expect_one(
        &text,
        6,
        50,
        "upstreams[0].targets[0].weight",
        "weight must be 1..=65535, got 0",
    );
}

#[test]
fn target_without_port() {
    let text = base_with("127.0.0.1:9001", "127.0.0.1");
    expect_one(
        &text,
        6,
        23,
        "upstreams[0].targets[0].target",
        "has no port",
    );
}

/// A target written as a url used to be blamed on missing IPv6 brackets (its host part has a ':').
#[test]
fn target_with_a_scheme() {
    let text = base_with("\"127.0.0.1:9001\"", "\"http://127.0.0.1:9001\"");
    expect_one(
        &text,
        6,
        23,
        "upstreams[0].targets[0].target",
        "without a scheme",
    );
    let errs = errors(&text);
    assert!(!errs[0].message.contains("IPv6"), "{}", errs[0]);
}

#[test]
fn upstream_without_targets() {
    let text = base_with("[{ target = \"127.0.0.1:9001\" }]", "[]");
    expect_one(&text, 6, 11, "upstreams[0].targets", "at least one target");
}

#[test]
fn bad_listen() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = [\"127.0.0.1:8080\", \"localhost:80\"]",
    );
    expect_one(
        &text,
        2,
        29,
        "server.listen[1]",
        "is not an ip:port address",
    );
}

#[test]
fn empty_listen() {
    expect_one(
        &base_with("[\"127.0.0.1:8080\"]", "[]"),
        2,
        10,
        "server.listen",
        "at least one address",
    );
}

#[test]
fn regex_does_not_compile() {
    let text = base_with("paths = [\"/\"]", "paths = [\"/\", \"~/v(\\\\d+\"]");
    expect_one(
        &text,
        15,
        15,
        "routes[0].paths[1]",
        "invalid regex `/v(\\d+`: unclosed group",
    );
}

#[test]
fn header_regex_does_not_compile() {
    let text = base_with("paths = [\"/\"]", "headers = { X-Version = \"~[\" }");
    expect_one(
        &text,
        15,
        25,
        "routes[0].headers.X-Version",
        "invalid regex `[`",
    );
}

#[test]
fn path_without_slash() {
    let text = base_with("paths = [\"/\"]", "paths = [\"api\"]");
    expect_one(
        &text,
        15,
        10,
        "routes[0].paths[0]",
        "must start with '/' (prefix), '=/' (exact) or '~' (regex)",
    );
}

#[test]
fn path_with_an_invalid_escape() {
    // A request with `/100%` gets a 400, so this route could never match.
    let text = base_with("paths = [\"/\"]", "paths = [\"/ok%2F\", \"=/100%\"]");
    expect_one(
        &text,
        15,
        20,
        "routes[0].paths[1]",
        "can never match: '%' must start an escape of two hex digits",
    );
}

#[test]
fn bad_host_wildcard() {
    let text = base_with("paths = [\"/\"]", "hosts = [\"api.*.com\"]");
    expect_one(&text, 15, 10, "routes[0].hosts[0]", "leading `*.`");
}

#[test]
fn bad_method() {
    let text = base_with("paths = [\"/\"]", "methods = [\"GET\", \"GE T\"]");
    expect_one(
        &text,
        15,
        19,
        "routes[0].methods[1]",
        "not a valid HTTP method",
    );
    // A digit passes as a token but no request can carry it (the parser refuses it).
    let text = base_with("paths = [\"/\"]", "methods = [\"GET2\"]");
    expect_one(
        &text,
        15,
        12,
        "routes[0].methods[0]",
        "letters, '-' and '_'",
    );
}

#[test]
fn route_without_matchers() {
    expect_one(
        &base_with("paths = [\"/\"]\n", ""),
        12,
        1,
        "routes[0]",
        "needs at least one of `hosts`, `paths`, `methods`, `headers`",
    );
}

#[test]
fn route_with_only_empty_matchers() {
    expect_one(
        &base_with("paths = [\"/\"]", "paths = []"),
        12,
        1,
        "routes[0]",
        "needs at least one of",
    );
}

#[test]
fn url_with_https_and_missing_ca_file() {
    // https urls are supported; the CA file is read at load, so a missing one is a located error.
    let text = base_with(
        "upstream = \"u\"",
        "url = \"https://127.0.0.1:9443\"\nca_file = \"/nonexistent/ca.pem\"",
    );
    expect_one(
        &text,
        11,
        11,
        "services[0].ca_file",
        "cannot read certificate file /nonexistent/ca.pem",
    );
}

#[test]
fn url_with_query() {
    let text = base_with("upstream = \"u\"", "url = \"http://127.0.0.1:9001/a?b=c\"");
    expect_one(&text, 10, 7, "services[0].url", "cannot have a query");
}

#[test]
fn service_with_url_and_upstream() {
    let text = base_with(
        "upstream = \"u\"",
        "upstream = \"u\"\nurl = \"http://127.0.0.1:9001\"",
    );
    expect_one(
        &text,
        10,
        12,
        "services[0].upstream",
        "either `url` or `upstream`, not both",
    );
}

#[test]
fn service_path_with_url() {
    let text = base_with(
        "upstream = \"u\"",
        "url = \"http://127.0.0.1:9001\"\npath = \"/x\"",
    );
    expect_one(
        &text,
        11,
        8,
        "services[0].path",
        "`path` is only allowed with `upstream`",
    );
}

/// A service base path goes upstream as written, in front of the normalized request path; one
/// with a bad escape or dot segments used to be accepted and sent on as is.
#[test]
fn service_path_must_be_normalized() {
    for (path, fragment) in [
        ("/100%", "two hex digits"),
        ("/a/../b", "normalized"),
        ("/a/./b", "normalized"),
        ("/a//b", "normalized"),
    ] {
        expect_one(
            &base_with(
                "upstream = \"u\"",
                &format!("upstream = \"u\"\npath = \"{path}\""),
            ),
            11,
            8,
            "services[0].path",
            fragment,
        );
    }
    expect_one(
        &base_with(
            "upstream = \"u\"",
            "url = \"http://127.0.0.1:9001/v1/../v2\"",
        ),
        10,
        7,
        "services[0].url",
        "normalized",
    );
    // Trailing slashes are still just trimmed; valid escapes stay.
    for ok in ["/a/", "/a//", "/a%2Fb", "/%7Euser"] {
        let text = base_with(
            "upstream = \"u\"",
            &format!("upstream = \"u\"\npath = \"{ok}\""),
        );
        assert!(load_str(&text, "test.toml").is_ok(), "{ok}");
    }
}

#[test]
fn priority_out_of_range() {
    let text = base_with("paths = [\"/\"]", "paths = [\"/\"]\npriority = 3000000000");
    expect_one(&text, 16, 12, "routes[0].priority", "32-bit");
}

#[test]
fn entity_array_of_wrong_type() {
    expect_one(
        &format!(
            "routes = 3\n{}",
            &BASE[..BASE.find("[[routes]]").unwrap_or(0)]
        ),
        1,
        10,
        "routes",
        "expected an array of tables, written [[routes]]",
    );
}

#[test]
fn unreadable_file() {
    let errs = match load(Path::new("config/does-not-exist.toml")) {
        Ok(_) => panic!("loaded a missing file"),
        Err(e) => e,
    };
    assert_eq!(errs.len(), 1);
    assert_eq!((errs[0].line, errs[0].column), (0, 0));
    assert!(errs[0].message.contains("cannot read"), "{}", errs[0]);
    assert!(errs[0]
        .to_string()
        .starts_with("config/does-not-exist.toml: (file): cannot read"));
}

#[test]
fn check_output_lists_every_error() {
    let out = check(Path::new("config/does-not-exist.toml")).unwrap_err();
    assert!(out.ends_with("1 error\n"), "{out}");
}

/// Independent mistakes in different entities and of different kinds are all reported, in file order.
#[test]
fn many_errors_at_once() {
    let text = r#"[server]
workers = 0
listen = ["127.0.0.1:8080", "nope"]
bogus = true

[[upstreams]]
name = "u"
targets = [{ target = "127.0.0.1:9001", weight = 0 }]

[[services]]
name = "s"
upstream = "missing"

[[services]]
name = "t"
url = "ftp://127.0.0.1"

[[routes]]
name = "r"
service = "s"
paths = ["/", "~("]

[[routes]]
name = "r"
service = "gone"

[[routes]]
name = "q"
service = "t"
pathz = ["/"]
"#;
    let errs = errors(text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let want = [
        // `bogus` fails the whole [server] element at decode time; its other problems are not seen.
        (4, 1, "server.bogus"),
        (8, 50, "upstreams[0].targets[0].weight"),
        (12, 12, "services[0].upstream"),
        (16, 7, "services[1].url"),
        (21, 15, "routes[0].paths[1]"),
        (23, 1, "routes[1]"),
        (24, 8, "routes[1].name"),
        (25, 11, "routes[1].service"),
        (30, 1, "routes[2].pathz"),
    ];
    let got: Vec<(usize, usize, &str)> = errs
        .iter()
        .map(|e| (e.line, e.column, e.key.as_str()))
        .collect();
    assert_eq!(got, want, "\n{}", shown.join("\n"));
}

/// Semantic problems in `[server]` are all reported too (not only the first).
#[test]
fn many_server_errors_at_once() {
    let text = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        "listen = []\nworkers = 2000\nmax_headers = 0\nmax_header_bytes = 10\ndrain_timeout = \"0s\"",
    );
    let got: Vec<String> = errors(&text).iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        got,
        [
            "server.listen",
            "server.workers",
            "server.max_headers",
            "server.max_header_bytes",
            "server.drain_timeout"
        ]
    );
}

/// Every mistake inside one table is reported in one run (serde stops at the first; the decoder
/// takes the offending key out and goes on), each at its own key, and a required key taken out
/// for a wrong type is not reported missing as well; a genuinely missing one still is.
#[test]
fn every_mistake_in_one_table_is_reported() {
    let text = base_with(
        "name = \"r\"\nservice = \"s\"\npaths = [\"/\"]",
        "name = 5\nservice = \"s\"\npaths = [\"/\"]\nstrip_pth = true\nmethods = \"GET\"",
    );
    let errs = errors(&text);
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["routes[0].name", "routes[0].strip_pth", "routes[0].methods"],
        "{errs:?}"
    );
    let text = base_with("service = \"s\"\n", "servce = \"s\"\n");
    let keys: Vec<String> = errors(&text).iter().map(|e| e.key.clone()).collect();
    assert_eq!(keys, ["routes[0]", "routes[0].servce"], "{keys:?}");
}

/// A reference to an entity that failed to decode is not reported again as dangling.
#[test]
fn no_follow_on_errors() {
    let text = base_with("upstream = \"u\"", "upstream = \"u\"\ntypo = 1");
    expect_one(&text, 11, 1, "services[0].typo", "unknown field `typo`");
    // Nor a reference to one whose name is invalid: the name is the one error.
    let text = base_with("name = \"s\"", "name = \"s s\"").replace("\"s\"", "\"s s\"");
    expect_one(&text, 9, 8, "services[0].name", "not a valid service name");
}

/// Mangled versions of the demo config (truncated, lines dropped, bytes replaced, values swapped for
/// odd ones) must produce errors or a config, never a panic, and every error must have a position.
#[test]
fn mangled_demo_never_panics() {
    let demo = std::fs::read_to_string("config/ringgate.toml").unwrap_or_default();
    assert!(!demo.is_empty());
    let mut variants: Vec<String> = Vec::new();
    // Truncations (every third char boundary keeps the debug-build test under a few seconds).
    for (i, _) in demo.char_indices().step_by(3) {
        variants.push(demo[..i].to_owned());
    }
    // Every line dropped, and every line duplicated.
    let lines: Vec<&str> = demo.lines().collect();
    for i in 0..lines.len() {
        let mut v = lines.clone();
        v.remove(i);
        variants.push(v.join("\n"));
        let mut v = lines.clone();
        v.insert(i, lines[i]);
        variants.push(v.join("\n"));
    }
    // Pseudo-random byte replacements (deterministic LCG: reproducible failures).
    let junk = [
        "\"", "'", "[", "]", "{", "}", "=", "\n", "\\", "#", ".", ",", "0", "-", "~", "*", "é",
        "\u{0}",
    ];
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize % n.max(1)
    };
    let boundaries: Vec<usize> = demo.char_indices().map(|(i, _)| i).collect();
    for _ in 0..1000 {
        let at = boundaries[next(boundaries.len())];
        let end = boundaries
            .iter()
            .copied()
            .find(|&b| b > at)
            .unwrap_or(demo.len());
        let with = junk[next(junk.len())];
        variants.push(format!("{}{}{}", &demo[..at], with, &demo[end..]));
    }
    // Odd values in every value position.
    let odd = [
        "\"\"",
        "-1",
        "0",
        "99999999999999999999",
        "\"~(\"",
        "[]",
        "{}",
        "true",
        "1.5",
        "\"0s\"",
        "\"1g\"",
        "\"*\"",
        "[[]]",
        "1979-05-27",
    ];
    for (i, line) in lines.iter().enumerate() {
        if let Some((k, _)) = line.split_once(" = ") {
            for o in odd {
                let mut v = lines.clone();
                let replaced = format!("{k} = {o}");
                v[i] = &replaced;
                variants.push(v.join("\n"));
            }
        }
    }
    for text in &variants {
        if let Err(errs) = load_str(text, "mangled.toml") {
            assert!(!errs.is_empty());
            for e in &errs {
                assert!(
                    e.line >= 1 && e.column >= 1,
                    "unpositioned error {e} for:\n{text}"
                );
            }
        }
    }
}

/// A non-UTF-8 file is located at its first invalid byte, not reported as 0:0.
#[test]
fn non_utf8_file_is_located() {
    let dir = std::env::temp_dir().join(format!("ringgate-utf8-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("latin1.toml");
    // Line 3, column 15: an ISO-8859-1 'é' (0xe9) inside a string.
    std::fs::write(&file, b"[server]\nworkers = 1\nlisten = [\"caf\xe9\"]\n").unwrap();
    let errs = match load(&file) {
        Ok(_) => panic!("loaded a non-UTF-8 file"),
        Err(e) => e,
    };
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(errs.len(), 1);
    let e = &errs[0];
    assert_eq!((e.line, e.column, e.key.as_str()), (3, 15, "(file)"), "{e}");
    assert!(e.message.contains("not valid UTF-8"), "{e}");
    assert!(e.message.contains("0xe9"), "{e}");
}

/// `BASE` with `[upstreams.health.*]` lines after the upstream's targets (line 6): the table header
/// is line 7, its first key line 8.
fn with_health(table: &str, body: &str) -> String {
    base_with(
        "targets = [{ target = \"127.0.0.1:9001\" }]\n",
        &format!(
            "targets = [{{ target = \"127.0.0.1:9001\" }}]\n[upstreams.health.{table}]\n{body}\n"
        ),
    )
}

#[test]
fn health_settings_are_valid_and_defaulted() {
    let cfg = load_str(
        &with_health(
            "active",
            "path = \"/healthz\"\ninterval = \"250ms\"\nhealthy_statuses = [200, 204]\nhost = \"api.local\"",
        ),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let h = &cfg.upstreams[0].health;
    assert_eq!(h.passive.max_fails, 3, "passive health is on by default");
    assert_eq!(h.passive.fail_timeout, std::time::Duration::from_secs(10));
    let a = h.active.as_ref().expect("active");
    assert_eq!(a.path, "/healthz");
    assert_eq!(a.interval, std::time::Duration::from_millis(250));
    assert_eq!((a.healthy_threshold, a.unhealthy_threshold), (2, 3));
    assert!(a.healthy_statuses.contains(204) && !a.healthy_statuses.contains(301));
    let plain = load_str(BASE, "test.toml").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(
        plain.upstreams[0].health.active.is_none(),
        "active is opt-in"
    );
}

#[test]
fn health_max_fails_out_of_range() {
    expect_one(
        &with_health("passive", "max_fails = 1001"),
        8,
        13,
        "upstreams[0].health.passive.max_fails",
        "max_fails must be 0..=1000, got 1001",
    );
}

#[test]
fn health_unknown_key_has_a_hint() {
    expect_one(
        &with_health("passive", "max_fail = 3"),
        8,
        1,
        "upstreams[0].health.passive.max_fail",
        "unknown field `max_fail` (did you mean `max_fails`?)",
    );
}

#[test]
fn health_zero_fail_timeout() {
    expect_one(
        &with_health("passive", "fail_timeout = \"0s\""),
        8,
        16,
        "upstreams[0].health.passive.fail_timeout",
        "must be greater than zero",
    );
}

#[test]
fn health_bad_status_is_located_at_its_index() {
    expect_one(
        &with_health("passive", "http_statuses = [502, 700]"),
        8,
        23,
        "upstreams[0].health.passive.http_statuses[1]",
        "a status must be 100..=599, got 700",
    );
}

/// A success status counted as a failure, or a probe flood, is refused.
#[test]
fn health_nonsense_is_refused() {
    expect_one(
        &with_health("passive", "http_statuses = [500, 200]"),
        8,
        23,
        "upstreams[0].health.passive.http_statuses[1]",
        "200 is a success",
    );
    let errs = errors(&with_health("active", "path = \"/h\"\ninterval = \"1ms\""));
    assert!(
        errs.iter()
            .any(|e| e.key == "upstreams[0].health.active.interval"
                && e.message.contains("at least 100 ms")),
        "{errs:?}"
    );
}

#[test]
fn health_active_needs_a_path() {
    expect_one(
        &with_health("active", "interval = \"1s\""),
        7,
        1,
        "upstreams[0].health.active",
        "active health checks need a `path`",
    );
}

#[test]
fn health_active_path_must_start_with_a_slash() {
    expect_one(
        &with_health("active", "path = \"healthz\""),
        8,
        8,
        "upstreams[0].health.active.path",
        "it must start with '/'",
    );
}

#[test]
fn health_active_threshold_zero() {
    expect_one(
        &with_health("active", "path = \"/h\"\nunhealthy_threshold = 0"),
        9,
        23,
        "upstreams[0].health.active.unhealthy_threshold",
        "unhealthy_threshold must be 1..=100, got 0",
    );
}

/// `BASE` plus an `[access_log]` table (`[access_log]` on line 17, its first key on line 18).
fn with_access_log(body: &str) -> String {
    format!("{BASE}\n[access_log]\n{body}")
}

#[test]
fn access_log_path_problems_are_located() {
    expect_one(
        &with_access_log("path = \"/no-such-ringgate-dir/access.log\"\n"),
        18,
        8,
        "access_log.path",
        "directory /no-such-ringgate-dir does not exist",
    );
    let dir = std::env::temp_dir();
    expect_one(
        &with_access_log(&format!("path = \"{}\"\n", dir.display())),
        18,
        8,
        "access_log.path",
        "is a directory; name a file in it",
    );
    // The "directory" is a file.
    let file = std::env::temp_dir().join(format!("ringgate-al-{}.txt", std::process::id()));
    std::fs::write(&file, "x").unwrap();
    let errs = errors(&with_access_log(&format!(
        "path = \"{}/access.log\"\n",
        file.display()
    )));
    std::fs::remove_file(&file).ok();
    assert_eq!(errs.len(), 1, "{errs:?}");
    expect(&errs[0], 18, 8, "access_log.path", "is not a directory");
    expect_one(
        &with_access_log("path = \"\"\n"),
        18,
        8,
        "access_log.path",
        "must be a file path, \"stdout\" or \"stderr\"",
    );
    expect_one(
        &with_access_log("buffer_size = \"1m\"\n"),
        17,
        1,
        "access_log.path",
        "`path` is required",
    );
}

#[test]
fn access_log_value_problems_are_located() {
    expect_one(
        &with_access_log("path = \"stdout\"\nbuffer_size = 100\n"),
        19,
        15,
        "access_log.buffer_size",
        "between \"4k\" and \"16m\"",
    );
    expect_one(
        &with_access_log("path = \"stdout\"\nflush_interval = \"10ms\"\n"),
        19,
        18,
        "access_log.flush_interval",
        "between \"50ms\" and \"60s\"",
    );
    expect_one(
        &with_access_log("path = \"stdout\"\nflush_intervall = \"1s\"\n"),
        19,
        1,
        "access_log.flush_intervall",
        "did you mean `flush_interval`",
    );
    expect_one(
        &with_access_log("path = \"stderr\"\nbuffer_size = \"lots\"\n"),
        19,
        15,
        "access_log.buffer_size",
        "",
    );
    let cfg = load_str(
        &with_access_log("path = \"stderr\"\nbuffer_size = \"8k\"\nflush_interval = \"250ms\"\n"),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let log = cfg.access_log.expect("[access_log] compiled");
    assert_eq!(log.buffer_size, 8 << 10);
    assert_eq!(log.flush_interval, std::time::Duration::from_millis(250));
    assert!(load_str(BASE, "test.toml")
        .map(|c| c.access_log.is_none())
        .unwrap_or(false));
}

/// A relative path is relative to the config file's directory; one this process may not write is
/// refused (only observable without root, which may write anywhere).
#[test]
fn access_log_relative_and_unwritable_paths() {
    let dir = std::env::temp_dir().join(format!("ringgate-al-dir-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let conf = dir.join("gw.toml");
    std::fs::write(&conf, with_access_log("path = \"logs/access.log\"\n")).unwrap();
    let cfg = load(&conf).unwrap_or_else(|e| panic!("{e:?}"));
    let target = cfg.access_log.map(|l| l.target.to_string());
    assert_eq!(
        target,
        Some(dir.join("logs/access.log").display().to_string())
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.join("ro");
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).unwrap();
        std::fs::write(&conf, with_access_log("path = \"ro/access.log\"\n")).unwrap();
        let errs = load(&conf).err().unwrap_or_default();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].message.contains("is not writable"), "{}", errs[0]);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `BASE` with a TLS listener next to the plain one, then `tail` appended (from line 17 on).
fn tls_base_with(tail: &str) -> String {
    let listen = "listen = [\"127.0.0.1:8080\", { addr = \"127.0.0.1:8443\", tls = true }]";
    format!(
        "{}\n{tail}",
        base_with("listen = [\"127.0.0.1:8080\"]", listen)
    )
}

/// A storage directory that exists, is writable and is private (mode 0700).
fn private_dir() -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = std::env::temp_dir().join(format!("ringgate-acme-cfg-{}", std::process::id()));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    dir
}

/// `[acme]` (lines 17-19) with a storage directory that exists and is writable.
fn acme_table(extra: &str) -> String {
    format!(
        "[acme]\ndirectory = \"letsencrypt\"\nstorage = \"{}\"\n{extra}",
        private_dir().display()
    )
}

#[test]
fn an_acme_certificate_needs_the_acme_table() {
    expect_one(
        &tls_base_with("[[certificates]]\nacme = true\nsnis = [\"a.test\"]\n"),
        18,
        8,
        "certificates[0].acme",
        "needs an [acme] table",
    );
}

#[test]
fn an_acme_certificate_has_no_files_and_no_wildcards() {
    let text = tls_base_with(&format!(
        "{}\n[[certificates]]\nacme = true\ncert = \"x.pem\"\nsnis = [\"a.test\", \"*.b.test\"]\n",
        acme_table("")
    ));
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    expect(
        &errs[0],
        23,
        8,
        "certificates[0].cert",
        "cannot be combined with `acme = true`",
    );
    expect(
        &errs[1],
        24,
        19,
        "certificates[0].snis[1]",
        "can only be proven with the DNS-01 challenge",
    );
}

/// The errors of a TLS config whose `[acme]` has `acme_lines` (from line 20 on) and one ACME
/// certificate for `snis`.
fn acme_errors(acme_lines: &str, snis: &str) -> Vec<ConfigError> {
    errors(&tls_base_with(&format!(
        "{}{acme_lines}\n[[certificates]]\nacme = true\nsnis = [{snis}]\n",
        acme_table("")
    )))
}

#[test]
fn dns01_needs_an_executable_hook_and_allows_wildcards() {
    let wild = "\"*.b.test\", \"b.test\"";
    // Without a hook.
    let errs = acme_errors("challenge = \"dns-01\"\n", wild);
    assert_eq!(errs.len(), 1, "{errs:?}");
    expect(
        &errs[0],
        20,
        13,
        "acme.challenge",
        "dns-01 needs `dns_hook`",
    );
    // A hook that is not executable, a delay too long; the wildcard itself is fine.
    let errs = acme_errors(
        "challenge = \"dns-01\"\ndns_hook = \"/etc/passwd\"\ndns_delay = \"11m\"\n",
        wild,
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    expect(
        &errs[0],
        21,
        12,
        "acme.dns_hook",
        "is not an executable file",
    );
    expect(&errs[1], 22, 13, "acme.dns_delay", "at most");
    // A hook other users may rewrite would run as the gateway, next to its private keys.
    let open_hook = private_dir().join("open-hook.sh");
    std::fs::write(&open_hook, "#!/bin/sh\n").expect("hook");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_hook, std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
    }
    let errs = acme_errors(
        &format!(
            "challenge = \"dns-01\"\ndns_hook = \"{}\"\n",
            open_hook.display()
        ),
        "\"b.test\"",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    expect(&errs[0], 21, 12, "acme.dns_hook", "writable by other users");
    // Hook settings without dns-01.
    let errs = acme_errors("dns_hook = \"/bin/true\"\n", "\"b.test\"");
    assert_eq!(errs.len(), 1, "{errs:?}");
    expect(
        &errs[0],
        20,
        12,
        "acme.dns_hook",
        "only used with challenge = \"dns-01\"",
    );
    // A wildcard needs a domain under it.
    let errs = acme_errors(
        "challenge = \"dns-01\"\ndns_hook = \"/bin/true\"\n",
        "\"*.test\"",
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    expect(
        &errs[0],
        25,
        9,
        "certificates[0].snis[0]",
        "public DNS names",
    );
}

#[test]
fn an_acme_certificate_needs_names() {
    expect_one(
        &tls_base_with(&format!(
            "{}\n[[certificates]]\nacme = true\n",
            acme_table("")
        )),
        21,
        1,
        "certificates[0].snis",
        "needs `snis`",
    );
}

#[test]
fn a_file_certificate_needs_cert_and_key() {
    let errs = errors(&tls_base_with("[[certificates]]\nsnis = [\"a.test\"]\n"));
    assert_eq!(errs.len(), 2, "{errs:?}");
    expect(&errs[0], 17, 1, "certificates[0]", "missing `cert`");
    expect(&errs[1], 17, 1, "certificates[0]", "missing `key`");
}

#[test]
fn acme_settings_are_checked() {
    let text = format!(
        "{BASE}\n[acme]\ndirectory = \"http://ca.test/dir\"\nemail = \"nobody\"\nchallenge = \"dns-02\"\nrenew_before_days = 0\nstorage = \"/proc/version\"\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 5, "{errs:?}");
    expect(
        &errs[0],
        18,
        13,
        "acme.directory",
        "expected an https:// URL",
    );
    expect(&errs[1], 19, 9, "acme.email", "is not an email address");
    expect(
        &errs[2],
        20,
        13,
        "acme.challenge",
        "expected \"http-01\", \"tls-alpn-01\" or \"dns-01\"",
    );
    expect(
        &errs[3],
        21,
        21,
        "acme.renew_before_days",
        "must be 1..=365",
    );
    expect(&errs[4], 22, 11, "acme.storage", "is not a directory");
}

#[test]
fn the_acme_challenge_needs_a_listener_to_answer_it() {
    // http-01 with only a TLS listener: the CA's request to port 80 would find nothing.
    let listen = "listen = [{ addr = \"127.0.0.1:8443\", tls = true }]";
    let text = format!(
        "{}\n{}\n[[certificates]]\nacme = true\nsnis = [\"a.test\"]\n",
        base_with("listen = [\"127.0.0.1:8080\"]", listen),
        acme_table("")
    );
    expect_one(&text, 17, 1, "acme.challenge", "no listener can answer");
    // tls-alpn-01 on that listener is fine.
    let text = text.replace(
        "[[certificates]]",
        "challenge = \"tls-alpn-01\"\n\n[[certificates]]",
    );
    assert!(load_str(&text, "test.toml").is_ok());
}

#[test]
fn acme_names_and_storage_must_be_fit_for_a_public_ca() {
    // A single label or an underscore is refused by every public CA: said at load, not as an order
    // failing forever.
    let errs = acme_errors("", "\"localhost\", \"a_b.example.com\"");
    assert_eq!(errs.len(), 2, "{errs:?}");
    expect(
        &errs[0],
        23,
        9,
        "certificates[0].snis[0]",
        "public DNS names",
    );
    expect(
        &errs[1],
        23,
        22,
        "certificates[0].snis[1]",
        "public DNS names",
    );
    // Storage another user could write (where private keys are kept).
    let text = tls_base_with(&format!(
        "[acme]\ndirectory = \"letsencrypt\"\nstorage = \"{}\"\n\n[[certificates]]\nacme = true\nsnis = [\"a.example.com\"]\n",
        std::env::temp_dir().display()
    ));
    expect_one(&text, 19, 11, "acme.storage", "writable by other users");
}

#[test]
fn external_account_binding_takes_both_halves_and_base64url() {
    let text = format!("{BASE}\n{}", acme_table("eab_kid = \"kid-1\"\n"));
    expect_one(&text, 20, 11, "acme.eab_kid", "needs `eab_hmac_key` too");
    let text = format!(
        "{BASE}\n{}",
        acme_table("eab_kid = \"kid-1\"\neab_hmac_key = \"not base64!\"\n")
    );
    expect_one(&text, 21, 16, "acme.eab_hmac_key", "is not base64url");
    let text = format!(
        "{BASE}\n{}",
        acme_table("eab_kid = \"kid-1\"\neab_hmac_key = \"zWNDZM6eQGHWpSRTPal5eIUY\"\n")
    );
    let cfg = load_str(&text, "test.toml").expect("valid");
    let shown = format!("{:?}", cfg.acme);
    // Neither the key nor its decoded bytes (a derived Debug would list them).
    assert!(
        shown.contains("hmac_key: \"<redacted>\"") && !shown.contains("hmac_key: ["),
        "{shown}"
    );
}

/// A config or a file it names that is huge (a mistyped `/dev/zero`) is refused after
/// `MAX_FILE_BYTES`, not read until memory runs out; an empty `cert` and an encrypted key say
/// what is wrong.
#[test]
fn huge_files_empty_paths_and_encrypted_keys_are_refused_clearly() {
    let report = check(Path::new("/dev/zero")).expect_err("not a config");
    assert!(report.contains("larger than 64 MiB"), "{report}");
    let htpasswd = base_with(
        "[[routes]]",
        "[[plugins]]\nname = \"basic-auth\"\nconfig = { htpasswd_file = \"/dev/zero\" }\n\n[[routes]]",
    );
    let e = errors(&htpasswd);
    assert!(
        e.iter()
            .any(|e| e.key.ends_with("htpasswd_file") && e.message.contains("larger than 64 MiB")),
        "{e:?}"
    );
    let dir = std::env::temp_dir().join(format!("ringgate-enc-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("enc.key");
    std::fs::write(
        &key,
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    )
    .expect("write");
    let tls = base_with(
        "listen = [\"127.0.0.1:8080\"]",
        &format!(
            "listen = [{{ addr = \"127.0.0.1:8443\", tls = true }}]\n\n[[certificates]]\ncert = \"\"\nkey = \"{}\"",
            key.display()
        ),
    );
    let e = errors(&tls);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        e.iter()
            .any(|e| e.key.ends_with(".cert") && e.message.contains("`cert` is empty")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.key.ends_with(".key") && e.message.contains("is encrypted")),
        "{e:?}"
    );
}

/// An error quoting a huge value prints a line of bounded length.
#[test]
fn an_error_quoting_a_huge_value_is_clipped() {
    let big = "x".repeat(100_000);
    let e = errors(&base_with("name = \"s\"", &format!("name = \"s{big}!\"")));
    let line = e.first().map(ToString::to_string).unwrap_or_default();
    assert!(line.len() < 1_000, "{} bytes", line.len());
    assert!(line.contains("bytes in all)"), "{line}");
}

/// `algorithm` and the `hash_on` family: unknown values, missing companions, keys that would be
/// silently ignored under another algorithm.
#[test]
fn balancing_algorithm_errors() {
    let targets = "targets = [{ target = \"127.0.0.1:9001\" }]";
    let with = |extra: &str| base_with(targets, &format!("{targets}\n{extra}"));
    expect_one(
        &with("algorithm = \"random\""),
        7,
        13,
        "upstreams[0].algorithm",
        "expected one of \"round_robin\", \"least_conn\", \"consistent_hash\"",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\""),
        7,
        13,
        "upstreams[0].algorithm",
        "needs `hash_on`",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"header\""),
        8,
        11,
        "upstreams[0].hash_on",
        "hash_on = \"header\" needs `hash_on_header` (e.g. hash_on_header = \"X-User-Id\")",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"a b\""),
        9,
        18,
        "upstreams[0].hash_on_cookie",
        "\"a b\" is not a valid name",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"host\""),
        8,
        11,
        "upstreams[0].hash_on",
        "expected one of \"ip\", \"consumer\", \"header\", \"cookie\", \"query_arg\", \"path\"",
    );
    expect_one(
        &with("hash_on = \"ip\""),
        7,
        11,
        "upstreams[0].hash_on",
        "`hash_on` only applies with algorithm = \"consistent_hash\"",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"\nhash_on_cookie = \"sid\""),
        10,
        18,
        "upstreams[0].hash_on_cookie",
        "only applies with hash_on = \"cookie\"",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"ip\"\nhash_fallback = \"ip\""),
        9,
        17,
        "upstreams[0].hash_fallback",
        "only applies with a hash_on value a request can lack",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"path\"\nhash_fallback = \"random\""),
        9,
        17,
        "upstreams[0].hash_fallback",
        "expected one of \"round_robin\", \"ip\"",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"query_arg\""),
        8,
        11,
        "upstreams[0].hash_on",
        "hash_on = \"query_arg\" needs `hash_on_query_arg` (e.g. hash_on_query_arg = \"user\")",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"\nhash_on_query_arg = \"u\""),
        10,
        21,
        "upstreams[0].hash_on_query_arg",
        "only applies with hash_on = \"query_arg\"",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"path\"\nhash_on_cookie_path = \"/\""),
        9,
        23,
        "upstreams[0].hash_on_cookie_path",
        "only applies with hash_on = \"cookie\"",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"sid\"\nhash_on_cookie_path = \"/a;Domain=evil\""),
        10,
        23,
        "upstreams[0].hash_on_cookie_path",
        "\"/a;Domain=evil\" is not a cookie path",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"__host-sid\"\nhash_on_cookie_path = \"/app\""),
        10,
        23,
        "upstreams[0].hash_on_cookie_path",
        "a \"__host-sid\" cookie must have hash_on_cookie_path = \"/\"",
    );
    expect_one(
        &with(
            "algorithm = \"consistent_hash\"\nhash_on = \"query_arg\"\nhash_on_query_arg = \"a&b\"",
        ),
        9,
        21,
        "upstreams[0].hash_on_query_arg",
        "\"a&b\" is not a valid query parameter name",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"sid\"\nhash_on_cookie_path = \"/\"\nhash_fallback = \"ip\""),
        11,
        17,
        "upstreams[0].hash_fallback",
        "`hash_fallback` does not apply with `hash_on_cookie_path`: a request without the cookie is given one",
    );
    for ok in [
        "algorithm = \"least_conn\"",
        "algorithm = \"round_robin\"",
        "algorithm = \"consistent_hash\"\nhash_on = \"query_arg\"\nhash_on_query_arg = \"user[id]\"\nhash_fallback = \"ip\"",
        "algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"__Host-sid\"\nhash_on_cookie_path = \"/\"",
        "algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"sid\"\nhash_on_cookie_path = \"/app\"",
        "algorithm = \"consistent_hash\"\nhash_on = \"path\"\nhash_fallback = \"ip\"",
        "algorithm = \"consistent_hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"",
    ] {
        assert!(load_str(&with(ok), "test.toml").is_ok(), "{ok}");
    }
}

/// A misspelt `algorithm` or `hash_on` is one error, not also one for every key it would have used.
#[test]
fn a_misspelt_algorithm_is_one_error() {
    let targets = "targets = [{ target = \"127.0.0.1:9001\" }]";
    let with = |extra: &str| base_with(targets, &format!("{targets}\n{extra}"));
    expect_one(
        &with("algorithm = \"consistent-hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"\nhash_fallback = \"ip\""),
        7,
        13,
        "upstreams[0].algorithm",
        "\"consistent-hash\" is not valid",
    );
    expect_one(
        &with("algorithm = \"consistent_hash\"\nhash_on = \"headers\"\nhash_on_header = \"X-User\"\nhash_fallback = \"ip\""),
        8,
        11,
        "upstreams[0].hash_on",
        "\"headers\" is not valid",
    );
}

#[test]
fn max_conns_out_of_range() {
    expect_one(
        &base_with(
            "targets = [{ target = \"127.0.0.1:9001\" }]",
            "targets = [{ target = \"127.0.0.1:9001\", max_conns = 0 }]",
        ),
        6,
        53,
        "upstreams[0].targets[0].max_conns",
        "max_conns",
    );
}

/// A `max_conns` below the worker count cannot hold (each worker allows at least one request in
/// flight): it loads, with a warning that `check` prints (and `run` logs, at start and reload).
#[test]
fn max_conns_below_the_workers_is_a_warning() {
    let text = base_with(
        "targets = [{ target = \"127.0.0.1:9001\" }]",
        "targets = [{ target = \"127.0.0.1:9001\", max_conns = 3 }, { target = \"127.0.0.1:9002\", max_conns = 4 }]",
    )
    .replace("listen = [\"127.0.0.1:8080\"]", "listen = [\"127.0.0.1:8080\"]\nworkers = 4");
    let cfg = load_str(&text, "test.toml").expect("loads");
    assert_eq!(
        ringgate::config::worker_warnings(&cfg, 4),
        vec!["upstream \"u\" target \"127.0.0.1:9001\": max_conns = 3 is below the 4 workers; each worker allows at least 1 in flight, so up to 4 at once (a worker count that divides max_conns makes the limit exact)".to_owned()]
    );
    assert!(ringgate::config::worker_warnings(&cfg, 3).is_empty());
    let path = std::env::temp_dir().join(format!("ringgate-maxconns-{}.toml", std::process::id()));
    std::fs::write(&path, &text).expect("write");
    let out = check(&path);
    let _ = std::fs::remove_file(&path);
    let out = out.expect("check passes");
    assert!(
        out.starts_with("warning: upstream \"u\" target \"127.0.0.1:9001\": max_conns = 3 is below the 4 workers"),
        "{out}"
    );
    assert_eq!(out.matches("warning:").count(), 1, "{out}");
}
