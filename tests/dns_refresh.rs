//! Upstream targets given by host name follow their DNS (`[server] dns_refresh`).
//!
//! The gateway runs in its own mount namespace (`unshare -Urm`, no privilege needed) with a
//! temporary file bind-mounted over /etc/hosts, so the test can change what a name resolves to
//! for the gateway alone, through the real resolver (getaddrinfo, `files` first). Upstreams
//! listen on the same port at 127.0.0.1, 127.0.0.2 and 127.0.0.3; the name moves from one to the
//! other, or stands for several of them at once (one line per address in the hosts file).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Conn, Gateway, TempFile, Upstream, HOST};

const NAME: &str = "backend.ringgate.test";

/// Whether this machine lets an unprivileged process have its own mount namespace (user
/// namespaces: some container runtimes and hardened kernels forbid them) and resolves through
/// /etc/hosts first.
fn namespaces_work(hosts: &TempFile) -> bool {
    std::process::Command::new("unshare")
        .args([
            "-Urm",
            "sh",
            "-c",
            "mount --bind \"$1\" /etc/hosts && getent hosts \"$2\"",
        ])
        .args(["sh", &hosts.path_str(), NAME])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(NAME))
}

/// The gateway in its own mount namespace, `hosts` over /etc/hosts. `None` (the test is skipped,
/// loudly) only where namespaces cannot work and `RINGGATE_SKIP_USERNS_TESTS=1` says so; CI has
/// them, so there the test must run.
fn start(hosts: &TempFile, toml: &str) -> Option<Gateway> {
    if !namespaces_work(hosts) {
        if std::env::var("RINGGATE_SKIP_USERNS_TESTS").as_deref() == Ok("1") {
            eprintln!("SKIPPED: unshare -Urm with a bind-mounted /etc/hosts does not work here");
            return None;
        }
        panic!(
            "this test needs `unshare -Urm` (unprivileged user and mount namespaces) and /etc/hosts \
             consulted first; set RINGGATE_SKIP_USERNS_TESTS=1 to skip it on such a machine"
        );
    }
    let script = "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"";
    let hosts = hosts.path_str();
    let wrapper = ["unshare", "-Urm", "sh", "-c", script, "sh", hosts.as_str()];
    Some(
        Gateway::try_start_wrapped(toml, &[], &[], &wrapper)
            .unwrap_or_else(|e| panic!("gateway did not start: {e}")),
    )
}

/// The hosts file's size: every version is padded to it with a comment, so rewriting it in place
/// never leaves stale bytes behind.
const HOSTS_SIZE: usize = 256;

/// A hosts file where NAME has the addresses `ips`, padded to `HOSTS_SIZE`.
fn hosts_text(ips: &[&str]) -> String {
    let mut text: String = ips.iter().map(|ip| format!("{ip} {NAME}\n")).collect();
    let pad = HOSTS_SIZE - text.len() - 1;
    text.push('#');
    text.push_str(&" ".repeat(pad - 1));
    text.push('\n');
    assert_eq!(text.len(), HOSTS_SIZE);
    text
}

/// Points NAME at `ips` for the gateway: rewritten in place (same length, no truncation), so the
/// bind mount sees it and no lookup finds the file empty.
fn point_at_all(hosts: &TempFile, ips: &[&str]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&hosts.path)
        .expect("open hosts");
    f.write_all_at(hosts_text(ips).as_bytes(), 0)
        .expect("rewrite hosts");
}

fn point_at(hosts: &TempFile, ip: &str) {
    point_at_all(hosts, &[ip]);
}

/// Upstream `a` on 127.0.0.1 and `b` on 127.0.0.2, one port; a hosts file pointing NAME at `a`.
fn two_upstreams() -> (Upstream, Upstream, TempFile) {
    let a = Upstream::echo("a");
    let b = Upstream::named_at(
        SocketAddr::from(([127, 0, 0, 2], a.port())),
        "b",
        common::Behaviour::Echo,
    );
    let hosts = TempFile::new(".hosts", &hosts_text(&["127.0.0.1"]));
    (a, b, hosts)
}

/// A one-worker gateway with a `url` service at NAME:`port` on `/`, resolving only at load.
fn url_service(port: u16) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\ndns_refresh = \"0s\"\n\n[[services]]\nname = \"s\"\nurl = \"http://{NAME}:{port}\"\n\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/\"]\n"
    )
}

/// A gateway in front of `up` whose every request is authorized by the forward-auth service at
/// NAME:`port` (its `X-Auth-User` answer is copied upstream).
fn forward_auth_config(up: &Upstream, port: u16, workers: usize, refresh: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = {workers}
dns_refresh = "{refresh}"

[[services]]
name = "s"
url = "{url}"

[[routes]]
name = "r"
service = "s"
paths = ["/"]

[[plugins]]
name = "forward-auth"
config = {{ address = "http://{NAME}:{port}/check", response_headers = ["x-auth-user"] }}
"#,
        url = up.url()
    )
}

/// An auth service's answer allowing the request as `who`.
fn allow(who: &str) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nX-Auth-User: {who}\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// Calls `who` (which asserts its request succeeded) every 50 ms until it says "b", for at most
/// 10 s.
fn until_b(gw: &Gateway, mut who: impl FnMut() -> String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut served = 0;
    while who() != "b" {
        served += 1;
        assert!(
            Instant::now() < deadline,
            "still on a after {served} requests; log:\n{}",
            gw.logs().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// After `until_b`: the move is logged (once every worker confirmed, which may come after the
/// worker holding the test's connection served `b`), generation `generation` is installed, and
/// `n` new connections all see `b`.
fn moved_to_b(
    gw: &Gateway,
    logged: &str,
    generation: u64,
    n: usize,
    mut fresh: impl FnMut() -> String,
) {
    assert!(gw.wait_log(logged, Duration::from_secs(10)), "{logged}");
    let installed = format!("upstream addresses installed generation={generation}");
    assert!(
        gw.wait_log(&installed, Duration::from_secs(10)),
        "{installed}"
    );
    for _ in 0..n {
        assert_eq!(fresh(), "b");
    }
}

#[test]
fn a_target_follows_its_name_to_a_new_address_without_failing_a_request() {
    let (a, b, hosts) = two_upstreams();
    let Some(gw) = start(
        &hosts,
        &format!(
            r#"[server]
listen = ["127.0.0.1:0"]
workers = 2
dns_refresh = "1s"

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"

[[upstreams]]
name = "u"
targets = [{{ target = "{NAME}:{port}" }}]

[[services]]
name = "s"
upstream = "u"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#,
            port = a.port()
        ),
    ) else {
        return;
    };
    let mut c = Conn::connect(gw.addr());
    let who = |c: &mut Conn| -> String {
        let r = c.get(HOST, "/x");
        assert_eq!(r.status, 200, "{r:?}");
        r.header("x-upstream").unwrap_or_default().to_owned()
    };
    assert_eq!(who(&mut c), "a");
    // Unchanged answers change nothing: still generation 1 after a couple of refreshes.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(!gw.log_contains("upstream target re-resolved"));
    assert_eq!(who(&mut c), "a");

    point_at(&hosts, "127.0.0.2");
    // Every request on the kept-alive connection succeeds, before, during and after. The new
    // address is added at once; the old one leaves after it was missing from two answers.
    until_b(&gw, || who(&mut c));
    let p = a.port();
    let added = format!(
        "upstream target re-resolved upstream=u target={NAME}:{p} from=127.0.0.1:{p} to=127.0.0.1:{p},127.0.0.2:{p} generation=2"
    );
    assert!(gw.wait_log(&added, Duration::from_secs(10)), "{added}");
    let moved = format!(
        "upstream target re-resolved upstream=u target={NAME}:{p} from=127.0.0.1:{p},127.0.0.2:{p} to=127.0.0.2:{p} generation=3"
    );
    moved_to_b(&gw, &moved, 3, 10, || who(&mut Conn::connect(gw.addr())));
    assert!(b.request_count() >= 11);
    // /metrics: two changes, and the name resolves.
    let r = common::send_raw(
        gw.admin_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("\nringgate_upstream_dns_changes_total 2\n"),
        "{body}"
    );
    assert!(
        body.contains(&format!(
            "ringgate_upstream_dns_resolution_failing{{host=\"{NAME}\"}} 0"
        )),
        "{body}"
    );
}

#[test]
fn dns_refresh_zero_resolves_only_at_load() {
    let (a, _b, hosts) = two_upstreams();
    let Some(gw) = start(&hosts, &url_service(a.port())) else {
        return;
    };
    point_at(&hosts, "127.0.0.2");
    std::thread::sleep(Duration::from_millis(2500));
    let r = Conn::connect(gw.addr()).get(HOST, "/x");
    assert_eq!(r.header("x-upstream"), Some("a"));
    // A reload resolves again (it reads the file and every name anew).
    gw.reload_to(2);
    let r = Conn::connect(gw.addr()).get(HOST, "/x");
    assert_eq!(r.header("x-upstream"), Some("b"));
}

/// A forward-auth service given by host name follows its DNS as upstream targets do: requests
/// keep being authorized, by the service at the new address once the name has moved.
#[test]
fn a_forward_auth_service_follows_its_name() {
    let auth_a = Upstream::named("auth-a", common::Behaviour::Fixed(allow("a")));
    let auth_b = Upstream::named_at(
        SocketAddr::from(([127, 0, 0, 2], auth_a.port())),
        "auth-b",
        common::Behaviour::Fixed(allow("b")),
    );
    let up = Upstream::echo("up");
    let hosts = TempFile::new(".hosts", &hosts_text(&["127.0.0.1"]));
    let Some(gw) = start(&hosts, &forward_auth_config(&up, auth_a.port(), 2, "1s")) else {
        return;
    };
    let mut c = Conn::connect(gw.addr());
    let authorized_by = |c: &mut Conn| -> String {
        let r = c.get(HOST, "/x");
        assert_eq!(r.status, 200, "{r:?}");
        let last = up.requests().pop().expect("the upstream saw the request");
        last.header("x-auth-user").unwrap_or_default().to_owned()
    };
    assert_eq!(authorized_by(&mut c), "a");
    point_at(&hosts, "127.0.0.2");
    until_b(&gw, || authorized_by(&mut c));
    let moved = format!(
        "forward-auth service re-resolved plugin=global from=127.0.0.1:{p} to=127.0.0.2:{p}",
        p = auth_a.port()
    );
    moved_to_b(&gw, &moved, 2, 6, || {
        authorized_by(&mut Conn::connect(gw.addr()))
    });
    assert!(auth_b.request_count() >= 7);
}

/// A name with several addresses is one target per address, balanced over (as nginx does with a
/// server name); `dns_refresh` adds a new address at once and drops one missing from two answers
/// in a row. `/status` and `/metrics` show each address.
#[test]
fn a_name_is_a_target_per_address_and_follows_the_set() {
    let a = Upstream::echo("a");
    let at = |last: u8, name: &str| {
        Upstream::named_at(
            SocketAddr::from(([127, 0, 0, last], a.port())),
            name,
            common::Behaviour::Echo,
        )
    };
    let (b, c) = (at(2, "b"), at(3, "c"));
    let p = a.port();
    let hosts = TempFile::new(".hosts", &hosts_text(&["127.0.0.1", "127.0.0.2"]));
    let Some(gw) = start(
        &hosts,
        &format!(
            r#"[server]
listen = ["127.0.0.1:0"]
workers = 1
dns_refresh = "1s"

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"

[[upstreams]]
name = "u"
targets = [{{ target = "{NAME}:{p}" }}]

[[services]]
name = "s"
upstream = "u"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#
        ),
    ) else {
        return;
    };
    let mut conn = Conn::connect(gw.addr());
    let mut who = || -> String {
        let r = conn.get(HOST, "/x");
        assert_eq!(r.status, 200, "{r:?}");
        r.header("x-upstream").unwrap_or_default().to_owned()
    };
    // Equal weights: the two addresses take turns.
    let served: Vec<String> = (0..10).map(|_| who()).collect();
    for name in ["a", "b"] {
        assert_eq!(
            served.iter().filter(|s| *s == name).count(),
            5,
            "{served:?}"
        );
    }
    let admin = |path: &str| {
        let r = common::send_raw(
            gw.admin_addr(),
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        String::from_utf8_lossy(&r.body).into_owned()
    };
    // Give the worker's flush a moment to reach the metrics thread.
    std::thread::sleep(Duration::from_millis(400));
    let status = admin("/status");
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let entry = format!("{{\"target\":\"{NAME}:{p}\",\"address\":\"{ip}:{p}\",");
        assert!(status.contains(&entry), "{entry} in {status}");
    }
    let metrics = admin("/metrics");
    let series = format!(
        "ringgate_upstream_connections{{upstream=\"u\",target=\"{NAME}:{p}\",address=\"127.0.0.2:{p}\",state=\"idle\"}} 1"
    );
    assert!(metrics.contains(&series), "{series} in {metrics}");

    // A third address: added at the next refresh.
    point_at_all(&hosts, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    let grown = format!(
        "upstream target re-resolved upstream=u target={NAME}:{p} from=127.0.0.1:{p},127.0.0.2:{p} to=127.0.0.1:{p},127.0.0.2:{p},127.0.0.3:{p} generation=2"
    );
    assert!(gw.wait_log(&grown, Duration::from_secs(10)), "{grown}");
    let served: Vec<String> = (0..9).map(|_| who()).collect();
    for name in ["a", "b", "c"] {
        assert_eq!(
            served.iter().filter(|s| *s == name).count(),
            3,
            "{served:?}"
        );
    }
    // Only the third left: the other two go after two refreshes without them.
    point_at(&hosts, "127.0.0.3");
    let shrunk = format!(
        "upstream target re-resolved upstream=u target={NAME}:{p} from=127.0.0.1:{p},127.0.0.2:{p},127.0.0.3:{p} to=127.0.0.3:{p} generation=3"
    );
    assert!(gw.wait_log(&shrunk, Duration::from_secs(10)), "{shrunk}");
    assert!(gw.wait_log(
        "upstream addresses installed generation=3",
        Duration::from_secs(10)
    ));
    for _ in 0..6 {
        assert_eq!(who(), "c");
    }
    // The addresses gone drop out of /metrics once their connections are closed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = admin("/metrics");
        let gone = !metrics.contains(&format!("address=\"127.0.0.1:{p}\""))
            && !metrics.contains(&format!("address=\"127.0.0.2:{p}\""));
        if gone {
            assert!(
                metrics.contains(&format!("address=\"127.0.0.3:{p}\"")),
                "{metrics}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "still listed:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(a.request_count() >= 5 && b.request_count() >= 5 && c.request_count() >= 9);
}

/// A name that no longer resolves (a headless service scaled to zero answers NXDOMAIN) does not
/// block reloads: the reload keeps the name's last addresses, with a warning, as `dns_refresh`
/// does. It was a config error that rejected every reload until the name resolved again.
#[test]
fn a_reload_keeps_the_last_addresses_of_a_name_that_stopped_resolving() {
    let (a, _b, hosts) = two_upstreams();
    let Some(gw) = start(&hosts, &url_service(a.port())) else {
        return;
    };
    point_at_all(&hosts, &[]);
    gw.reload_to(2);
    assert!(gw.wait_log(
        &format!("target name not resolved host={NAME}"),
        Duration::from_secs(5)
    ));
    let r = Conn::connect(gw.addr()).get(HOST, "/x");
    assert_eq!(r.header("x-upstream"), Some("a"), "{r:?}");
}

/// The same for a forward-auth service given by name: a reload keeps its last address.
#[test]
fn a_reload_keeps_the_last_address_of_an_auth_service_that_stopped_resolving() {
    let auth = Upstream::named("auth-a", common::Behaviour::Fixed(allow("a")));
    let up = Upstream::echo("up");
    let hosts = TempFile::new(".hosts", &hosts_text(&["127.0.0.1"]));
    let Some(gw) = start(&hosts, &forward_auth_config(&up, auth.port(), 1, "0s")) else {
        return;
    };
    point_at_all(&hosts, &[]);
    gw.reload_to(2);
    assert!(gw.wait_log(
        &format!("name not resolved host={NAME}"),
        Duration::from_secs(5)
    ));
    let r = Conn::connect(gw.addr()).get(HOST, "/x");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        up.requests()
            .pop()
            .and_then(|q| q.header("x-auth-user").map(str::to_owned)),
        Some("a".to_owned())
    );
}

/// A SIGUSR2 upgrade while a target name cannot be resolved: the new process takes the old one's
/// last addresses for it, as a reload would, and serves (before, the upgrade failed on the name,
/// found by a review). Requests on the shared listener keep reaching the same upstream.
#[test]
fn an_upgrade_during_a_dns_outage_keeps_the_last_addresses() {
    let (a, _b, hosts) = two_upstreams();
    let Some(mut gw) = start(&hosts, &url_service(a.port())) else {
        return;
    };
    let addr = gw.addr();
    assert_eq!(
        Conn::connect(addr)
            .get(HOST, "/before")
            .header("x-upstream"),
        Some("a")
    );
    point_at_all(&hosts, &[]);
    gw.signal(libc::SIGUSR2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gw.log_contains("upgrade: new process ready") {
        assert!(
            !gw.log_contains("upgrade failed") && Instant::now() < deadline,
            "{:#?}",
            gw.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The new process outlives this one: ended by PID when the test is done.
    let pid: i32 = gw
        .logs()
        .iter()
        .find(|l| l.contains("upgrade started"))
        .and_then(|l| common::gateway::kv(l, "pid"))
        .and_then(|p| p.parse().ok())
        .expect("the new process's pid");
    struct Ends(i32);
    impl Drop for Ends {
        fn drop(&mut self) {
            // SAFETY: kill(2) on the PID this test's gateway started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    let _new = Ends(pid);
    assert!(
        gw.wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "the old process hands over and exits 0"
    );
    assert!(
        gw.wait_log(
            &format!("target name not resolved host={NAME}"),
            Duration::from_secs(5)
        ),
        "the new process kept the last addresses: {:#?}",
        gw.logs()
    );
    let r = Conn::connect(addr).get(HOST, "/after");
    assert_eq!(
        (r.status, r.header("x-upstream")),
        (200, Some("a")),
        "{r:?}"
    );
}
