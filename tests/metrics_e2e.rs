//! Metrics and the admin API end to end, through the real binary: requests are counted per route and
//! code, latency histograms fill, `/health` and `/status` answer, `POST /reload` swaps the config
//! generation like SIGHUP does, reloads apply a new `[admin] token` (and name what needs a restart),
//! and a reload asked for while draining is refused at once (and `/health` says draining).

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn config(up: &Upstream, path: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 2

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "api"
service = "svc"
paths = ["{path}"]
"#,
        url = up.url()
    )
}

fn admin(addr: SocketAddr, method: &str, path: &str) -> RawResponse {
    send_raw(
        addr,
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
}

/// `admin` with `Authorization: Bearer <token>`.
fn admin_as(addr: SocketAddr, token: &str, method: &str, path: &str) -> RawResponse {
    send_raw(
        addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
        )
        .as_bytes(),
    )
}

/// Polls `/metrics` until `needle` shows up (flushes arrive every 100 ms).
fn wait_metrics(addr: SocketAddr, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = String::from_utf8_lossy(&admin(addr, "GET", "/metrics").body).into_owned();
        if body.contains(needle) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Workers flush on their first control tick, not only every `flush_interval`: with a 20 s interval a
/// fresh gateway (a start, a binary upgrade) would otherwise answer `/health` 503 for 20 s.
#[test]
fn health_is_up_within_a_tick_of_a_start_whatever_the_flush_interval() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(
        &config(&up, "/api").replace("flush_interval = \"100ms\"", "flush_interval = \"20s\""),
    );
    let adm = gw.admin_addr();
    let deadline = Instant::now() + Duration::from_secs(3);
    let health = loop {
        let r = admin(adm, "GET", "/health");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        health.status,
        200,
        "{}",
        String::from_utf8_lossy(&health.body)
    );
    assert!(
        String::from_utf8_lossy(&health.body).contains("\"workers\":2,\"serving\":2"),
        "{}",
        String::from_utf8_lossy(&health.body)
    );
}

#[test]
fn requests_are_counted_and_admin_endpoints_answer() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(&up, "/api"));
    let adm = gw.admin_addr();
    for _ in 0..5 {
        assert_eq!(get(gw.addr(), HOST, "/api/x").status, 200);
    }
    assert_eq!(get(gw.addr(), HOST, "/nothing").status, 404);

    let want = r#"ringgate_http_requests_total{route="api",service="svc",code="200"} 5"#;
    let metrics = wait_metrics(adm, want);
    assert!(metrics.contains(want), "{metrics}");
    assert!(
        metrics.contains(r#"code="404""#),
        "no-route answers are counted: {metrics}"
    );
    assert!(
        metrics.contains("ringgate_request_duration_seconds_bucket{route=\"api\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringgate_upstream_connections{"),
        "{metrics}"
    );

    assert_eq!(admin(adm, "GET", "/health").status, 200);
    let status = admin(adm, "GET", "/status");
    assert_eq!(status.status, 200);
    let text = String::from_utf8_lossy(&status.body).into_owned();
    assert!(text.contains("\"generation\":1"), "{text}");

    let hist = admin(adm, "GET", "/histograms?route=api&kind=added");
    assert_eq!(hist.status, 200);
    let table = String::from_utf8_lossy(&hist.body).into_owned();
    assert!(table.contains("Percentile"), "{table}");
}

#[test]
fn post_reload_swaps_the_generation() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(&up, "/api"));
    let adm = gw.admin_addr();
    assert_eq!(get(gw.addr(), HOST, "/v2/x").status, 404);
    gw.rewrite_config(&config(&up, "/v2"));
    let r = admin(adm, "POST", "/reload");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(String::from_utf8_lossy(&r.body).contains("\"generation\":2"));
    // The reload returned after every worker confirmed: the next request sees the new route.
    assert_eq!(get(gw.addr(), HOST, "/v2/x").status, 200);
    // A broken config is refused with its errors and the gateway keeps serving.
    gw.rewrite_config("[server]\nlisten = 5\n");
    let r = admin(adm, "POST", "/reload");
    assert_eq!(r.status, 400);
    assert_eq!(get(gw.addr(), HOST, "/v2/x").status, 200);
    let metrics = wait_metrics(adm, r#"result="failure"} 1"#);
    assert!(
        metrics.contains(r#"ringgate_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("ringgate_config_generation 2"),
        "{metrics}"
    );
}

/// Reloads are queued, and the newest file wins. A `POST /reload` whose load is slow (here: the
/// config path is a FIFO, written only later; in life a resolver that does not answer) reads the
/// old version; a SIGHUP and four more POSTs that come meanwhile, after the file was replaced,
/// are all served by one more reload, which reads the new version. Before, the SIGHUP installed
/// the new file first and the slow load then committed the old one over it, with a newer
/// generation number (found by a review), and every queued POST made a reload of its own.
#[test]
fn reloads_are_queued_and_the_newest_file_wins() {
    use std::os::unix::fs::OpenOptionsExt;
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(&up, "/v1"));
    let adm = gw.admin_addr();
    let path = gw.config_path().to_path_buf();
    let fifo = path.with_extension("fifo");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    std::fs::rename(&fifo, &path).expect("fifo in place");
    let slow = std::thread::spawn(move || admin(adm, "POST", "/reload"));
    // The writer end opens once the reload's load has opened the FIFO for reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => break f,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("the reload never opened the config: {e}"),
        }
    };
    // The file is replaced by the newest version while that load waits.
    let newest = path.with_extension("new");
    std::fs::write(&newest, config(&up, "/v3")).expect("write");
    std::fs::rename(&newest, &path).expect("replace");
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_log("signal received signal=SIGHUP", Duration::from_secs(5)));
    let queued: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || admin(adm, "POST", "/reload")))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        get(gw.addr(), HOST, "/v1/x").status,
        200,
        "still generation 1"
    );
    // Now the slow load gets its (older) text.
    std::io::Write::write_all(&mut writer, config(&up, "/v2").as_bytes()).expect("fifo write");
    drop(writer);
    let body = |r: &RawResponse| String::from_utf8_lossy(&r.body).into_owned();
    let r = slow.join().expect("slow reload");
    assert_eq!(
        (r.status, body(&r)),
        (
            200,
            "{\"generation\":2,\"restart_required\":[]}\n".to_owned()
        )
    );
    for q in queued {
        let r = q.join().expect("queued reload");
        assert_eq!(
            (r.status, body(&r)),
            (
                200,
                "{\"generation\":3,\"restart_required\":[]}\n".to_owned()
            ),
            "one more reload served every request that came during the slow one"
        );
    }
    assert_eq!(get(gw.addr(), HOST, "/v3/x").status, 200);
    assert_eq!(get(gw.addr(), HOST, "/v2/x").status, 404);
    let metrics = wait_metrics(adm, r#"result="success"} 2"#);
    assert!(
        metrics.contains(r#"ringgate_config_reloads_total{result="success"} 2"#)
            && metrics.contains("ringgate_config_generation 3"),
        "{metrics}"
    );
}

/// A reload that shortens `flush_interval` keeps `/health` at 200: every worker flushes as it
/// takes the new generation, before it confirms it. Before, `/health` judged the last flush (up
/// to the old interval ago) against three new intervals and answered 503 until the next flush,
/// up to a whole new interval (found by a review): long enough for a load balancer to take the
/// node out.
#[test]
fn shortening_the_flush_interval_keeps_health_green() {
    let up = Upstream::echo("up");
    let with = |interval: &str| {
        config(&up, "/api").replace(
            "flush_interval = \"100ms\"",
            &format!("flush_interval = \"{interval}\""),
        )
    };
    let gw = Gateway::start(&with("10s"));
    let adm = gw.admin_addr();
    // Serving once each worker made its first tick's flush.
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin(adm, "GET", "/health").status != 200 {
        assert!(Instant::now() < deadline, "never healthy");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last flush (the first tick's) is now 2 s old: over three of the new intervals.
    std::thread::sleep(Duration::from_secs(2));
    gw.rewrite_config(&with("500ms"));
    assert_eq!(admin(adm, "POST", "/reload").status, 200);
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until {
        let r = admin(adm, "GET", "/health");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn metrics_enabled_false_skips_per_request_recording() {
    let up = Upstream::echo("up");
    let text = config(&up, "/api").replace("[metrics]\n", "[metrics]\nenabled = false\n");
    let gw = Gateway::start(&text);
    let adm = gw.admin_addr();
    for _ in 0..5 {
        assert_eq!(get(gw.addr(), HOST, "/api/x").status, 200);
    }
    // Connection counts still flow (and show the flushes after the requests arrived); request counts
    // do not.
    let accepted = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("ringgate_downstream_connections_accepted_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let metrics = loop {
        let m = String::from_utf8_lossy(&admin(adm, "GET", "/metrics").body).into_owned();
        if accepted(&m) >= 5 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(accepted(&metrics) >= 5, "{metrics}");
    assert!(
        !metrics.contains(r#"ringgate_http_requests_total{route="api""#),
        "{metrics}"
    );
    assert_eq!(admin(adm, "GET", "/health").status, 200);
}

#[test]
fn per_consumer_counts_are_opt_in_and_capped() {
    let up = Upstream::echo("up");
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 2

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"
per_consumer_labels = true
max_consumer_labels = 1

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "api"
service = "svc"
paths = ["/api"]

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "alice-key-0123456789" }}]

[[consumers]]
username = "bob"
keyauth_credentials = [{{ key = "bob-key-0123456789" }}]

[[plugins]]
name = "key-auth"
"#,
        url = up.url()
    );
    let gw = Gateway::start(&toml);
    let adm = gw.admin_addr();
    let send = |key: &str| {
        let mut c = Conn::connect(gw.addr());
        c.request(format!("GET /api HTTP/1.1\r\nHost: {HOST}\r\napikey: {key}\r\n\r\n").as_bytes())
    };
    for _ in 0..3 {
        assert_eq!(send("alice-key-0123456789").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(send("bob-key-0123456789").status, 200);
    }
    assert_eq!(send("wrong").status, 401);
    // Two workers publish on their own flush ticks: wait for both totals, not just the first line.
    let alice = "ringgate_consumer_requests_total{consumer=\"alice\",code=\"200\"} 3";
    let other = "ringgate_consumer_requests_total{consumer=\"(other)\",code=\"200\"} 2";
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = wait_metrics(adm, other);
        if m.contains(alice) || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(m.contains(alice), "{m}");
    // The cap is 1: bob is counted as (other); the failed request identified nobody.
    assert!(m.contains(other), "{m}");
    assert!(!m.contains("consumer=\"bob\""), "{m}");
    assert!(
        !m.lines()
            .any(|l| l.starts_with("ringgate_consumer_requests_total") && l.contains("\"401\"")),
        "{m}"
    );
}

#[test]
fn parked_connections_stay_counted_until_the_client_closes_or_keep_alive_expires() {
    // Idle past 500 ms, a connection parks (no task of its own); it is still an open connection, and
    // whichever way it ends (the client closes, the keep-alive deadline passes) it leaves the count.
    let up = Upstream::echo("up");
    let toml = config(&up, "/api").replacen(
        "workers = 2\n",
        "workers = 2\n\n[server.timeouts]\nkeepalive = \"3s\"\n",
        1,
    );
    let gw = Gateway::start(&toml);
    let adm = gw.admin_addr();
    let open = |n: usize| -> Vec<Conn> {
        (0..n)
            .map(|i| {
                let mut c = Conn::connect(gw.addr());
                assert_eq!(c.get(HOST, &format!("/api/{i}")).status, 200);
                c
            })
            .collect()
    };
    let closing = open(10);
    let mut expiring = open(10);
    std::thread::sleep(Duration::from_millis(1000));
    let m = wait_metrics(adm, "ringgate_downstream_connections 20\n");
    assert!(m.contains("ringgate_downstream_connections 20\n"), "{m}");

    drop(closing);
    let m = wait_metrics(adm, "ringgate_downstream_connections 10\n");
    assert!(
        m.contains("ringgate_downstream_connections 10\n"),
        "client-closed parked connections must leave the count: {m}"
    );

    let m = wait_metrics(adm, "ringgate_downstream_connections 0\n");
    assert!(
        m.contains("ringgate_downstream_connections 0\n"),
        "expired parked connections must leave the count: {m}"
    );
    for c in &mut expiring {
        assert!(
            c.probe_closed(Duration::from_secs(1)),
            "the gateway closed it"
        );
    }
}

/// `config` with `[admin]` lines after `listen` (a token, say).
fn config_admin(up: &Upstream, admin_extra: &str) -> String {
    config(up, "/api").replacen(
        "[admin]\nlisten = \"127.0.0.1:0\"\n",
        &format!("[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}"),
        1,
    )
}

#[test]
fn reload_applies_the_admin_token() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config_admin(&up, "token = \"old-token-1\"\n"));
    let adm = gw.admin_addr();
    assert_eq!(admin(adm, "GET", "/status").status, 401);
    assert_eq!(admin_as(adm, "old-token-1", "GET", "/status").status, 200);

    // Rotation through the API itself: the reload is authorized by the old token, and from its answer
    // on only the new one works.
    gw.rewrite_config(&config_admin(&up, "token = \"new-token-2\"\n"));
    let r = admin_as(adm, "old-token-1", "POST", "/reload");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(admin_as(adm, "old-token-1", "GET", "/status").status, 401);
    assert_eq!(admin_as(adm, "new-token-2", "GET", "/status").status, 200);
    assert!(
        gw.wait_log("admin token changed", Duration::from_secs(5)),
        "the change is logged (never the token): {:?}",
        gw.logs()
    );
    assert!(!gw.logs().iter().any(|l| l.contains("new-token-2")));

    // Removing the token (allowed on loopback) by SIGHUP, then adding one back by POST /reload.
    gw.rewrite_config(&config_admin(&up, ""));
    gw.reload_to(3);
    assert_eq!(admin(adm, "GET", "/status").status, 200);
    gw.rewrite_config(&config_admin(&up, "token = \"third-token-3\"\n"));
    let r = admin(adm, "POST", "/reload");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(admin(adm, "GET", "/status").status, 401);
    assert_eq!(admin_as(adm, "third-token-3", "GET", "/status").status, 200);

    // A new admin.listen cannot move the running listener: the restart warning names it, the old
    // address keeps serving with the new token.
    let moved = config_admin(&up, "token = \"fourth-token-4\"\n").replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.2:0\"",
        1,
    );
    assert!(moved.contains("127.0.0.2:0"), "{moved}");
    gw.rewrite_config(&moved);
    let r = admin_as(adm, "third-token-3", "POST", "/reload");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The answer names it too, not only the log.
    assert!(
        String::from_utf8_lossy(&r.body).ends_with(",\"restart_required\":[\"admin.listen\"]}\n"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains("restart") && l.contains("admin.listen")),
        "{:?}",
        gw.logs()
    );
    assert_eq!(
        admin_as(adm, "fourth-token-4", "GET", "/status").status,
        200
    );
}

#[test]
fn reload_while_draining_is_refused() {
    let up = Upstream::start(Behaviour::Hang);
    let toml =
        config(&up, "/api").replacen("workers = 2\n", "workers = 2\ndrain_timeout = \"60s\"\n", 1);
    let gw = Gateway::start(&toml);
    let adm = gw.admin_addr();
    // A request that stays in flight keeps the gateway draining.
    let addr = gw.addr();
    let client = std::thread::spawn(move || {
        let mut c = Conn::connect(addr);
        let _ = c.send(format!("GET /api/x HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
        let _ = c.read_response();
    });
    assert!(
        up.wait_requests(1, Duration::from_secs(5)),
        "request never reached the upstream"
    );
    gw.sigterm();
    assert!(
        gw.wait_log("draining", Duration::from_secs(10)),
        "{:?}",
        gw.logs()
    );
    let r = admin(adm, "POST", "/reload");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(
        !gw.logs()
            .iter()
            .any(|l| l.contains("reloaded generation") || l.contains("config reloaded")),
        "a refused reload is not logged as one: {:?}",
        gw.logs()
    );
    // Still draining: the refusal did not wait for the drain to end.
    assert_eq!(admin(adm, "GET", "/status").status, 200);
    // /health says so (before, it went 503 only after three flush intervals with no flush,
    // and said "unavailable"; with flush_interval = 60s that was 3 minutes of 200).
    let h = admin(adm, "GET", "/health");
    let body = String::from_utf8_lossy(&h.body).into_owned();
    assert_eq!(h.status, 503, "{body}");
    assert!(body.starts_with("{\"status\":\"draining\","), "{body}");
    drop(gw);
    let _ = client.join();
}

/// Two routes on two `url` services; `swapped` lists both (routes and services, hence upstream
/// targets) in the other order, so every route and target index names the other one.
fn two_route_config(slow: &Upstream, fast: &Upstream, swapped: bool) -> String {
    let head = r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"
"#;
    let slow_svc = format!(
        "\n[[services]]\nname = \"slow\"\nurl = \"{}\"\n",
        slow.url()
    );
    let fast_svc = format!(
        "\n[[services]]\nname = \"fast\"\nurl = \"{}\"\n",
        fast.url()
    );
    let slow_route = "\n[[routes]]\nname = \"slow\"\nservice = \"slow\"\npaths = [\"/slow\"]\n";
    let fast_route = "\n[[routes]]\nname = \"fast\"\nservice = \"fast\"\npaths = [\"/fast\"]\n";
    if swapped {
        format!("{head}{fast_svc}{slow_svc}{fast_route}{slow_route}")
    } else {
        format!("{head}{slow_svc}{fast_svc}{slow_route}{fast_route}")
    }
}

/// The value of the sample whose line starts with `series` (name and labels, up to the space).
fn sample(metrics: &str, series: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `/metrics` until `pred` holds (or 5 s passed); returns the last scrape.
fn wait_metrics_until(addr: SocketAddr, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = String::from_utf8_lossy(&admin(addr, "GET", "/metrics").body).into_owned();
        if pred(&body) || Instant::now() > deadline {
            return body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn request_in_flight_across_a_reload_counts_under_its_own_route_and_target() {
    // Long enough for the reload and a few flushes to happen while it is upstream.
    let slow = Upstream::named("slow", Behaviour::EchoDelayed(Duration::from_millis(3000)));
    let fast = Upstream::echo("fast");
    let gw = Gateway::start(&two_route_config(&slow, &fast, false));
    let adm = gw.admin_addr();
    assert_eq!(get(gw.addr(), HOST, "/fast/1").status, 200);

    let addr = gw.addr();
    let in_flight = std::thread::spawn(move || get(addr, HOST, "/slow/1"));
    assert!(
        slow.wait_requests(1, Duration::from_secs(5)),
        "request never reached the upstream"
    );
    // Reordered: index 0 now names route "fast" and the fast upstream's target.
    gw.rewrite_config(&two_route_config(&slow, &fast, true));
    gw.reload_to(2);

    let active = |up: &Upstream| {
        format!(
            "ringgate_upstream_connections{{upstream=\"service:{}\",target=\"{t}\",address=\"{t}\",state=\"active\"}}",
            up.name(),
            t = up.addr()
        )
    };
    let (slow_active, fast_active) = (active(&slow), active(&fast));
    // While it is still upstream, its connection is counted on its own target (checked a few
    // flush intervals after the reload: the worker flushes the old generation when it switches).
    std::thread::sleep(Duration::from_millis(500));
    let m = String::from_utf8_lossy(&admin(adm, "GET", "/metrics").body).into_owned();
    assert!(!in_flight.is_finished(), "the upstream answered too early");
    assert_eq!(
        sample(&m, &slow_active),
        Some(1),
        "the old generation's connection counts on its own target: {m}"
    );
    assert_eq!(sample(&m, &fast_active), Some(0), "{m}");

    let r = in_flight.join().expect("client thread");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("slow"));

    let slow_200 = r#"ringgate_http_requests_total{route="slow",service="slow",code="200"}"#;
    let fast_200 = r#"ringgate_http_requests_total{route="fast",service="fast",code="200"}"#;
    let m = wait_metrics_until(adm, |m| sample(m, slow_200) == Some(1));
    assert_eq!(
        sample(&m, slow_200),
        Some(1),
        "counted under its own route: {m}"
    );
    assert_eq!(
        sample(&m, fast_200),
        Some(1),
        "not under the route now at its index: {m}"
    );
    assert!(
        !m.contains(r#"route="(none)""#),
        "nothing lands on (none): {m}"
    );
    assert!(
        m.contains("ringgate_request_duration_seconds_count{route=\"slow\"} 1\n"),
        "{m}"
    );
    assert_eq!(sample(&m, &slow_active), Some(0), "{m}");
    assert_eq!(sample(&m, &fast_active), Some(0), "{m}");

    // New requests count under the new generation, by name, continuing the same series.
    assert_eq!(get(gw.addr(), HOST, "/fast/2").status, 200);
    let m = wait_metrics_until(adm, |m| sample(m, fast_200) == Some(2));
    assert_eq!(sample(&m, fast_200), Some(2), "{m}");
    assert_eq!(sample(&m, slow_200), Some(1), "{m}");
}

/// `metrics.histogram_file` follows reloads: set by a reload (it was not there at start), the file
/// is written at shutdown; moved by another, the new path gets it and the old one does not.
#[test]
fn histogram_file_follows_reloads() {
    let up = Upstream::echo("up");
    let dir = std::env::temp_dir().join(format!("rg-hdr-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (first, second) = (dir.join("a.txt"), dir.join("b.txt"));
    let base = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[[services]]\nname = \"s\"\nurl = \"{}\"\n\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/\"]\n",
        up.url()
    );
    let with_file =
        |p: &std::path::Path| format!("{base}\n[metrics]\nhistogram_file = \"{}\"\n", p.display());
    let mut gw = Gateway::start(&base);
    gw.rewrite_config(&with_file(&first));
    gw.reload_to(2);
    gw.rewrite_config(&with_file(&second));
    gw.reload_to(3);
    for i in 0..5 {
        assert_eq!(get(gw.addr(), HOST, &format!("/{i}")).status, 200);
    }
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let text = std::fs::read_to_string(&second).unwrap_or_default();
    assert!(text.contains("# route=r kind=total unit=us"), "{text:?}");
    assert!(
        !first.exists(),
        "the path a reload moved away from was written"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
