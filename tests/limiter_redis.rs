//! Cluster policy against a real `redis-server` on a free loopback port: three "nodes" (three
//! reconcilers, each with its own LimiterSet) share one limit; Redis is then stopped (SIGSTOP) —
//! `check` latency does not change and `on_redis_failure = "local"` gives each node its share — and
//! resumed (SIGCONT): the limits converge again. Redis restarted empty, or a limit put back by
//! reloads, does not give the cluster a fresh quota. Skipped, with a message, only when `redis-server`
//! is not installed (`.ci/run` installs it).

mod common;

use common::redis::Redis;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use ringgate::config::load_str;
use ringgate::limit::{self, Decision, LimiterSet, ReconcilerHandle};

const T0: u64 = 1_714_566_615_000;
const LIMIT: u64 = 3_000;

fn node(port: u16) -> (ReconcilerHandle, LimiterSet) {
    node_with(port, &format!("hour = {LIMIT}"))
}

fn node_with(port: u16, limit: &str) -> (ReconcilerHandle, LimiterSet) {
    let cfg = config_with(port, limit);
    let (h, mut links) = limit::start(&cfg, 1);
    (h, LimiterSet::new(links.remove(0)))
}

fn config(port: u16) -> ringgate::config::model::Config {
    config_with(port, &format!("hour = {LIMIT}"))
}

fn config_with(port: u16, limit: &str) -> ringgate::config::model::Config {
    let text = format!(
        r#"[[upstreams]]
name = "u"
targets = [{{ target = "127.0.0.1:9001" }}]
[[services]]
name = "s"
upstream = "u"
[[routes]]
name = "r"
service = "s"
paths = ["/"]
[[plugins]]
name = "rate-limiting"
config = {{ {limit}, limit_by = "ip", policy = "cluster", on_redis_failure = "local", redis = {{ url = "redis://127.0.0.1:{port}", timeout = "50ms", prefix = "rgtest{port}" }} }}
"#
    );
    load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"))
}

/// Runs the three nodes for `dur`: each makes `per_ms` checks on `key` per ms and syncs every 5 ms.
/// Returns admitted per node and every check's latency in ns.
fn drive(
    nodes: &[(ReconcilerHandle, LimiterSet)],
    key: &[u8],
    per_ms: usize,
    dur: Duration,
) -> (Vec<u64>, Vec<u64>) {
    let mut admitted = vec![0; nodes.len()];
    let mut lat = Vec::new();
    let mut hdr = Vec::with_capacity(256);
    let start = Instant::now();
    let mut last_sync = start;
    while start.elapsed() < dur {
        for (i, (_, set)) in nodes.iter().enumerate() {
            for _ in 0..per_ms {
                hdr.clear();
                let t = Instant::now();
                let d = set.check(0, key, T0, &mut hdr);
                lat.push(t.elapsed().as_nanos() as u64);
                if d == Decision::Allow {
                    admitted[i] += 1;
                }
            }
        }
        if last_sync.elapsed() >= Duration::from_millis(5) {
            for (_, set) in nodes {
                set.sync(T0);
            }
            last_sync = Instant::now();
        }
        thread::sleep(Duration::from_millis(1));
    }
    (admitted, lat)
}

/// `n` checks of `key` on node `i` alone, every node syncing every 50 checks; returns how many
/// were admitted.
fn check_on(nodes: &[(ReconcilerHandle, LimiterSet)], i: usize, key: &[u8], n: usize) -> u64 {
    let mut hdr = Vec::with_capacity(256);
    let mut admitted = 0;
    for k in 0..n {
        hdr.clear();
        if nodes[i].1.check(0, key, T0, &mut hdr) == Decision::Allow {
            admitted += 1;
        }
        if k % 50 == 49 {
            for (_, s) in nodes {
                s.sync(T0);
            }
            thread::sleep(Duration::from_millis(2));
        }
    }
    for (_, s) in nodes {
        s.sync(T0);
    }
    admitted
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[test]
fn three_nodes_share_a_limit_through_redis_and_survive_an_outage() {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
        return;
    }
    let redis = Redis::start().expect("start redis-server");
    let nodes: Vec<_> = (0..3).map(|_| node(redis.port)).collect();
    wait_for(
        "all nodes healthy with 3 known nodes",
        Duration::from_secs(5),
        || {
            for (_, s) in &nodes {
                s.sync(T0);
            }
            nodes
                .iter()
                .all(|(h, _)| h.stats(0).redis_healthy && h.stats(0).nodes == 3)
        },
    );

    // 1. Healthy: one limit across the three nodes.
    let (admitted, mut lat_ok) = drive(&nodes, b"one", 2, Duration::from_millis(1_200));
    let total: u64 = admitted.iter().sum();
    println!("cluster healthy: admitted per node {admitted:?}, total {total} of {LIMIT}");
    assert!(total >= LIMIT, "{total}");
    assert!(total <= LIMIT + LIMIT / 20, "{total}: more than 5% over");
    let p999_ok = percentile(&mut lat_ok, 0.999);
    // A key used unevenly: node 1 over a third of the limit, node 0 a little; every node's view
    // has the cluster total before the outage.
    assert_eq!(check_on(&nodes, 1, b"uneven", 1_500), 1_500);
    assert_eq!(check_on(&nodes, 0, b"uneven", 10), 10);
    sync_until(
        &nodes,
        "node 0 to see the cluster's count of 'uneven'",
        || nodes[0].1.remaining(0, b"uneven", T0) == Some(LIMIT - 1_510),
    );

    // 2. Redis stopped: checks never wait on it; each node enforces limit / 3 on a fresh key.
    redis.signal(libc::SIGSTOP);
    wait_for(
        "all nodes to notice the outage",
        Duration::from_secs(5),
        || {
            for (_, s) in &nodes {
                s.sync(T0);
            }
            nodes.iter().all(|(h, _)| !h.stats(0).redis_healthy)
        },
    );
    thread::sleep(Duration::from_millis(20));
    for (_, s) in &nodes {
        s.sync(T0);
    }
    let (during, mut lat_down) = drive(&nodes, b"two", 5, Duration::from_millis(500));
    let p999_down = percentile(&mut lat_down, 0.999);
    let max_down = *lat_down.last().unwrap_or(&0);
    println!(
        "redis stopped: admitted per node {during:?}; check p99.9 {p999_ok} ns healthy, {p999_down} ns stopped, max {max_down} ns"
    );
    for a in &during {
        assert_eq!(*a, LIMIT / 3, "each node admits exactly its share");
    }
    // The unevenly used key: node 0 goes on to its share, counting only its own 10 (before, it
    // kept the cluster's 1,510 against its share of 1,000 and refused everything until the
    // window rolled: found by a review).
    assert_eq!(check_on(&nodes, 0, b"uneven", 1_500), LIMIT / 3 - 10);
    assert!(
        p999_down < 2_000_000,
        "check latency while Redis is stopped: p99.9 {p999_down} ns"
    );

    // 3. Redis back: nodes reconnect by themselves and the counts converge to the cluster total.
    redis.signal(libc::SIGCONT);
    wait_for("all nodes healthy again", Duration::from_secs(5), || {
        nodes.iter().all(|(h, _)| h.stats(0).redis_healthy)
    });
    wait_for("views to converge", Duration::from_secs(5), || {
        let _ = drive(&nodes, b"probe", 0, Duration::from_millis(20));
        nodes
            .iter()
            .all(|(_, s)| s.remaining(0, b"two", T0) == Some(0))
    });
    let mut c = redis.client().expect("redis client");
    let key = format!(
        "rgtest{}:rl:global:fw:hour:{}:two",
        redis.port,
        T0 / 3_600_000
    );
    let vals: Vec<u64> = redis::cmd("HVALS").arg(&key).query(&mut c).expect("HVALS");
    assert_eq!(vals.iter().sum::<u64>(), LIMIT, "{key}: {vals:?}");
    // A fresh key is shared cluster-wide again (no more per-node share).
    let (after, _) = drive(&nodes, b"three", 2, Duration::from_millis(1_200));
    let total: u64 = after.iter().sum();
    println!("redis resumed: admitted per node {after:?}, total {total}");
    assert!((LIMIT..=LIMIT + LIMIT / 20).contains(&total), "{total}");
}

/// This window's hash of per-node totals for `key`.
fn node_totals(redis: &Redis, key: &str) -> Vec<u64> {
    let mut c = redis.client().expect("redis client");
    let k = format!(
        "rgtest{}:rl:global:fw:hour:{}:{key}",
        redis.port,
        T0 / 3_600_000
    );
    redis::cmd("HVALS")
        .arg(&k)
        .query(&mut c)
        .unwrap_or_default()
}

/// Both nodes saw Redis fail (their connections broke with the restart) and are healthy again, so
/// what follows is measured in cluster mode, not in `local` mode's shares.
fn noticed_and_recovered(nodes: &[(ReconcilerHandle, LimiterSet)]) {
    sync_until(
        nodes,
        "every node to notice the restart and recover",
        || {
            nodes
                .iter()
                .all(|(h, _)| h.stats(0).redis_errors >= 1 && h.stats(0).redis_healthy)
        },
    );
}

fn sync_until(nodes: &[(ReconcilerHandle, LimiterSet)], what: &str, mut f: impl FnMut() -> bool) {
    wait_for(what, Duration::from_secs(10), || {
        for (_, s) in nodes {
            s.sync(T0);
        }
        f()
    });
}

/// Redis restarted without its data: the nodes write their totals again once it is back, so a
/// node that never saw the key does not get the whole limit again.
#[test]
fn a_redis_that_comes_back_empty_gets_the_totals_again() {
    if Redis::missing() {
        return;
    }
    let mut redis = Redis::start().expect("start redis-server");
    let nodes: Vec<_> = (0..2).map(|_| node(redis.port)).collect();
    sync_until(&nodes, "both nodes healthy", || {
        nodes
            .iter()
            .all(|(h, _)| h.stats(0).redis_healthy && h.stats(0).nodes == 2)
    });
    // Node A alone takes a third of the limit, and Redis has it.
    let third = LIMIT / 3;
    let mut hdr = Vec::new();
    let done = (0..third)
        .filter(|_| nodes[0].1.check(0, b"h", T0, &mut hdr) == Decision::Allow)
        .count() as u64;
    assert_eq!(done, third);
    sync_until(&nodes, "A's total in Redis", || {
        node_totals(&redis, "h").iter().sum::<u64>() == third
    });
    redis.restart_empty();
    assert!(node_totals(&redis, "h").is_empty());
    // A writes its total again without admitting anything more.
    noticed_and_recovered(&nodes);
    sync_until(&nodes, "A's total written again", || {
        node_totals(&redis, "h").iter().sum::<u64>() == third
    });
    // Node B, which never saw the key, gets the rest only (not all of it, nor local mode's half).
    let (b, _) = drive(&nodes[1..], b"h", 2, Duration::from_millis(2_000));
    println!(
        "after an empty restart: node B admitted {} of {LIMIT}",
        b[0]
    );
    let rest = LIMIT - third;
    assert!(b[0] >= rest - LIMIT / 20, "{b:?}");
    assert!(
        b[0] <= rest + LIMIT / 20,
        "{b:?}: a fresh quota after the restart"
    );
}

/// A limit a reload took out and another put back starts its counts again on this node, but its
/// smaller totals never replace what the node wrote for it before: the cluster total stands.
#[test]
fn a_limit_put_back_by_reloads_does_not_overwrite_its_earlier_counts() {
    if Redis::missing() {
        return;
    }
    let redis = Redis::start().expect("start redis-server");
    let cfg = config(redis.port);
    let (mut h, mut links) = limit::start(&cfg, 1);
    let set = LimiterSet::new(links.remove(0));
    let mut hdr = Vec::new();
    let half = LIMIT / 2;
    let first = (0..half)
        .filter(|_| set.check(0, b"r", T0, &mut hdr) == Decision::Allow)
        .count() as u64;
    assert_eq!(first, half);
    let one = [(h, set)];
    sync_until(&one, "the first total in Redis", || {
        node_totals(&redis, "r").iter().sum::<u64>() == half
    });
    let [(mut h2, _)] = one;
    drop(h2.install(Vec::new()));
    let mut links = h2.install(limit::instances(&cfg));
    h = h2;
    let set = LimiterSet::new(links.remove(0));
    let nodes = [(h, set)];
    let (again, _) = drive(&nodes, b"r", 2, Duration::from_millis(1_500));
    println!(
        "put back: admitted {} more of {LIMIT} ({half} before); redis {:?}; healthy {}",
        again[0],
        node_totals(&redis, "r"),
        nodes[0].0.stats(0).redis_healthy
    );
    assert!(
        again[0] <= LIMIT - half + LIMIT / 20,
        "{again:?}: a fresh quota"
    );
    assert!(again[0] >= LIMIT - half - LIMIT / 20, "{again:?}");
}

/// A token bucket lost with Redis is recreated from a node's view of its level, not full.
#[test]
fn a_token_bucket_lost_with_redis_keeps_its_level() {
    if Redis::missing() {
        return;
    }
    let mut redis = Redis::start().expect("start redis-server");
    // Refills one token a minute: nothing to speak of during the test.
    let bucket = r#"algorithm = "token_bucket", average = 60, period = "1h", burst = 2000"#;
    let nodes: Vec<_> = (0..2).map(|_| node_with(redis.port, bucket)).collect();
    sync_until(&nodes, "both nodes healthy", || {
        nodes
            .iter()
            .all(|(h, _)| h.stats(0).redis_healthy && h.stats(0).nodes == 2)
    });
    let level = |redis: &Redis| {
        let mut c = redis.client().expect("redis client");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("rgtest{}:tb:*", redis.port))
            .query(&mut c)
            .unwrap_or_default();
        keys.first().and_then(|k| {
            redis::cmd("HGET")
                .arg(k)
                .arg("t")
                .query::<Option<String>>(&mut c)
                .ok()
                .flatten()
                .and_then(|t| t.parse::<f64>().ok())
        })
    };
    let mut hdr = Vec::new();
    let taken = (0..1500)
        .filter(|_| nodes[0].1.check(0, b"b", T0, &mut hdr) == Decision::Allow)
        .count();
    assert_eq!(taken, 1500);
    sync_until(&nodes, "A's consumption in Redis", || {
        level(&redis).is_some_and(|t| t < 510.0)
    });
    redis.restart_empty();
    noticed_and_recovered(&nodes);
    sync_until(&nodes, "the bucket recreated from A's view", || {
        level(&redis).is_some_and(|t| t < 510.0)
    });
    let (b, _) = drive(&nodes[1..], b"b", 2, Duration::from_millis(1_500));
    println!(
        "bucket after an empty restart: node B admitted {} (about 500 left)",
        b[0]
    );
    assert!(b[0] <= 600, "{b:?}: a full bucket after the restart");
}

/// One node with a cluster limit of `LIMIT` an hour by ip through `url`, keys prefixed
/// `rgtest<prefix_port>` (what `node_totals` reads), and `redis` settings `extra`.
fn node_at(url: &str, prefix_port: u16, extra: &str) -> (ReconcilerHandle, LimiterSet) {
    let text = format!(
        "[[upstreams]]\nname = \"u\"\ntargets = [{{ target = \"127.0.0.1:9001\" }}]\n[[services]]\nname = \"s\"\nupstream = \"u\"\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/\"]\n[[plugins]]\nname = \"rate-limiting\"\nconfig = {{ hour = {LIMIT}, limit_by = \"ip\", policy = \"cluster\", redis = {{ url = \"{url}\", prefix = \"rgtest{prefix_port}\", {extra} }} }}\n"
    );
    let cfg = load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
    let (h, mut links) = limit::start(&cfg, 1);
    (h, LimiterSet::new(links.remove(0)))
}

/// A Redis that wants a password: the limit shares through it with `password` (or
/// `password_env`, end to end in `tests/cluster_e2e.rs`), and a wrong one keeps the limit on `on_redis_failure`, counted as errors.
#[test]
fn a_password_protected_redis() {
    if Redis::missing() {
        return;
    }
    let redis = Redis::start_with(Some("s3cret-pw")).expect("start redis-server");
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let with = |auth: &str| node_at(&url, redis.port, &format!(r#"timeout = "50ms", {auth}"#));
    let good = [with(r#"password = "s3cret-pw""#)];
    sync_until(&good, "healthy with the password", || {
        good[0].0.stats(0).redis_healthy && good[0].0.stats(0).redis_errors == 0
    });
    let mut hdr = Vec::new();
    assert_eq!(good[0].1.check(0, b"p", T0, &mut hdr), Decision::Allow);
    sync_until(&good, "the count in Redis", || {
        node_totals(&redis, "p").iter().sum::<u64>() == 1
    });
    let bad = [with(r#"username = "default", password = "wrong""#)];
    assert_eq!(bad[0].1.check(0, b"q", T0, &mut hdr), Decision::Allow);
    sync_until(&bad, "a wrong password to count as errors", || {
        !bad[0].0.stats(0).redis_healthy && bad[0].0.stats(0).redis_errors >= 1
    });
    assert!(node_totals(&redis, "q").is_empty());
}

/// Sliding window: a key that is pushing new counts when Redis comes back empty gets its
/// previous window written again too (the estimate reads it), not only the window it pushes.
#[test]
fn an_empty_redis_gets_a_busy_keys_previous_window_again() {
    if Redis::missing() {
        return;
    }
    let mut redis = Redis::start().expect("start redis-server");
    let sliding = format!(r#"algorithm = "sliding_window", hour = {LIMIT}"#);
    let nodes = [node_with(redis.port, &sliding)];
    sync_until(&nodes, "healthy", || nodes[0].0.stats(0).redis_healthy);
    let hour = 3_600_000;
    let idx = T0 / hour;
    let window = |redis: &Redis, i: u64| {
        let mut c = redis.client().expect("redis client");
        let k = format!("rgtest{}:rl:global:sw:hour:{i}:s", redis.port);
        redis::cmd("HVALS")
            .arg(&k)
            .query::<Vec<u64>>(&mut c)
            .unwrap_or_default()
            .iter()
            .sum::<u64>()
    };
    let mut hdr = Vec::new();
    // 100 in the previous hour, synced.
    for _ in 0..100 {
        nodes[0].1.check(0, b"s", T0 - hour, &mut hdr);
    }
    wait_for(
        "the previous window in Redis",
        Duration::from_secs(10),
        || {
            nodes[0].1.sync(T0 - hour);
            window(&redis, idx - 1) == 100
        },
    );
    redis.restart_empty();
    // Counts in the current hour while Redis is gone: their push fails and waits.
    for _ in 0..10 {
        nodes[0].1.check(0, b"s", T0, &mut hdr);
    }
    wait_for(
        "both windows written again",
        Duration::from_secs(10),
        || {
            nodes[0].1.sync(T0);
            window(&redis, idx) == 10 && window(&redis, idx - 1) == 100
        },
    );
}

/// `rediss://` to a Redis that wants a client certificate: with the test CA and a client
/// certificate the counts reach Redis; without the certificate, with a CA that did not sign Redis'
/// certificate, or with the system's roots, every exchange fails (the limit stays on
/// `on_redis_failure`, counted as errors) and nothing is written. A TLS Redis that stops answering
/// mid-handshake is a timeout like any other: the node retries and recovers once it answers.
#[test]
fn a_tls_redis_that_wants_a_client_certificate() {
    if Redis::missing() {
        return;
    }
    let redis = Redis::start_tls().expect("start redis-server with TLS");
    let pki = redis.tls.as_ref().expect("TLS port");
    let url = format!("rediss://127.0.0.1:{}", pki.port);
    let with = |tls: &str| node_at(&url, redis.port, &format!(r#"timeout = "200ms"{tls}"#));
    let (ca, other, cert, key) = (
        pki.path("ca.pem"),
        pki.path("other-ca.pem"),
        pki.path("client.pem"),
        pki.path("client.key"),
    );
    let mut hdr = Vec::new();
    let good = [with(&format!(
        r#", ca_file = "{ca}", cert_file = "{cert}", key_file = "{key}""#
    ))];
    sync_until(&good, "healthy over TLS", || {
        good[0].0.stats(0).redis_healthy && good[0].0.stats(0).redis_errors == 0
    });
    assert_eq!(good[0].1.check(0, b"p", T0, &mut hdr), Decision::Allow);
    sync_until(&good, "the count in Redis", || {
        node_totals(&redis, "p").iter().sum::<u64>() == 1
    });
    let refused = [
        ("no client certificate", format!(r#", ca_file = "{ca}""#)),
        (
            "a CA that did not sign Redis' certificate",
            format!(r#", ca_file = "{other}", cert_file = "{cert}", key_file = "{key}""#),
        ),
        (
            "the system's roots",
            format!(r#", cert_file = "{cert}", key_file = "{key}""#),
        ),
    ];
    for (n, (what, tls)) in refused.iter().enumerate() {
        let bad = [with(tls)];
        let key = format!("q{n}");
        assert_eq!(
            bad[0].1.check(0, key.as_bytes(), T0, &mut hdr),
            Decision::Allow
        );
        sync_until(&bad, &format!("{what} to count as errors"), || {
            !bad[0].0.stats(0).redis_healthy && bad[0].0.stats(0).redis_errors >= 2
        });
        assert!(node_totals(&redis, &key).is_empty(), "{what}");
    }
    // Stopped: the connection's reads time out, and so do the handshakes of the reconnects (the
    // kernel still accepts): errors keep coming instead of one hung attempt.
    redis.signal(libc::SIGSTOP);
    let errors = good[0].0.stats(0).redis_errors;
    assert_eq!(good[0].1.check(0, b"p", T0, &mut hdr), Decision::Allow);
    sync_until(
        &good,
        "a stopped TLS Redis to count as errors, again and again",
        || good[0].0.stats(0).redis_errors >= errors + 3,
    );
    redis.signal(libc::SIGCONT);
    sync_until(&good, "recovery over TLS", || {
        good[0].0.stats(0).redis_healthy && node_totals(&redis, "p").iter().sum::<u64>() == 2
    });
}
