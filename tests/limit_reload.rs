//! Rate-limit counts across a hot reload (SIGHUP), through the real binary: a limit whose identity is
//! unchanged keeps its counts (in every worker and, with `policy = "cluster"`, in Redis), also when
//! settings that do not change what is counted (error message, mode, the limit value) change; a
//! changed period set starts fresh. Requests are spaced by more than a sync interval, so the counts
//! asserted are exact.

mod common;

use common::redis::Redis;
use common::*;
use std::time::Duration;

/// Two routes (`/api` limited, `/free` not) plus, with `extra_route`, a third one: the unrelated
/// change each reload makes.
fn config(up: &Upstream, workers: usize, plugin: &str, extra_route: bool) -> String {
    let extra = if extra_route {
        "[[routes]]\nname = \"extra\"\nservice = \"svc\"\npaths = [\"/extra\"]\n"
    } else {
        ""
    };
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = {workers}

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "api"
service = "svc"
paths = ["/api"]

[[routes]]
name = "free"
service = "svc"
paths = ["/free"]

{extra}
[[plugins]]
name = "rate-limiting"
route = "api"
config = {plugin}
"#,
        url = up.url()
    )
}

const REQ: &[u8] = b"GET /api/x HTTP/1.1\r\nHost: test.local\r\nX-Client: c1\r\n\r\n";

fn remaining(r: &RawResponse) -> u64 {
    r.header("x-ratelimit-remaining-hour")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-RateLimit-Remaining-Hour: {:?}", r.headers))
}

/// Sends requests (a new connection each, so both workers serve some), spaced by `gap`, until one
/// is rejected; returns how many were admitted (at most `max`).
fn admit_until_rejected(addr: std::net::SocketAddr, max: u64, gap: Duration) -> (u64, RawResponse) {
    for admitted in 0..=max {
        std::thread::sleep(gap);
        let r = Conn::connect(addr).request(REQ);
        if r.status == 429 {
            return (admitted, r);
        }
        assert_eq!(r.status, 200);
    }
    panic!("more than {max} admitted");
}

#[test]
fn counts_survive_a_reload_and_a_changed_limit_value() {
    away_from_hour_end();
    let up = Upstream::echo("up");
    let plugin_with = |periods: &str, message: &str| {
        format!(
            r#"{{ {periods}, limit_by = "header", header_name = "x-client", error_message = "{message}" }}"#
        )
    };
    let plugin = |limit: u64, message: &str| plugin_with(&format!("hour = {limit}"), message);
    let gw = Gateway::start(&config(&up, 2, &plugin(10, "slow down"), false));
    let mut c = Conn::connect(gw.addr());
    for i in 0..4 {
        assert_eq!(remaining(&c.request(REQ)), 9 - i);
    }

    // An unrelated route and a new error message: same limit, counts continue.
    gw.rewrite_config(&config(&up, 2, &plugin(10, "reloaded"), true));
    gw.reload_to(2);
    assert_eq!(
        c.get(HOST, "/extra/1").status,
        200,
        "the reload took effect"
    );
    let r = c.request(REQ);
    assert_eq!(remaining(&r), 5, "the count continued across the reload");
    // Both workers know the pre-reload count: exactly 5 more are admitted in total.
    let (more, rejected) = admit_until_rejected(gw.addr(), 10, Duration::from_millis(30));
    assert_eq!(more, 5, "the limit still rejects at 10");
    assert!(
        String::from_utf8_lossy(&rejected.body).contains("reloaded"),
        "the new error message is used"
    );

    // A raised limit applies to the count so far (10): 2 more, not a fresh 12.
    gw.rewrite_config(&config(&up, 2, &plugin(12, "reloaded"), false));
    gw.reload_to(3);
    let r = Conn::connect(gw.addr()).request(REQ);
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), 1, "a raised limit continues the count");
    let (more, _) = admit_until_rejected(gw.addr(), 12, Duration::from_millis(30));
    assert_eq!(more, 1, "the raised limit rejects at 12");

    // A lowered one refuses at once, in both workers.
    gw.rewrite_config(&config(&up, 2, &plugin(8, "reloaded"), false));
    gw.reload_to(4);
    for _ in 0..4 {
        let r = Conn::connect(gw.addr()).request(REQ);
        assert_eq!(r.status, 429, "a lowered limit applies to the count so far");
    }

    // Another set of periods: fresh counts.
    let both = plugin_with("minute = 5, hour = 8", "reloaded");
    gw.rewrite_config(&config(&up, 2, &both, false));
    gw.reload_to(5);
    let r = Conn::connect(gw.addr()).request(REQ);
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), 7, "a changed period set starts fresh");
}

#[test]
fn cluster_counts_survive_a_reload_without_a_ghost_node() {
    if Redis::missing() {
        return;
    }
    away_from_hour_end();
    let redis = Redis::start().expect("redis-server");
    let up = Upstream::echo("up");
    let plugin = |limit: u64| {
        format!(
            r#"{{ hour = {limit}, limit_by = "header", header_name = "x-client", policy = "cluster", redis = {{ url = "redis://127.0.0.1:{}", prefix = "rgreload" }} }}"#,
            redis.port
        )
    };
    let a = Gateway::start(&config(&up, 1, &plugin(20), false));
    let b = Gateway::start(&config(&up, 1, &plugin(20), false));
    // Counts cross Redis within a few sync intervals; this is far more.
    let settle = || std::thread::sleep(Duration::from_millis(150));
    let mut ca = Conn::connect(a.addr());
    for i in 0..6 {
        assert_eq!(remaining(&ca.request(REQ)), 19 - i);
    }
    settle();
    // A node learns a key's cluster count once it has seen the key (its first request decides on
    // local counts only); from then on it sees node A's counts.
    assert_eq!(Conn::connect(b.addr()).request(REQ).status, 200);
    settle();
    assert_eq!(remaining(&Conn::connect(b.addr()).request(REQ)), 12);
    settle();

    a.rewrite_config(&config(&up, 1, &plugin(20), true));
    a.reload_to(2);
    assert_eq!(
        ca.get(HOST, "/extra/1").status,
        200,
        "the reload took effect"
    );
    assert_eq!(
        remaining(&ca.request(REQ)),
        11,
        "node A's count continued across its reload"
    );
    settle();
    assert_eq!(remaining(&Conn::connect(b.addr()).request(REQ)), 10);
    settle();
    // Alternate between the nodes until rejected: exactly 20 in total.
    let mut more = 0;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = Conn::connect(gw.addr()).request(REQ);
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 200);
        more += 1;
        std::thread::sleep(Duration::from_millis(60));
    }
    assert_eq!(more, 10, "the cluster limit still rejects at 20");

    // The reloaded node kept its identity: two nodes share the limit, not three.
    std::thread::sleep(Duration::from_millis(1_200));
    let mut rc = redis.client().expect("redis client");
    let nodes: u64 = ::redis::cmd("ZCARD")
        .arg("rgreload:nodes")
        .query(&mut rc)
        .expect("ZCARD");
    assert_eq!(nodes, 2);

    // A raised limit continues the cluster count (20): node A admits on it, and node B, raised
    // after A's requests, sees them (the count is one Redis key whatever the limit).
    a.rewrite_config(&config(&up, 1, &plugin(25), false));
    a.reload_to(3);
    for left in [4, 3] {
        let r = Conn::connect(a.addr()).request(REQ);
        assert_eq!(r.status, 200);
        assert_eq!(remaining(&r), left, "a raised limit continues the count");
    }
    settle();
    b.rewrite_config(&config(&up, 1, &plugin(25), false));
    b.reload_to(2);
    settle();
    let r = Conn::connect(b.addr()).request(REQ);
    assert_eq!(r.status, 200);
    assert_eq!(remaining(&r), 2, "node B continues the same cluster count");
}

/// The rate-limit counters on `/metrics` carry over a reload: a scrape right after it shows the
/// count from before, not 0 until the workers' next publish (a dip reads as a counter reset and
/// spikes `rate()`). The reload also stretches `flush_interval` to 60 s, so nothing but the hand-over
/// can fill the new generation's counters in time for the scrape.
#[test]
fn metrics_counters_do_not_dip_across_a_reload() {
    away_from_hour_end();
    let up = Upstream::echo("up");
    let plugin = r#"{ hour = 10, limit_by = "header", header_name = "x-client" }"#;
    let with_metrics = |flush: &str, extra_route: bool| {
        format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nflush_interval = \"{flush}\"\n",
            config(&up, 2, plugin, extra_route)
        )
    };
    let gw = Gateway::start(&with_metrics("50ms", false));
    let mut c = Conn::connect(gw.addr());
    for _ in 0..4 {
        assert_eq!(c.request(REQ).status, 200);
    }
    let want = r#"ringgate_ratelimit_admitted_total{limit="route:api"} 4"#;
    let scrape = || {
        let r = send_raw(
            gw.admin_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n",
        );
        String::from_utf8_lossy(&r.body).into_owned()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !scrape().contains(want) {
        assert!(std::time::Instant::now() < deadline, "{}", scrape());
        std::thread::sleep(Duration::from_millis(20));
    }

    gw.rewrite_config(&with_metrics("60s", true));
    gw.reload_to(2);
    let metrics = scrape();
    assert!(
        metrics.contains(want),
        "the count dipped across the reload:\n{metrics}"
    );
}

/// A token bucket keeps its level across a reload that changes its rate or burst, cut to a lowered
/// burst; another algorithm starts fresh. Each reload waits out a sync interval after the last
/// request: the reconciler first sees a key with the worker's next batch, and a bucket it has not
/// seen yet starts full at the burst in force then.
#[test]
fn a_token_bucket_keeps_its_level_across_a_new_rate_and_burst() {
    let up = Upstream::echo("up");
    // One token an hour: nothing refills during the test.
    let bucket = |average: u64, burst: u64| {
        format!(
            r#"{{ algorithm = "token_bucket", average = {average}, period = "1h", burst = {burst}, limit_by = "header", header_name = "x-client" }}"#
        )
    };
    let left = |gw: &Gateway| -> u64 {
        let r = Conn::connect(gw.addr()).request(REQ);
        assert_eq!(r.status, 200);
        r.header("ratelimit-remaining")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no RateLimit-Remaining: {:?}", r.headers))
    };
    let gw = Gateway::start(&config(&up, 1, &bucket(1, 10), false));
    for want in [9, 8, 7, 6] {
        assert_eq!(left(&gw), want);
    }
    let settle = || std::thread::sleep(Duration::from_millis(100));
    settle();
    // A higher burst and rate: the level (6) goes on.
    gw.rewrite_config(&config(&up, 1, &bucket(2, 20), false));
    gw.reload_to(2);
    assert_eq!(
        left(&gw),
        5,
        "the level continues across a new rate and burst"
    );
    settle();
    // A burst below the level (5): cut to it.
    gw.rewrite_config(&config(&up, 1, &bucket(2, 3), false));
    gw.reload_to(3);
    assert_eq!(left(&gw), 2, "a level above the new burst is cut to it");
    // Another algorithm: fresh.
    gw.rewrite_config(&config(&up, 1, "{ hour = 10 }", false));
    gw.reload_to(4);
    assert_eq!(remaining(&Conn::connect(gw.addr()).request(REQ)), 9);
}

/// `limit_by = "service"` counts per service name, not per position in the config: a reload that
/// swaps two `[[services]]` blocks keeps each service's count with it. Keyed by position, the
/// used-up service got a fresh quota and the untouched one was refused at once (found by a
/// review).
#[test]
fn limit_by_service_follows_the_service_not_its_position() {
    away_from_hour_end();
    let up = Upstream::echo("up");
    let services = |first: &str, second: &str| {
        format!(
            "[[services]]\nname = \"{first}\"\nurl = \"{url}\"\n\n[[services]]\nname = \"{second}\"\nurl = \"{url}\"\n",
            url = up.url()
        )
    };
    let config = |services: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n{services}\n[[routes]]\nname = \"a\"\nservice = \"svc-a\"\npaths = [\"/a\"]\n\n[[routes]]\nname = \"b\"\nservice = \"svc-b\"\npaths = [\"/b\"]\n\n[[plugins]]\nname = \"rate-limiting\"\nconfig = {{ hour = 2, limit_by = \"service\" }}\n"
        )
    };
    let gw = Gateway::start(&config(&services("svc-a", "svc-b")));
    let get = |path: &str| {
        Conn::connect(gw.addr())
            .request(format!("GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes())
    };
    for _ in 0..2 {
        assert_eq!(get("/a").status, 200);
    }
    assert_eq!(get("/a").status, 429);
    gw.rewrite_config(&config(&services("svc-b", "svc-a")));
    gw.reload_to(2);
    // Past a sync interval, so the worker's counts are the reconciled ones.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get("/a").status, 429, "svc-a keeps its used-up count");
    let r = get("/b");
    assert_eq!(r.status, 200, "svc-b never used: {r:?}");
    assert_eq!(remaining(&r), 1);
}
