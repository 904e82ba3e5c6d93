//! The rate limiter without the proxy: decisions and headers of one worker, shadow mode, key
//! eviction at the cap, failure policies, and multi-thread accuracy with the real reconciler.

use std::thread;
use std::time::{Duration, Instant};

use ringgate::config::load_str;
use ringgate::limit::{self, Decision, InstanceDef, LimiterSet};

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

[[plugins]]
name = "rate-limiting"
"#;

/// The single rate-limiting instance of a config whose plugin has `config = { <cfg> }`.
fn instance(cfg: &str) -> InstanceDef {
    let text = format!("{BASE}config = {{ {cfg} }}\n");
    let c = load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
    limit::instances(&c).remove(0)
}

/// 2024-05-01 12:30:15.000 UTC (mid-minute, mid-hour).
const T0: u64 = 1_714_566_615_000;

fn one(cfg: &str) -> (limit::ReconcilerHandle, LimiterSet) {
    let (h, mut links) = limit::start_instances(vec![instance(cfg)], 1);
    (h, LimiterSet::new(links.remove(0)))
}

fn headers(set: &LimiterSet, key: &[u8], now: u64) -> (bool, String) {
    let mut h = Vec::new();
    let ok = set.check(0, key, now, &mut h) == Decision::Allow;
    (ok, String::from_utf8(h).unwrap())
}

#[test]
fn fixed_window_headers_and_reject() {
    let (_h, set) = one("second = 2, minute = 3, limit_by = \"ip\"");
    let (ok, h) = headers(&set, b"k", T0);
    assert!(ok);
    assert_eq!(
        h,
        "X-RateLimit-Limit-Second: 2\r\nX-RateLimit-Remaining-Second: 1\r\n\
         X-RateLimit-Limit-Minute: 3\r\nX-RateLimit-Remaining-Minute: 2\r\n\
         RateLimit-Limit: 2\r\nRateLimit-Remaining: 1\r\nRateLimit-Reset: 1\r\n"
    );
    let (ok, h) = headers(&set, b"k", T0 + 10);
    assert!(ok);
    // Both have 1 left... second: 0 left, minute: 1 left -> the second is most constraining.
    assert!(
        h.contains("RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 1\r\n"),
        "{h}"
    );
    let mut out = Vec::new();
    match set.check(0, b"k", T0 + 20, &mut out) {
        Decision::Reject { status, body } => {
            assert_eq!(status, 429);
            assert_eq!(body, b"{\"message\":\"API rate limit exceeded\"}\n");
        }
        d => panic!("{d:?}"),
    }
    let h = String::from_utf8(out).unwrap();
    assert!(h.ends_with("Retry-After: 1\r\n"), "{h}");
    // Next second (calendar-aligned): the second limit resets, the minute has 1 left.
    let (ok, h) = headers(&set, b"k", T0 + 1_000);
    assert!(ok, "{h}");
    assert!(h.contains("X-RateLimit-Remaining-Minute: 0"), "{h}");
    // Minute exhausted: Retry-After = rest of the minute (43.999 s after :16.001, rounded up).
    let mut out = Vec::new();
    assert!(matches!(
        set.check(0, b"k", T0 + 1_001, &mut out),
        Decision::Reject { .. }
    ));
    let h = String::from_utf8(out).unwrap();
    assert!(
        h.contains("RateLimit-Reset: 44\r\n") && h.contains("Retry-After: 44\r\n"),
        "{h}"
    );
    // Other keys are independent.
    assert!(headers(&set, b"other", T0 + 1_001).0);
    let s = set.stats(0);
    assert_eq!((s.admitted, s.rejected), (4, 2));
}

/// On a rejection, each `X-RateLimit-Remaining-<Period>` says what is really left (the rejected
/// request was not counted anywhere), and `RateLimit-*` describe the period that rejected, so
/// `RateLimit-Reset` and `Retry-After` agree (Kong's behaviour, and the IETF draft's).
#[test]
fn reject_headers_describe_the_period_that_rejected() {
    // The second rejects; the minute still has 1 left (it used to say 0, and RateLimit-* described
    // the minute: limit 3, reset 45 next to Retry-After: 1).
    let (_h, set) = one("second = 2, minute = 3, limit_by = \"ip\"");
    assert!(headers(&set, b"k", T0).0);
    assert!(headers(&set, b"k", T0 + 10).0);
    let (ok, h) = headers(&set, b"k", T0 + 20);
    assert!(!ok);
    assert_eq!(
        h,
        "X-RateLimit-Limit-Second: 2\r\nX-RateLimit-Remaining-Second: 0\r\n\
         X-RateLimit-Limit-Minute: 3\r\nX-RateLimit-Remaining-Minute: 1\r\n\
         RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 1\r\n\
         Retry-After: 1\r\n"
    );
    // The hour rejects (29:45 to its end at T0), the day has 98 left (11:29:45 to its end).
    let (_h, set) = one("hour = 2, day = 100, limit_by = \"ip\"");
    assert!(headers(&set, b"k", T0).0);
    assert!(headers(&set, b"k", T0).0);
    let (ok, h) = headers(&set, b"k", T0);
    assert!(!ok);
    assert_eq!(
        h,
        "X-RateLimit-Limit-Hour: 2\r\nX-RateLimit-Remaining-Hour: 0\r\n\
         X-RateLimit-Limit-Day: 100\r\nX-RateLimit-Remaining-Day: 98\r\n\
         RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 1785\r\n\
         Retry-After: 1785\r\n"
    );
    // Both periods used up: the one that keeps rejecting longer (the hour) is described, and is
    // what Retry-After says. While both are admitting with equally few left, the later reset wins.
    let (_h, set) = one("minute = 2, hour = 2, limit_by = \"ip\"");
    let (ok, h) = headers(&set, b"k", T0);
    assert!(ok);
    assert!(
        h.ends_with("RateLimit-Limit: 2\r\nRateLimit-Remaining: 1\r\nRateLimit-Reset: 1785\r\n"),
        "{h}"
    );
    assert!(headers(&set, b"k", T0).0);
    let (ok, h) = headers(&set, b"k", T0);
    assert!(!ok);
    assert!(
        h.ends_with("RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 1785\r\nRetry-After: 1785\r\n"),
        "{h}"
    );
    // Sliding window: same rule. The second is full, so a request fits again 1.48 s from now (the
    // previous second still weighs), and both headers say 2.
    let (_h, set) = one("algorithm = \"sliding_window\", second = 2, minute = 3");
    assert!(headers(&set, b"k", T0).0);
    assert!(headers(&set, b"k", T0 + 10).0);
    let (ok, h) = headers(&set, b"k", T0 + 20);
    assert!(!ok);
    assert!(h.contains("X-RateLimit-Remaining-Minute: 1\r\n"), "{h}");
    assert!(
        h.ends_with("RateLimit-Limit: 2\r\nRateLimit-Remaining: 0\r\nRateLimit-Reset: 2\r\nRetry-After: 2\r\n"),
        "{h}"
    );
}

#[test]
fn hidden_headers_custom_error_and_shadow() {
    let (_h, set) = one(
        "minute = 1, hide_client_headers = true, error_code = 503, error_message = \"slow \\\"down\\\"\"",
    );
    assert_eq!(headers(&set, b"k", T0), (true, String::new()));
    let mut out = Vec::new();
    assert_eq!(
        set.check(0, b"k", T0, &mut out),
        Decision::Reject {
            status: 503,
            body: b"{\"message\":\"slow \\\"down\\\"\"}\n"
        }
    );
    assert_eq!(
        out, b"Retry-After: 45\r\n",
        "Retry-After even with hidden headers"
    );

    let (_h, set) = one("minute = 2, mode = \"shadow\"");
    for _ in 0..5 {
        assert!(headers(&set, b"k", T0).0, "shadow never rejects");
    }
    let s = set.stats(0);
    assert_eq!((s.admitted, s.rejected, s.shadow_rejected), (5, 0, 3));
}

#[test]
fn sliding_window_weights_previous_minute() {
    let (_h, set) = one("algorithm = \"sliding_window\", minute = 10");
    let start = T0 - 15_000; // 12:30:00
    for i in 0..10 {
        assert!(headers(&set, b"k", start + i).0);
    }
    assert!(!headers(&set, b"k", start + 100).0);
    // 12:31:30: the previous minute (10) weighs 50% -> 5 left.
    let mid = start + 90_000;
    // `remaining` counts nothing extra: an empty current minute plus half the previous one.
    assert_eq!(set.remaining(0, b"k", mid), Some(5));
    assert_eq!(set.remaining(0, b"k", start + 100), Some(0));
    let mut n = 0;
    while headers(&set, b"k", mid).0 {
        n += 1;
        assert!(n <= 10);
    }
    assert_eq!(n, 5);
}

#[test]
fn token_bucket_both_spellings_behave_alike() {
    for cfg in [
        "algorithm = \"token_bucket\", average = 10, period = \"1s\", burst = 3",
        "algorithm = \"token_bucket\", rate_limit = 10, burst_limit = 3",
    ] {
        let (_h, set) = one(cfg);
        for _ in 0..3 {
            assert!(headers(&set, b"k", T0).0, "{cfg}");
        }
        let mut out = Vec::new();
        assert!(matches!(
            set.check(0, b"k", T0, &mut out),
            Decision::Reject { .. }
        ));
        let h = String::from_utf8(out).unwrap();
        assert!(
            h.contains("RateLimit-Limit: 3\r\nRateLimit-Remaining: 0\r\n"),
            "{h}"
        );
        assert!(h.contains("Retry-After: 1\r\n"), "{h}");
        assert!(headers(&set, b"k", T0 + 100).0, "one token after 100 ms");
        assert!(!headers(&set, b"k", T0 + 150).0);
    }
}

#[test]
fn key_table_is_bounded_and_evicts_least_recently_used() {
    let (_h, set) = one("minute = 2, max_keys = 100");
    // A hot key used throughout survives 10 000 rotating keys.
    let hot = b"hot";
    assert!(headers(&set, hot, T0).0);
    assert!(headers(&set, hot, T0).0);
    for i in 0..10_000u32 {
        let k = i.to_le_bytes();
        assert!(headers(&set, &k, T0).0);
        if i % 50 == 0 {
            assert!(!headers(&set, hot, T0).0, "the hot key keeps its count");
        }
    }
    set.sync(T0);
    let s = set.stats(0);
    assert_eq!(s.keys, 100);
    assert!(s.evicted_at_cap >= 9_900, "{s:?}");
    // The oldest rotating key was evicted: it starts over.
    assert!(headers(&set, &0u32.to_le_bytes(), T0).0);
    // Idle keys go at sync once their window cannot matter any more.
    set.sync(T0 + 120_000);
    assert_eq!(set.stats(0).keys, 0);
}

/// Two workers and the real reconciler: once one worker has used up a key's limit, the other
/// worker's first request for that key is rejected. The reconciler's totals for a key reach every
/// worker, also one that has not seen the key yet; such a worker used to drop them, so its first
/// request decided on a count of 0 (one request over the limit per worker).
#[test]
fn a_worker_new_to_a_key_decides_on_the_global_count() {
    for cfg in [
        "minute = 5",
        "algorithm = \"sliding_window\", minute = 5",
        "algorithm = \"token_bucket\", average = 60, period = \"1h\", burst = 5",
    ] {
        let (_h, links) = limit::start_instances(vec![instance(cfg)], 2);
        let mut sets = links.into_iter().map(LimiterSet::new);
        let (Some(a), Some(b)) = (sets.next(), sets.next()) else {
            panic!("two links")
        };
        for _ in 0..5 {
            assert!(headers(&a, b"k", T0).0, "{cfg}");
        }
        assert!(!headers(&a, b"k", T0).0, "{cfg}");
        a.sync(T0);
        // b takes in the reconciler's answer to a's batch at its own syncs (bounded wait).
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.remaining(0, b"k", T0).is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
            b.sync(T0);
        }
        let (ok, h) = headers(&b, b"k", T0);
        assert!(
            !ok,
            "{cfg}: admitted over the limit on the second worker: {h}"
        );
        assert_eq!(b.remaining(0, b"k", T0), Some(0), "{cfg}");
        assert_eq!(b.stats(0).admitted, 0, "{cfg}");
    }
}

/// Other workers' keys are taken in only while the table has room: a full table keeps its own keys
/// (their counts are what this worker decides on) and stays at `max_keys`.
#[test]
fn other_workers_keys_never_displace_a_full_tables_own() {
    let (_h, links) = limit::start_instances(vec![instance("minute = 5, max_keys = 2")], 2);
    let mut sets = links.into_iter().map(LimiterSet::new);
    let (Some(a), Some(b)) = (sets.next(), sets.next()) else {
        panic!("two links")
    };
    assert!(headers(&b, b"x", T0).0);
    assert!(headers(&b, b"y", T0).0);
    b.sync(T0);
    // a's batch carries a key b knows ("x") and one it does not ("k"); both are in the same view,
    // so once b sees a's count of "x" it has also been offered "k".
    assert!(headers(&a, b"x", T0).0);
    assert!(headers(&a, b"k", T0).0);
    a.sync(T0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.remaining(0, b"x", T0) != Some(3) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
        b.sync(T0);
    }
    assert_eq!(b.remaining(0, b"x", T0), Some(3), "b sees a's count of x");
    assert_eq!(b.remaining(0, b"k", T0), None, "no room for k");
    assert_eq!(b.remaining(0, b"y", T0), Some(4), "b's own key stays");
    assert_eq!(b.stats(0).keys, 2);
}

/// `workers` threads share one limit of `limit` per hour; each makes `per_ms` checks per ms and
/// syncs every interval. Returns (admitted, attempts per second over all workers, overshoot).
fn accuracy(workers: usize, limit: u64, per_ms: u64) -> (u64, f64, u64) {
    let def = instance(&format!("hour = {limit}, limit_by = \"ip\""));
    let (handle, links) = limit::start_instances(vec![def], workers);
    let interval = handle.sync_interval();
    let started = Instant::now();
    let threads: Vec<_> = links
        .into_iter()
        .map(|link| {
            thread::spawn(move || {
                let set = LimiterSet::new(link);
                let mut hdr = Vec::with_capacity(256);
                let (mut admitted, mut attempts) = (0u64, 0u64);
                let t0 = Instant::now();
                let mut last_sync = t0;
                // Run until the limit must have been reached, then a while longer (bounded).
                let run_for =
                    Duration::from_millis(300 + 2_000 * limit / (per_ms * 1000 * workers as u64));
                while t0.elapsed() < run_for {
                    for _ in 0..per_ms {
                        hdr.clear();
                        attempts += 1;
                        if set.check(0, b"shared", T0, &mut hdr) == Decision::Allow {
                            admitted += 1;
                        }
                    }
                    if last_sync.elapsed() >= interval {
                        set.sync(T0);
                        last_sync = Instant::now();
                    }
                    thread::sleep(Duration::from_millis(1));
                }
                (admitted, attempts)
            })
        })
        .collect();
    let mut admitted = 0;
    let mut attempts = 0;
    for t in threads {
        let (a, n) = t.join().unwrap();
        admitted += a;
        attempts += n;
    }
    let secs = started.elapsed().as_secs_f64();
    thread::sleep(interval * 4);
    let overshoot = handle.stats(0).overshoot;
    (admitted, attempts as f64 / secs, overshoot)
}

#[test]
fn multi_worker_accuracy() {
    for (workers, per_ms) in [(2, 20), (4, 10)] {
        let limit = 20_000;
        let (admitted, rate, overshoot) = accuracy(workers, limit, per_ms);
        let one_interval = rate * 0.005;
        let bound = limit as f64 * 1.02 + one_interval;
        println!(
            "accuracy: workers={workers} limit={limit} admitted={admitted} over={} ({:.2}%) attempts/s={rate:.0} bound={bound:.0} reconciler_overshoot={overshoot}",
            admitted.saturating_sub(limit),
            (admitted as f64 - limit as f64) / limit as f64 * 100.0
        );
        assert!(
            admitted >= limit,
            "workers={workers}: admitted {admitted} < {limit}"
        );
        assert!(
            admitted as f64 <= bound,
            "workers={workers}: admitted {admitted} > {bound:.0}"
        );
        assert_eq!(
            overshoot,
            admitted - limit,
            "the reconciler sees the same overshoot"
        );
    }
}

#[test]
fn redis_unreachable_failure_policies() {
    // A port nothing listens on: connection refused at once.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    for (policy, expect_allow) in [("open", true), ("closed", false), ("local", false)] {
        let (h, set) = one(&format!(
            "minute = 5, policy = \"cluster\", on_redis_failure = \"{policy}\", redis = {{ url = \"redis://127.0.0.1:{port}\", timeout = \"20ms\" }}"
        ));
        // Wait (bounded) until the reconciler reported the failure and the worker got the view.
        let deadline = Instant::now() + Duration::from_secs(3);
        while h.stats(0).redis_errors == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert!(h.stats(0).redis_errors > 0);
        thread::sleep(Duration::from_millis(30));
        set.sync(T0);
        let mut allowed = 0;
        for _ in 0..20 {
            if headers(&set, b"k", T0).0 {
                allowed += 1;
            }
        }
        match (policy, expect_allow) {
            ("open", _) => assert_eq!(allowed, 20, "open admits everything"),
            ("closed", _) => assert_eq!(allowed, 0, "closed rejects everything"),
            _ => assert_eq!(
                allowed, 5,
                "local with one known node enforces the whole limit"
            ),
        }
        assert!(!h.stats(0).redis_healthy);
    }
}

#[test]
fn reload_keeps_counts_of_unchanged_limits_only() {
    let a = instance("minute = 5, error_message = \"a\"");
    let (mut h, mut links) = limit::start_instances(vec![a.clone()], 1);
    let set = LimiterSet::new(links.remove(0));
    for _ in 0..3 {
        assert!(headers(&set, b"k", T0).0);
    }
    // Another message, mode and key cap count the same things: the counts carry over.
    let b = instance("minute = 5, error_message = \"b\", mode = \"shadow\", max_keys = 10");
    assert!(limit::same_counts(&a, &b));
    let set = LimiterSet::with_previous(h.install(vec![b]).remove(0), Some(&set));
    assert_eq!(set.remaining(0, b"k", T0), Some(2));
    assert!(headers(&set, b"k", T0).0);
    assert!(headers(&set, b"k", T0).0);
    // Over the limit now; shadow mode (the new setting) admits and counts it.
    assert!(headers(&set, b"k", T0).0);
    assert_eq!(set.stats(0).shadow_rejected, 1);
    // A changed limit value counts the same things too: a raised limit continues the count (6 so
    // far, shadow's included).
    let raised = instance("minute = 8");
    assert!(limit::same_counts(&a, &raised));
    let set = LimiterSet::with_previous(h.install(vec![raised]).remove(0), Some(&set));
    assert_eq!(set.remaining(0, b"k", T0), Some(2));
    // Another key source, period set or algorithm starts fresh.
    for other in [
        "minute = 5, limit_by = \"ip\"",
        "hour = 5",
        "minute = 5, hour = 10",
        "algorithm = \"sliding_window\", minute = 5",
    ] {
        assert!(!limit::same_counts(&a, &instance(other)), "{other}");
    }
    let set = LimiterSet::with_previous(
        h.install(vec![instance("minute = 6, hour = 10")]).remove(0),
        Some(&set),
    );
    assert_eq!(set.remaining(0, b"k", T0), None);
    assert!(headers(&set, b"k", T0).0);
    assert_eq!(set.remaining(0, b"k", T0), Some(5));
}
