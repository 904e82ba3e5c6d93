//! The JSON access log end to end, through the real binary: one valid JSON line per finished
//! request (proxied, answered by the gateway itself, rejected by a plugin, refused before its head
//! was whole, tunnelled), no credentials in it, rotation by rename + SIGHUP / SIGUSR1, reloads that
//! move or remove it, the drain flushing what completed, and a stuck writer costing dropped lines
//! (counted) instead of stalled requests.

mod common;

use common::gateway::kv;
use common::ws;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const KEY: &str = "alice-secret-key-0123456789";

/// A directory under the temp dir, removed with everything in it on Drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "ringgate-accesslog-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Two workers, an open route, a key-auth route (query or header key), no catch-all (404s).
/// `log`: the whole `[access_log]` table (or "" for none).
fn config(up: &Upstream, log: &str) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 2

{log}

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "open"
service = "svc"
paths = ["/open"]

[[routes]]
name = "secure"
service = "svc"
paths = ["/secure"]

[[consumers]]
username = "alice"
keyauth_credentials = [{{ key = "{KEY}" }}]

[[plugins]]
name = "key-auth"
route = "secure"
config = {{ key_names = ["apikey"], hide_credentials = true }}
"#,
        url = up.url()
    )
}

/// `[access_log]` writing to `path`, handing lines over quickly.
fn log_table(path: &Path) -> String {
    format!(
        "[access_log]\npath = \"{}\"\nflush_interval = \"50ms\"\n",
        path.display()
    )
}

/// Every line of `path`, each parsed as JSON (panics, showing the line, on one that is not).
fn lines(path: &Path) -> Vec<Value> {
    let bytes = std::fs::read(path).unwrap_or_default();
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "the file ends with a whole line"
    );
    bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(l)))
        })
        .collect()
}

/// Waits (up to 5 s) until `path` holds at least `n` lines; returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = lines(path);
        if got.len() >= n || Instant::now() > deadline {
            assert!(
                got.len() >= n,
                "expected {n} lines in {}, got {}: {got:#?}",
                path.display(),
                got.len()
            );
            return got;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one line whose `path` is `p`.
fn by_path<'a>(lines: &'a [Value], p: &str) -> &'a Value {
    let found: Vec<&Value> = lines.iter().filter(|l| l["path"] == p).collect();
    assert_eq!(found.len(), 1, "one line for {p}: {lines:#?}");
    found[0]
}

fn request(gw: &Gateway, raw: &str) -> RawResponse {
    send_raw(gw.addr(), raw.as_bytes())
}

fn get_path(gw: &Gateway, path: &str) -> RawResponse {
    request(
        gw,
        &format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"),
    )
}

#[test]
fn one_json_line_per_request_proxied_404_and_401() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&config(&up, &log_table(&log)));

    let ok = request(
        &gw,
        &format!("GET /open/items?page=2 HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: probe/1.0\r\nX-Request-ID: req-42\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(ok.status, 200);
    assert_eq!(get_path(&gw, "/nothing/here").status, 404);
    let denied = request(
        &gw,
        &format!("POST /secure/orders HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"),
    );
    assert_eq!(denied.status, 401);

    let all = wait_lines(&log, 3);
    settle();
    assert_eq!(lines(&log).len(), 3, "exactly one line per request");

    let l = by_path(&all, "/open/items");
    assert_eq!(l["status"], 200);
    assert_eq!(l["method"], "GET");
    assert_eq!(l["route"], "open");
    assert_eq!(l["service"], "svc");
    assert_eq!(l["upstream"], up.addr().to_string());
    assert_eq!(l["host"], HOST);
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["tls"], false);
    assert_eq!(l["user_agent"], "probe/1.0");
    assert_eq!(l["request_id"], "req-42");
    assert_eq!(l["client_ip"], "127.0.0.1");
    assert!(l["consumer"].is_null());
    assert!(l["bytes_sent"].as_u64().unwrap_or(0) > 100, "{l}");
    assert!(l["request_bytes"].as_u64().unwrap_or(0) > 50, "{l}");
    let total = l["duration_ms"].as_f64().unwrap_or(-1.0);
    let upstream = l["upstream_ms"].as_f64().unwrap_or(-1.0);
    assert!(upstream >= 0.0 && total >= upstream, "{l}");
    assert!(l["gateway_ms"].as_f64().is_some(), "{l}");
    assert!(l["worker"].as_u64().is_some_and(|w| w < 2), "{l}");
    assert_eq!(l["upstream_attempts"], 1, "{l}");
    assert!(l["detail"].is_null(), "the upstream's answer, relayed: {l}");
    let time = l["time"].as_str().unwrap_or_default();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "RFC 3339 UTC with milliseconds: {time}"
    );

    let l = by_path(&all, "/nothing/here");
    assert_eq!(l["status"], 404);
    assert_eq!(l["method"], "GET");
    for k in ["route", "service", "upstream", "upstream_ms", "consumer"] {
        assert!(l[k].is_null(), "{k}: {l}");
    }
    assert_eq!(l["upstream_attempts"], 0, "{l}");
    assert_eq!(l["detail"], "no route matched", "{l}");

    let l = by_path(&all, "/secure/orders");
    assert_eq!(l["status"], 401);
    assert_eq!(l["method"], "POST");
    assert_eq!(l["route"], "secure");
    assert!(l["upstream"].is_null(), "a plugin answered: {l}");
    assert!(l["consumer"].is_null(), "{l}");
    assert_eq!(l["upstream_attempts"], 0, "{l}");
    assert_eq!(l["detail"], "answered by key-auth", "{l}");
}

/// What an SRE reads a failure by: each line says why the gateway answered itself (`detail`) and
/// how many upstream attempts it made; an answer the client was gone for is a 499 with nothing
/// sent, not the 504 it never got (found by a review: a 504 with its bytes counted as sent).
#[test]
fn failures_say_why_and_count_their_attempts() {
    let hang = Upstream::start(Behaviour::Hang);
    let bad = Upstream::fixed(b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let (dead1, dead2) = (refusing_addr(), refusing_addr());
    let gw = Gateway::start(&format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

{log}

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"

[[upstreams]]
name = "dead"
targets = [{{ target = "{dead1}" }}, {{ target = "{dead2}" }}]
health = {{ passive = {{ max_fails = 10 }} }}

[[services]]
name = "dead"
upstream = "dead"
retries = 3

[[services]]
name = "hang"
url = "http://{hang}"
read_timeout = "1s"

[[services]]
name = "bad"
url = "http://{bad}"

[[routes]]
name = "dead"
service = "dead"
paths = ["/dead"]

[[routes]]
name = "hang"
service = "hang"
paths = ["/hang"]

[[routes]]
name = "bad"
service = "bad"
paths = ["/bad"]

[[routes]]
name = "fa"
service = "bad"
paths = ["/fa"]

[[plugins]]
name = "forward-auth"
route = "fa"
config = {{ address = "http://{dead1}/check" }}
"#,
        log = log_table(&log),
        hang = hang.addr(),
        bad = bad.addr(),
    ));
    get_path(&gw, "/dead").assert_json_error(502);
    get_path(&gw, "/hang/answered").assert_json_error(504);
    get_path(&gw, "/bad").assert_json_error(502);
    let fa = get_path(&gw, "/fa");
    assert!(fa.status >= 500, "{fa:?}");
    // Gone (reset) before the 504 comes: the gateway's answer cannot be written.
    let mut c = TcpStream::connect(gw.addr()).expect("connect");
    c.write_all(format!("GET /hang/gone HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .expect("send");
    assert!(
        hang.wait_requests(2, Duration::from_secs(5)),
        "reached the upstream"
    );
    common::upstream::set_linger_zero(&c);
    drop(c);

    let all = wait_lines(&log, 5);
    let l = by_path(&all, "/fa");
    assert_eq!(
        l["detail"], "forward-auth service unavailable",
        "the plugin's own reason: {l}"
    );
    let l = by_path(&all, "/dead");
    assert_eq!(
        (l["status"].as_u64(), l["upstream_attempts"].as_u64()),
        (Some(502), Some(2)),
        "{l}"
    );
    assert_eq!(l["detail"], "upstream connect failed", "{l}");
    let l = by_path(&all, "/hang/answered");
    assert_eq!(
        (l["status"].as_u64(), l["upstream_attempts"].as_u64()),
        (Some(504), Some(1)),
        "{l}"
    );
    assert_eq!(l["detail"], "upstream timed out", "{l}");
    let l = by_path(&all, "/bad");
    assert_eq!(l["status"], 502, "{l}");
    let why = l["detail"].as_str().unwrap_or_default();
    assert!(
        !why.is_empty() && why != "invalid upstream response",
        "the parser's own reason: {l}"
    );
    let l = by_path(&all, "/hang/gone");
    assert_eq!(
        (l["status"].as_u64(), l["bytes_sent"].as_u64()),
        (Some(499), Some(0)),
        "{l}"
    );
    assert_eq!(
        l["detail"], "upstream timed out",
        "what the lost answer would have said: {l}"
    );
    // Counted as the 499 it was, not as a 504.
    let series = |code: &str| {
        format!("ringgate_http_requests_total{{route=\"hang\",service=\"hang\",code=\"{code}\"}}")
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = admin_get(gw.admin_addr(), "/metrics").body_str();
        if metric(&text, &series("499")) >= 1.0 || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(metric(&text, &series("499")), 1.0, "{text}");
    assert_eq!(metric(&text, &series("504")), 1.0, "{text}");
}

#[test]
fn credentials_never_reach_the_log() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&config(&up, &log_table(&log)));

    let with_query = get_path(&gw, &format!("/secure/data?page=2&apikey={KEY}"));
    assert_eq!(with_query.status, 200);
    let wrong = get_path(&gw, "/secure/data?apikey=wrong-secret-987");
    assert_eq!(wrong.status, 401);
    let in_header = request(
        &gw,
        &format!("GET /secure/hdr HTTP/1.1\r\nHost: {HOST}\r\napikey: {KEY}\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(in_header.status, 200);
    let other = request(
        &gw,
        &format!("GET /open/x?token=tok-secret-555 HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Basic YWxpY2U6cGFzcy1zZWNyZXQ=\r\nCookie: session=cookie-secret-777\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(other.status, 200);

    let all = wait_lines(&log, 4);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    for secret in [
        KEY,
        "wrong-secret-987",
        "tok-secret-555",
        "YWxpY2U6cGFzcy1zZWNyZXQ",
        "cookie-secret-777",
        "apikey",
        "page=2",
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the log:\n{text}");
    }
    let data: Vec<&Value> = all.iter().filter(|l| l["path"] == "/secure/data").collect();
    assert_eq!(data.len(), 2, "{all:#?}");
    assert!(data
        .iter()
        .any(|l| l["status"] == 200 && l["consumer"] == "alice"));
    assert!(data
        .iter()
        .any(|l| l["status"] == 401 && l["consumer"].is_null()));
    assert_eq!(by_path(&all, "/secure/hdr")["consumer"], "alice");
}

#[test]
fn hostile_bytes_still_give_valid_json() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&config(&up, &log_table(&log)));

    // Quote, backslash, tab and bytes that are not UTF-8 (obs-text passes the parser), and an
    // X-Request-ID that tries to close the object and start another.
    let mut raw =
        format!("GET /open/ua HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: a\"b\\c\td").into_bytes();
    raw.extend_from_slice(b"\xff\xfe\xc3\xa9\r\nX-Request-ID: \"},{\"status\":1,\"x\":\"\r\n");
    raw.extend_from_slice(b"Connection: close\r\n\r\n");
    assert_eq!(send_raw(gw.addr(), &raw).status, 200);
    // A control byte in a header: refused before routing, still one valid line.
    let ctl = send_raw(
        gw.addr(),
        b"GET /open/ctl HTTP/1.1\r\nHost: test.local\r\nUser-Agent: a\x01b\r\n\r\n",
    );
    assert_eq!(ctl.status, 400);
    // Garbage that is not HTTP at all.
    let junk = send_raw(gw.addr(), b"\x00\xff\"\\\x1b[2J\r\n\r\n");
    assert_eq!(junk.status, 400);

    let all = wait_lines(&log, 3);
    let l = by_path(&all, "/open/ua");
    assert_eq!(l["user_agent"], "a\"b\\c\td\u{fffd}\u{fffd}é");
    assert_eq!(l["request_id"], "\"},{\"status\":1,\"x\":\"");
    assert_eq!(l["status"], 200);
    let refused: Vec<&Value> = all.iter().filter(|l| l["status"] == 400).collect();
    assert_eq!(refused.len(), 2, "{all:#?}");
    for l in refused {
        assert!(l["path"].is_null() && l["method"].is_null(), "{l}");
        assert_eq!(l["client_ip"], "127.0.0.1");
        assert!(l["bytes_sent"].as_u64().unwrap_or(0) > 0, "{l}");
    }
}

#[test]
fn rename_then_sighup_or_sigusr1_starts_a_new_file() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&config(&up, &log_table(&log)));

    assert_eq!(get_path(&gw, "/open/before").status, 200);
    wait_lines(&log, 1);
    let first = dir.file("access.log.1");
    std::fs::rename(&log, &first).expect("rename");
    gw.reload_to(2);
    assert_eq!(get_path(&gw, "/open/after-hup").status, 200);
    let new = wait_lines(&log, 1);
    assert_eq!(new.len(), 1);
    assert_eq!(new[0]["path"], "/open/after-hup");
    let old = lines(&first);
    assert_eq!(old.len(), 1, "{old:#?}");
    assert_eq!(old[0]["path"], "/open/before");

    // SIGUSR1 reopens without reloading the config (nginx's USR1).
    let second = dir.file("access.log.2");
    std::fs::rename(&log, &second).expect("rename");
    gw.signal(libc::SIGUSR1);
    assert!(gw.wait_log("access log reopened", Duration::from_secs(5)));
    assert_eq!(get_path(&gw, "/open/after-usr1").status, 200);
    let new = wait_lines(&log, 1);
    assert_eq!(new[0]["path"], "/open/after-usr1");
    assert_eq!(lines(&second).len(), 1);
    assert!(
        !gw.log_contains("generation=3"),
        "SIGUSR1 reloaded the config"
    );
}

#[test]
fn reloads_move_remove_and_restore_the_log() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let a = dir.file("a.log");
    let b = dir.file("b.log");
    let gw = Gateway::start(&config(&up, &log_table(&a)));
    assert_eq!(get_path(&gw, "/open/1").status, 200);
    wait_lines(&a, 1);

    // Removed: nothing more is logged anywhere.
    gw.rewrite_config(&config(&up, ""));
    gw.reload_to(2);
    assert_eq!(get_path(&gw, "/open/2").status, 200);
    settle();
    settle();
    assert_eq!(lines(&a).len(), 1, "logged after [access_log] was removed");

    // Back, at another path.
    gw.rewrite_config(&config(&up, &log_table(&b)));
    gw.reload_to(3);
    assert_eq!(get_path(&gw, "/open/3").status, 200);
    assert_eq!(wait_lines(&b, 1)[0]["path"], "/open/3");

    // A path that cannot be opened: the reload is rejected, the log stays where it was.
    let missing = dir.file("no-such-dir").join("c.log");
    gw.rewrite_config(&config(&up, &log_table(&missing)));
    gw.signal(libc::SIGHUP);
    assert!(gw.wait_log("reload rejected", Duration::from_secs(5)));
    assert!(
        gw.wait_log("access_log.path", Duration::from_secs(5)),
        "{:#?}",
        gw.logs()
    );
    assert_eq!(get_path(&gw, "/open/4").status, 200);
    let got = wait_lines(&b, 2);
    assert_eq!(got[1]["path"], "/open/4");
    assert_eq!(lines(&a).len(), 1);

    // One that passes validation (root may write /proc, says access(2)) but cannot be created:
    // rejected when opened, before anything is committed.
    gw.rewrite_config(&config(
        &up,
        &log_table(Path::new("/proc/ringgate-access.log")),
    ));
    gw.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw
        .logs()
        .iter()
        .filter(|l| l.contains("reload rejected"))
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "{:#?}", gw.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get_path(&gw, "/open/5").status, 200);
    assert_eq!(wait_lines(&b, 3)[2]["path"], "/open/5");
}

#[test]
fn a_log_that_cannot_be_opened_stops_the_start() {
    let up = Upstream::echo("up");
    let err = match Gateway::try_start(
        &config(&up, &log_table(Path::new("/proc/ringgate-access.log"))),
        &[],
    ) {
        Ok(_) => panic!("started with an access log it cannot open"),
        Err(e) => e,
    };
    assert!(err.contains("access_log.path"), "{err}");
}

#[test]
fn sigterm_drain_writes_every_completed_request() {
    let fast = Upstream::echo("fast");
    let slow = Upstream::start(Behaviour::EchoDelayed(Duration::from_millis(700)));
    let dir = TempDir::new();
    let log = dir.file("access.log");
    // Nothing is handed over before shutdown: a big buffer and a long interval.
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 2
drain_timeout = "10s"

[access_log]
path = "{log}"
buffer_size = "1m"
flush_interval = "60s"

[[services]]
name = "fast"
url = "{fast}"

[[services]]
name = "slow"
url = "{slow}"

[[routes]]
name = "fast"
service = "fast"
paths = ["/fast"]

[[routes]]
name = "slow"
service = "slow"
paths = ["/slow"]
"#,
        log = log.display(),
        fast = fast.url(),
        slow = slow.url()
    );
    let mut gw = Gateway::start(&toml);
    for i in 0..20 {
        assert_eq!(get_path(&gw, &format!("/fast/{i}")).status, 200);
    }
    let addr = gw.addr();
    let in_flight = std::thread::spawn(move || {
        send_raw(
            addr,
            format!("GET /slow/late HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
        )
    });
    assert!(slow.wait_requests(1, Duration::from_secs(5)));
    assert!(
        lines(&log).is_empty(),
        "lines were still buffered (else this test proves nothing)"
    );
    gw.sigterm();
    let resp = in_flight.join().expect("client thread");
    assert_eq!(
        resp.status, 200,
        "the in-flight request finished in the drain"
    );
    assert!(gw.wait_exit(Duration::from_secs(15)).is_some());
    let all = lines(&log);
    assert_eq!(all.len(), 21, "{all:#?}");
    assert_eq!(by_path(&all, "/slow/late")["status"], 200);
    for i in 0..20 {
        by_path(&all, &format!("/fast/{i}"));
    }
}

#[test]
fn stdout_target() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(
        &up,
        "[access_log]\npath = \"stdout\"\nflush_interval = \"50ms\"\n",
    ));
    assert_eq!(get_path(&gw, "/open/stdout-probe").status, 200);
    assert!(gw.wait_log("/open/stdout-probe", Duration::from_secs(5)));
    let line = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("/open/stdout-probe"))
        .unwrap_or_default();
    let v: Value = serde_json::from_str(&line).expect("a JSON line on stdout");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "open");
}

#[test]
fn websocket_is_logged_once_when_the_tunnel_ends() {
    let up = Upstream::start(Behaviour::WebSocketEcho);
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&basic_config(&up, "", "").replace(
        "[[services]]",
        &format!("{}\n[[services]]", log_table(&log)),
    ));
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(
        format!("GET /chat HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read head"), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let hello = ws::read_frame(&mut s).expect("upstream's first frame");
    assert_eq!(hello.payload, b"hello from upstream");
    // Open tunnel: nothing logged yet.
    std::thread::sleep(Duration::from_millis(300));
    assert!(lines(&log).is_empty(), "logged before the tunnel ended");
    let payload = vec![b'x'; 1000];
    ws::write_frame(&mut s, 1, &payload, Some([1, 2, 3, 4])).expect("send");
    let echo = ws::read_frame(&mut s).expect("echo");
    assert_eq!(echo.payload, payload);
    ws::write_frame(&mut s, 1, b"bye", Some([1, 2, 3, 4])).expect("bye");
    let _ = ws::read_frame(&mut s);
    drop(s);

    let all = wait_lines(&log, 1);
    settle();
    assert_eq!(lines(&log).len(), 1, "one line per upgraded request");
    let l = &all[0];
    assert_eq!(l["status"], 101);
    assert_eq!(l["path"], "/chat");
    assert_eq!(l["route"], "all");
    assert!(l["duration_ms"].as_f64().unwrap_or(0.0) >= 300.0, "{l}");
    assert!(
        l["request_bytes"].as_u64().unwrap_or(0) > 1000,
        "tunnelled bytes count: {l}"
    );
    assert!(l["bytes_sent"].as_u64().unwrap_or(0) > 1000, "{l}");
}

/// A reader that never reads: the writer blocks on a full pipe. Requests must go on at full speed,
/// the lines that find no buffer are dropped and counted, and every line is either delivered or
/// counted as dropped.
#[test]
fn stuck_writer_drops_counted_lines_and_never_stalls_requests() {
    use std::os::unix::fs::OpenOptionsExt;
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let fifo = dir.file("pipe.log");
    let c = std::ffi::CString::new(fifo.display().to_string()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    // A reader must exist before the gateway opens the FIFO for writing (or the open would wait).
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open fifo reader");
    let toml = config(
        &up,
        &format!(
            "[access_log]\npath = \"{}\"\nbuffer_size = \"4k\"\nflush_interval = \"50ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nflush_interval = \"100ms\"",
            fifo.display()
        ),
    )
    .replace("workers = 2", "workers = 1");
    let mut gw = Gateway::start(&toml);

    const N: usize = 3000;
    let mut conn = Conn::connect(gw.addr());
    let started = Instant::now();
    for i in 0..N {
        let resp = conn.request(
            format!("GET /open/req-{i} HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: load\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(resp.status, 200);
    }
    let took = started.elapsed();
    drop(conn);
    assert!(took < Duration::from_secs(20), "requests stalled: {took:?}");

    let admin = gw.admin_addr();
    let deadline = Instant::now() + Duration::from_secs(5);
    let dropped = loop {
        let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").body).into_owned();
        let v = metric(&text, "ringgate_access_log_dropped_total");
        if v > 0.0 || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(dropped > 0.0, "a stuck writer made workers drop lines");

    // Unblock the writer, collect everything it delivers, stop the gateway.
    let drain = std::thread::spawn(move || {
        let mut reader = reader;
        // SAFETY: fcntl on a descriptor we own; clearing O_NONBLOCK so reads wait until EOF.
        unsafe {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
        let mut all = Vec::new();
        let _ = reader.read_to_end(&mut all);
        all
    });
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(15)).is_some());
    let delivered = drain.join().expect("reader thread");
    let delivered_lines = delivered.split(|&b| b == b'\n').filter(|l| !l.is_empty());
    let mut count = 0u64;
    for l in delivered_lines {
        let v: Value = serde_json::from_slice(l).expect("whole JSON lines only");
        assert_eq!(v["status"], 200);
        count += 1;
    }
    // The writer's last word on drops is the total; delivered + dropped = every request.
    let total_dropped: u64 = gw
        .logs()
        .iter()
        .filter(|l| l.contains("access log lines dropped"))
        .filter_map(|l| kv(l, "total").and_then(|t| t.parse().ok()))
        .max()
        .unwrap_or(0);
    assert!(total_dropped > 0, "{:#?}", gw.logs());
    assert_eq!(
        count + total_dropped,
        N as u64,
        "every line delivered or counted"
    );
}

/// stderr that nobody reads (a stuck log collector) while the access log goes there too: the
/// access-log writer blocks on the full pipe, and a worker's warning must not wait for it. Before,
/// the worker took the same stderr lock the blocked writer held, and every connection of that
/// worker hung (found by a review, reproduced with a FIFO nobody read).
#[test]
fn a_stuck_stderr_never_stalls_a_worker_that_warns() {
    let up = Upstream::echo("up");
    // A TLS service whose target answers the ClientHello with plain HTTP and closes: every request
    // fails its handshake at once, and the worker warns about it (at most once per interval and
    // call site, with a count).
    let plain = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let plain_addr = plain.local_addr().expect("addr");
    std::thread::spawn(move || {
        for c in plain.incoming().take(50).flatten() {
            let mut c = c;
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let toml = config(
        &up,
        "[access_log]\npath = \"stderr\"\nbuffer_size = \"4k\"\nflush_interval = \"50ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nflush_interval = \"100ms\"",
    )
    .replace("workers = 2", "workers = 1")
        + &format!(
            "\n[[services]]\nname = \"bad-tls\"\nurl = \"https://{}\"\n\n[[routes]]\nname = \"tls\"\nservice = \"bad-tls\"\npaths = [\"/tls\"]\n",
            plain_addr
        );
    let gw = Gateway::start(&toml);
    gw.pause_output(true);
    // Fill the pipe with access-log lines until the writer drops some: it is blocked, holding
    // whatever it holds while it writes.
    let admin = gw.admin_addr();
    let mut conn = Conn::connect(gw.addr());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    loop {
        for i in 0..200 {
            let resp = conn.request(
                format!("GET /open/fill-{sent}-{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
            );
            assert_eq!(resp.status, 200);
        }
        sent += 200;
        let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").body).into_owned();
        if metric(&text, "ringgate_access_log_dropped_total") > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the access log never filled stderr ({sent} requests)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Requests that make the worker warn, and plain ones after them: all answered, promptly.
    let started = Instant::now();
    for i in 0..5 {
        let resp = send_raw(
            gw.addr(),
            format!("GET /tls/{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
        );
        assert_eq!(resp.status, 502, "{i}");
        let resp = conn
            .request(format!("GET /open/after-{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
        assert_eq!(resp.status, 200, "{i}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a warning stalled the worker: {:?}",
        started.elapsed()
    );
    // Reading again, the warning arrives: one line for the five failures so far.
    gw.pause_output(false);
    assert!(
        gw.wait_log("upstream tls handshake failed", Duration::from_secs(10)),
        "{:#?}",
        gw.logs()
    );
}

fn admin_get(addr: SocketAddr, path: &str) -> RawResponse {
    send_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
}

/// The value of an unlabelled sample in Prometheus text (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn ringgate_check_explains_access_log_errors() {
    let up = Upstream::echo("up");
    let (out, file) = check_config(&config(
        &up,
        "[access_log]\npath = \"/no-such-ringgate-dir/access.log\"\n",
    ));
    assert_eq!(out.code(), Some(1), "{}", out.all());
    let expected = format!(
        "{}:6:8: access_log.path: directory /no-such-ringgate-dir does not exist",
        file.path_str()
    );
    assert!(out.stderr.contains(&expected), "{}", out.all());

    let dir = TempDir::new();
    let (out, _file) = check_config(&config(&up, &log_table(&dir.file("a.log"))));
    assert_eq!(out.code(), Some(0), "{}", out.all());
    assert!(out.stdout.contains("access log: "), "{}", out.all());
    assert!(
        !dir.file("a.log").exists(),
        "check must not create the log file"
    );
}

#[test]
fn https_redirect_answers_are_logged() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&format!(
        r#"[server]
listen = [{{ addr = "127.0.0.1:0", redirect_https = 308 }}]
workers = 1

{log}
[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
"#,
        log = log_table(&log),
        url = up.url()
    ));
    let r = send_raw(
        gw.addr(),
        b"GET /login?token=redirect-secret-1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: old-link\r\n\r\n",
    );
    assert_eq!(r.status, 308);
    let bad = send_raw(gw.addr(), b"GET /x HTTP/1.1\r\n\r\n");
    assert_eq!(bad.status, 400, "no Host");
    let all = wait_lines(&log, 2);
    let l = by_path(&all, "/login");
    assert_eq!(l["status"], 308);
    assert_eq!(l["host"], "example.com");
    assert_eq!(l["user_agent"], "old-link");
    assert!(l["route"].is_null() && l["upstream"].is_null(), "{l}");
    assert!(l["bytes_sent"].as_u64().unwrap_or(0) > 0, "{l}");
    // Refused by the parser (HTTP/1.1 needs a Host): nothing of the request is vouched for.
    let refused: Vec<&Value> = all.iter().filter(|l| l["status"] == 400).collect();
    assert_eq!(refused.len(), 1, "{all:#?}");
    assert!(refused[0]["path"].is_null(), "{}", refused[0]);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("redirect-secret-1"), "{text}");
}

#[test]
fn the_correlation_id_the_upstream_saw_is_in_the_line() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let text = config(&up, &log_table(&log)).replace(
        "[[plugins]]\nname = \"key-auth\"",
        "[[plugins]]\nname = \"correlation-id\"\nroute = \"open\"\n\n[[plugins]]\nname = \"key-auth\"",
    );
    assert!(text.contains("correlation-id"), "the plugin is configured");
    let gw = Gateway::start(&text);

    // Generated (none sent), kept (a sane one), replaced (an id with a space is not kept).
    assert_eq!(get_path(&gw, "/open/generated").status, 200);
    let generated = up.last_request().header("x-request-id").map(str::to_owned);
    let kept = request(
        &gw,
        &format!("GET /open/kept HTTP/1.1\r\nHost: {HOST}\r\nX-Request-ID: trace-\"q\"-7\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(kept.status, 200);
    let replaced = request(
        &gw,
        &format!("GET /open/replaced HTTP/1.1\r\nHost: {HOST}\r\nX-Request-ID: two words\r\nConnection: close\r\n\r\n"),
    );
    assert_eq!(replaced.status, 200);
    let replacement = up.last_request().header("x-request-id").map(str::to_owned);
    // A route without the plugin has no such field.
    assert_eq!(get_path(&gw, "/nothing/here").status, 404);

    let all = wait_lines(&log, 4);
    let generated = generated.expect("the upstream got a generated id");
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let l = by_path(&all, "/open/generated");
    assert_eq!(l["correlation_id"], generated.as_str());
    assert!(l["request_id"].is_null(), "the client sent none");
    let l = by_path(&all, "/open/kept");
    assert_eq!(l["correlation_id"], "trace-\"q\"-7");
    assert_eq!(l["request_id"], "trace-\"q\"-7");
    let l = by_path(&all, "/open/replaced");
    assert_eq!(l["request_id"], "two words", "what the client sent");
    assert_eq!(
        l["correlation_id"],
        replacement
            .expect("the upstream got a replacement")
            .as_str(),
        "what the upstream saw"
    );
    assert!(by_path(&all, "/nothing/here")
        .get("correlation_id")
        .is_none());
}

#[test]
fn a_client_gone_mid_head_is_logged_as_a_400_like_nginx_and_a_silent_one_is_not() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let path = dir.0.join("access.log");
    let gw = Gateway::start(&config(&up, &log_table(&path)));
    // Part of a request line, then gone; a whole line and part of the headers, then gone.
    for partial in [&b"GET /open HT"[..], b"GET /open HTTP/1.1\r\nHost: x\r\n"] {
        let mut c = Conn::connect(gw.addr());
        c.send(partial).expect("send");
        std::thread::sleep(Duration::from_millis(100));
        drop(c);
    }
    // Connected, sent nothing, gone (a TCP health check): no line, as in nginx.
    drop(Conn::connect(gw.addr()));
    // One complete request after them, so the lines before it are flushed too.
    assert_eq!(get_path(&gw, "/open/after").status, 200);
    wait_lines(&path, 3);
    // Nothing more comes (the silent connection gets no line).
    std::thread::sleep(Duration::from_millis(200));
    let all = lines(&path);
    assert_eq!(all.len(), 3, "two refused heads and the request: {all:#?}");
    let gone: Vec<&Value> = all.iter().filter(|l| l["status"] == 400).collect();
    assert_eq!(gone.len(), 2, "{all:#?}");
    for l in gone {
        assert_eq!(l["bytes_sent"], 0, "{l}");
        assert!(
            l["path"].is_null(),
            "nothing of an unfinished head is trusted: {l}"
        );
        assert!(l["request_bytes"].as_u64().is_some_and(|n| n > 0), "{l}");
    }
}

/// A client that resets its connection while the upstream works is logged as nginx logs it: 499,
/// nothing sent (before: the upstream's 200 with 0 bytes sent).
#[test]
fn a_client_gone_before_the_answer_is_a_499() {
    let up = Upstream::start(Behaviour::EchoDelayed(Duration::from_millis(300)));
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let gw = Gateway::start(&config(&up, &log_table(&log)));
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.connect(&gw.addr().into()).expect("connect");
    let mut c = TcpStream::from(s);
    c.write_all(format!("GET /open/gone HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .expect("write");
    std::thread::sleep(Duration::from_millis(100));
    // Linger 0: close with a reset, so the gateway's write of the answer fails.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .expect("linger");
    drop(c);
    let all = wait_lines(&log, 1);
    let line = by_path(&all, "/open/gone");
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["bytes_sent"], 0, "{line}");
}

/// `request_bytes` counts what was read: a body cut short by the client body timeout logs the
/// head and the 10 bytes that came, not the 100 its Content-Length declared.
#[test]
fn a_cut_short_body_logs_the_bytes_that_came() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let cfg = config(&up, &log_table(&log)).replace(
        "workers = 2\n",
        "workers = 1\n[server.timeouts]\nclient_body = \"500ms\"\n",
    );
    let gw = Gateway::start(&cfg);
    let head = format!("POST /open/slow HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n");
    let mut c = Conn::connect(gw.addr());
    c.send(format!("{head}0123456789").as_bytes())
        .expect("send");
    let r = c.read_response().expect("answer");
    assert_eq!(r.status, 408, "{r:?}");
    let all = wait_lines(&log, 1);
    let l = by_path(&all, "/open/slow");
    assert_eq!(l["status"], 408, "{l}");
    assert_eq!(l["request_bytes"], (head.len() + 10) as u64, "{l}");
}

/// A body refused by its declared length (413, before the plugins ran) is logged under the route
/// whose limit refused it.
#[test]
fn a_declared_length_over_the_limit_is_logged_under_its_route() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let cfg = config(&up, &log_table(&log))
        .replace("workers = 2\n", "workers = 1\nmax_body_bytes = \"1k\"\n");
    let gw = Gateway::start(&cfg);
    let r = send_raw(
        gw.addr(),
        format!("POST /open/big HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 5000\r\n\r\n")
            .as_bytes(),
    );
    r.assert_json_error(413);
    let all = wait_lines(&log, 1);
    let l = by_path(&all, "/open/big");
    assert_eq!(
        (l["status"].clone(), l["route"].clone()),
        (413.into(), "open".into()),
        "{l}"
    );
}

/// A 502 after every connect failed names the last target tried, like any other answer (it was
/// null, so the log could not tell which targets failed).
#[test]
fn a_502_after_refused_connects_names_the_last_target_tried() {
    let dir = TempDir::new();
    let log = dir.file("access.log");
    // Ports nothing listens on: bound, then closed.
    let dead: Vec<SocketAddr> = (0..2)
        .map(|_| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        })
        .collect();
    let gw = Gateway::start(&format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

{log}
[[upstreams]]
name = "dead"
targets = [{{ target = "{a}" }}, {{ target = "{b}" }}]
health = {{ passive = {{ max_fails = 0 }} }}

[[services]]
name = "svc"
upstream = "dead"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
"#,
        log = log_table(&log),
        a = dead[0],
        b = dead[1],
    ));
    let r = get_path(&gw, "/x");
    assert_eq!(r.status, 502, "{r:?}");
    let l = by_path(&wait_lines(&log, 1), "/x").clone();
    assert_eq!(l["status"], 502);
    let named = l["upstream"].as_str().unwrap_or_default().to_owned();
    assert!(
        dead.iter().any(|a| a.to_string() == named),
        "upstream {named:?} not one of {dead:?}: {l}"
    );
}

/// `request_bytes` is what came over the wire, and the log and the metrics agree on refused heads:
/// a 408 for a head cut short logs the bytes that came (it logged 0), a chunked body counts its
/// framing (it counted the decoded data), and a client gone mid-head, logged as a 400, is counted
/// as one in `/metrics` too (it was not).
#[test]
fn request_bytes_are_wire_bytes_and_refused_heads_are_counted() {
    let up = Upstream::echo("up");
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let cfg = config(&up, &log_table(&log)).replace(
        "workers = 2\n",
        "workers = 1\n[server.timeouts]\nclient_header = \"500ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nflush_interval = \"100ms\"\n",
    );
    let gw = Gateway::start(&cfg);
    // A head cut short: 408 after client_header.
    let partial = b"GET /open/slow-head HTTP/1.1\r\nHo";
    let mut c = Conn::connect(gw.addr());
    c.send(partial).expect("send");
    let r = c.read_response().expect("answer");
    assert_eq!(r.status, 408, "{r:?}");
    // A chunked body: head, then 5 bytes in 3 chunks of framing.
    let head = format!(
        "POST /open/chunked HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let body = "2\r\nhe\r\n3;x=y\r\nllo\r\n0\r\n\r\n";
    let r = send_raw(gw.addr(), format!("{head}{body}").as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    // Gone mid-head, twice.
    for _ in 0..2 {
        let mut g = Conn::connect(gw.addr());
        g.send(b"GET /open/x HTTP/1.1\r\nHo").expect("send");
        std::thread::sleep(Duration::from_millis(50));
        drop(g);
    }
    let all = wait_lines(&log, 4);
    let timed_out = all
        .iter()
        .find(|l| l["status"] == 408)
        .expect("the 408 line");
    assert_eq!(
        timed_out["request_bytes"],
        partial.len() as u64,
        "{timed_out}"
    );
    let chunked = by_path(&all, "/open/chunked");
    assert_eq!(
        chunked["request_bytes"],
        (head.len() + body.len()) as u64,
        "{chunked}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text =
            String::from_utf8_lossy(&admin_get(gw.admin_addr(), "/metrics").body).into_owned();
        let refused = metric(
            &text,
            "ringgate_http_requests_total{route=\"(none)\",service=\"(none)\",code=\"400\"}",
        );
        if refused == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "400s counted: {refused}\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The drain deadline with a request, a WebSocket tunnel and a slow head still open: the request
/// that had no answer yet and the slow head get a 503 and a close, the tunnel is closed, and each
/// gets its access-log line saying the drain cut it (found by reviews: they were dropped without a
/// line when the worker's runtime ended, and the clients saw only a closed socket).
#[test]
fn the_drain_deadline_answers_503_and_logs_what_it_cut() {
    let stuck = Upstream::start(Behaviour::Hang);
    let ws_up = Upstream::start(Behaviour::WebSocketEcho);
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1
drain_timeout = "1s"

{table}

[[services]]
name = "stuck"
url = "{stuck}"

[[services]]
name = "ws"
url = "{ws}"

[[routes]]
name = "stuck"
service = "stuck"
paths = ["/stuck"]

[[routes]]
name = "ws"
service = "ws"
paths = ["/chat"]
"#,
        table = log_table(&log),
        stuck = stuck.url(),
        ws = ws_up.url()
    );
    let mut gw = Gateway::start(&toml);
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(
        format!("GET /chat HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    )
    .expect("handshake");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).expect("read head"), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    ws::read_frame(&mut s).expect("upstream's first frame");
    let addr = gw.addr();
    let in_flight = std::thread::spawn(move || {
        send_raw(
            addr,
            format!("GET /stuck/1 HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
        )
    });
    assert!(stuck.wait_requests(1, Duration::from_secs(5)));
    // A slow client in the middle of its head (the `client_header` timeout, 60 s, is far off).
    let mut slow = TcpStream::connect(gw.addr()).expect("connect");
    slow.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    slow.write_all(format!("GET /slow HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes())
        .expect("part of a head");
    gw.sigterm();
    let resp = in_flight.join().expect("client thread");
    resp.assert_json_error(503);
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 503") && answer.contains("Connection: close"),
        "the slow head's answer: {answer:?}"
    );
    // The tunnel was closed by the gateway (no close frame: it does not speak WebSocket).
    let mut rest = [0u8; 64];
    assert!(
        matches!(s.read(&mut rest), Ok(0) | Err(_)),
        "tunnel still open after the drain deadline"
    );
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10))
            .and_then(|st| st.code()),
        Some(0)
    );
    let all = lines(&log);
    assert_eq!(all.len(), 3, "{all:#?}");
    let head = all
        .iter()
        .find(|l| l["path"].is_null())
        .expect("a line for the slow head");
    assert_eq!(head["status"], 503, "{head}");
    assert_eq!(head["detail"], "cut at the drain deadline", "{head}");
    let cut = by_path(&all, "/stuck/1");
    assert_eq!(cut["status"], 503, "{cut}");
    assert_eq!(cut["detail"], "cut at the drain deadline", "{cut}");
    let tunnel = by_path(&all, "/chat");
    assert_eq!(tunnel["status"], 101, "{tunnel}");
    assert_eq!(tunnel["detail"], "cut at the drain deadline", "{tunnel}");
    assert!(
        tunnel["bytes_sent"].as_u64().unwrap_or(0) > 0,
        "the tunnel's bytes count: {tunnel}"
    );
}

/// What the drain deadline does to answers in their middle (found by a review): a body being read
/// whole for a JSON edit has nothing of it sent yet, so the client gets the 503; a close-delimited
/// body relayed to an HTTP/1.0 client is reset, since a FIN would read as its whole end.
#[test]
fn the_drain_deadline_resets_a_begun_answer_and_503s_one_being_read() {
    let json = Upstream::start(Behaviour::Split {
        first: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":"
            .to_vec(),
        gap: Duration::from_secs(30),
        then: None,
    });
    let close = Upstream::start(Behaviour::Split {
        first: b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npartial body".to_vec(),
        gap: Duration::from_secs(30),
        then: None,
    });
    let dir = TempDir::new();
    let log = dir.file("access.log");
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1
drain_timeout = "1s"

{table}

[[services]]
name = "json"
url = "{json}"

[[services]]
name = "close"
url = "{close}"

[[routes]]
name = "json"
service = "json"
paths = ["/json"]

[[routes]]
name = "close"
service = "close"
paths = ["/close"]

[[plugins]]
name = "response-transformer"
route = "json"
[plugins.config]
remove = {{ json = ["secret"] }}
"#,
        table = log_table(&log),
        json = json.url(),
        close = close.url()
    );
    let mut gw = Gateway::start(&toml);
    let addr = gw.addr();
    let read_json = std::thread::spawn(move || {
        send_raw(
            addr,
            format!("GET /json HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes(),
        )
    });
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(format!("GET /close HTTP/1.0\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .expect("request");
    let mut got = Vec::new();
    let mut b = [0u8; 256];
    while !got.ends_with(b"partial body") {
        let n = s.read(&mut b).expect("the relayed part");
        assert!(n > 0, "closed before the body's first part");
        got.extend_from_slice(&b[..n]);
    }
    assert!(json.wait_requests(1, Duration::from_secs(5)));
    gw.sigterm();
    let end = s.read(&mut b);
    assert!(
        matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "a FIN would end the close-delimited body as if whole: {end:?}"
    );
    let resp = read_json.join().expect("client thread");
    resp.assert_json_error(503);
    assert_eq!(
        gw.wait_exit(Duration::from_secs(10))
            .and_then(|st| st.code()),
        Some(0)
    );
    let all = lines(&log);
    assert_eq!(all.len(), 2, "{all:#?}");
    let j = by_path(&all, "/json");
    assert_eq!(j["status"], 503, "{j}");
    assert_eq!(j["detail"], "cut at the drain deadline", "{j}");
    let c = by_path(&all, "/close");
    assert_eq!(c["status"], 200, "{c}");
    assert_eq!(c["detail"], "cut at the drain deadline", "{c}");
}
