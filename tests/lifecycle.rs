//! Process lifecycle and CLI: startup log lines, `--workers`, several listeners, SIGTERM/SIGINT
//! draining (in-flight requests finish, new connections are not served, exit code 0, bounded by
//! `drain_timeout`), `check` on good and bad configs, `--version`, `--help`; transparent huge pages off
//! for the process unless `MIMALLOC_ALLOW_THP` asks for them.

mod common;

use common::gateway::{is_event, kv};
use common::*;
use std::time::{Duration, Instant};

fn config_with(up: &Upstream, server_extra: &str) -> String {
    basic_config(up, server_extra, "")
}

#[test]
fn startup_logs_listening_and_ready_lines() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let logs = gw.logs();
    let listening: Vec<&String> = logs.iter().filter(|l| is_event(l, "listening")).collect();
    assert_eq!(
        listening.len(),
        1,
        "one listening line per address: {logs:?}"
    );
    let l = listening[0];
    let mut parts = l.split_whitespace();
    let time = parts.next().unwrap_or("");
    assert!(looks_like_rfc3339(time), "timestamp {time:?} in {l:?}");
    assert_eq!(parts.next(), Some("INFO"));
    assert_eq!(kv(l, "addr"), Some(gw.addr().to_string().as_str()));
    assert_ne!(gw.port(), 0, "port 0 must be resolved in the log");
    assert_eq!(gw.workers(), Some(1));
    // ready comes after listening, and names the version and the config file.
    let li = logs.iter().position(|x| is_event(x, "listening")).unwrap();
    let ri = logs.iter().position(|x| is_event(x, "ready")).unwrap();
    assert!(li < ri);
    let ready = &logs[ri];
    assert_eq!(
        kv(ready, "version"),
        Some(env!("CARGO_PKG_VERSION")),
        "{ready}"
    );
    assert_eq!(
        kv(ready, "config"),
        Some(gw.config_path().display().to_string().as_str()),
        "{ready}"
    );
    assert_eq!(get(gw.addr(), HOST, "/").status, 200);
}

/// `THP_enabled` of a process (`/proc/PID/status`), `None` on kernels that don't report it.
fn thp_enabled(pid: u32) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("THP_enabled:"))
        .map(|v| v.trim().to_owned())
}

/// mimalloc's arena is `MADV_HUGEPAGE`: with THP on, each touched 2 MiB of heap is resident whole.
/// The gateway turns THP off before its first allocation; `MIMALLOC_ALLOW_THP` leaves it to mimalloc.
#[test]
fn transparent_huge_pages_are_off_unless_asked_for() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let Some(off) = thp_enabled(gw.pid()) else {
        return; // kernel before 5.0: no THP_enabled line to check
    };
    assert_eq!(off, "0", "THP_enabled of the gateway");
    assert_eq!(get(gw.addr(), HOST, "/").status, 200);
    let on =
        Gateway::try_start_with_env(&config_with(&up, ""), &[], &[("MIMALLOC_ALLOW_THP", "1")])
            .unwrap_or_else(|e| panic!("{e}"));
    let mine = thp_enabled(std::process::id());
    assert_eq!(thp_enabled(on.pid()), mine, "left as inherited");
}

/// Where io_uring is refused the gateway runs on monoio's epoll driver, says so in one line, and
/// still proxies (keep-alive included). `RINGGATE_FORCE_EPOLL` simulates the refusal.
#[test]
fn epoll_fallback_logs_once_and_serves() {
    let up = Upstream::echo("a");
    let gw =
        Gateway::try_start_with_env(&config_with(&up, ""), &[], &[("RINGGATE_FORCE_EPOLL", "1")])
            .unwrap_or_else(|e| panic!("{e}"));
    let logs = gw.logs();
    let fallback: Vec<&String> = logs.iter().filter(|l| l.contains("epoll")).collect();
    assert!(
        fallback
            .iter()
            .any(|l| l.contains("WARN") && l.contains("falling back")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| is_event(l, "ready") && kv(l, "driver") == Some("epoll")),
        "{logs:?}"
    );
    assert_eq!(
        logs.iter().filter(|l| l.contains("falling back")).count(),
        1,
        "one line, not one per worker: {logs:?}"
    );
    let mut conn = Conn::connect(gw.addr());
    for _ in 0..3 {
        assert_eq!(conn.get(HOST, "/x").status, 200);
    }
    // Idle past the park threshold: the cancelled idle read and the readiness wait work on epoll too.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(conn.get(HOST, "/after-park").status, 200);
    assert_eq!(up.connections(), 1, "upstream keep-alive on epoll too");
}

fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b't')
        && b[13] == b':'
        && b[16] == b':'
        && (s.ends_with('Z') || s.ends_with('z') || s[19..].contains('+') || s[19..].contains('-'))
}

#[test]
fn workers_flag_overrides_the_config() {
    let up = Upstream::echo("a");
    let gw = Gateway::start_with_args(&config_with(&up, ""), &["--workers", "3"]);
    assert_eq!(gw.workers(), Some(3));
    // All workers share the port: many connections all succeed.
    for i in 0..30 {
        assert_eq!(get(gw.addr(), HOST, &format!("/{i}")).status, 200);
    }
}

/// `0.0.0.0:P` and `[::]:P` together, the usual dual-stack pair: beside an IPv4 listener on its
/// port the IPv6 one is IPv6-only (as nginx binds it), so both bind and each serves its family.
/// Before, the IPv6 wildcard was dual-stack and the gateway refused to start ("another process
/// listens"). `[::]:P` alone stays dual-stack: IPv4 clients reach it too. (The wildcards are bound
/// for the test's second; its traffic goes to loopback only. Skipped without IPv6 loopback.)
#[test]
fn ipv4_and_ipv6_wildcards_on_one_port_both_serve() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback on this host");
        return;
    }
    let up = Upstream::echo("a");
    for (listen, addrs) in [
        ("\"0.0.0.0:{port}\", \"[::]:{port}\"", 2),
        ("\"[::]:{port}\"", 1),
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let listen = listen.replace("{port}", &port.to_string());
        let toml = basic_config(&up, "", "").replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [{listen}]"),
        );
        let gw = Gateway::start(&toml);
        assert_eq!(gw.addrs().len(), addrs, "{:?}", gw.logs());
        for a in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            let a: std::net::SocketAddr = a.parse().expect("addr");
            assert_eq!(get(a, HOST, "/").status, 200, "{listen}: {a}");
        }
    }
}

#[test]
fn several_listen_addresses() {
    let up = Upstream::echo("a");
    let toml = basic_config(&up, "", "").replace(
        "listen = [\"127.0.0.1:0\"]",
        "listen = [\"127.0.0.1:0\", \"127.0.0.2:0\"]",
    );
    let gw = Gateway::start(&toml);
    assert_eq!(gw.addrs().len(), 2, "{:?}", gw.logs());
    for a in gw.addrs() {
        assert_eq!(get(*a, HOST, "/").status, 200, "listener {a}");
    }
}

#[test]
fn sigterm_drains_the_in_flight_request_then_exits_0() {
    drains_the_in_flight_request_then_exits_0(libc::SIGTERM);
}

/// SIGQUIT is nginx's graceful stop (and its container image's STOPSIGNAL): the same drain, not
/// the default action that cut every connection at once with exit code 131 (found by a review).
#[test]
fn sigquit_drains_like_sigterm() {
    drains_the_in_flight_request_then_exits_0(libc::SIGQUIT);
}

fn drains_the_in_flight_request_then_exits_0(sig: libc::c_int) {
    let up = Upstream::start(Behaviour::EchoDelayed(Duration::from_secs(2)));
    let mut gw = Gateway::start(&config_with(&up, "drain_timeout = \"10s\""));
    let addr = gw.addr();
    let client = std::thread::spawn(move || {
        let mut c = Conn::connect(addr);
        c.get(HOST, "/in-flight")
    });
    assert!(
        up.wait_requests(1, Duration::from_secs(5)),
        "request never reached the upstream"
    );
    let t = Instant::now();
    gw.signal(sig);
    assert!(
        gw.wait_log("draining timeout=", Duration::from_secs(5)),
        "{:#?}",
        gw.logs()
    );
    std::thread::sleep(Duration::from_millis(300));

    // Stopped accepting: a new connection is refused, or never served.
    if let Ok(mut c) = Conn::try_connect(addr) {
        c.set_read_timeout(Duration::from_secs(5));
        let _ = c.send(b"GET /late HTTP/1.1\r\nHost: test.local\r\n\r\n");
        if let Ok(r) = c.read_response() {
            panic!("a connection accepted after SIGTERM was served: {r:?}");
        }
    }

    let r = client.join().expect("client thread");
    assert_eq!(r.status, 200, "in-flight request not completed: {r:?}");
    assert!(r.complete);
    let st = gw
        .wait_exit(Duration::from_secs(10))
        .expect("gateway did not exit after draining");
    assert_eq!(st.code(), Some(0), "exit status {st}");
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "exited before the in-flight request finished"
    );
    assert!(!up.requests().iter().any(|r| r.target == "/late"));
}

#[test]
fn during_a_drain_new_connections_are_refused_not_left_hanging() {
    // Two workers; one has a request in flight and drains for seconds, the other has nothing to
    // wait for and finishes at once. Neither may leave a listening socket behind: the kernel would
    // keep handing it new connections that nobody accepts.
    let up = Upstream::start(Behaviour::EchoDelayed(Duration::from_secs(4)));
    let mut gw = Gateway::start_with_args(
        &config_with(&up, "drain_timeout = \"10s\""),
        &["--workers", "2"],
    );
    let addr = gw.addr();
    let client = std::thread::spawn(move || Conn::connect(addr).get(HOST, "/in-flight"));
    assert!(
        up.wait_requests(1, Duration::from_secs(5)),
        "request never reached the upstream"
    );
    gw.sigterm();
    std::thread::sleep(Duration::from_millis(300));
    // Each from a new source port, so SO_REUSEPORT spreads them over both workers' sockets.
    for i in 0..12 {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            continue; // refused: the right answer
        };
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        let _ =
            std::io::Write::write_all(&mut s, b"GET /late HTTP/1.1\r\nHost: test.local\r\n\r\n");
        let mut b = [0u8; 64];
        match std::io::Read::read(&mut s, &mut b) {
            Ok(0) => {}
            Err(e)
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut => {}
            other => {
                panic!("connection {i} after SIGTERM: {other:?} (accepted by nobody, left hanging)")
            }
        }
    }
    let r = client.join().expect("client thread");
    assert_eq!(r.status, 200, "in-flight request not completed: {r:?}");
    let st = gw.wait_exit(Duration::from_secs(10)).expect("no exit");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn sigint_on_an_idle_gateway_exits_0_promptly() {
    let up = Upstream::echo("a");
    let mut gw = gateway_for(&up);
    assert_eq!(get(gw.addr(), HOST, "/").status, 200);
    // An idle keep-alive client connection must not hold up shutdown.
    let mut idle = Conn::connect(gw.addr());
    assert_eq!(idle.get(HOST, "/").status, 200);
    gw.sigint();
    let st = gw
        .wait_exit(Duration::from_secs(5))
        .expect("no exit within 5 s");
    assert_eq!(st.code(), Some(0));
}

/// A connection that has not sent its first request when the drain begins is not closed with the
/// idle keep-alive ones: its request is likely on the way (a client that just connected), and it
/// gets up to `FRESH_GRACE` (1 s) to arrive. It is answered with `Connection: close`; a fresh
/// connection that stays silent is closed within the grace (a plain one once it has been silent
/// for the 0.5 s park threshold), so it cannot hold the drain up.
#[test]
fn a_connection_whose_first_request_arrives_during_the_drain_is_served() {
    let up = Upstream::echo("a");
    let mut gw = gateway_for(&up);
    let mut fresh = Conn::connect(gw.addr());
    let silent = Conn::connect(gw.addr());
    // Both accepted and waiting for their first request (well below the 500 ms park threshold).
    std::thread::sleep(Duration::from_millis(150));
    gw.sigterm();
    assert!(gw.wait_log("draining", Duration::from_secs(2)));
    std::thread::sleep(Duration::from_millis(200));
    let r = fresh.get(HOST, "/late");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"));
    let mut silent = silent;
    assert!(
        silent.probe_closed(Duration::from_secs(3)),
        "the silent one is closed after the grace"
    );
    let st = gw
        .wait_exit(Duration::from_secs(5))
        .expect("no exit within 5 s");
    assert_eq!(st.code(), Some(0));
}

/// A silent connection on a redirect listener (no request) does not hold a drain up for
/// `client_header`: it is a fresh wait, ended after the drain's grace (TLS: `tests/tls.rs`).
#[test]
fn a_silent_redirect_connection_does_not_hold_the_drain() {
    let up = Upstream::echo("a");
    let mut gw = Gateway::start(&format!(
        r#"[server]
listen = [{{ addr = "127.0.0.1:0", redirect_https = 308 }}, "127.0.0.1:0"]
workers = 1
drain_timeout = "20s"

[server.timeouts]
client_header = "60s"

[[services]]
name = "s"
url = "{}"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#,
        up.url()
    ));
    let silent = Conn::connect(gw.addrs()[0]);
    std::thread::sleep(Duration::from_millis(100));
    let took = gw.sigterm_drain_time();
    assert!(took < Duration::from_secs(4), "drain took {took:?}");
    drop(silent);
}

#[test]
fn sigint_with_a_parked_idle_connection_exits_0_promptly() {
    // Idle past 500 ms, a connection parks (waits for readability without a buffer); draining must
    // still wake and close it.
    let up = Upstream::echo("a");
    let mut gw = gateway_for(&up);
    let mut idle = Conn::connect(gw.addr());
    assert_eq!(idle.get(HOST, "/").status, 200);
    std::thread::sleep(Duration::from_millis(900));
    gw.sigint();
    let st = gw
        .wait_exit(Duration::from_secs(5))
        .expect("no exit within 5 s");
    assert_eq!(st.code(), Some(0));
    assert!(idle.probe_closed(Duration::from_secs(1)));
}

#[test]
fn a_second_signal_cuts_the_drain_short() {
    let up = Upstream::start(Behaviour::Hang);
    let mut gw = Gateway::start(&config_with(&up, "drain_timeout = \"60s\""));
    let addr = gw.addr();
    let _client = std::thread::spawn(move || {
        let mut c = Conn::connect(addr);
        c.set_read_timeout(Duration::from_secs(30));
        let _ = c.send(b"GET /stuck HTTP/1.1\r\nHost: test.local\r\n\r\n");
        let _ = c.read_response();
    });
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    gw.sigterm();
    assert!(gw.wait_log("draining", Duration::from_secs(5)));
    // Still draining (the request hangs, the drain allows a minute)...
    std::thread::sleep(Duration::from_millis(300));
    assert!(gw.wait_exit(Duration::from_millis(10)).is_none());
    // ...until the operator insists.
    let t = Instant::now();
    gw.sigint();
    let st = gw
        .wait_exit(Duration::from_secs(5))
        .expect("a second signal must end the drain");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(st.code(), Some(0));
    assert!(gw.wait_log(
        "exiting without waiting for in-flight requests",
        Duration::from_secs(5)
    ));
}

#[test]
fn drain_timeout_bounds_shutdown() {
    let up = Upstream::start(Behaviour::Hang);
    let mut gw = Gateway::start(&config_with(&up, "drain_timeout = \"1s\""));
    let addr = gw.addr();
    let client = std::thread::spawn(move || {
        let mut c = Conn::connect(addr);
        c.send(b"GET /stuck HTTP/1.1\r\nHost: test.local\r\n\r\n")
            .unwrap();
        c.read_response()
    });
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    let t = Instant::now();
    gw.sigterm();
    let st = gw
        .wait_exit(Duration::from_secs(6))
        .expect("drain_timeout not enforced");
    let took = t.elapsed();
    assert_eq!(st.code(), Some(0));
    assert!(
        took >= Duration::from_millis(800),
        "did not wait for the in-flight request: {took:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} with drain_timeout 1s"
    );
    // The stuck client got a clear answer, not a closed socket.
    let r = client.join().expect("client thread").expect("an answer");
    r.assert_json_error(503);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    // And the log says so (before, a drain that cut requests read like a clean one).
    assert!(
        gw.wait_log(
            "drain timed out worker=0 timeout_ms=1000 connections_cut=1",
            Duration::from_secs(2)
        ),
        "{:?}",
        gw.logs()
    );
}

#[test]
fn check_accepts_a_good_config() {
    let up = Upstream::echo("a");
    let (out, _f) = check_config(&config_with(&up, ""));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stdout.lines().next().unwrap_or("").trim() == "ok",
        "first line must be ok: {out:?}"
    );
    assert!(
        out.stdout.contains("all"),
        "summary should name the route: {out:?}"
    );
}

#[test]
fn check_rejects_an_unknown_key_with_its_location() {
    let toml = "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus_key = 1\n";
    let (out, f) = check_config(toml);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let all = out.all();
    let loc = format!("{}:3:", f.path_str());
    assert!(all.contains(&loc), "expected {loc}<col>: in {all:?}");
    assert!(all.contains("bogus_key"), "{all:?}");
    assert!(!out.stdout.trim_start().starts_with("ok"));
}

#[test]
fn check_reports_a_dangling_service_reference() {
    let toml = "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[routes]]\nname = \"r\"\nservice = \"nope\"\npaths = [\"/\"]\n";
    let (out, f) = check_config(toml);
    assert_eq!(out.code(), Some(1), "{out:?}");
    let all = out.all();
    assert!(all.contains(&format!("{}:6:", f.path_str())), "{all:?}");
    assert!(all.contains("nope"), "{all:?}");
}

#[test]
fn check_reports_every_error() {
    let toml = "[server]\nlisten = [\"127.0.0.1:0\"]\nbogus_one = 1\n\n[[routes]]\nname = \"r\"\nservice = \"nope\"\n";
    let (out, f) = check_config(toml);
    assert_eq!(out.code(), Some(1));
    let p = f.path_str();
    let n = out.all().lines().filter(|l| l.starts_with(&p)).count();
    assert!(n >= 2, "expected at least two located errors: {out:?}");
}

#[test]
fn check_rejects_a_missing_file() {
    let out = run_cli(
        &["check", "/nonexistent/ringgate.toml"],
        Duration::from_secs(10),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.all().contains("/nonexistent/ringgate.toml"));
}

#[test]
fn run_with_a_bad_config_exits_1_without_listening() {
    let f = TempFile::new(
        ".toml",
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = \"many\"\n",
    );
    let out = run_cli(&["run", &f.path_str()], Duration::from_secs(10));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.all().contains(&format!("{}:3:", f.path_str())),
        "{out:?}"
    );
    assert!(!out.all().contains(" ready "), "{out:?}");
}

#[test]
fn version_flag() {
    let out = run_cli(&["--version"], Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("ringgate"), "{out:?}");
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{out:?}");
}

#[test]
fn help_flag() {
    let out = run_cli(&["--help"], Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.contains("run"), "{out:?}");
    assert!(out.stdout.contains("check"), "{out:?}");
}

#[test]
fn unknown_subcommand_fails() {
    let out = run_cli(&["frobnicate"], Duration::from_secs(10));
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(out.status.is_some(), "must exit, not hang");
}

/// A second `ringgate run` on an address a running gateway listens on fails at once, naming the
/// address. Before, SO_REUSEPORT let it join the first one's socket group and start "ready",
/// idle while the first one ran and serving its own config once that one stopped.
#[test]
fn a_second_gateway_on_a_taken_address_exits_1() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[[services]]\nname = \"svc\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nservice = \"svc\"\npaths = [\"/\"]\n",
        up.url()
    ));
    let f = TempFile::new(
        ".toml",
        &format!(
            "[server]\nlisten = [\"{}\"]\nworkers = 1\n\n[[services]]\nname = \"svc\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nservice = \"svc\"\npaths = [\"/\"]\n",
            gw.addr(),
            up.url()
        ),
    );
    let out = run_cli(&["run", &f.path_str()], Duration::from_secs(10));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.all()
            .contains(&format!("another process listens on {}", gw.addr())),
        "{out:?}"
    );
    assert!(!out.all().contains(" ready "), "{out:?}");
    // The first one is unharmed.
    assert_eq!(
        send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status,
        200
    );
}

/// An address taken by a socket that does not listen (here an outgoing connection's local port)
/// is not blamed on "another process listens": the error says what takes such a port.
#[test]
fn a_port_taken_by_an_outgoing_connection_is_explained() {
    let up = Upstream::echo("up");
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    sock.bind(&any.into()).expect("bind");
    sock.connect(&server.local_addr().expect("addr").into())
        .expect("connect");
    let taken = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("local addr");
    let f = TempFile::new(
        ".toml",
        &format!(
            "[server]\nlisten = [\"{taken}\"]\nworkers = 1\n\n[[services]]\nname = \"svc\"\nurl = \"{}\"\n\n[[routes]]\nname = \"all\"\nservice = \"svc\"\npaths = [\"/\"]\n",
            up.url()
        ),
    );
    let out = run_cli(&["run", &f.path_str()], Duration::from_secs(10));
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.all()
            .contains("is taken by a socket that does not listen"),
        "{out:?}"
    );
    assert!(!out.all().contains("another process listens"), "{out:?}");
    drop(sock);
}

/// Busy keep-alive clients (requests back to back, each sent as soon as the last answer came)
/// lose nothing to a drain: the responses that went out as it began, without `Connection: close`,
/// are followed by one more request each, which is answered with `Connection: close`. Before, the
/// gateway closed those connections with that request unread: nearly every busy connection lost
/// one request, POST included.
#[test]
fn busy_keep_alive_clients_lose_no_request_to_a_drain() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    // The head at once, the body 40 ms later (as an app server that flushes its headers first):
    // the head goes out before the worker sees the drain, the response ends after it.
    let up = Upstream::start(Behaviour::Split {
        first: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec(),
        gap: Duration::from_millis(40),
        then: Some(b"ok".to_vec()),
    });
    let mut gw = Gateway::start_with_args(
        &config_with(&up, "drain_timeout = \"10s\""),
        &["--workers", "2"],
    );
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                let mut c = Conn::connect(addr);
                let deadline = Instant::now() + Duration::from_secs(10);
                for n in 0.. {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        return Ok(n);
                    }
                    let req = format!(
                        "POST /c{i}/{n} HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nok"
                    );
                    c.send(req.as_bytes())
                        .map_err(|e| format!("client {i}, sending request {n}: {e}"))?;
                    let r = c
                        .read_response()
                        .map_err(|e| format!("client {i}, request {n}: {e}"))?;
                    if r.status != 200 {
                        return Err(format!("client {i}, request {n}: {r:?}"));
                    }
                    if r.header("connection") == Some("close") {
                        return Ok(n + 1);
                    }
                }
                Ok(0)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    gw.sigterm();
    let results: Vec<Result<usize, String>> = clients
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let st = gw.wait_exit(Duration::from_secs(10)).expect("no exit");
    assert_eq!(st.code(), Some(0));
}

/// `--pid-file`: written once the gateway serves (whole, by rename), removed at a clean exit; a
/// file that is not writable stops the start with the reason.
#[test]
fn the_pid_file_names_the_serving_process_and_goes_with_it() {
    let up = Upstream::echo("up");
    let dir = std::env::temp_dir().join(format!("ringgate-pid-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let pid_path = dir.join("ringgate.pid");
    let path = pid_path.to_string_lossy().into_owned();
    let mut gw = Gateway::start_with_args(&config_with(&up, ""), &["--pid-file", &path]);
    assert_eq!(
        std::fs::read_to_string(&pid_path).unwrap_or_default(),
        format!("{}\n", gw.pid())
    );
    let leftovers = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(leftovers, 1, "no temporary file left beside it");
    gw.sigterm();
    assert!(gw
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(!pid_path.exists(), "removed at exit");

    let bad = dir.join("no-such-dir").join("ringgate.pid");
    let err = Gateway::try_start(
        &config_with(&up, ""),
        &["--pid-file", &bad.to_string_lossy()],
    )
    .err()
    .unwrap_or_default();
    assert!(err.contains("pid file not written"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// More workers than CPUs the process may use (here `taskset` allows one) is said at start: the
/// workers share cores.
#[test]
fn more_workers_than_cpus_is_warned_about() {
    let up = Upstream::echo("up");
    let gw = Gateway::try_start_wrapped(
        &config_with(&up, ""),
        &["--workers", "2"],
        &[],
        &["taskset", "-c", "0"],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        gw.wait_log(
            "more workers than CPUs this process may use workers=2 cpus=1",
            Duration::from_secs(5)
        ),
        "{:#?}",
        gw.logs()
    );
    assert_eq!(get(gw.addr(), HOST, "/").status, 200);
}
