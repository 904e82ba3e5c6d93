//! Load-balancing algorithms end to end over real sockets: `least_conn` steering past a target
//! whose requests are still running, and `consistent_hash` keeping a key on one target (across
//! workers and across gateway processes), moving only a dead target's keys, and falling back to
//! round-robin for requests without the key, failing a dead target's keys over by score, and
//! setting a sticky cookie; a target's `max_conns` passing it over when full, and
//! a 503 when every target is.

mod common;

use common::*;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// One upstream `pool` over `targets` (TOML inline tables) with `upstream` (its other keys and
/// tables), behind a catch-all route; `timeouts` go to `[server.timeouts]`, `extra` at the end.
fn pool_config(
    targets: &str,
    upstream: &str,
    workers: usize,
    timeouts: &str,
    extra: &str,
) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = {workers}

[server.timeouts]
{timeouts}

[[upstreams]]
name = "pool"
targets = [{targets}]
{upstream}

[[services]]
name = "svc"
upstream = "pool"

[[routes]]
name = "r"
service = "svc"
paths = ["/"]
strip_path = false

{extra}
"#
    )
}

/// `pool_config` over `targets` with `balance` (its algorithm keys) and a 3 s read timeout.
fn config(targets: &[&Upstream], balance: &str, workers: usize, extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|u| format!("{{ target = \"{}\" }}", u.addr()))
        .collect();
    pool_config(
        &targets.join(", "),
        balance,
        workers,
        "upstream_read = \"3s\"",
        extra,
    )
}

/// The upstream that answered a GET of `path` with `headers` (each line ending in `\r\n`).
#[track_caller]
fn answered_by(gw: &Gateway, path: &str, headers: &str) -> String {
    let mut c = Conn::connect(gw.addr());
    let r = c.request(format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n").as_bytes());
    assert_eq!(r.status, 200, "{path} {headers:?}: {r:?}");
    r.header("x-upstream").unwrap_or_default().to_owned()
}

#[test]
fn least_conn_sends_requests_past_a_target_still_busy() {
    let slow = Upstream::named("slow", Behaviour::Hang);
    let fast = Upstream::echo("fast");
    let text = config(&[&slow, &fast], "algorithm = \"least_conn\"", 1, "")
        .replace("upstream_read = \"3s\"", "upstream_read = \"10s\"");
    let gw = Gateway::start(&text);
    // Idle targets tie, and ties rotate, so one or two requests until the slow target holds one.
    hold_one(&gw, &slow);
    // With one request in flight there, every new one goes to the idle target. Round-robin
    // would send every other one to the slow target (and its 504 after 10 s).
    all_answered_by(&gw, "fast", "", 10);
    assert_eq!(slow.request_count(), 1);
    // A reload does not forget the request still running there.
    gw.rewrite_config(&format!(
        "{text}\n[[routes]]\nname = \"other\"\nservice = \"svc\"\npaths = [\"/other\"]\n"
    ));
    gw.reload_to(2);
    std::thread::sleep(Duration::from_millis(200));
    all_answered_by(&gw, "fast", "/after", 10);
    assert_eq!(slow.request_count(), 1);
}

/// A request still connecting counts: a target that does not accept (a full backlog, a dead
/// host) would otherwise look idle and draw every other request into its connect timeout.
#[test]
fn least_conn_counts_requests_still_connecting() {
    let bh = blackhole();
    let fast = Upstream::echo("fast");
    let targets = format!(
        "{{ target = \"{}\" }}, {{ target = \"{}\" }}",
        bh.addr,
        fast.addr()
    );
    let gw = Gateway::start(&pool_config(
        &targets,
        "algorithm = \"least_conn\"",
        1,
        "upstream_connect = \"3s\"",
        "",
    ));
    // Requests in the background until one is stuck connecting to the blackhole (it has not
    // finished 300 ms after it was sent; the others are answered at once).
    let mut stuck = false;
    for _ in 0..6 {
        let addr = gw.addr();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            held_request(addr);
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_millis(300)).is_err() {
            stuck = true;
            break;
        }
    }
    assert!(stuck, "no request went to the blackholed target");
    for i in 0..10 {
        let start = Instant::now();
        assert_eq!(
            answered_by(&gw, &format!("/{i}"), ""),
            "fast",
            "request {i}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "request {i} waited {:?}: it was sent to the target still connecting",
            start.elapsed()
        );
    }
}

/// `n` GETs of `{prefix}/{i}`, each answered by the upstream named `name`.
#[track_caller]
fn all_answered_by(gw: &Gateway, name: &str, prefix: &str, n: usize) {
    for i in 0..n {
        assert_eq!(
            answered_by(gw, &format!("{prefix}/{i}"), ""),
            name,
            "request {prefix}/{i}"
        );
    }
}

/// Echo upstreams named `a`, `b` and `c`.
fn three_echoes() -> [Upstream; 3] {
    ["a", "b", "c"].map(Upstream::echo)
}

/// Where each of `users` is sent, asking three times each (new connections: any worker).
fn placement(
    gw: &Gateway,
    users: &[String],
    header: impl Fn(&str) -> String,
) -> HashMap<String, String> {
    users
        .iter()
        .map(|u| {
            let first = answered_by(gw, "/", &header(u));
            for _ in 0..2 {
                assert_eq!(answered_by(gw, "/", &header(u)), first, "{u} moved");
            }
            (u.clone(), first)
        })
        .collect()
}

#[test]
fn consistent_hash_keeps_each_key_on_one_target_and_moves_only_a_dead_targets_keys() {
    let [a, b, c] = three_echoes();
    let text = config(
        &[&a, &b, &c],
        "algorithm = \"consistent_hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"",
        2,
        "",
    );
    let gw = Gateway::start(&text);
    let users: Vec<String> = (0..30).map(|i| format!("user-{i}")).collect();
    let header = |u: &str| format!("X-User: {u}\r\n");
    let before = placement(&gw, &users, header);
    let used: HashSet<&String> = before.values().collect();
    assert_eq!(
        used.len(),
        3,
        "30 keys spread over the 3 targets: {before:?}"
    );

    // Another gateway process with the same targets places every key alike (a fleet agrees).
    let other = Gateway::start(&text);
    assert_eq!(placement(&other, &users, header), before);
    drop(other);

    // Requests without the key are balanced round-robin, not all sent to one target.
    let keyless: HashSet<String> = (0..12)
        .map(|i| answered_by(&gw, &format!("/{i}"), ""))
        .collect();
    assert!(keyless.len() >= 2, "{keyless:?}");
    // An empty value is a missing one.
    let empty: HashSet<String> = (0..12)
        .map(|i| answered_by(&gw, &format!("/{i}"), "X-User: \r\n"))
        .collect();
    assert!(empty.len() >= 2, "{empty:?}");

    // Target b goes away: its keys move (and are served), nobody else's do.
    drop(b);
    for u in &users {
        let now = answered_by(&gw, "/", &header(u));
        match before.get(u).map(String::as_str) {
            Some("b") => assert_ne!(now, "b", "{u}"),
            was => assert_eq!(Some(now.as_str()), was, "{u} moved though its target is up"),
        }
    }
}

/// While a target is failing but not yet ejected (passive health off here, so never), each of its
/// keys fails over to its next-best score: where a gateway without that target sends it. A walk
/// down the list would pile them all on the dead target's neighbour.
#[test]
fn consistent_hash_fails_a_dead_targets_keys_over_in_score_order() {
    let [a, b, c] = three_echoes();
    let keys = "algorithm = \"consistent_hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"\n\n[upstreams.health.passive]\nmax_fails = 0";
    let gw = Gateway::start(&config(&[&a, &b, &c], keys, 2, ""));
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    let header = |u: &str| format!("X-User: {u}\r\n");
    let before = placement(&gw, &users, header);
    let without_b = Gateway::start(&config(&[&a, &c], keys, 1, ""));
    let want = placement(&without_b, &users, header);
    drop(without_b);
    drop(b);
    let after = placement(&gw, &users, header);
    assert_eq!(after, want, "before: {before:?}");
    let moved: HashSet<&String> = users
        .iter()
        .filter(|u| before.get(*u).is_some_and(|t| t == "b"))
        .filter_map(|u| after.get(u))
        .collect();
    assert_eq!(moved.len(), 2, "b's keys spread over a and c: {moved:?}");
}

/// `hash_on = "query_arg"`: the parameter's first value, form-decoded (`a+b` is `a%20b`), keeps a
/// key on one target; without it, requests are balanced round-robin.
#[test]
fn consistent_hash_on_a_query_arg() {
    let [a, b, c] = three_echoes();
    let gw = Gateway::start(&config(
        &[&a, &b, &c],
        "algorithm = \"consistent_hash\"\nhash_on = \"query_arg\"\nhash_on_query_arg = \"user\"",
        2,
        "",
    ));
    let users: Vec<String> = (0..20).map(|i| format!("u{i}")).collect();
    let by_arg: HashMap<String, String> = users
        .iter()
        .map(|u| {
            let first = answered_by(&gw, &format!("/?user={u}"), "");
            for path in [format!("/x?a=1&user={u}&user=zz"), format!("/?us%65r={u}")] {
                assert_eq!(answered_by(&gw, &path, ""), first, "{path}");
            }
            (u.clone(), first)
        })
        .collect();
    assert!(
        by_arg.values().collect::<HashSet<_>>().len() >= 2,
        "{by_arg:?}"
    );
    for i in 0..10 {
        let spaced = answered_by(&gw, &format!("/?user=first+last{i}"), "");
        assert_eq!(
            answered_by(&gw, &format!("/?user=first%20last{i}"), ""),
            spaced
        );
    }
    let keyless: HashSet<String> = (0..12)
        .map(|i| answered_by(&gw, &format!("/?other={i}&user="), ""))
        .collect();
    assert!(keyless.len() >= 2, "{keyless:?}");
}

/// With `hash_on_cookie_path`, a request without the cookie is given one (sticky sessions, as
/// Kong does): `Set-Cookie` with a fresh value, and the target that answered is the one that
/// value keeps, on this gateway and on another. A request with the cookie gets none.
#[test]
fn consistent_hash_sets_a_sticky_cookie_when_asked() {
    let [a, b, c] = three_echoes();
    let text = config(
        &[&a, &b, &c],
        "algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"sticky\"\nhash_on_cookie_path = \"/app\"",
        2,
        "",
    );
    let gw = Gateway::start(&text);
    let other = Gateway::start(&text);
    let mut seen = HashMap::new();
    for i in 0..15 {
        let mut conn = Conn::connect(gw.addr());
        let r = conn.request(
            format!("GET /app/{i} HTTP/1.1\r\nHost: {HOST}\r\nCookie: theme=dark\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 200, "{r:?}");
        let set = r.header("set-cookie").unwrap_or_default().to_owned();
        let value = set
            .strip_prefix("sticky=")
            .and_then(|v| v.strip_suffix("; Path=/app; HttpOnly; SameSite=Lax"))
            .unwrap_or_else(|| panic!("Set-Cookie: {set:?}"));
        assert!(
            value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()),
            "{value}"
        );
        assert!(seen.insert(value.to_owned(), ()).is_none(), "{value} twice");
        let first = r.header("x-upstream").unwrap_or_default().to_owned();
        let cookie = format!("Cookie: sticky={value}\r\n");
        for g in [&gw, &other, &gw] {
            let mut conn = Conn::connect(g.addr());
            let r = conn
                .request(format!("GET /app HTTP/1.1\r\nHost: {HOST}\r\n{cookie}\r\n").as_bytes());
            assert_eq!(r.header("x-upstream"), Some(first.as_str()), "{value}");
            assert!(!r.has_header("set-cookie"), "{r:?}");
        }
    }
    let targets: HashSet<String> = seen
        .keys()
        .map(|v| answered_by(&gw, "/", &format!("Cookie: sticky={v}\r\n")))
        .collect();
    assert!(targets.len() >= 2, "new sessions spread: {targets:?}");
}

#[test]
fn consistent_hash_on_a_cookie_and_on_the_consumer() {
    let [a, b, c] = three_echoes();
    let gw = Gateway::start(&config(
        &[&a, &b, &c],
        "algorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"sid\"",
        1,
        "",
    ));
    let sids: Vec<String> = (0..20).map(|i| format!("s{i:04}")).collect();
    let by_cookie = placement(&gw, &sids, |s| {
        format!("Cookie: theme=dark; sid={s}; lang=en\r\n")
    });
    assert!(
        by_cookie.values().collect::<HashSet<_>>().len() >= 2,
        "{by_cookie:?}"
    );
    // The same cookie in a second Cookie field (what HTTP/2-to-1 translation can produce) counts.
    for s in &sids {
        let other = answered_by(
            &gw,
            "/",
            &format!("Cookie: theme=dark\r\nCookie: sid={s}\r\n"),
        );
        assert_eq!(Some(&other), by_cookie.get(s), "{s}");
    }
    drop(gw);

    // By consumer: a consumer's two keys go to one target; the anonymous consumer is no key.
    let mut consumers = String::new();
    for i in 0..12 {
        consumers.push_str(&format!(
            "[[consumers]]\nusername = \"user{i}\"\nkeyauth_credentials = [{{ key = \"key-{i}-first-0123456789\" }}, {{ key = \"key-{i}-second-0123456789\" }}]\n\n"
        ));
    }
    consumers.push_str(
        "[[consumers]]\nusername = \"guest\"\n\n[[plugins]]\nname = \"key-auth\"\nconfig = { anonymous = \"guest\" }\n",
    );
    let gw = Gateway::start(&config(
        &[&a, &b, &c],
        "algorithm = \"consistent_hash\"\nhash_on = \"consumer\"",
        1,
        &consumers,
    ));
    let ids: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    let first = placement(&gw, &ids, |i| {
        format!("apikey: key-{i}-first-0123456789\r\n")
    });
    let second = placement(&gw, &ids, |i| {
        format!("apikey: key-{i}-second-0123456789\r\n")
    });
    assert_eq!(first, second);
    assert!(
        first.values().collect::<HashSet<_>>().len() >= 2,
        "{first:?}"
    );
    let anonymous: HashSet<String> = (0..12)
        .map(|i| answered_by(&gw, &format!("/{i}"), ""))
        .collect();
    assert!(
        anonymous.len() >= 2,
        "anonymous requests are not one key: {anonymous:?}"
    );
}

#[test]
fn consistent_hash_with_ip_fallback_keeps_keyless_requests_together() {
    let [a, b, c] = three_echoes();
    let gw = Gateway::start(&config(
        &[&a, &b, &c],
        "algorithm = \"consistent_hash\"\nhash_on = \"header\"\nhash_on_header = \"X-User\"\nhash_fallback = \"ip\"",
        2,
        "",
    ));
    // Every request here comes from 127.0.0.1: one place.
    let keyless: HashSet<String> = (0..12)
        .map(|i| answered_by(&gw, &format!("/{i}"), ""))
        .collect();
    assert_eq!(keyless.len(), 1, "{keyless:?}");
}

/// A GET that reads one whole response (a one-shot send would wait for the connection to close)
/// and returns quietly when the gateway goes away first (a held request at the end of a test).
fn held_request(addr: std::net::SocketAddr) {
    if let Ok(mut c) = Conn::try_connect(addr) {
        if c.send(b"GET /held HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .is_ok()
        {
            let _ = c.read_response();
        }
    }
}

/// Requests in the background until the `slow` (hanging) upstream holds one.
fn hold_one(gw: &Gateway, slow: &Upstream) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while slow.request_count() == 0 && Instant::now() < deadline {
        let addr = gw.addr();
        std::thread::spawn(move || held_request(addr));
        let _ = slow.wait_for(Duration::from_millis(300), |r| !r.requests.is_empty());
    }
    assert_eq!(
        slow.request_count(),
        1,
        "one request held by the slow target"
    );
}

#[test]
fn max_conns_passes_a_full_target_over_and_answers_503_when_all_are_full() {
    let slow = Upstream::named("slow", Behaviour::Hang);
    let fast = Upstream::echo("fast");
    let targets = format!(
        "{{ target = \"{}\", max_conns = 1 }}, {{ target = \"{}\" }}",
        slow.addr(),
        fast.addr()
    );
    let text =
        |targets: &str, extra: &str| pool_config(targets, "", 1, "upstream_read = \"10s\"", extra);
    // Round-robin: with the slow target holding its one request, the rotation passes it over.
    let gw = Gateway::start(&text(&targets, ""));
    hold_one(&gw, &slow);
    all_answered_by(&gw, "fast", "", 10);
    assert_eq!(slow.request_count(), 1);
    drop(gw);

    // Alone and full: a 503 at once, not a wait, and the access log says why.
    let slow = Upstream::named("slow", Behaviour::Hang);
    let only = format!("{{ target = \"{}\", max_conns = 1 }}", slow.addr());
    let gw = Gateway::start(&text(&only, "[access_log]\npath = \"stderr\""));

    hold_one(&gw, &slow);
    let start = Instant::now();
    let r = get(gw.addr(), HOST, "/full");
    r.assert_json_error(503);
    assert!(
        r.body_str().contains("connection limit"),
        "{}",
        r.body_str()
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert!(
        gw.wait_log(
            "every upstream target is at its connection limit",
            Duration::from_secs(5)
        ),
        "{:?}",
        gw.logs()
    );
    assert_eq!(
        slow.request_count(),
        1,
        "the full target got no second request"
    );
}

/// With the healthy targets full and the only one with room ejected, the answer is a 503, not a
/// detour to the target health checking took out (which would refuse: a 502).
#[test]
fn max_conns_never_sends_a_request_to_an_ejected_target_instead() {
    let slow = Upstream::named("slow", Behaviour::Hang);
    let dead = refusing_addr();
    let gw = Gateway::start(&pool_config(
        &format!(
            "{{ target = \"{}\", max_conns = 1 }}, {{ target = \"{dead}\" }}",
            slow.addr()
        ),
        "[upstreams.health.passive]\nmax_fails = 1\nfail_timeout = \"30s\"",
        1,
        "upstream_read = \"10s\"",
        "",
    ));
    hold_one(&gw, &slow);
    // The dead target is ejected by its first refusal (this request's, or the held one's on its
    // way to the slow target).
    let _ = get(gw.addr(), HOST, "/prime");
    for i in 0..5 {
        let r = get(gw.addr(), HOST, &format!("/{i}"));
        r.assert_json_error(503);
    }
    assert_eq!(slow.request_count(), 1);
}
