//! `[[plugins]]` loading: valid forms compile into the model and per-route chains; each class of
//! mistake is reported once, at its exact `line:column`, with the key path and a clear message.

use ringgate::config::model::{
    Algorithm, LimitBy, Mode, Period, PluginConfig, PluginScope, Policy, RateLimitDef, RedisFailure,
};
use ringgate::config::{load_str, summary, ConfigError};
use ringgate::plugins::{compile_chains, Plugin};

/// Two routes on one service. Lines 1-18; plugins appended from line 19.
const BASE: &str = r#"[[upstreams]]
name = "u"
targets = [{ target = "127.0.0.1:9001" }]

[[services]]
name = "s"
upstream = "u"

[[routes]]
name = "r"
service = "s"
paths = ["/"]

[[routes]]
name = "r2"
service = "s"
paths = ["/two"]

"#;

fn with(plugins: &str) -> String {
    format!("{BASE}{plugins}")
}

fn errors(text: &str) -> Vec<ConfigError> {
    match load_str(text, "test.toml") {
        Ok(_) => panic!("config loaded but should not:\n{text}"),
        Err(e) => e,
    }
}

/// Exactly one error at `line:col` for `key` whose message contains `fragment`.
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
    let e = &errs[0];
    assert_eq!((e.line, e.column, e.key.as_str()), (line, col, key), "{e}");
    assert!(
        e.message.contains(fragment),
        "message lacks {fragment:?}: {e}"
    );
}

fn rl(text: &str) -> RateLimitDef {
    let cfg = load_str(text, "test.toml").unwrap_or_else(|e| panic!("{e:?}"));
    match &cfg.plugins[0].config {
        PluginConfig::RateLimiting(d) => d.clone(),
        other => panic!("not rate-limiting: {other:?}"),
    }
}

#[test]
fn defaults_and_kong_style_limits() {
    let d = rl(&with(
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = { second = 5, minute = 100 }\n",
    ));
    assert_eq!(d.algorithm, Algorithm::FixedWindow);
    assert_eq!(d.limits.len(), 2);
    assert_eq!((d.limits[0].period, d.limits[0].limit), (Period::Second, 5));
    assert_eq!(
        (d.limits[1].period, d.limits[1].limit),
        (Period::Minute, 100)
    );
    assert_eq!(d.limit_by, LimitBy::Consumer);
    assert_eq!(d.error_code, 429);
    assert_eq!(d.error_message, "API rate limit exceeded");
    assert!(!d.hide_client_headers);
    assert_eq!(d.mode, Mode::Enforce);
    assert_eq!(d.policy, Policy::Local);
    assert_eq!(d.max_keys, 100_000);
    assert_eq!(d.sync_interval.as_millis(), 5);
}

#[test]
fn token_bucket_both_spellings() {
    let t = rl(&with(
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = { algorithm = \"token_bucket\", average = 100, period = \"1m\", burst = 10 }\n",
    ));
    let b = t.bucket.unwrap();
    assert!((b.rate_per_ms - 100.0 / 60_000.0).abs() < 1e-12);
    assert_eq!(b.burst, 10);
    let a = rl(&with(
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = { algorithm = \"token_bucket\", rate_limit = 2.5, burst_limit = 5 }\n",
    ));
    let b = a.bucket.unwrap();
    assert!((b.rate_per_ms - 0.0025).abs() < 1e-12);
    assert_eq!(b.burst, 5);
}

#[test]
fn full_config_and_cluster() {
    let d = rl(&with(
        r#"[[plugins]]
name = "rate-limiting"
route = "r2"
[plugins.config]
algorithm = "sliding_window"
hour = 1000
limit_by = "header"
header_name = "X-Api-Key"
error_code = 503
error_message = "slow down"
hide_client_headers = true
mode = "shadow"
policy = "cluster"
on_redis_failure = "closed"
sync_interval = "10ms"
max_keys = 5000
redis = { url = "redis://127.0.0.1:6379/2", timeout = "20ms", prefix = "gw" }
"#,
    ));
    assert_eq!(d.algorithm, Algorithm::SlidingWindow);
    assert_eq!(d.limit_by, LimitBy::Header("x-api-key".into()));
    assert_eq!(d.error_code, 503);
    assert_eq!(d.mode, Mode::Shadow);
    assert_eq!(d.on_redis_failure, RedisFailure::Closed);
    match &d.policy {
        Policy::Cluster(r) => {
            assert_eq!(r.prefix, "gw");
            assert_eq!(r.timeout.as_millis(), 20);
        }
        p => panic!("{p:?}"),
    }
}

#[test]
fn chains_most_specific_scope_wins() {
    let text = with(
        r#"[[plugins]]
name = "rate-limiting"
config = { minute = 100 }

[[plugins]]
name = "rate-limiting"
service = "s"
config = { minute = 50 }

[[plugins]]
name = "rate-limiting"
route = "r2"
config = { minute = 10 }

[[plugins]]
name = "rate-limiting"
route = "r"
enabled = false
config = { minute = 1 }
"#,
    );
    let cfg = load_str(&text, "test.toml").unwrap();
    assert_eq!(cfg.plugins[0].scope, PluginScope::Global);
    assert_eq!(cfg.plugins[1].scope, PluginScope::Service(0));
    assert_eq!(cfg.plugins[2].scope, PluginScope::Route(1));
    let chains = compile_chains(&cfg);
    // Instances: 0 global, 1 service, 2 route r2 (the disabled one is not an instance).
    assert_eq!(&*chains[0], &[Plugin::RateLimiting { instance: 1 }]);
    assert_eq!(&*chains[1], &[Plugin::RateLimiting { instance: 2 }]);
    let s = summary(&cfg);
    assert!(
        s.contains("route r2") && s.contains("rate-limiting[route:r2](minute=10"),
        "{s}"
    );
    assert!(s.contains("rate-limiting[service:s](minute=50"), "{s}");
    // The algorithm shows: a sliding window is not a fixed one.
    let cfg = load_str(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { second = 20, algorithm = \"sliding_window\", limit_by = \"ip\" }\n"),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let s = summary(&cfg);
    assert!(s.contains("(second=20 by ip sliding)"), "{s}");
}

#[test]
fn global_only_applies_to_every_route() {
    let cfg = load_str(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { second = 1 }\n"),
        "test.toml",
    )
    .unwrap();
    let chains = compile_chains(&cfg);
    assert!(chains.iter().all(|c| c.len() == 1));
}

// Plugin entries start at line 19: `[[plugins]]` 19, `name` 20, then 21, 22...

#[test]
fn unknown_plugin_name() {
    expect_one(
        &with("[[plugins]]\nname = \"rate_limiting\"\nconfig = { minute = 1 }\n"),
        20,
        8,
        "plugins[0].name",
        "unknown plugin \"rate_limiting\" (did you mean `rate-limiting`?)",
    );
}

#[test]
fn unknown_config_key_is_located() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, minut = 2 }\n"),
        21,
        24,
        "plugins[0].config.minut",
        "did you mean `minute`",
    );
}

#[test]
fn wrong_type_in_config() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = \"100\" }\n"),
        21,
        21,
        "plugins[0].config.minute",
        "an integer",
    );
}

#[test]
fn no_limits_set() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { limit_by = \"ip\" }\n"),
        21,
        10,
        "plugins[0].config",
        "no limits set",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\n"),
        19,
        1,
        "plugins[0]",
        "needs a `config`",
    );
}

#[test]
fn limit_must_be_positive_and_ordered() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 0 }\n"),
        21,
        21,
        "plugins[0].config.minute",
        "must be 1..=",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { second = 10, minute = 5 }\n"),
        21,
        34,
        "plugins[0].config.minute",
        "lower than the limit per second",
    );
}

#[test]
fn header_limit_by_needs_header_name() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, limit_by = \"header\" }\n"),
        21,
        35,
        "plugins[0].config.limit_by",
        "needs `header_name`",
    );
    expect_one(
        &with(
            "[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, header_name = \"x\" }\n",
        ),
        21,
        38,
        "plugins[0].config.header_name",
        "only used with limit_by = \"header\"",
    );
}

#[test]
fn token_bucket_needs_one_spelling() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { algorithm = \"token_bucket\" }\n"),
        21,
        24,
        "plugins[0].config.algorithm",
        "token_bucket needs `average`",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { algorithm = \"token_bucket\", average = 5, rate_limit = 5 }\n"),
        21,
        66,
        "plugins[0].config.rate_limit",
        "one token bucket spelling",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { algorithm = \"token_bucket\", rate_limit = 5 }\n"),
        21,
        10,
        "plugins[0].config",
        "`burst_limit` (bucket size) is required",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 5, burst = 5 }\n"),
        21,
        32,
        "plugins[0].config.burst",
        "token bucket setting",
    );
}

#[test]
fn bad_enumerations() {
    expect_one(
        &with(
            "[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, mode = \"dry-run\" }\n",
        ),
        21,
        31,
        "plugins[0].config.mode",
        "expected one of \"enforce\", \"shadow\"",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, algorithm = \"leaky\" }\n"),
        21,
        36,
        "plugins[0].config.algorithm",
        "\"sliding_window\"",
    );
    expect_one(
        &with(
            "[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, limit_by = \"user\" }\n",
        ),
        21,
        35,
        "plugins[0].config.limit_by",
        "\"credential\"",
    );
}

#[test]
fn error_code_range() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, error_code = 200 }\n"),
        21,
        37,
        "plugins[0].config.error_code",
        "error_code must be 400..=599, got 200",
    );
}

#[test]
fn dangling_references_and_scopes() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nroute = \"nope\"\nconfig = { minute = 1 }\n"),
        21,
        9,
        "plugins[0].route",
        "no route named \"nope\" (defined: \"r\", \"r2\")",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nservice = \"x\"\nconfig = { minute = 1 }\n"),
        21,
        11,
        "plugins[0].service",
        "no service named \"x\"",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconsumer = \"alice\"\nconfig = { minute = 1 }\n"),
        21,
        12,
        "plugins[0].consumer",
        "no consumer with username \"alice\" (none are defined)",
    );
    expect_one(
        &with("[[plugins]]\nname = \"key-auth\"\nconsumer = \"alice\"\n"),
        21,
        12,
        "plugins[0].consumer",
        "\"key-auth\" cannot be attached to a consumer",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nroute = \"r\"\nservice = \"s\"\nconfig = { minute = 1 }\n"),
        22,
        11,
        "plugins[0].service",
        "either `route` or `service`",
    );
}

#[test]
fn duplicate_per_scope() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1 }\n\n[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 2 }\n"),
        24,
        8,
        "plugins[1].name",
        "already attached by plugins[0]",
    );
}

#[test]
fn cluster_needs_redis_and_local_rejects_redis_keys() {
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, policy = \"cluster\" }\n"),
        21,
        33,
        "plugins[0].config.policy",
        "needs redis = {",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, on_redis_failure = \"open\" }\n"),
        21,
        43,
        "plugins[0].config.on_redis_failure",
        "only applies to policy = \"cluster\"",
    );
    expect_one(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, policy = \"cluster\", redis = { url = \"http://x\" } }\n"),
        21,
        60,
        "plugins[0].config.redis.url",
        "not a supported Redis url",
    );
    // Urls the Redis client cannot parse used to pass `check` and then fail every connect.
    for (url, col) in [
        ("redis://127.0.0.1:99999", 60),
        ("redis://a b:6379", 60),
        ("redis://127.0.0.1:6379/abc", 60),
    ] {
        expect_one(
            &with(&format!("[[plugins]]\nname = \"rate-limiting\"\nconfig = {{ minute = 1, policy = \"cluster\", redis = {{ url = \"{url}\" }} }}\n")),
            21,
            col,
            "plugins[0].config.redis.url",
            "not a usable Redis url",
        );
    }
    // Credentials go beside the url, never in it: the message does not repeat them.
    let text = with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 1, policy = \"cluster\", redis = { url = \"redis://default:Sup3rSecret@127.0.0.1:6379\" } }\n");
    expect_one(
        &text,
        21,
        60,
        "plugins[0].config.redis.url",
        "set `username` and `password`",
    );
    let shown: Vec<String> = errors(&text).iter().map(ToString::to_string).collect();
    assert!(!shown.concat().contains("Sup3rSecret"), "{shown:?}");
    let redis_with = |auth: &str| {
        with(&format!("[[plugins]]\nname = \"rate-limiting\"\nconfig = {{ minute = 1, policy = \"cluster\", redis = {{ url = \"redis://h:1\", {auth} }} }}\n"))
    };
    for (auth, key, why) in [
        (
            "username = \"u\"",
            "username",
            "needs `password` or `password_env`",
        ),
        ("password = \"\"", "password", "must not be empty"),
        (
            "password = \"a\", password_env = \"HOME\"",
            "password_env",
            "not both",
        ),
        (
            "password_env = \"RINGGATE_TEST_NO_SUCH_VARIABLE\"",
            "password_env",
            "is not set",
        ),
    ] {
        let errs = errors(&redis_with(auth));
        assert_eq!(errs.len(), 1, "{auth}: {errs:?}");
        assert_eq!(
            errs[0].key,
            format!("plugins[0].config.redis.{key}"),
            "{auth}"
        );
        assert!(errs[0].message.contains(why), "{auth}: {}", errs[0]);
    }
    let cfg = load_str(
        &redis_with("username = \"rl\", password = \"Sup3rSecret\""),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    match &cfg.plugins[0].config {
        PluginConfig::RateLimiting(d) => {
            let debug = format!("{d:?}");
            assert!(
                !debug.contains("Sup3rSecret") && debug.contains("Secret(***)"),
                "{debug}"
            );
        }
        other => panic!("not rate-limiting: {other:?}"),
    }
    // Token buckets share through Redis too.
    let cfg = load_str(
        &with("[[plugins]]\nname = \"rate-limiting\"\nconfig = { algorithm = \"token_bucket\", average = 1, policy = \"cluster\", redis = { url = \"redis://h:1\" } }\n"),
        "t.toml",
    );
    assert!(cfg.is_ok(), "{cfg:?}");
}

#[test]
fn many_errors_at_once_and_no_panic() {
    let text = with(
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 0, mode = \"x\", error_code = 1 }\n\n[[plugins]]\nname = \"bot-detection\"\n\n[[plugins]]\nname = 5\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 5, "{errs:#?}");
    for bad in [
        "plugins = 3\n",
        "plugins = [1]\n",
        "[plugins]\nname = \"rate-limiting\"\n",
        "[[plugins]]\nconfig = { minute = 1 }\n",
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = 7\n",
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = { redis = 1 }\n",
        "[[plugins]]\nname = \"rate-limiting\"\nconfig = { rate_limit = \"x\" }\n",
    ] {
        let errs = errors(&with(bad));
        assert!(!errs.is_empty());
        assert!(errs.iter().all(|e| e.line > 0), "{errs:#?}");
    }
}

/// Line 21 of `with(plugin)` for a three-line plugin entry; the error is at `needle` on that line.
#[track_caller]
fn expect_at_needle(plugin: &str, needle: &str, key: &str, fragment: &str) {
    let text = with(plugin);
    let line = text.lines().nth(20).unwrap_or_default();
    let col = line.find(needle).map_or(0, |c| c + 1);
    assert!(col > 0, "{needle:?} not on line 21: {line}");
    expect_one(&text, 21, col, key, fragment);
}

#[test]
fn header_plugins_compile_with_kong_priorities() {
    let cfg = load_str(
        &with(
            "[[plugins]]\nname = \"request-transformer\"\nconfig = { add = { headers = [\"X-A:1\"] } }\n\n\
             [[plugins]]\nname = \"cors\"\n\n\
             [[plugins]]\nname = \"response-transformer\"\nroute = \"r\"\nconfig = { remove = { headers = [\"Server\"] } }\n\n\
             [[plugins]]\nname = \"correlation-id\"\n\n\
             [[plugins]]\nname = \"key-auth\"\n",
        ),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    match &cfg.plugins[3].config {
        PluginConfig::CorrelationId(d) => {
            assert_eq!(
                (d.header_name.as_str(), d.echo_downstream),
                ("X-Request-ID", false)
            )
        }
        other => panic!("{other:?}"),
    }
    match &cfg.plugins[1].config {
        PluginConfig::Cors(d) => {
            assert_eq!(d.origins, ["*"]);
            assert!(!d.credentials && !d.preflight_continue);
            assert!(d.methods.iter().any(|m| m == "PATCH"));
        }
        other => panic!("{other:?}"),
    }
    let chains = compile_chains(&cfg);
    let names: Vec<&str> = chains.routes[0].iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "correlation-id",
            "cors",
            "key-auth",
            "request-transformer",
            "response-transformer"
        ]
    );
    let names: Vec<&str> = chains.routes[1].iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["correlation-id", "cors", "key-auth", "request-transformer"]
    );
    assert!(matches!(chains.routes[0][0], Plugin::CorrelationId(0)));
}

#[test]
fn transformers_refuse_framing_and_gateway_headers() {
    for (name, needle) in [
        ("Content-Length", "\"Content-Length"),
        ("Transfer-Encoding", "\"Transfer-Encoding"),
        ("Connection", "\"Connection"),
    ] {
        expect_at_needle(
            &format!("[[plugins]]\nname = \"request-transformer\"\nconfig = {{ add = {{ headers = [\"X-A:1\", \"{name}:5\"] }} }}\n"),
            needle,
            "plugins[0].config.add.headers[1]",
            "framing or hop-by-hop",
        );
        expect_at_needle(
            &format!("[[plugins]]\nname = \"response-transformer\"\nconfig = {{ remove = {{ headers = [\"{name}\"] }} }}\n"),
            needle,
            "plugins[0].config.remove.headers[0]",
            "framing or hop-by-hop",
        );
    }
    expect_at_needle(
        "[[plugins]]\nname = \"request-transformer\"\nconfig = { replace = { headers = [\"Host:evil\"] } }\n",
        "\"Host",
        "plugins[0].config.replace.headers[0]",
        "set by the gateway",
    );
    // Renames side by side: no two onto one name, no chains.
    expect_at_needle(
        "[[plugins]]\nname = \"request-transformer\"\nconfig = { rename = { headers = [\"A:C\", \"B:C\"] } }\n",
        "\"B:C",
        "plugins[0].config.rename.headers[1]",
        "already the target",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"request-transformer\"\nconfig = { rename = { headers = [\"A:B\", \"B:C\"] } }\n",
        "\"B:C",
        "plugins[0].config.rename.headers[1]",
        "cannot chain",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"request-transformer\"\nconfig = { rename = { headers = [\"X-User:X-Consumer-ID\"] } }\n",
        "\"X-User",
        "plugins[0].config.rename.headers[0]",
        "auth plugins only",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"request-transformer\"\nconfig = { append = { headers = [\"X-A:1\\r\\nX-Injected: 1\"] } }\n",
        "\"X-A",
        "plugins[0].config.append.headers[0]",
        "control characters",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { add = { headers = [\"Bad Name:1\"] } }\n",
        "\"Bad",
        "plugins[0].config.add.headers[0]",
        "not a valid header name",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { add = { headers = [\"NoColon\"] } }\n",
        "\"NoColon",
        "plugins[0].config.add.headers[0]",
        "expected \"Header-Name:value\"",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"request-transformer\"\nconfig = { add = { body = [\"a:1\"] } }\n",
        "body",
        "plugins[0].config.add.body",
        "unknown field",
    );
}

#[test]
fn transformer_query_and_uri_errors() {
    let rt =
        |config: &str| format!("[[plugins]]\nname = \"request-transformer\"\nconfig = {config}\n");
    // Request-only keys on the response side.
    expect_at_needle(
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { add = { querystring = [\"a:1\"] } }\n",
        "[\"a:1",
        "plugins[0].config.add.querystring",
        "edits headers and JSON bodies only",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { replace = { uri = \"/x\" } }\n",
        "\"/x",
        "plugins[0].config.replace.uri",
        "edits headers and JSON bodies only",
    );
    for (uri, why) in [
        ("v2/users", "must start with `/`"),
        ("/a?b=1", "no `?` or `#`"),
        ("/a b", "visible ASCII"),
        ("/a%zz", "two hex digits"),
        ("//evil.example/x", "must not start with `//`"),
        ("/v2/../admin", "`..` segments"),
        ("/v2/%2E%2e/admin", "`..` segments"),
        ("/v2/./x", "`..` segments"),
        ("/v2\\\\x", "backslashes"),
    ] {
        expect_at_needle(
            &rt(&format!("{{ replace = {{ uri = \"{uri}\" }} }}")),
            &format!("\"{uri}"),
            "plugins[0].config.replace.uri",
            why,
        );
    }
    expect_at_needle(
        &rt("{ add = { uri = \"/x\" } }"),
        "\"/x",
        "plugins[0].config.add.uri",
        "`uri` is a `replace` key",
    );
    for (method, why) in [
        ("post", "upper-case method name"),
        ("PO ST", "upper-case method name"),
        ("", "upper-case method name"),
        ("HEAD", "\"HEAD\" is refused"),
        ("CONNECT", "\"CONNECT\" is refused"),
    ] {
        expect_at_needle(
            &rt(&format!("{{ http_method = \"{method}\" }}")),
            &format!("\"{method}\""),
            "plugins[0].config.http_method",
            why,
        );
    }
    expect_at_needle(
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { http_method = \"POST\" }\n",
        "\"POST",
        "plugins[0].config.http_method",
        "edits headers and JSON bodies only",
    );
    // JSON request edits decide on the client's Content-Type: the same transformer may not edit it.
    expect_at_needle(
        &rt("{ remove = { json = [\"a\"] }, add = { headers = [\"Content-Type:application/json\"] } }"),
        "{ remove",
        "plugins[0].config",
        "cannot also edit the Content-Type header",
    );
    // So do form edits; and they are request-side only.
    expect_at_needle(
        &rt("{ remove = { form = [\"a\"] }, rename = { headers = [\"Content-Type:X-Type\"] } }"),
        "{ remove",
        "plugins[0].config",
        "cannot also edit the Content-Type header",
    );
    expect_at_needle(
        &rt("{ rename = { form = [\"a:b\", \"b:c\"] } }"),
        "\"b:c",
        "plugins[0].config.rename.form[1]",
        "cannot chain",
    );
    expect_at_needle(
        &rt("{ add = { form = [\"a:b\"] }, max_form_bytes = 0 }"),
        "0 }",
        "plugins[0].config.max_form_bytes",
        "1 byte to 1 GiB",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { remove = { form = [\"a\"] } }\n",
        "[\"a",
        "plugins[0].config.remove.form",
        "are request-transformer keys",
    );
    // JSON body edits, on either side: typed values checked.
    expect_at_needle(
        &rt("{ add = { json = [\"n:x1\"], json_types = [\"number\"] } }"),
        "\"n:x1",
        "plugins[0].config.add.json[0]",
        "\"x1\" is not a number",
    );
    let resp =
        |config: &str| format!("[[plugins]]\nname = \"response-transformer\"\nconfig = {config}\n");
    expect_at_needle(
        &resp("{ add = { json = [\"n:x1\"], json_types = [\"number\"] } }"),
        "\"n:x1",
        "plugins[0].config.add.json[0]",
        "\"x1\" is not a number",
    );
    expect_at_needle(
        &resp("{ add = { json = [\"n:1\"], json_types = [\"int\"] } }"),
        "\"int",
        "plugins[0].config.add.json_types[0]",
        "expected \"string\", \"number\" or \"boolean\"",
    );
    expect_at_needle(
        &resp("{ add = { json = [\"n:1\"], json_types = [\"number\", \"string\"] } }"),
        "\"string",
        "plugins[0].config.add.json_types[1]",
        "no `json` entry 1",
    );
    expect_at_needle(
        &resp("{ remove = { json = [\"a\"], json_types = [\"number\"] } }"),
        "[\"number",
        "plugins[0].config.remove.json_types",
        "remove and rename have none",
    );
    expect_at_needle(
        &resp("{ remove = { json = [\" \"] } }"),
        "\" \"",
        "plugins[0].config.remove.json[0]",
        "must not be empty",
    );
    expect_at_needle(
        &resp("{ remove = { json = [\"a\"] }, max_json_bytes = 0 }"),
        "0 }",
        "plugins[0].config.max_json_bytes",
        "1 byte to 1 GiB",
    );
    // Query names compare exactly, so `A:b` and `a:b` are two renames; chains are refused.
    expect_at_needle(
        &rt("{ rename = { querystring = [\"a:b\", \"b:c\"] } }"),
        "\"b:c",
        "plugins[0].config.rename.querystring[1]",
        "cannot chain",
    );
    expect_at_needle(
        &rt("{ add = { querystring = [\":v\"] } }"),
        "\":v",
        "plugins[0].config.add.querystring[0]",
        "needs a name",
    );
    expect_at_needle(
        &rt("{ append = { querystring = [\"novalue\"] } }"),
        "\"novalue",
        "plugins[0].config.append.querystring[0]",
        "expected \"name:value\"",
    );
    expect_at_needle(
        &rt("{ add = { querystring = [\"a:1\\u0000\"] } }"),
        "\"a:1",
        "plugins[0].config.add.querystring[0]",
        "control characters",
    );
    // What loads: query edits are kept decoded, the uri as written.
    let cfg = load_str(
        &with(&rt(
            "{ rename = { querystring = [\"A:b\", \"a:c\"] }, add = { querystring = [\"lang: en \"] }, replace = { uri = \"/v2/%7Eme\" } }",
        )),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    match &cfg.plugins[0].config {
        PluginConfig::RequestTransformer(d) => {
            assert_eq!(d.query.rename.len(), 2);
            assert_eq!(d.query.add, [("lang".to_string(), "en".to_string())]);
            assert_eq!(d.uri.as_deref(), Some("/v2/%7Eme"));
            assert_eq!(d.method, None);
            assert!(d.headers.add.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cors_and_correlation_config_errors() {
    expect_at_needle(
        "[[plugins]]\nname = \"cors\"\nconfig = { origins = [\"https://ok.example\", \"https://app.example.com/\"] }\n",
        "\"https://app",
        "plugins[0].config.origins[1]",
        "is not an origin",
    );
    // A regex origin (Kong's form) that does not compile.
    expect_at_needle(
        "[[plugins]]\nname = \"cors\"\nconfig = { origins = ['https://(a|b\\.example\\.com'] }\n",
        "'https://(a",
        "plugins[0].config.origins[0]",
        "invalid regex",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"cors\"\nconfig = { max_age = -1 }\n",
        "-1",
        "plugins[0].config.max_age",
        "max_age",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"correlation-id\"\nconfig = { generator = \"tracker\" }\n",
        "\"tracker",
        "plugins[0].config.generator",
        "expected \"uuid\"",
    );
    expect_at_needle(
        "[[plugins]]\nname = \"correlation-id\"\nconfig = { header_name = \"Content-Length\" }\n",
        "\"Content-Length",
        "plugins[0].config.header_name",
        "framing",
    );
    for name in ["Cookie", "authorization"] {
        expect_at_needle(
            &format!(
                "[[plugins]]\nname = \"correlation-id\"\nconfig = {{ header_name = \"{name}\" }}\n"
            ),
            &format!("\"{name}"),
            "plugins[0].config.header_name",
            "carries credentials",
        );
    }
    // Proxy-Authorization is refused earlier, as a header the gateway never forwards.
    expect_at_needle(
        "[[plugins]]\nname = \"correlation-id\"\nconfig = { header_name = \"Proxy-Authorization\" }\n",
        "\"Proxy-Authorization",
        "plugins[0].config.header_name",
        "hop-by-hop",
    );
    // Echoed, the id would replace a response header that means something; not echoed, fine.
    for name in [
        "Content-Type",
        "Location",
        "X-RateLimit-Remaining-Minute",
        "Vary",
    ] {
        expect_at_needle(
            &format!(
                "[[plugins]]\nname = \"correlation-id\"\nconfig = {{ header_name = \"{name}\", echo_downstream = true }}\n"
            ),
            &format!("\"{name}"),
            "plugins[0].config.header_name",
            "means something in a response",
        );
    }
    assert!(load_str(
        &with("[[plugins]]\nname = \"correlation-id\"\nconfig = { header_name = \"Location\" }\n"),
        "t.toml"
    )
    .is_ok());
    // Where key-auth reads API keys: the key would be logged as the id.
    expect_at_needle(
        "[[plugins]]\nname = \"correlation-id\"\nconfig = { header_name = \"X-Api-Key\" }\n\n\
         [[plugins]]\nname = \"key-auth\"\nconfig = { key_names = [\"x-api-key\"] }\n",
        "\"X-Api-Key",
        "plugins[0].config.header_name",
        "where key-auth reads API keys",
    );
}

#[test]
fn request_termination_compiles_last_in_the_chain_and_reports_its_mistakes() {
    let cfg = load_str(
        &with(
            "[[plugins]]\nname = \"request-termination\"\nroute = \"r\"\n\
             config = { status_code = 410, body = \"gone\", content_type = \"text/plain\", trigger = \"X-Retire\" }\n\n\
             [[plugins]]\nname = \"rate-limiting\"\nconfig = { minute = 5 }\n\n\
             [[plugins]]\nname = \"key-auth\"\n",
        ),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    match &cfg.plugins[0].config {
        PluginConfig::RequestTermination(d) => assert_eq!(
            (
                d.status_code,
                d.body.as_deref(),
                d.content_type.as_str(),
                d.trigger.as_deref()
            ),
            (410, Some("gone"), "text/plain", Some("X-Retire"))
        ),
        other => panic!("{other:?}"),
    }
    let chains = compile_chains(&cfg);
    let names: Vec<&str> = chains.routes[0].iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        ["key-auth", "rate-limiting", "request-termination"],
        "runs after auth and rate limiting (Kong's priority 2)"
    );
    assert!(matches!(chains.routes[0][2], Plugin::RequestTermination(0)));

    let rt =
        |config: &str| format!("[[plugins]]\nname = \"request-termination\"\nconfig = {config}\n");
    for (config, needle, key, fragment) in [
        (
            "{ status_code = 100 }",
            "100",
            "status_code",
            "interim (1xx)",
        ),
        ("{ status_code = 600 }", "600", "status_code", "200..=599"),
        (
            "{ message = \"m\", body = \"b\" }",
            "\"b",
            "body",
            "`message` and `body` are exclusive",
        ),
        (
            "{ content_type = \"text/plain\" }",
            "\"text",
            "content_type",
            "goes with `body`",
        ),
        (
            "{ body = \"b\", content_type = \"text/plain\\r\\nX-A: 1\" }",
            "\"text",
            "content_type",
            "control characters",
        ),
        (
            "{ body = \"b\", content_type = \" \" }",
            "\" \"",
            "content_type",
            "must not be empty",
        ),
        (
            "{ status_code = 204, message = \"m\" }",
            "\"m",
            "message",
            "a 204 answer carries no body",
        ),
        (
            "{ trigger = \"X Debug\" }",
            "\"X Debug",
            "trigger",
            "not a header or query parameter name",
        ),
        ("{ echo = true }", "true", "echo", "not supported"),
        ("{ status = 503 }", "status", "status", "unknown field"),
    ] {
        expect_at_needle(
            &rt(config),
            needle,
            &format!("plugins[0].config.{key}"),
            fragment,
        );
    }
}

/// `rediss://`: its files are read and checked at load, each problem at its key; the TLS keys
/// do not apply to `redis://`; `#insecure` (redis-rs' "skip verification") is refused; and the
/// compiled config holds the files' contents without showing the key in `Debug`.
#[test]
fn rediss_urls_and_their_files() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!("ringgate-rediss-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p.display().to_string()
    };
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test ca");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .signed_by(&key, &ca)
        .expect("sign");
    let (ca_pem, cert_pem) = (file("ca.pem", &ca.pem()), file("c.pem", &cert.pem()));
    let key_pem = file("c.key", &key.serialize_pem());
    let other_key = file("o.key", &KeyPair::generate().expect("key").serialize_pem());
    let redis_with = |url: &str, extra: &str| {
        with(&format!("[[plugins]]\nname = \"rate-limiting\"\nconfig = {{ minute = 1, policy = \"cluster\", redis = {{ url = \"{url}\"{extra} }} }}\n"))
    };
    let missing = dir.join("nope.pem").display().to_string();
    for (url, extra, key, why) in [
        (
            "redis://h:1",
            format!(r#", ca_file = "{ca_pem}""#),
            "ca_file",
            "only applies to a TLS url",
        ),
        (
            "redis://h:1",
            format!(r#", key_file = "{key_pem}""#),
            "key_file",
            "only applies to a TLS url",
        ),
        (
            "rediss://h:1#insecure",
            String::new(),
            "url",
            "no `#` fragment",
        ),
        // redis-rs ignores the query: this would load and never AUTH.
        (
            "redis://h:1/0?password=s3cret",
            String::new(),
            "url",
            "takes no `?` query",
        ),
        (
            "rediss://h:1",
            format!(r#", cert_file = "{cert_pem}""#),
            "key_file",
            "needs `key_file`",
        ),
        (
            "rediss://h:1",
            format!(r#", key_file = "{key_pem}""#),
            "cert_file",
            "needs `cert_file`",
        ),
        (
            "rediss://h:1",
            format!(r#", ca_file = "{missing}""#),
            "ca_file",
            "nope.pem",
        ),
        (
            "rediss://h:1",
            format!(r#", ca_file = "{key_pem}""#),
            "ca_file",
            "BEGIN CERTIFICATE",
        ),
        (
            "rediss://h:1",
            format!(r#", cert_file = "{cert_pem}", key_file = "{other_key}""#),
            "key_file",
            "does not match",
        ),
    ] {
        let errs = errors(&redis_with(url, &extra));
        assert_eq!(errs.len(), 1, "{url} {extra}: {errs:?}");
        assert_eq!(
            errs[0].key,
            format!("plugins[0].config.redis.{key}"),
            "{url} {extra}"
        );
        assert!(errs[0].message.contains(why), "{url} {extra}: {}", errs[0]);
        assert!(!errs[0].message.contains("s3cret"), "{}", errs[0]);
    }
    let tls_of = |text: &str| {
        let cfg = load_str(text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
        match &cfg.plugins[0].config {
            PluginConfig::RateLimiting(d) => match &d.policy {
                Policy::Cluster(r) => (r.tls.clone(), format!("{d:?}")),
                other => panic!("not cluster: {other:?}"),
            },
            other => panic!("not rate-limiting: {other:?}"),
        }
    };
    let (tls, _) = tls_of(&redis_with("redis://h:1", ""));
    assert!(tls.is_none());
    let (tls, _) = tls_of(&redis_with("rediss://h:1", ""));
    let tls = tls.expect("rediss:// is TLS");
    assert!(tls.ca_pem.is_none() && tls.client.is_none());
    let (tls, debug) = tls_of(&redis_with(
        "rediss://h:1/2",
        &format!(r#", ca_file = "{ca_pem}", cert_file = "{cert_pem}", key_file = "{key_pem}""#),
    ));
    let tls = tls.expect("rediss:// is TLS");
    assert_eq!(tls.ca_pem.as_deref(), Some(ca.pem().as_bytes()));
    let (c, k) = tls.client.expect("client certificate");
    assert_eq!((c, k.0), (cert.pem().into_bytes(), key.serialize_pem()));
    assert!(
        !debug.contains("PRIVATE KEY") && !debug.contains(&key.serialize_pem()),
        "{debug}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A transformer may not write a header another plugin of its chain owns: the correlation id
/// (two ids would go out; the README promises one) or, beside cors on the response side, an
/// `Access-Control-*` field (two values, which browsers refuse). Found by a review: both loaded.
#[test]
fn transformers_cannot_write_headers_other_plugins_own() {
    let corr = "[[plugins]]\nname = \"correlation-id\"\nconfig = { echo_downstream = true }\n\n";
    for (side, list) in [
        ("request", "add"),
        ("request", "append"),
        ("response", "replace"),
    ] {
        let text = with(&format!(
            "{corr}[[plugins]]\nname = \"{side}-transformer\"\nroute = \"r2\"\nconfig = {{ {list} = {{ headers = [\"x-request-id:fixed\"] }} }}\n"
        ));
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, format!("plugins[1].config.{list}.headers"));
        assert!(
            errs[0]
                .message
                .contains("the header correlation-id sets on this route"),
            "{}",
            errs[0]
        );
    }
    // A rename onto it too.
    let errs = errors(&with(&format!(
        "{corr}[[plugins]]\nname = \"request-transformer\"\nconfig = {{ rename = {{ headers = [\"X-Trace:X-Request-ID\"] }} }}\n"
    )));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "plugins[1].config.rename.headers");

    let cors = "[[plugins]]\nname = \"cors\"\nroute = \"r\"\nconfig = { origins = [\"https://app.example.com\"] }\n\n";
    let acao = "[[plugins]]\nname = \"response-transformer\"\nconfig = { append = { headers = [\"Access-Control-Allow-Origin:*\"] } }\n";
    let errs = errors(&with(&format!("{cors}{acao}")));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].key, "plugins[1].config.append.headers");
    assert!(
        errs[0].message.contains("beside the cors plugin"),
        "{}",
        errs[0]
    );
    // Without cors on any route it shares, the transformer may set CORS fields itself; and a
    // request-transformer's Access-Control-* goes upstream, where cors does not look.
    load_str(&with(acao), "test.toml").unwrap_or_else(|e| panic!("{e:?}"));
    let upstream_side = acao.replace("response-transformer", "request-transformer");
    load_str(&with(&format!("{cors}{upstream_side}")), "test.toml")
        .unwrap_or_else(|e| panic!("{e:?}"));
    // Without echo_downstream the client gets no id from correlation-id: a response-transformer
    // may set that header (the upstream side still may not).
    let quiet = "[[plugins]]\nname = \"correlation-id\"\nconfig = { echo_downstream = false }\n\n";
    load_str(
        &with(&format!(
            "{quiet}[[plugins]]\nname = \"response-transformer\"\nconfig = {{ add = {{ headers = [\"X-Request-ID:fixed\"] }} }}\n"
        )),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        errors(&with(&format!(
            "{quiet}[[plugins]]\nname = \"request-transformer\"\nconfig = {{ add = {{ headers = [\"X-Request-ID:fixed\"] }} }}\n"
        )))
        .len(),
        1
    );
    // A different header beside correlation-id is fine.
    load_str(
        &with(&format!(
            "{corr}[[plugins]]\nname = \"request-transformer\"\nconfig = {{ add = {{ headers = [\"X-Other:1\"] }} }}\n"
        )),
        "test.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
}

#[test]
fn compression_defaults_order_and_mistakes() {
    let cfg = load_str(
        &with(
            "[[plugins]]\nname = \"compression\"\n\n\
             [[plugins]]\nname = \"compression\"\nroute = \"r2\"\nconfig = { level = 9, min_length = 0, content_types = [\"Text/*\", \"application/vnd.api+json\"] }\n\n\
             [[plugins]]\nname = \"request-termination\"\nconfig = { trigger = \"X-Down\" }\n",
        ),
        "t.toml",
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    match (&cfg.plugins[0].config, &cfg.plugins[1].config) {
        (PluginConfig::Compression(a), PluginConfig::Compression(b)) => {
            assert_eq!((a.level, a.min_length), (1, 1024));
            assert!(a.content_types.iter().any(|t| t == "application/json"));
            assert!(!a.content_types.iter().any(|t| t == "text/event-stream"));
            assert_eq!((b.level, b.min_length), (9, 0));
            assert_eq!(b.content_types, ["text/*", "application/vnd.api+json"]);
        }
        other => panic!("{other:?}"),
    }
    let chains = compile_chains(&cfg);
    let names: Vec<&str> = chains.routes[0].iter().map(|p| p.name()).collect();
    assert_eq!(names, ["compression", "request-termination"]);
    assert!(matches!(chains.routes[1][0], Plugin::Compression(1)));

    let c = |config: &str| format!("[[plugins]]\nname = \"compression\"\nconfig = {config}\n");
    for (config, needle, key, fragment) in [
        ("{ level = 0 }", "0", "level", "level"),
        ("{ level = 10 }", "10", "level", "level"),
        ("{ min_length = -1 }", "-1", "min_length", "min_length"),
        (
            "{ content_types = [] }",
            "[]",
            "content_types",
            "an empty list would compress nothing",
        ),
        (
            "{ content_types = [\"json\"] }",
            "\"json",
            "content_types[0]",
            "\"json\" is not a media type",
        ),
        (
            "{ content_types = [\"text/html; charset=utf-8\"] }",
            "\"text",
            "content_types[0]",
            "without parameters",
        ),
        ("{ gzip = true }", "gzip", "gzip", "unknown field"),
    ] {
        expect_at_needle(
            &c(config),
            needle,
            &format!("plugins[0].config.{key}"),
            fragment,
        );
    }
    // Not a plugin a consumer can have: it acts on responses, before any consumer is known.
    let errs = errors(&with(
        "[[consumers]]\nusername = \"a\"\n\n[[plugins]]\nname = \"compression\"\nconsumer = \"a\"\n",
    ));
    assert!(
        errs.iter()
            .any(|e| e.message.contains("cannot be attached to a consumer")),
        "{errs:?}"
    );
}
