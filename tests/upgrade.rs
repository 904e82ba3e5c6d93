//! Binary upgrade (`kill -USR2`): the running gateway starts its binary again with its listening
//! sockets, waits until the new process serves, then drains and exits; clients on loopback see no
//! failed request, new connections and keep-alive ones alike. A new process that does not come up
//! leaves the old one serving. `sd_notify` tells a service manager which process serves.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

fn config(up: &Upstream) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 2
drain_timeout = "5s"

[admin]
listen = "127.0.0.1:0"

[[services]]
name = "s"
url = "{}"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#,
        up.url()
    )
}

/// The process an upgrade started: not our child (the old gateway started it), so it is ended by
/// PID and watched through `kill(pid, 0)`.
struct NewProcess(i32);

impl NewProcess {
    /// The process named by the old gateway's `nth` (from 0) `upgrade started pid=N` line (waited
    /// for), so that it is ended even if an assertion fails before the upgrade completes.
    fn started_by(gw: &Gateway, nth: usize) -> NewProcess {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let started: Vec<String> = gw
                .logs()
                .into_iter()
                .filter(|l| l.contains("upgrade started"))
                .collect();
            if let Some(line) = started.get(nth) {
                let pid = common::gateway::kv(line, "pid")
                    .and_then(|p| p.parse().ok())
                    .expect("pid");
                return NewProcess(pid);
            }
            assert!(Instant::now() < deadline, "{:?}", gw.logs());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks that the process exists.
        unsafe { libc::kill(self.0, 0) == 0 }
    }
}

impl Drop for NewProcess {
    fn drop(&mut self) {
        // SAFETY: a process this test's gateway started (its pid from the gateway's own log).
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.alive() {
            // SAFETY: as above.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
}

/// Whether the admin API at `admin` answers `/health` with 200 within 3 s (workers count as
/// serving once they first flushed their metrics, a tick after start).
fn healthy(admin: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if send_raw(admin, b"GET /health HTTP/1.1\r\nHost: admin\r\n\r\n").status == 200 {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    retried: AtomicU64,
    failed: AtomicU64,
}

/// One request on a new connection with `Connection: close`: every failure counts (the client
/// cannot know whether the gateway saw the request).
fn one_shot(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| format!("read: {e}"))?;
    if got.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("answer: {:?}", String::from_utf8_lossy(&got)))
    }
}

/// One request on a kept-alive connection: the status and whether the answer said
/// `Connection: close`, or the error and how many bytes of an answer had arrived.
fn keep_alive_request(s: &mut TcpStream) -> Result<(u16, bool), (usize, String)> {
    s.write_all(b"GET /ka HTTP/1.1\r\nHost: t\r\n\r\n")
        .map_err(|e| (0, format!("write: {e}")))?;
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    let (head_end, len) = loop {
        if let Some(end) = common::client::find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or((got.len(), format!("no content-length: {head}")))?;
            break (end + 4, len);
        }
        match s.read(&mut tmp) {
            Ok(0) => return Err((got.len(), "eof".to_owned())),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) => return Err((got.len(), format!("read: {e}"))),
        }
    };
    while got.len() < head_end + len {
        match s.read(&mut tmp) {
            Ok(0) => return Err((got.len(), "eof in body".to_owned())),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) => return Err((got.len(), format!("read: {e}"))),
        }
    }
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    let status = head.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head.contains("\r\nconnection: close\r\n")))
}

/// Requests on kept-alive connections, as a proxy or SDK sends them: a connection the server closed
/// between two requests (nothing of an answer arrived) is retried on a new one (RFC 9112 §9.3.1);
/// anything else that goes wrong counts as a failure.
fn keep_alive_loop(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let reused = conn.is_some();
        let s = match &mut conn {
            Some(s) => s,
            None => match TcpStream::connect(addr) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                    conn.insert(s)
                }
                Err(e) => {
                    eprintln!("keep-alive connect failed: {e}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        match keep_alive_request(s) {
            Ok((200, close)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if close {
                    conn = None;
                }
            }
            Err((0, _)) if reused => {
                tally.retried.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
            other => {
                eprintln!("keep-alive request failed: {other:?}");
                tally.failed.fetch_add(1, Ordering::Relaxed);
                conn = None;
            }
        }
    }
}

/// Held by the tests that put load on a gateway: two such loads at once on two cores starve every
/// other test in this file of CPU.
static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Client threads until `finish`: `one_shots` sending requests on new connections, `keep_alives`
/// on kept-alive ones (see `keep_alive_loop`).
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, one_shots: usize, keep_alives: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let threads = (0..one_shots + keep_alives)
            .map(|i| {
                let (stop, tally) = (stop.clone(), tally.clone());
                std::thread::spawn(move || {
                    if i >= one_shots {
                        return keep_alive_loop(addr, &stop, &tally);
                    }
                    while !stop.load(Ordering::Relaxed) {
                        match one_shot(addr) {
                            Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                eprintln!("one-shot request failed: {e}");
                                tally.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    /// Stops and joins the threads: (requests answered, requests failed).
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        eprintln!("retried={}", self.tally.retried.load(Ordering::Relaxed));
        (
            self.tally.ok.load(Ordering::Relaxed),
            self.tally.failed.load(Ordering::Relaxed),
        )
    }
}

/// A fresh directory for the notify socket (a unix socket path must be short).
fn tempdir() -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let d = std::env::temp_dir().join(format!("rg-upg-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn sigusr2_hands_over_under_load_without_a_failed_request() {
    let _serial = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let up = Upstream::echo("up");
    let notify_dir = tempdir();
    let notify_path = notify_dir.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut gw = Gateway::try_start_with_env(
        &config(&up),
        &[],
        &[("NOTIFY_SOCKET", notify_path.to_str().expect("utf-8 path"))],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let old_pid = gw.pid();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY from the first process");
    assert_eq!(
        std::str::from_utf8(&buf[..n]).expect("utf-8"),
        format!("READY=1\nMAINPID={old_pid}")
    );
    let addr = gw.addr();
    let admin = gw.admin_addr();

    let load = Load::start(addr, 12, 2);
    std::thread::sleep(Duration::from_millis(700));
    let before = load.tally.ok.load(Ordering::Relaxed);
    gw.signal(libc::SIGUSR2);
    let new = NewProcess::started_by(&gw, 0);
    let status = gw
        .wait_exit(Duration::from_secs(15))
        .expect("the old process exits");
    assert!(status.success(), "{status}");
    assert!(gw.wait_log(
        &format!("upgrade: new process ready pid={}", new.0),
        Duration::from_secs(5)
    ));
    assert!(new.alive());
    let at_exit = load.tally.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(700));
    let (ok, failed) = load.finish();
    eprintln!(
        "ok={ok} (before the signal {before}, at the old process's exit {at_exit}) failed={failed}"
    );
    assert_eq!(failed, 0, "requests failed across the upgrade");
    assert!(
        before > 50 && ok > at_exit + 50,
        "load ran on both sides of the upgrade"
    );

    // The new process serves the same port and the admin API on the same address.
    assert_eq!(get(addr, HOST, "/after").status, 200);
    assert!(healthy(admin));
    let logs = gw.logs().join("\n");
    assert!(
        logs.contains("upgrade: inherited listening sockets count=3"),
        "{logs}"
    );
    // The service manager heard the new process take over, and no STOPPING=1 from the old one
    // (systemd would stop the unit, the new process included).
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut seen = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(seen, [format!("READY=1\nMAINPID={}", new.0)]);
    // When the new process is stopped, it says so.
    drop(new);
    let n = notify
        .recv(&mut buf)
        .expect("STOPPING from the new process");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn a_new_process_that_cannot_start_leaves_the_old_one_serving() {
    let up = Upstream::echo("up");
    let mut gw = Gateway::start(&config(&up));
    let mut c = Conn::connect(gw.addr());
    assert_eq!(c.get(HOST, "/1").status, 200);
    // The new process reads the config file again: a broken one stops it before it serves. Its
    // own reason is in the log every time: it used to be killed as soon as its exit closed the
    // readiness pipe, mostly before its log thread wrote the config error (found by a review).
    gw.rewrite_config("[server\nlisten = ");
    const TRIES: usize = 5;
    for n in 0..TRIES {
        gw.signal(libc::SIGUSR2);
        let deadline = Instant::now() + Duration::from_secs(10);
        while gw
            .logs()
            .iter()
            .filter(|l| l.contains("upgrade failed"))
            .count()
            <= n
        {
            assert!(Instant::now() < deadline, "{:#?}", gw.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        // The process that failed is gone (reaped by the old one).
        let failed = NewProcess::started_by(&gw, n);
        let deadline = Instant::now() + Duration::from_secs(3);
        while failed.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!failed.alive(), "the failed new process was not reaped");
        // Nothing left to end (and its pid may be reused).
        std::mem::forget(failed);
    }
    let logs = gw.logs();
    let count = |needle: &str| logs.iter().filter(|l| l.contains(needle)).count();
    assert_eq!(count("config error:"), TRIES, "{logs:#?}");
    assert_eq!(
        count("exited before it was ready (exit code 1)"),
        TRIES,
        "{logs:#?}"
    );
    assert!(
        gw.wait_exit(Duration::from_millis(300)).is_none(),
        "the old process serves on"
    );
    assert_eq!(c.get(HOST, "/2").status, 200);
    assert_eq!(get(gw.addr(), HOST, "/3").status, 200);
    assert!(healthy(gw.admin_addr()));
    // Fixed, the next attempt goes through.
    gw.rewrite_config(&config(&up));
    gw.signal(libc::SIGUSR2);
    let _new = NewProcess::started_by(&gw, TRIES);
    assert!(gw
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    assert_eq!(get(gw.addr(), HOST, "/4").status, 200);
}

/// SIGUSR2 while draining changes nothing: no upgrade starts and the drain is not cut short (a
/// request in flight still gets its answer).
#[test]
fn sigusr2_during_a_drain_is_ignored() {
    let up = Upstream::start(Behaviour::EchoDelayed(Duration::from_millis(800)));
    let mut gw = Gateway::start(&config(&up));
    let addr = gw.addr();
    let slow = std::thread::spawn(move || get(addr, HOST, "/slow").status);
    std::thread::sleep(Duration::from_millis(200));
    gw.sigterm();
    assert!(gw.wait_log("draining", Duration::from_secs(2)));
    gw.signal(libc::SIGUSR2);
    assert_eq!(slow.join().expect("request thread"), 200);
    assert!(gw
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(gw.wait_log(
        "signal ignored while draining signal=SIGUSR2",
        Duration::from_secs(5)
    ));
    assert!(!gw.log_contains("upgrade started"));
}

/// Two listen entries on port 0 (a plain one and an HTTPS redirect), and one worker fewer after the
/// upgrade: each entry keeps its own port and kind.
#[test]
fn each_listen_entry_keeps_its_own_sockets_across_an_upgrade() {
    let up = Upstream::echo("up");
    let two_listeners = |workers: usize| {
        config(&up).replace(
            "listen = [\"127.0.0.1:0\"]\nworkers = 2",
            &format!(
                "listen = [\"127.0.0.1:0\", {{ addr = \"127.0.0.1:0\", redirect_https = 308 }}]\nworkers = {workers}"
            ),
        )
    };
    let mut gw = Gateway::start(&two_listeners(2));
    let (plain, redirect) = (gw.addrs()[0], gw.addrs()[1]);
    assert_eq!(get(plain, HOST, "/a").status, 200);
    assert_eq!(get(redirect, HOST, "/a").status, 308);
    gw.rewrite_config(&two_listeners(1));
    gw.signal(libc::SIGUSR2);
    let _new = NewProcess::started_by(&gw, 0);
    assert!(gw
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    for _ in 0..20 {
        assert_eq!(get(plain, HOST, "/b").status, 200);
        assert_eq!(get(redirect, HOST, "/b").status, 308);
    }
}

/// An upgrade to fewer workers keeps the surplus sockets (now taking no new connections) instead of
/// closing them with whatever connections were queued on them.
#[test]
fn an_upgrade_to_fewer_workers_loses_no_connection() {
    let _serial = LOAD.lock().unwrap_or_else(|e| e.into_inner());
    let up = Upstream::echo("up");
    let mut gw = Gateway::start(&config(&up));
    let addr = gw.addr();
    let load = Load::start(addr, 12, 0);
    std::thread::sleep(Duration::from_millis(500));
    gw.rewrite_config(&config(&up).replace("workers = 2", "workers = 1"));
    gw.signal(libc::SIGUSR2);
    let new = NewProcess::started_by(&gw, 0);
    assert!(gw
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    let at_exit = load.tally.ok.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(700));
    let (ok, failed) = load.finish();
    eprintln!("ok={ok} (at the old process's exit {at_exit}) failed={failed}");
    assert_eq!(failed, 0, "requests failed across the upgrade to 1 worker");
    assert!(ok > at_exit + 50, "the new process served the load");
    assert!(new.alive());
}

/// A new process that binds its listeners (steering each group to its own, smaller, worker count)
/// and then fails (here: its admin address is taken) leaves the old process's groups steered back
/// to the old workers: both keep getting new connections. Without that, every new connection went
/// to the old process's first worker until a restart.
#[test]
fn a_failed_upgrade_to_fewer_workers_leaves_every_old_worker_serving() {
    let up = Upstream::echo("up");
    let dir = std::env::temp_dir().join(format!("rg-upg-steer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let with_log = |cfg: String| {
        cfg.replace(
            "[admin]",
            &format!(
                "[access_log]\npath = \"{}\"\nflush_interval = \"50ms\"\n\n[admin]",
                log.display()
            ),
        )
    };
    let mut gw = Gateway::start(&with_log(config(&up)));
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    gw.rewrite_config(
        &with_log(config(&up))
            .replace("workers = 2", "workers = 1")
            .replace(
                "[admin]\nlisten = \"127.0.0.1:0\"",
                &format!("[admin]\nlisten = \"{taken_addr}\""),
            ),
    );
    gw.signal(libc::SIGUSR2);
    assert!(
        gw.wait_log("upgrade failed", Duration::from_secs(10)),
        "{:?}",
        gw.logs()
    );
    std::mem::forget(NewProcess::started_by(&gw, 0));
    // Only what is logged from here on counts (the log's writer flushes every 50 ms).
    std::thread::sleep(Duration::from_millis(200));
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    for i in 0..40 {
        assert_eq!(get(gw.addr(), HOST, &format!("/n{i}")).status, 200);
    }
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(10)).is_some());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let workers: std::collections::HashSet<&str> = text
        .get(before..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split("\"worker\":").nth(1))
        .filter_map(|w| w.split(['}', ',']).next())
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        workers.len(),
        2,
        "new connections reached workers {workers:?} only"
    );
}

/// A stop request is not held up by an upgrade whose new process never gets ready (a binary that
/// hangs): SIGTERM gives the upgrade up (the new process is ended) and drains at once, instead of
/// after the minute the upgrade waits (systemd would have killed the process at its stop timeout).
/// A SIGHUP meanwhile is logged as waiting for the upgrade to end.
#[test]
fn sigterm_during_a_hanging_upgrade_drains_at_once() {
    let up = Upstream::echo("up");
    let dir = tempdir();
    // argv[0] is what an upgrade starts: here a program that never says ready.
    let hang = dir.join("hang.sh");
    std::fs::write(&hang, "#!/bin/sh\nexec sleep 30\n").expect("script");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&hang, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let exec_as = format!("exec -a {} \"$@\"", hang.display());
    let mut gw =
        Gateway::try_start_wrapped(&config(&up), &[], &[], &["bash", "-c", &exec_as, "bash"])
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
    assert_eq!(get(gw.addr(), HOST, "/1").status, 200);
    gw.signal(libc::SIGUSR2);
    assert!(
        gw.wait_log("upgrade started", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    gw.signal(libc::SIGHUP);
    assert!(
        gw.wait_log(
            "signal received signal=SIGHUP; handled once the upgrade is over",
            Duration::from_secs(3)
        ),
        "{:?}",
        gw.logs()
    );
    let t = Instant::now();
    gw.sigterm();
    let st = gw
        .wait_exit(Duration::from_secs(10))
        .expect("no exit within 10 s of SIGTERM");
    assert!(st.success(), "{st}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit after {:?}",
        t.elapsed()
    );
    assert!(gw.wait_log(
        "upgrade failed: given up for a stop signal",
        Duration::from_secs(5)
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--pid-file` across an upgrade: the new process writes its own pid once it serves, and the old
/// one leaves that file alone as it exits.
#[test]
fn the_pid_file_follows_the_upgrade() {
    let up = Upstream::echo("up");
    let dir = std::env::temp_dir().join(format!("ringgate-upgrade-pid-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let pid_path = dir.join("ringgate.pid");
    let mut gw =
        Gateway::start_with_args(&config(&up), &["--pid-file", &pid_path.to_string_lossy()]);
    let read_pid = || {
        std::fs::read_to_string(&pid_path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
    };
    assert_eq!(read_pid(), Some(gw.pid() as i32));
    gw.signal(libc::SIGUSR2);
    let new = NewProcess::started_by(&gw, 0);
    assert!(gw
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    assert_eq!(read_pid(), Some(new.0), "the new process's pid, kept");
    assert_eq!(get(gw.addr(), HOST, "/after").status, 200);
    // Stopped (SIGTERM), the new process removes the file naming it.
    drop(new);
    assert_eq!(read_pid(), None);
    let _ = std::fs::remove_dir_all(&dir);
}
