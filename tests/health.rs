//! Upstream health end to end, through the real binary on loopback: passive ejection of refusing
//! and hanging targets (and their return), failing open when every target is out, active checks
//! taking a target out and back without failing client traffic, and reloads that move targets
//! around (health follows the target's identity, never its index).

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A keep-alive HTTP server on a fixed or fresh loopback address: `GET /healthz` answers
/// `health` (changeable), everything else 200 with `X-Upstream: <name>`. Counts accepted
/// connections and non-probe requests. Stops accepting on Drop.
struct Mini {
    addr: SocketAddr,
    health: Arc<AtomicU16>,
    accepts: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    probes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Mini {
    fn start(name: &str) -> Mini {
        Mini::on("127.0.0.1:0".parse().expect("addr"), name)
    }

    fn on(addr: SocketAddr, name: &str) -> Mini {
        let listener = TcpListener::bind(addr).expect("bind mini upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let m = Mini {
            addr: listener.local_addr().expect("addr"),
            health: Arc::new(AtomicU16::new(200)),
            accepts: Arc::default(),
            requests: Arc::default(),
            probes: Arc::default(),
            stop: Arc::default(),
        };
        let (health, accepts, requests, probes, stop) = (
            m.health.clone(),
            m.accepts.clone(),
            m.requests.clone(),
            m.probes.clone(),
            m.stop.clone(),
        );
        let name = name.to_owned();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        accepts.fetch_add(1, Ordering::SeqCst);
                        let (h, r, p, n) = (
                            health.clone(),
                            requests.clone(),
                            probes.clone(),
                            name.clone(),
                        );
                        std::thread::spawn(move || serve(s, &n, &h, &r, &p));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        m
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Mini {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut s: TcpStream,
    name: &str,
    health: &AtomicU16,
    requests: &AtomicUsize,
    probes: &AtomicUsize,
) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let close = head.to_ascii_lowercase().contains("connection: close");
        let response = if head.starts_with("GET /healthz ") {
            probes.fetch_add(1, Ordering::SeqCst);
            let st = health.load(Ordering::SeqCst);
            format!("HTTP/1.1 {st} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        } else {
            requests.fetch_add(1, Ordering::SeqCst);
            format!("HTTP/1.1 200 OK\r\nX-Upstream: {name}\r\nContent-Length: 2\r\n\r\nok")
        };
        if s.write_all(response.as_bytes()).is_err() || close || response.contains("close") {
            return;
        }
    }
}

/// One upstream `pool` with `targets` and a `[upstreams.health.*]` block; an admin listener and
/// 100 ms metric flushes; `timeouts` go into `[server.timeouts]`.
fn config(targets: &[SocketAddr], health: &str, timeouts: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ target = \"{t}\" }}"))
        .collect();
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[server.timeouts]
{timeouts}

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"

[[upstreams]]
name = "pool"
targets = [{}]
{health}

[[services]]
name = "svc"
upstream = "pool"

[[routes]]
name = "r"
service = "svc"
paths = ["/"]
strip_path = false
"#,
        targets.join(", ")
    )
}

/// The value of the sample `name{upstream="pool",target="<t>",address="<t>"}`, once a scrape has it and `pred`
/// holds for it (or after 5 s: then the last value, or None).
fn metric(gw: &Gateway, name: &str, t: SocketAddr, pred: impl Fn(u64) -> bool) -> Option<u64> {
    let adm = gw.admin_addr();
    let needle = format!("{name}{{upstream=\"pool\",target=\"{t}\",address=\"{t}\"}} ");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = send_raw(
            adm,
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
        );
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let v = body
            .lines()
            .find_map(|l| l.strip_prefix(&needle))
            .and_then(|v| v.trim().parse().ok());
        if v.is_some_and(&pred) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `name{upstream="pool",target="<t>"}` once the worker has flushed after everything before this
/// call, for checks that something did *not* change: waiting for a change that must not come
/// would cost `metric`'s full 5 s, and a fixed sleep would read a late flush as "no change".
fn metric_settled(gw: &Gateway, name: &str, t: SocketAddr) -> Option<u64> {
    // A flush that arrived 50 ms (half an interval) after now was taken after now.
    flushed_after(gw, Instant::now() + Duration::from_millis(50));
    metric(gw, name, t, |_| true)
}

/// Waits until the (single) worker's latest metrics flush arrived after `since`, by `/status`'s
/// `last_flush_ms_ago`.
fn flushed_after(gw: &Gateway, since: Instant) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let asked = Instant::now();
        let r = send_raw(
            gw.admin_addr(),
            b"GET /status HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
        // The flush arrived no later than `asked - ago` (+1 ms of rounding).
        let arrived = v["workers"][0]["last_flush_ms_ago"]
            .as_u64()
            .and_then(|ago| asked.checked_sub(Duration::from_millis(ago + 1)));
        if arrived.is_some_and(|a| a >= since) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics flush: {}",
            r.body_str()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `n` GETs on one keep-alive connection; the `X-Upstream` of each (or the status if not 200).
fn spray(gw: &Gateway, n: usize) -> Vec<String> {
    let mut c = Conn::connect(gw.addr());
    (0..n)
        .map(|i| {
            let r = c.get(HOST, &format!("/{i}"));
            if r.status == 200 {
                r.header("x-upstream").unwrap_or("?").to_owned()
            } else {
                r.status.to_string()
            }
        })
        .collect()
}

#[test]
fn a_refusing_target_is_ejected_then_tried_again_after_the_cooldown_and_recovers() {
    let good = Mini::start("good");
    // Revived on the same port below.
    let dead = common::upstream::released_addr();
    let gw = Gateway::start(&config(
        &[dead, good.addr],
        "[upstreams.health.passive]\nmax_fails = 2\nfail_timeout = \"1500ms\"",
        "",
    ));
    let ejected_at = Instant::now();
    // Failover hides the refusals from clients; the second one ejects the target.
    let first = spray(&gw, 4);
    assert!(first.iter().all(|u| u == "good"), "{first:?}");
    assert!(
        gw.wait_log(
            &format!("upstream target ejected upstream=pool target={dead} address={dead}"),
            Duration::from_secs(2)
        ),
        "no ejection logged"
    );
    assert_eq!(
        metric(&gw, "ringgate_upstream_connect_errors_total", dead, |v| v
            >= 2),
        Some(2)
    );
    // While ejected: no connect attempt at all to the dead target.
    let during = spray(&gw, 20);
    assert!(during.iter().all(|u| u == "good"), "{during:?}");
    assert_eq!(good.requests(), 24);
    assert_eq!(
        metric_settled(&gw, "ringgate_upstream_connect_errors_total", dead),
        Some(2),
        "the ejected target was still tried"
    );
    assert_eq!(
        metric(&gw, "ringgate_upstream_ejections_total", dead, |v| v >= 1),
        Some(1)
    );
    assert_eq!(
        metric(&gw, "ringgate_upstream_target_healthy", dead, |v| v == 0),
        Some(0)
    );

    // It comes back; after the cooldown it takes traffic again and the breaker closes.
    let revived = Mini::on(dead, "revived");
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(ejected_at.elapsed()));
    let after = spray(&gw, 10);
    assert!(
        after.iter().all(|u| u == "good" || u == "revived"),
        "{after:?}"
    );
    let back = after.iter().filter(|u| *u == "revived").count();
    assert!(
        (4..=6).contains(&back),
        "equal weights split again: {after:?}"
    );
    assert!(revived.requests() >= 4);
    assert!(gw.wait_log("upstream target recovered", Duration::from_secs(2)));
    assert_eq!(
        metric(&gw, "ringgate_upstream_target_healthy", dead, |v| v == 1),
        Some(1)
    );
}

/// `http_statuses`: answers with a listed status count as failures, so a target answering 503s is
/// ejected after `max_fails` of them, and the other takes every request; without the list a 503
/// is an answer like any other.
#[test]
fn a_target_answering_a_listed_status_is_ejected() {
    for (listed, want_503s) in [(true, 2), (false, 10)] {
        let sick =
            Upstream::fixed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        let good = Mini::start("good");
        let statuses = if listed {
            "\nhttp_statuses = [503]"
        } else {
            ""
        };
        let gw = Gateway::start(&config(
            &[sick.addr(), good.addr],
            &format!("[upstreams.health.passive]\nmax_fails = 2\nfail_timeout = \"30s\"{statuses}"),
            "",
        ));
        let got = spray(&gw, 20);
        let sick_answers = got.iter().filter(|u| *u == "503").count();
        assert_eq!(sick_answers, want_503s, "listed={listed}: {got:?}");
        assert_eq!(sick.request_count(), want_503s, "listed={listed}");
        if listed {
            assert_eq!(
                metric(&gw, "ringgate_upstream_ejections_total", sick.addr(), |v| v
                    >= 1),
                Some(1)
            );
        }
    }
}

/// A reload that turns passive checks off (`max_fails = 0`) lets the targets they ejected take
/// traffic at once, not when their cooldown would have ended.
#[test]
fn turning_passive_checks_off_lets_ejected_targets_back_at_once() {
    let good = Mini::start("good");
    // Revived on the same port below.
    let dead = common::upstream::released_addr();
    let passive = |max_fails: u32| {
        config(
            &[dead, good.addr],
            &format!("[upstreams.health.passive]\nmax_fails = {max_fails}\nfail_timeout = \"60s\""),
            "",
        )
    };
    let gw = Gateway::start(&passive(1));
    let first = spray(&gw, 4);
    assert!(first.iter().all(|u| u == "good"), "{first:?}");
    assert!(
        gw.wait_log("upstream target ejected", Duration::from_secs(2)),
        "{:#?}",
        gw.logs()
    );
    let revived = Mini::on(dead, "revived");
    assert!(spray(&gw, 6).iter().all(|u| u == "good"), "still ejected");
    gw.rewrite_config(&passive(0));
    gw.reload_to(2);
    let after = spray(&gw, 10);
    let back = after.iter().filter(|u| *u == "revived").count();
    assert!(
        (4..=6).contains(&back),
        "equal weights split again: {after:?}"
    );
    assert!(revived.requests() >= 4);
}

#[test]
fn a_target_in_probation_that_fails_again_is_ejected_at_once() {
    let good = Mini::start("good");
    let dead = refusing_addr();
    let gw = Gateway::start(&config(
        &[dead, good.addr],
        "[upstreams.health.passive]\nmax_fails = 3\nfail_timeout = \"300ms\"",
        "",
    ));
    spray(&gw, 6);
    assert_eq!(
        metric(&gw, "ringgate_upstream_connect_errors_total", dead, |v| v
            >= 3),
        Some(3)
    );
    std::thread::sleep(Duration::from_millis(400));
    // Probation: one refusal (not three) ejects it again, now for 600 ms.
    let r = spray(&gw, 10);
    assert!(r.iter().all(|u| u == "good"), "{r:?}");
    assert_eq!(
        metric_settled(&gw, "ringgate_upstream_connect_errors_total", dead),
        Some(4)
    );
    assert_eq!(
        metric(&gw, "ringgate_upstream_ejections_total", dead, |v| v >= 2),
        Some(2)
    );
    assert!(
        gw.wait_log("cooldown_ms=600", Duration::from_secs(2)),
        "doubled cooldown"
    );
}

#[test]
fn a_target_that_never_answers_is_ejected_so_later_requests_do_not_wait() {
    let hang = Upstream::start(Behaviour::Hang);
    let good = Mini::start("good");
    let gw = Gateway::start(&config(
        &[hang.addr(), good.addr],
        "[upstreams.health.passive]\nmax_fails = 2\nfail_timeout = \"30s\"",
        "upstream_read = \"300ms\"",
    ));
    let mut c = Conn::connect(gw.addr());
    let mut timeouts = 0;
    for i in 0..6 {
        let r = c.get(HOST, &format!("/{i}"));
        if r.status == 504 {
            timeouts += 1;
        } else {
            assert_eq!(r.status, 200);
        }
        if r.closed {
            c = Conn::connect(gw.addr());
        }
    }
    assert_eq!(timeouts, 2, "ejected after its second read timeout");
    assert!(gw.wait_log("upstream target ejected", Duration::from_secs(2)));
    let start = Instant::now();
    let later = spray(&gw, 20);
    assert!(later.iter().all(|u| u == "good"), "{later:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "20 requests took {:?}: some waited for the hanging target",
        start.elapsed()
    );
    assert_eq!(hang.request_count(), 2);
}

#[test]
fn with_every_target_ejected_requests_are_still_tried_and_fail_fast() {
    let (a, b) = (refusing_addr(), refusing_addr());
    let gw = Gateway::start(&config(
        &[a, b],
        "[upstreams.health.passive]\nmax_fails = 1\nfail_timeout = \"30s\"",
        "",
    ));
    for _ in 0..6 {
        let start = Instant::now();
        let r = send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n");
        // Fail open: a 502 from trying, never a 503 "no healthy target", never a hang.
        r.assert_json_error(502);
        assert!(start.elapsed() < Duration::from_secs(2));
    }
    let errors = |t| metric(&gw, "ringgate_upstream_connect_errors_total", t, |v| v > 0);
    let tried = errors(a).unwrap_or(0) + errors(b).unwrap_or(0);
    // Both ejected by the first request (failover); then one attempt per request (fail open, no
    // failover among ejected targets).
    assert!((6..=7).contains(&tried), "connect attempts: {tried}");
    assert_eq!(
        metric(&gw, "ringgate_upstream_target_healthy", a, |v| v == 0),
        Some(0)
    );
}

#[test]
fn blackholed_targets_all_ejected_cost_one_connect_timeout_not_one_each() {
    let (a, b) = (blackhole(), blackhole());
    let gw = Gateway::start(&config(
        &[a.addr, b.addr],
        "[upstreams.health.passive]\nmax_fails = 1\nfail_timeout = \"30s\"",
        "upstream_connect = \"400ms\"",
    ));
    // The first request tries both (800 ms) and ejects both.
    let mut c = Conn::connect(gw.addr());
    c.get(HOST, "/").assert_json_error(504);
    let timeouts = |gw: &Gateway| {
        [a.addr, b.addr]
            .iter()
            .map(|t| metric_settled(gw, "ringgate_upstream_timeouts_total", *t).unwrap_or(0))
            .sum::<u64>()
    };
    assert_eq!(timeouts(&gw), 2, "the first request tried both");
    // Counted, not timed: each later request waits one connect timeout, not one per target.
    for n in 1..=2 {
        c.get(HOST, "/").assert_json_error(504);
        assert_eq!(timeouts(&gw), 2 + n, "one connect attempt per request");
    }
}

#[test]
fn an_actively_failing_target_is_taken_out_without_failing_clients_and_comes_back() {
    let a = Mini::start("a");
    let b = Mini::start("b");
    a.health.store(500, Ordering::SeqCst);
    let gw = Gateway::start(&config(
        &[a.addr, b.addr],
        "[upstreams.health.active]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 2",
        "",
    ));
    let start = Instant::now();
    assert!(
        gw.wait_log("unhealthy (active check)", Duration::from_secs(3)),
        "a was never taken out"
    );
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        start.elapsed()
    );
    assert!(gw.wait_log(&format!("target={}", a.addr), Duration::from_secs(5)));
    assert_eq!(
        metric(&gw, "ringgate_upstream_target_healthy", a.addr, |v| v == 0),
        Some(0)
    );
    let before = a.requests();
    let out = spray(&gw, 20);
    assert!(out.iter().all(|u| u == "b"), "{out:?}");
    assert_eq!(
        a.requests(),
        before,
        "the unhealthy target got client traffic"
    );
    assert!(b.probes.load(Ordering::SeqCst) >= 2, "b is probed too");

    a.health.store(200, Ordering::SeqCst);
    assert!(
        gw.wait_log("target healthy (active check)", Duration::from_secs(3)),
        "a never came back"
    );
    std::thread::sleep(Duration::from_millis(150)); // the workers' control tick
    let back = spray(&gw, 20);
    assert!(back.iter().all(|u| u == "a" || u == "b"), "{back:?}");
    assert_eq!(back.iter().filter(|u| *u == "a").count(), 10, "{back:?}");
}

#[test]
fn reloads_keep_health_with_the_target_not_its_index() {
    let good = Mini::start("good");
    let fresh = Mini::start("fresh");
    let dead = refusing_addr();
    let health = "[upstreams.health.passive]\nmax_fails = 1\nfail_timeout = \"30s\"";
    let gw = Gateway::start(&config(&[dead, good.addr], health, ""));
    spray(&gw, 4);
    assert_eq!(
        metric(&gw, "ringgate_upstream_connect_errors_total", dead, |v| v
            >= 1),
        Some(1)
    );
    // `fresh` takes index 0, where the ejected target was: it must get its share at once.
    gw.rewrite_config(&config(&[fresh.addr, good.addr], health, ""));
    gw.reload_to(2);
    let r = spray(&gw, 10);
    assert_eq!(r.iter().filter(|u| *u == "fresh").count(), 5, "{r:?}");
    assert_eq!(r.iter().filter(|u| *u == "good").count(), 5, "{r:?}");
    // The dead target comes back at another index: still ejected (no new connect attempt).
    gw.rewrite_config(&config(&[good.addr, fresh.addr, dead], health, ""));
    gw.reload_to(3);
    let r = spray(&gw, 12);
    assert!(r.iter().all(|u| u == "good" || u == "fresh"), "{r:?}");
    assert_eq!(
        metric_settled(&gw, "ringgate_upstream_connect_errors_total", dead),
        Some(1),
        "the ejection did not follow the target"
    );
    assert!(!gw.log_contains("panic"));
}

#[test]
fn a_reload_adding_a_failing_target_gets_it_probed_and_taken_out() {
    let a = Mini::start("a");
    let c = Mini::start("c");
    c.health.store(503, Ordering::SeqCst);
    let active = "[upstreams.health.active]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nunhealthy_threshold = 1";
    let gw = Gateway::start(&config(&[a.addr], active, ""));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.probes.load(Ordering::SeqCst), 0);
    gw.rewrite_config(&config(&[a.addr, c.addr], active, ""));
    gw.reload_to(2);
    assert!(
        gw.wait_log(
            &format!(
                "unhealthy (active check) upstream=pool target={} address={}",
                c.addr, c.addr
            ),
            Duration::from_secs(3)
        ),
        "the added target was not probed"
    );
    std::thread::sleep(Duration::from_millis(150));
    let r = spray(&gw, 10);
    assert!(r.iter().all(|u| u == "a"), "{r:?}");
    // Removing it again stops its probes.
    gw.rewrite_config(&config(&[a.addr], active, ""));
    gw.reload_to(3);
    std::thread::sleep(Duration::from_millis(300));
    let probes = c.probes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        c.probes.load(Ordering::SeqCst),
        probes,
        "still probed after removal"
    );
}

/// One request on a fresh connection; whatever comes back (a cut-short response included) is read
/// until the gateway closes.
fn fire(gw: &Gateway, path: &str) {
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("send");
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn a_response_cut_mid_body_neither_resets_nor_counts_the_failures() {
    // Odd requests get a configured failure status; even ones a chunked 200 that dies after its
    // first chunk (the client already has the head). The README: a failure on a mid-body response
    // is not counted, so it must not count as a success either (which would reset the streak and
    // keep a target that fails every other way from ever being ejected).
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (i, s) in listener.incoming().enumerate() {
            let Ok(mut s) = s else { return };
            let mut buf = [0u8; 4096];
            let mut head = Vec::new();
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let answer: &[u8] = if i % 2 == 0 {
                b"HTTP/1.1 503 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            };
            let _ = s.write_all(answer);
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let gw = Gateway::start(&config(
        &[addr],
        "[upstreams.health.passive]\nmax_fails = 2\nfail_timeout = \"30s\"\nhttp_statuses = [503]",
        "",
    ));
    for i in 0..3 {
        fire(&gw, &format!("/{i}"));
    }
    assert_eq!(
        metric(&gw, "ringgate_upstream_ejections_total", addr, |v| v >= 1),
        Some(1),
        "503, cut-short 200, 503: two failures in a row as far as health goes"
    );
}

#[test]
fn workers_share_an_ejection_so_a_dead_target_costs_max_fails_in_all_not_per_worker() {
    let good = Mini::start("good");
    let dead = refusing_addr();
    let cfg = config(
        &[dead, good.addr],
        "[upstreams.health.passive]\nmax_fails = 3\nfail_timeout = \"30s\"",
        "",
    )
    .replace("workers = 1", "workers = 2");
    let gw = Gateway::start(&cfg);
    assert_eq!(gw.workers(), Some(2));
    // A fresh connection per request, so SO_REUSEPORT spreads them over both workers.
    let one = || {
        let r = get(gw.addr(), HOST, "/");
        assert_eq!(r.status, 200, "failover hides the refusals");
    };
    let mut sent = 0;
    while !gw.log_contains("upstream target ejected") {
        assert!(sent < 200, "no ejection after {sent} requests");
        one();
        sent += 1;
    }
    // The other worker applies it on its next control tick (50 ms).
    std::thread::sleep(Duration::from_millis(200));
    let before = metric_settled(&gw, "ringgate_upstream_connect_errors_total", dead)
        .expect("connect errors");
    // The ejecting worker's 3, plus what the other had counted (fewer than 3, unless it reached
    // its own threshold in the same few milliseconds).
    assert!((3..=6).contains(&before), "{before} failed connects");
    for _ in 0..100 {
        one();
    }
    assert_eq!(
        metric_settled(&gw, "ringgate_upstream_connect_errors_total", dead),
        Some(before),
        "a worker still tried the dead target after another ejected it"
    );
    let ejections = gw
        .logs()
        .iter()
        .filter(|l| l.contains("upstream target ejected"))
        .count();
    // One decision, shared (two only if both workers reached the threshold within a tick).
    assert!((1..=2).contains(&ejections), "{:?}", gw.logs());
}

#[test]
fn a_hanging_target_does_not_hold_up_the_probes_of_the_others() {
    // `hang` accepts nothing (a full backlog): each probe of it waits out its 1.5 s timeout.
    let hang = blackhole();
    let good = Mini::start("good");
    let gw = Gateway::start(&config(
        &[hang.addr, good.addr],
        "[upstreams.health.active]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"1500ms\"",
        "",
    ));
    std::thread::sleep(Duration::from_millis(1200));
    let probes = good.probes.load(Ordering::SeqCst);
    // Every ~100 ms, not once per hanging probe (one after another, it got 1 or 2).
    assert!(probes >= 5, "good was probed {probes} times in 1.2 s");
    drop(gw);
}

/// A failed connect moves on to the next target at most `retries` times (Kong's key, default 5),
/// so with every target refusing, one request makes `1 + retries` attempts, not one per target.
#[test]
fn connect_failover_is_bounded_by_retries() {
    // Seven targets: the default (5 retries, 6 attempts) bounds below one attempt per target.
    let dead: Vec<SocketAddr> = (0..7).map(|_| refusing_addr()).collect();
    for (retries, want) in [(Some(1), 2), (None, 6)] {
        let mut cfg = config(&dead, "", "");
        if let Some(n) = retries {
            cfg = cfg.replace(
                "upstream = \"pool\"\n",
                &format!("upstream = \"pool\"\nretries = {n}\n"),
            );
        }
        let gw = Gateway::start(&cfg);
        let r = Conn::connect(gw.addr()).get(HOST, "/");
        r.assert_json_error(502);
        let attempts: u64 = dead
            .iter()
            .map(|t| metric_settled(&gw, "ringgate_upstream_connect_errors_total", *t).unwrap_or(0))
            .sum();
        assert_eq!(attempts, want, "retries = {retries:?}");
    }
}
