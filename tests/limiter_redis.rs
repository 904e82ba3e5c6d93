//! Cluster policy against a real `redis-server` on a free loopback port: three "nodes" (three
//! reconcilers, each with its own LimiterSet) share one limit; Redis is then stopped (SIGSTOP) —
//! `check` latency does not change and `on_redis_failure = "local"` gives each node its share — and
//! resumed (SIGCONT): the limits converge again. Skipped, with a message, only when `redis-server`
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
config = {{ hour = {LIMIT}, limit_by = "ip", policy = "cluster", on_redis_failure = "local", redis = {{ url = "redis://127.0.0.1:{port}", timeout = "50ms", prefix = "rgtest{port}" }} }}
"#
    );
    let cfg = load_str(&text, "t.toml").unwrap_or_else(|e| panic!("{e:?}"));
    let (h, mut links) = limit::start(&cfg, 1);
    (h, LimiterSet::new(links.remove(0)))
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
        "rgtest{}:rl:global:fw:hour-{LIMIT}:{}:two",
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
