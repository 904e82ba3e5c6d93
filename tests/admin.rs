//! The admin API end to end, in-process: a metrics hub, simulated workers flushing from their own
//! threads, the admin server on a loopback port, and a raw TCP client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringgate::admin::{AdminServer, AdminSettings, ReloadFailure, ReloadFn, Reloaded};
use ringgate::config::load_str;
use ringgate::config::model::{AdminDef, Config};
use ringgate::metrics::{Hub, Layout, MetricsHandle, Timings, WorkerMetrics};

const CONFIG: &str = r#"
[server]
listen = ["127.0.0.1:0"]

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "50ms"

[[upstreams]]
name = "backend"
targets = [{ target = "127.0.0.1:9001" }, { target = "127.0.0.1:9002" }]

[[services]]
name = "api"
upstream = "backend"

[[routes]]
name = "users"
service = "api"
paths = ["/users"]

[[routes]]
name = "orders"
service = "api"
paths = ["/orders"]
"#;

fn config() -> Config {
    load_str(CONFIG, "admin-test.toml").unwrap_or_else(|e| panic!("{e:?}"))
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

fn request(addr: SocketAddr, raw: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(raw.as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
    assert_eq!(body.len(), len, "body length matches Content-Length");
    Resp {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"),
    )
}

/// A worker thread: records a few requests per tick, flushes every `interval`, last flush at stop.
fn worker(
    index: usize,
    layout: Arc<Layout>,
    handle: MetricsHandle,
    interval: Duration,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let m = WorkerMetrics::new(index, layout, handle.sink());
        m.conn_opened();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) && n < 10_000 {
            let t0 = Instant::now();
            let mut t = Timings::new(t0);
            t.upstream_head_out = Some(t0 + Duration::from_micros(20));
            t.upstream_head_in = Some(t0 + Duration::from_millis(2));
            t.client_head_out = Some(t0 + Duration::from_micros(2030));
            t.end = t0 + Duration::from_millis(3);
            m.current().request_done(0, 200, 100, 500, &t);
            if n % 3 == 0 {
                m.current().request_done(1, 502, 80, 120, &t);
            }
            m.current().gateway_error(None, 404, 50, 90);
            m.current().upstream_connect_error(1);
            m.flush(&[2, 1]);
            n += 1;
            std::thread::sleep(interval);
        }
        m.conn_closed();
        m.flush_last(&[0, 0]);
    })
}

struct Setup {
    hub: Hub,
    admin: AdminServer,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

/// What the test's reload callback answers (`setup`'s `outcome`).
const RELOAD_OK: u8 = 0;
/// The config has errors.
const RELOAD_REJECTED: u8 = 1;
/// Generation installed, a worker did not confirm it.
const RELOAD_UNCONFIRMED: u8 = 2;

fn reload_ok() -> Arc<AtomicU8> {
    Arc::new(AtomicU8::new(RELOAD_OK))
}

fn setup(token: Option<&str>, outcome: Arc<AtomicU8>, histogram_file: Option<&str>) -> Setup {
    let mut cfg = config();
    cfg.metrics.histogram_file = histogram_file.map(Into::into);
    let hub = Hub::start(&cfg.metrics).unwrap_or_else(|e| panic!("{e}"));
    let handle = hub.handle();
    let layout = handle.register_config(&cfg, 1);
    handle.set_workers(2);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = (0..2)
        .map(|i| {
            worker(
                i,
                layout.clone(),
                handle.clone(),
                cfg.metrics.flush_interval,
                stop.clone(),
            )
        })
        .collect();
    let generation = Arc::new(AtomicU64::new(1));
    let reload_handle = Mutex::new(handle.clone());
    // A reload registers the file's config again: the same histogram_file.
    let reloaded_histogram_file = cfg.metrics.histogram_file.clone();
    // As the gateway's reloader does, the reload itself counts its outcome in the metrics.
    let count_handle = Mutex::new(handle.clone());
    let run = move || {
        match outcome.load(Ordering::SeqCst) {
            RELOAD_REJECTED => {
                return Err(ReloadFailure::Rejected(vec![
                    "admin-test.toml:3:1: routes[0].service: no service named \"x\"".into(),
                    "admin-test.toml:9:1: (syntax): invalid TOML\n  |\n9 | [x\n  |   ^".into(),
                ]))
            }
            RELOAD_UNCONFIRMED => {
                return Err(ReloadFailure::Unavailable {
                    message: "generation 7 is installed, but 1 of 2 worker(s) did not confirm it"
                        .into(),
                    generation: Some(7),
                })
            }
            _ => {}
        }
        let g = generation.fetch_add(1, Ordering::SeqCst) + 1;
        if let Ok(h) = reload_handle.lock() {
            let mut reloaded = config();
            reloaded.metrics.histogram_file = reloaded_histogram_file.clone();
            h.register_config(&reloaded, g);
        }
        // The reloader names what needs a restart; the admin passes it on.
        Ok(Reloaded {
            generation: g,
            restart_required: vec!["listen"],
        })
    };
    let reload: ReloadFn = Box::new(move || {
        let result = run();
        if let Ok(h) = count_handle.lock() {
            h.reload_outcome(result.is_ok());
        }
        result
    });
    let mut def: AdminDef = cfg
        .admin
        .clone()
        .unwrap_or_else(|| panic!("[admin] parsed"));
    def.token = token.map(Into::into);
    let admin = AdminServer::start(AdminSettings::new(&def), handle, reload, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = admin.local_addr();
    Setup {
        hub,
        admin,
        stop,
        workers,
        addr,
    }
}

impl Setup {
    fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    fn finish(mut self) {
        self.stop_workers();
        self.admin.stop();
        self.hub.stop();
    }
}

/// Polls `path` until `pred` holds (bounded).
fn wait_for(addr: SocketAddr, path: &str, pred: impl Fn(&Resp) -> bool) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(addr, path);
        if pred(&r) || Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn endpoints() {
    let outcome = reload_ok();
    let file = std::env::temp_dir().join(format!("ringgate-hist-{}.txt", std::process::id()));
    let file_s = file.display().to_string();
    let mut s = setup(None, outcome.clone(), Some(&file_s));
    let addr = s.addr;

    // /health: 200 once both workers flushed.
    let h = wait_for(addr, "/health", |r| r.status == 200);
    assert_eq!(h.status, 200, "{}", h.body);
    assert!(h.head.contains("Content-Type: application/json"));
    assert!(h.body.contains("\"workers\":2,\"serving\":2"), "{}", h.body);

    // /status
    let st = get(addr, "/status");
    assert_eq!(st.status, 200);
    assert!(
        st.body.starts_with("{\"generation\":1,\"loaded_at\":\"20"),
        "{}",
        st.body
    );
    assert!(st.body.contains(
        "\"routes\":[{\"name\":\"users\",\"service\":\"api\"},{\"name\":\"orders\",\"service\":\"api\"}]"
    ));
    assert!(
        st.body.contains("{\"name\":\"backend\",\"targets\":[{\"target\":\"127.0.0.1:9001\",\"address\":\"127.0.0.1:9001\",\"idle\":4,\"active\":0,\"healthy\":true,\"unhealthy_workers\":0}"),
        "{}",
        st.body
    );
    assert!(st.body.contains("\"index\":1,\"serving\":true"));

    // /metrics
    let m = get(addr, "/metrics");
    assert_eq!(m.status, 200);
    assert!(m.head.contains("Content-Type: text/plain; version=0.0.4"));
    let b = &m.body;
    assert!(b.contains("# TYPE ringgate_http_requests_total counter\n"));
    assert!(
        b.contains("ringgate_http_requests_total{route=\"users\",service=\"api\",code=\"200\"} ")
    );
    assert!(
        b.contains("ringgate_http_requests_total{route=\"orders\",service=\"api\",code=\"502\"} ")
    );
    assert!(b.contains(
        "ringgate_http_requests_total{route=\"(none)\",service=\"(none)\",code=\"404\"} "
    ));
    assert!(b.contains("# TYPE ringgate_request_duration_seconds histogram\n"));
    assert!(b.contains("ringgate_request_duration_seconds_bucket{route=\"users\",le=\"+Inf\"} "));
    assert!(b.contains("ringgate_upstream_duration_seconds_bucket{route=\"users\",le=\"0.0025\"} "));
    assert!(b.contains("ringgate_bandwidth_bytes_total{direction=\"egress\",route=\"users\"} "));
    assert!(b.contains("ringgate_downstream_connections 2\n"));
    assert!(b.contains(
        "ringgate_upstream_connect_errors_total{upstream=\"backend\",target=\"127.0.0.1:9002\",address=\"127.0.0.1:9002\"} "
    ));
    assert!(b.contains("ringgate_config_generation 1\n"));
    for line in b.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap_or("");
        assert!(value.parse::<f64>().is_ok(), "bad sample line {line:?}");
    }

    // /histograms
    let hs = get(addr, "/histograms");
    assert_eq!(hs.status, 200);
    assert!(
        hs.body
            .lines()
            .any(|l| l.starts_with("users ") && l.contains(" added ")),
        "{}",
        hs.body
    );
    let hr = get(addr, "/histograms?route=users&kind=added");
    assert_eq!(hr.status, 200);
    assert!(hr
        .body
        .starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    // added = 20 µs + 30 µs = 50 µs (1 % precision).
    let first_value: f64 = hr
        .body
        .lines()
        .nth(2)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!((49.0..=51.0).contains(&first_value), "{}", hr.body);
    assert_eq!(get(addr, "/histograms?route=nope").status, 404);
    assert_eq!(get(addr, "/histograms?route=users&kind=p99").status, 400);

    // /reload success, then failure.
    let ok = request(
        addr,
        "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.body,
        "{\"generation\":2,\"restart_required\":[\"listen\"]}\n"
    );
    outcome.store(RELOAD_REJECTED, Ordering::SeqCst);
    let bad = request(
        addr,
        "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(bad.status, 400);
    // One entry per error: a message spanning lines (a TOML parser's) stays one entry.
    assert!(bad.body.contains("\"errors\":[\"admin-test.toml:3:1: routes[0].service: no service named \\\"x\\\"\",\"admin-test.toml:9:1: (syntax): invalid TOML\\n  |\\n9 | [x\\n  |   ^\"]"), "{}", bad.body);
    let m = wait_for(addr, "/metrics", |r| {
        r.body
            .contains("ringgate_config_reloads_total{result=\"failure\"} 1\n")
    });
    assert!(m
        .body
        .contains("ringgate_config_reloads_total{result=\"success\"} 1\n"));
    assert!(m.body.contains("ringgate_config_generation 2\n"));
    assert!(get(addr, "/status").body.starts_with("{\"generation\":2,"));

    // Installed but not confirmed by every worker: not a success.
    outcome.store(RELOAD_UNCONFIRMED, Ordering::SeqCst);
    let partial = request(
        addr,
        "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(partial.status, 503, "{}", partial.body);
    assert_eq!(
        partial.body,
        "{\"message\":\"generation 7 is installed, but 1 of 2 worker(s) did not confirm it\",\"generation\":7}\n"
    );
    assert!(partial.head.contains("Content-Type: application/json"));
    outcome.store(RELOAD_OK, Ordering::SeqCst);

    // Errors.
    let nf = get(addr, "/nope");
    assert_eq!(nf.status, 404);
    assert!(nf.head.contains("Content-Type: application/json"));
    assert_eq!(nf.body, "{\"message\":\"not found\"}\n");
    let wrong = get(addr, "/reload");
    assert_eq!(wrong.status, 405);
    assert!(wrong.head.contains("Allow: POST"));
    assert_eq!(
        request(addr, "POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n").status,
        405
    );
    assert_eq!(request(addr, "garbage\r\n\r\n").status, 400);
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    assert_eq!(request(addr, &huge).status, 431);
    assert_eq!(
        request(
            addr,
            "POST /reload HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"
        )
        .status,
        413
    );

    // Workers stop: health turns 503 after their last flush.
    s.stop_workers();
    let h = wait_for(addr, "/health", |r| r.status == 503);
    assert_eq!(h.status, 503);
    assert!(h.body.contains("\"serving\":0"));
    s.finish();

    let text = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    assert!(text.contains("# route=users kind=added unit=us"), "{text}");
    assert!(text.contains("1/(1-Percentile)"));
}

#[test]
fn token_required() {
    let s = setup(Some("s3cret-token"), reload_ok(), None);
    let addr = s.addr;
    let r = get(addr, "/metrics");
    assert_eq!(r.status, 401);
    assert!(r.head.contains("WWW-Authenticate: Bearer"));
    // Except `/health`, for load balancers' probes, which send no headers (GET and HEAD only).
    let r = wait_for(addr, "/health", |r| r.status == 200);
    assert!(r.body.starts_with("{\"status\":\"ok\""), "{}", r.body);
    let (status, _, body) = head_request(addr, "/health");
    assert_eq!((status, body.len()), (200, 0));
    let (status, _, _) = head_request(addr, "/status");
    assert_eq!(status, 401, "only /health is open");
    let r = request(addr, "POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 401, "only GET and HEAD are open");
    let r = request(
        addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-tokeX\r\n\r\n",
    );
    assert_eq!(r.status, 401);
    let r = request(
        addr,
        "POST /reload HTTP/1.1\r\nAuthorization: Bearer wrong\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(r.status, 401, "reload needs the token too");
    let r = request(
        addr,
        "GET /metrics HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let r = request(
        addr,
        "GET /nope HTTP/1.1\r\nAuthorization: Bearer s3cret-token\r\n\r\n",
    );
    assert_eq!(r.status, 404);
    s.finish();
}

#[test]
fn slow_and_silent_clients_do_not_block_others() {
    let s = setup(None, reload_ok(), None);
    let addr = s.addr;
    // A few connections that send half a head and stall, and one that sends nothing.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}"));
        let _ = c.write_all(b"GET /metr");
        stalled.push(c);
    }
    stalled.push(TcpStream::connect(addr).unwrap_or_else(|e| panic!("{e}")));
    let t0 = Instant::now();
    assert_eq!(get(addr, "/status").status, 200);
    assert!(t0.elapsed() < Duration::from_secs(2));
    drop(stalled);
    s.finish();
}

/// Sends `raw`, reads to EOF: (status, head, bytes after the head).
fn exchange(s: &mut TcpStream, raw: &[u8]) -> (u16, String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.write_all(raw).unwrap_or_else(|e| panic!("write: {e}"));
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("read: {e}"));
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head end in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    (status, head, out[end + 4..].to_vec())
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Content-Length in {head:?}"))
}

fn head_request(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    exchange(
        &mut s,
        format!("HEAD {path} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes(),
    )
}

/// RFC 9110 §9.3.2: HEAD wherever GET is supported, same head, no body. Load balancers probe
/// `/health` with HEAD.
#[test]
fn head_answers_like_get_without_a_body() {
    let s = setup(None, reload_ok(), None);
    let addr = s.addr;
    // /health turns 503 while a simulated worker misses its flushes (a loaded machine): compare a
    // HEAD and a GET that both saw 200 (bounded retries).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, head, body) = head_request(addr, "/health");
        assert!(body.is_empty(), "HEAD got a body: {body:?}");
        let g = get(addr, "/health");
        if status == 200 && g.status == 200 {
            assert_eq!(content_length(&head), g.body.len(), "{head}");
            assert!(head.contains("Content-Type: application/json"), "{head}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HEAD {status} {head}, GET {} {}",
            g.status,
            g.body
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    for path in ["/metrics", "/status", "/histograms"] {
        let (status, head, body) = head_request(addr, path);
        assert_eq!(status, 200, "HEAD {path}: {head}");
        assert!(body.is_empty(), "HEAD {path} got a body: {body:?}");
        assert!(content_length(&head) > 0, "HEAD {path}: {head}");
    }
    // Errors to a HEAD carry no body either.
    let (status, _, body) = head_request(addr, "/nope");
    assert_eq!(status, 404);
    assert!(body.is_empty());
    let (status, head, body) = head_request(addr, "/reload");
    assert_eq!(status, 405);
    assert!(head.contains("Allow: POST"), "{head}");
    assert!(body.is_empty());
    // The Allow header of a GET endpoint names HEAD too.
    let r = request(addr, "POST /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(r.status, 405);
    assert!(r.head.contains("Allow: GET, HEAD"), "{}", r.head);
    s.finish();
}

/// A request whose body is cut short, late, or framed ambiguously is answered with an error and never
/// acted on; the first reload that does run is generation 2.
#[test]
fn incomplete_or_ambiguous_requests_never_reload() {
    let s = setup(None, reload_ok(), None);
    let addr = s.addr;
    let head = "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n";

    // 3 of 10 body bytes, then nothing: the read deadline passes.
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    let (status, _, body) = exchange(&mut c, format!("{head}abc").as_bytes());
    assert_eq!(status, 408, "{}", String::from_utf8_lossy(&body));
    assert!(head_closes(&mut c));

    // 3 of 10 body bytes, then the client half-closes.
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect: {e}"));
    c.write_all(format!("{head}abc").as_bytes())
        .unwrap_or_else(|e| panic!("write: {e}"));
    let _ = c.shutdown(std::net::Shutdown::Write);
    let (status, _, _) = exchange(&mut c, b"");
    assert_eq!(status, 400);

    // Two Content-Length headers (conflicting, or even equal: one framing only, like the proxy).
    for cls in ["1\r\nContent-Length: 5", "1\r\nContent-Length: 1", "1, 1"] {
        let r = request(
            addr,
            &format!("POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: {cls}\r\n\r\nx"),
        );
        assert_eq!(r.status, 400, "Content-Length: {cls}: {}", r.body);
        assert!(r.body.contains("Content-Length"), "{}", r.body);
    }

    let ok = request(
        addr,
        "POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(
        ok.body, "{\"generation\":2,\"restart_required\":[\"listen\"]}\n",
        "an earlier request reloaded"
    );
    s.finish();
}

/// After an answer, the server has closed: a read sees EOF (or a reset), never more data.
fn head_closes(c: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(c.read(&mut b), Ok(0) | Err(_))
}

/// A TCP connection to `addr` from the local address `src` (any 127.0.0.0/8 address is loopback on
/// Linux, so one test can play several peers).
fn connect_from(src: &str, addr: SocketAddr) -> TcpStream {
    let ip: std::net::IpAddr = src.parse().unwrap_or_else(|e| panic!("{src}: {e}"));
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .unwrap_or_else(|e| panic!("socket: {e}"));
    sock.bind(&SocketAddr::new(ip, 0).into())
        .unwrap_or_else(|e| panic!("bind {src}: {e}"));
    sock.connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect from {src}: {e}"));
    sock.into()
}

/// One peer opening many connections that never finish their head takes only its own share of the
/// slots: other peers are still served at once.
#[test]
fn one_peer_cannot_take_every_slot() {
    let s = setup(None, reload_ok(), None);
    let addr = s.addr;
    let _ = wait_for(addr, "/health", |r| r.status == 200);
    // More than the old global cap (16), each with half a head: all held until the head deadline
    // (2 s). A stalled machine may pass it before the check: then the flood is tried again, and
    // the check never goes unmade.
    let mut held = Vec::new();
    let mut tries = 0;
    loop {
        tries += 1;
        let t0 = Instant::now();
        held.clear();
        for _ in 0..24 {
            let mut c = connect_from("127.0.0.2", addr);
            let _ = c.write_all(b"GET /health HTTP/1.1\r\n");
            held.push(c);
        }
        // The listen queue is FIFO: every held connection was accepted before the ones below.
        let mut extra = connect_from("127.0.0.2", addr);
        let (status, _, body) = exchange(&mut extra, b"");
        if t0.elapsed() < Duration::from_millis(1500) {
            assert_eq!(status, 503, "the flooding peer is over its share");
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(body.contains("from this address"), "{body}");
            break;
        }
        assert!(
            tries < 5,
            "the machine never ran the flood within the head deadline"
        );
        held.clear();
        std::thread::sleep(Duration::from_millis(2500));
    }

    for src in ["127.0.0.1", "127.0.0.3"] {
        let mut c = connect_from(src, addr);
        let (status, _, body) = exchange(
            &mut c,
            b"GET /health HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            status,
            200,
            "peer {src} locked out: {}",
            String::from_utf8_lossy(&body)
        );
    }

    // Closing them gives the peer its slots back (each is answered and released on EOF).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = connect_from("127.0.0.2", addr);
        let (status, _, _) = exchange(&mut c, b"GET /status HTTP/1.1\r\nHost: admin\r\n\r\n");
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slots never released: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    s.finish();
}
