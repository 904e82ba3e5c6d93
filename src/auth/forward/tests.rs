//! `check` against real auth servers on loopback (std threads, port 0), inside a monoio runtime.
//!
//! Each `AuthServer` answers every request with what its script returns, records the raw request
//! bytes and counts accepted connections, so tests can assert on the exact auth request and on
//! connection reuse. Every server loop is bounded by a stop flag, a lifetime and a request count,
//! so a failing test cannot hang the suite.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;

/// How long any test server thread may live.
const SERVER_LIFETIME: Duration = Duration::from_secs(20);
const MAX_REQUESTS_PER_CONN: usize = 1000;

/// What the server does with one request.
enum Reply {
    /// Send these bytes, keep the connection.
    Send(Vec<u8>),
    /// Send these bytes, then close (without saying so in the answer).
    SendThenClose(Vec<u8>),
    /// Send nothing for this long, then close.
    Stall(Duration),
    /// Send these bytes, then nothing for this long, then close.
    SendThenStall(Vec<u8>, Duration),
}

type Script = dyn Fn(usize, &[u8]) -> Reply + Send + Sync;

struct AuthServer {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AuthServer {
    /// `script(n, request)`: the reply to the n-th request (0-based, across connections).
    fn start(script: impl Fn(usize, &[u8]) -> Reply + Send + Sync + 'static) -> AuthServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (a, r, st) = (accepts.clone(), requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + SERVER_LIFETIME;
            while !st.load(Ordering::Relaxed) && Instant::now() < until {
                match listener.accept() {
                    Ok((stream, _)) => {
                        a.fetch_add(1, Ordering::SeqCst);
                        let (r, st, script) = (r.clone(), st.clone(), script.clone());
                        std::thread::spawn(move || serve_conn(stream, &r, &st, &*script, until));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        AuthServer {
            addr,
            accepts,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(
    mut stream: TcpStream,
    requests: &Mutex<Vec<Vec<u8>>>,
    stop: &AtomicBool,
    script: &Script,
    until: Instant,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..MAX_REQUESTS_PER_CONN {
        // Read one request head (auth requests have no body).
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if stop.load(Ordering::Relaxed) || Instant::now() > until {
                return;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        };
        let request: Vec<u8> = buf.drain(..head_end).collect();
        let n = {
            let Ok(mut r) = requests.lock() else { return };
            r.push(request.clone());
            r.len() - 1
        };
        let sleep = |d: Duration| {
            let end = Instant::now() + d;
            while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        match script(n, &request) {
            Reply::Send(bytes) => {
                if stream.write_all(&bytes).is_err() {
                    return;
                }
            }
            Reply::SendThenClose(bytes) => {
                let _ = stream.write_all(&bytes);
                return;
            }
            Reply::Stall(d) => {
                sleep(d);
                return;
            }
            Reply::SendThenStall(bytes, d) => {
                let _ = stream.write_all(&bytes);
                sleep(d);
                return;
            }
        }
    }
}

/// Runs `f` on the driver the gateway would pick: io_uring where the kernel allows it, epoll
/// otherwise or with `RINGGATE_FORCE_EPOLL` set (as in `server.rs`), so both paths can be tested.
fn run<F: std::future::Future>(f: F) -> F::Output {
    if std::env::var_os("RINGGATE_FORCE_EPOLL").is_none() && monoio::utils::detect_uring() {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime")
            .block_on(f)
    } else {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime")
            .block_on(f)
    }
}

/// Client headers for tests: (name as sent, value) pairs.
struct Fields(Vec<(&'static str, &'static str)>);

impl RequestHeaders for Fields {
    fn for_each(&self, name_lower: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) {
        for (n, v) in &self.0 {
            if n.as_bytes().eq_ignore_ascii_case(name_lower) {
                f(n.as_bytes(), v.as_bytes());
            }
        }
    }
}

fn def(addr: SocketAddr) -> ForwardAuthDef {
    ForwardAuthDef {
        addr,
        host: "auth.local:9000".to_owned(),
        path: "/verify?app=shop".to_owned(),
        request_headers: vec!["authorization".to_owned(), "cookie".to_owned()],
        response_headers: vec!["x-user".to_owned(), "x-role".to_owned()],
        timeout: Duration::from_secs(2),
        max_body: DEFAULT_MAX_BODY,
    }
}

fn client_fields() -> Fields {
    Fields(vec![
        ("Authorization", "Bearer secret-token"),
        ("Cookie", "sid=abc"),
        ("Cookie", "theme=dark"),
        ("X-Other", "not for the auth service"),
        ("X-Forwarded-For", "6.6.6.6"),
        ("Content-Length", "12"),
        ("Transfer-Encoding", "chunked"),
        ("Connection", "keep-alive"),
    ])
}

fn request<'a>(fields: &'a Fields, method: &'a [u8]) -> AuthRequest<'a> {
    AuthRequest {
        method,
        uri: b"/api/orders?page=2",
        host: b"shop.example.com",
        proto: b"https",
        client_ip: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        headers: fields,
        client_close: false,
        http10: false,
        answer: Default::default(),
    }
}

/// Everything one `check` produced.
struct Checked {
    verdict: Verdict,
    headers: Vec<u8>,
    response: Vec<u8>,
}

/// Runs `check` with fresh output buffers.
async fn check_once(
    pool: &Pool,
    slot: usize,
    def: &ForwardAuthDef,
    req: &AuthRequest<'_>,
    scratch: &mut Scratch,
) -> Checked {
    let (mut headers, mut response) = (Vec::new(), Vec::new());
    let verdict = check(pool, slot, def, req, scratch, &mut headers, &mut response).await;
    Checked {
        verdict,
        headers,
        response,
    }
}

/// One check against a server, on a fresh pool.
fn one(d: &ForwardAuthDef, method: &[u8]) -> Checked {
    let fields = client_fields();
    let req = request(&fields, method);
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        check_once(&pool, slot, d, &req, &mut Scratch::default()).await
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok_allow() -> Vec<u8> {
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec()
}

#[test]
fn allow_copies_only_selected_response_headers() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(
            b"HTTP/1.1 200 OK\r\nX-User: alice\r\nX-Secret: keep-out\r\nx-role: admin\r\n\
              X-Role: ops\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\
              Content-Type: text/plain\r\n\r\n"
                .to_vec(),
        )
    });
    let mut d = def(server.addr);
    // A framing name in the list is never copied, even if the def was not validated.
    d.response_headers.push("content-length".to_owned());
    let c = one(&d, b"GET");
    assert_eq!(c.verdict, Verdict::Allow);
    assert_eq!(
        text(&c.headers),
        "X-User: alice\r\nx-role: admin\r\nX-Role: ops\r\n"
    );
    assert!(c.response.is_empty());
}

#[test]
fn allow_with_a_body_drains_it_and_reuses_the_connection() {
    let server = AuthServer::start(|n, _| {
        Reply::Send(if n % 2 == 0 {
            b"HTTP/1.1 204 No Content\r\nX-User: bob\r\n\r\n".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-User: bob\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n"
                .to_vec()
        })
    });
    let d = def(server.addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let mut scratch = Scratch::default();
        for _ in 0..4 {
            let c = check_once(&pool, slot, &d, &req, &mut scratch).await;
            assert_eq!(c.verdict, Verdict::Allow);
            assert_eq!(text(&c.headers), "X-User: bob\r\n");
        }
        assert_eq!(pool.idle_count(slot), 1);
    });
    assert_eq!(server.accepts(), 1);
}

#[test]
fn auth_request_has_exactly_the_forwarded_and_selected_fields() {
    let server = AuthServer::start(|_, _| Reply::Send(ok_allow()));
    let mut d = def(server.addr);
    // Misconfigured extras: forbidden names are skipped at run time; an absent one adds nothing.
    for n in [
        "host",
        "content-length",
        "x-forwarded-for",
        "connection",
        "x-absent",
    ] {
        d.request_headers.push(n.to_owned());
    }
    let c = one(&d, b"POST");
    assert_eq!(c.verdict, Verdict::Allow);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        text(&reqs[0]),
        "GET /verify?app=shop HTTP/1.1\r\n\
         Host: auth.local:9000\r\n\
         X-Forwarded-Method: POST\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: shop.example.com\r\n\
         X-Forwarded-Uri: /api/orders?page=2\r\n\
         X-Forwarded-For: 203.0.113.7\r\n\
         Authorization: Bearer secret-token\r\n\
         Cookie: sid=abc\r\n\
         Cookie: theme=dark\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

#[test]
fn empty_request_header_list_copies_no_client_field() {
    let server = AuthServer::start(|_, _| Reply::Send(ok_allow()));
    let mut d = def(server.addr);
    d.request_headers.clear();
    assert_eq!(one(&d, b"GET").verdict, Verdict::Allow);
    let req = text(&server.requests()[0]);
    assert!(!req.contains("Authorization"), "{req}");
    assert!(!req.contains("Cookie"), "{req}");
    assert!(req.ends_with("X-Forwarded-For: 203.0.113.7\r\nContent-Length: 0\r\n\r\n"));
}

#[test]
fn deny_401_with_content_length_is_relayed_with_its_headers_and_body() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"shop\"\r\n\
              Content-Type: text/plain\r\nContent-Length: 11\r\nConnection: keep-alive, X-Hop\r\n\
              Keep-Alive: timeout=5\r\nX-Hop: internal\r\nX-User: nobody\r\n\r\nlogin first"
                .to_vec(),
        )
    });
    let c = one(&def(server.addr), b"GET");
    assert_eq!(
        c.verdict,
        Verdict::Deny {
            status: 401,
            close: false
        }
    );
    assert_eq!(
        text(&c.response),
        "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"shop\"\r\n\
         Content-Type: text/plain\r\nX-User: nobody\r\nContent-Length: 11\r\n\r\nlogin first"
    );
    // A denial never adds upstream headers.
    assert!(c.headers.is_empty());
}

#[test]
fn deny_401_chunked_is_decoded_and_length_rederived() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(
            b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\
              Content-Type: application/json\r\nTrailer: X-T\r\n\r\n\
              4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-T: v\r\n\r\n"
                .to_vec(),
        )
    });
    let d = def(server.addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let mut scratch = Scratch::default();
        for _ in 0..3 {
            let c = check_once(&pool, slot, &d, &req, &mut scratch).await;
            assert_eq!(
                c.verdict,
                Verdict::Deny {
                    status: 401,
                    close: false
                }
            );
            assert_eq!(
                text(&c.response),
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
                 Content-Length: 7\r\n\r\n{\"a\":1}"
            );
        }
    });
    // A cleanly ended chunked answer leaves the connection reusable.
    assert_eq!(server.accepts(), 1);
}

#[test]
fn deny_body_split_across_many_writes_is_reassembled() {
    // Written byte by byte: every framing state of the decoder meets a read boundary.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let t = std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        let _ = s.set_nodelay(true);
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let answer = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n\
                       3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        for byte in answer.iter() {
            if s.write_all(std::slice::from_ref(byte)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        std::thread::sleep(Duration::from_millis(100));
    });
    let c = {
        let fields = client_fields();
        let req = request(&fields, b"GET");
        let d = def(addr);
        run(async {
            let pool = Pool::new(8, Duration::from_secs(60));
            let slot = pool.slot_for(addr);
            check_once(&pool, slot, &d, &req, &mut Scratch::default()).await
        })
    };
    let _ = t.join();
    assert_eq!(
        c.verdict,
        Verdict::Deny {
            status: 403,
            close: false
        }
    );
    assert_eq!(
        text(&c.response),
        "HTTP/1.1 403 Forbidden\r\nContent-Length: 5\r\n\r\nabcde"
    );
}

#[test]
fn deny_403_keeps_www_authenticate() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(
            b"HTTP/1.1 403 Forbidden\r\nWWW-Authenticate: Bearer error=\"insufficient_scope\"\r\n\
              Content-Length: 0\r\n\r\n"
                .to_vec(),
        )
    });
    let c = one(&def(server.addr), b"GET");
    assert_eq!(
        c.verdict,
        Verdict::Deny {
            status: 403,
            close: false
        }
    );
    assert_eq!(
        text(&c.response),
        "HTTP/1.1 403 Forbidden\r\nWWW-Authenticate: Bearer error=\"insufficient_scope\"\r\n\
         Content-Length: 0\r\n\r\n"
    );
}

#[test]
fn redirect_302_keeps_location_and_honours_client_close() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(
            b"HTTP/1.1 302 Found\r\nLocation: https://login.example.com/?rd=%2Fapi\r\n\
              Set-Cookie: state=xyz; HttpOnly\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
    });
    let d = def(server.addr);
    let fields = client_fields();
    let mut req = request(&fields, b"GET");
    req.client_close = true;
    let c = run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        check_once(&pool, slot, &d, &req, &mut Scratch::default()).await
    });
    assert_eq!(
        c.verdict,
        Verdict::Deny {
            status: 302,
            close: true
        }
    );
    assert_eq!(
        text(&c.response),
        "HTTP/1.1 302 Found\r\nLocation: https://login.example.com/?rd=%2Fapi\r\n\
         Set-Cookie: state=xyz; HttpOnly\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn deny_to_head_request_and_http10_client() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\n\r\nnope".to_vec())
    });
    let d = def(server.addr);
    let fields = client_fields();
    let mut req = request(&fields, b"HEAD");
    req.http10 = true;
    let c = run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        check_once(&pool, slot, &d, &req, &mut Scratch::default()).await
    });
    // The whole answer: the proxy cuts the body for a client's HEAD (`send_answer`), since the
    // method here may be an override's. HTTP/1.0 keep-alive is said explicitly.
    assert_eq!(
        text(&c.response),
        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 4\r\nConnection: keep-alive\r\n\r\nnope"
    );
}

#[test]
fn close_delimited_deny_is_relayed_and_not_pooled() {
    let server = AuthServer::start(|_, _| {
        Reply::SendThenClose(b"HTTP/1.0 401 Unauthorized\r\nX-Why: expired\r\n\r\ngone".to_vec())
    });
    let d = def(server.addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let mut scratch = Scratch::default();
        for _ in 0..2 {
            let c = check_once(&pool, slot, &d, &req, &mut scratch).await;
            assert_eq!(
                c.verdict,
                Verdict::Deny {
                    status: 401,
                    close: false
                }
            );
            assert_eq!(
                text(&c.response),
                "HTTP/1.1 401 Unauthorized\r\nX-Why: expired\r\nContent-Length: 4\r\n\r\ngone"
            );
            assert_eq!(pool.idle_count(slot), 0);
        }
    });
    assert_eq!(server.accepts(), 2);
}

#[test]
fn many_checks_share_one_connection_and_buffers_stop_growing() {
    let server = AuthServer::start(|n, _| {
        Reply::Send(if n % 3 == 0 {
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\nno".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nX-User: u\r\nContent-Length: 0\r\n\r\n".to_vec()
        })
    });
    let d = def(server.addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let mut scratch = Scratch::default();
        let (mut headers, mut response) = (Vec::new(), Vec::new());
        let mut warm = None;
        for i in 0..50 {
            headers.clear();
            response.clear();
            let v = check(
                &pool,
                slot,
                &d,
                &req,
                &mut scratch,
                &mut headers,
                &mut response,
            )
            .await;
            let expect = if i % 3 == 0 {
                Verdict::Deny {
                    status: 401,
                    close: false,
                }
            } else {
                Verdict::Allow
            };
            assert_eq!(v, expect, "check {i}");
            // After warm-up the same allocations serve every check.
            let now = (
                scratch.buf.as_ptr(),
                scratch.head.headers.as_ptr(),
                headers.as_ptr(),
                response.as_ptr(),
            );
            if i == 5 {
                warm = Some(now);
            } else if i > 5 {
                assert_eq!(Some(now), warm, "check {i} reallocated");
            }
        }
    });
    assert_eq!(server.accepts(), 1);
    assert_eq!(server.requests().len(), 50);
}

#[test]
fn idle_connection_closed_by_the_server_is_retried_on_a_fresh_one() {
    // The server answers as keep-alive, then closes at once. The next check reuses the pooled
    // connection within the pool's no-peek window, so it meets the close and must retry.
    let server = AuthServer::start(|_, _| Reply::SendThenClose(ok_allow()));
    let d = def(server.addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let mut scratch = Scratch::default();
        for i in 0..3 {
            let c = check_once(&pool, slot, &d, &req, &mut scratch).await;
            assert_eq!(c.verdict, Verdict::Allow, "check {i}");
            assert_eq!(pool.idle_count(slot), 1, "check {i}");
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_eq!(server.accepts(), 3);
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn service_down_is_unavailable() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let d = def(addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    let c = run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(addr);
        check_once(&pool, slot, &d, &req, &mut Scratch::default()).await
    });
    assert_eq!(
        c.verdict,
        Verdict::Unavailable {
            why: "connect failed"
        }
    );
    assert!(c.headers.is_empty() && c.response.is_empty());
}

#[test]
fn slow_service_times_out_within_the_timeout() {
    let server = AuthServer::start(|_, _| Reply::Stall(Duration::from_secs(3)));
    let mut d = def(server.addr);
    d.timeout = Duration::from_millis(200);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    let (c, elapsed, again) = run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let mut scratch = Scratch::default();
        let started = Instant::now();
        let c = check_once(&pool, slot, &d, &req, &mut scratch).await;
        let elapsed = started.elapsed();
        // The timed-out read took the buffer with it; the next check must still work.
        let again = check_once(&pool, slot, &d, &req, &mut scratch).await;
        (c, elapsed, again)
    });
    assert_eq!(c.verdict, Verdict::Timeout);
    assert!(elapsed >= Duration::from_millis(190), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
    assert_eq!(again.verdict, Verdict::Timeout);
}

#[test]
fn body_that_stalls_times_out() {
    let server = AuthServer::start(|_, _| {
        Reply::SendThenStall(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 100\r\n\r\npartial".to_vec(),
            Duration::from_secs(3),
        )
    });
    let mut d = def(server.addr);
    d.timeout = Duration::from_millis(200);
    assert_eq!(one(&d, b"GET").verdict, Verdict::Timeout);
}

#[test]
fn oversized_deny_body_is_unavailable() {
    let big = vec![b'x'; 5000];
    let mut answers: Vec<Vec<u8>> = Vec::new();
    // Content-Length over the limit.
    let mut a = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 5000\r\n\r\n".to_vec();
    a.extend_from_slice(&big);
    answers.push(a);
    // Chunked over the limit.
    let mut a = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n1388\r\n".to_vec();
    a.extend_from_slice(&big);
    a.extend_from_slice(b"\r\n0\r\n\r\n");
    answers.push(a);
    // Close-delimited over the limit.
    let mut a = b"HTTP/1.1 401 Unauthorized\r\n\r\n".to_vec();
    a.extend_from_slice(&big);
    answers.push(a);
    // The limit holds for approvals too: an answer is judged only whole.
    let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n".to_vec();
    a.extend_from_slice(&big);
    answers.push(a);
    for (i, answer) in answers.into_iter().enumerate() {
        let server = AuthServer::start(move |_, _| Reply::SendThenClose(answer.clone()));
        let mut d = def(server.addr);
        d.max_body = 1024;
        let c = one(&d, b"GET");
        assert!(
            matches!(c.verdict, Verdict::Unavailable { .. }),
            "answer {i}: {:?}",
            c.verdict
        );
        assert!(c.response.is_empty() && c.headers.is_empty(), "answer {i}");
    }
}

#[test]
fn deny_body_at_the_limit_is_accepted() {
    let server = AuthServer::start(|_, _| {
        let mut a = b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        // 1024 bytes in 4 chunks of 256.
        for _ in 0..4 {
            a.extend_from_slice(b"100\r\n");
            a.extend_from_slice(&[b'y'; 256]);
            a.extend_from_slice(b"\r\n");
        }
        a.extend_from_slice(b"0\r\n\r\n");
        Reply::Send(a)
    });
    let mut d = def(server.addr);
    d.max_body = 1024;
    let c = one(&d, b"GET");
    assert_eq!(
        c.verdict,
        Verdict::Deny {
            status: 401,
            close: false
        }
    );
    let expect_head = "HTTP/1.1 401 Unauthorized\r\nContent-Length: 1024\r\n\r\n";
    assert!(text(&c.response).starts_with(expect_head));
    assert_eq!(c.response.len(), expect_head.len() + 1024);
    assert!(c.response[expect_head.len()..].iter().all(|&b| b == b'y'));
}

#[test]
fn malformed_answers_are_unavailable() {
    let answers: Vec<&'static [u8]> = vec![
        b"HTTP/1.1 200 OK\nX-User: a\n\n",
        b"hello world\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: +4\r\n\r\nnope",
        b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nnope\r\n0\r\n\r\n",
        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-User",
        b"",
    ];
    for (i, answer) in answers.into_iter().enumerate() {
        let server = AuthServer::start(move |_, _| Reply::SendThenClose(answer.to_vec()));
        let c = one(&def(server.addr), b"GET");
        assert!(
            matches!(c.verdict, Verdict::Unavailable { .. }),
            "answer {i}: {:?}",
            c.verdict
        );
        assert!(c.response.is_empty() && c.headers.is_empty(), "answer {i}");
    }
}

#[test]
fn interim_answers_are_skipped() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
              HTTP/1.1 200 OK\r\nX-User: carol\r\nContent-Length: 0\r\n\r\n"
                .to_vec(),
        )
    });
    let c = one(&def(server.addr), b"GET");
    assert_eq!(c.verdict, Verdict::Allow);
    assert_eq!(text(&c.headers), "X-User: carol\r\n");
}

#[test]
fn extra_bytes_after_an_answer_keep_the_connection_out_of_the_pool() {
    let server = AuthServer::start(|_, _| {
        Reply::Send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n".to_vec())
    });
    let d = def(server.addr);
    let fields = client_fields();
    let req = request(&fields, b"GET");
    run(async {
        let pool = Pool::new(8, Duration::from_secs(60));
        let slot = pool.slot_for(d.addr);
        let c = check_once(&pool, slot, &d, &req, &mut Scratch::default()).await;
        assert_eq!(c.verdict, Verdict::Allow);
        assert_eq!(pool.idle_count(slot), 0);
    });
}

/// One change that makes a valid def invalid.
type Edit = fn(&mut ForwardAuthDef);

#[test]
fn validate_refuses_what_check_cannot_send_safely() {
    let ok = def("127.0.0.1:9".parse().expect("addr"));
    assert_eq!(ok.validate(), Ok(()));
    let cases: Vec<(&str, Edit)> = vec![
        ("host", |d| d.host = "a b".to_owned()),
        ("host", |d| d.host = "a\r\nX: y".to_owned()),
        ("path", |d| d.path = "verify".to_owned()),
        ("path", |d| d.path = "/a b".to_owned()),
        ("request_headers", |d| {
            d.request_headers.push("Cookie".to_owned())
        }),
        ("request_headers", |d| {
            d.request_headers.push("host".to_owned())
        }),
        ("request_headers", |d| {
            d.request_headers.push("x-forwarded-uri".to_owned())
        }),
        ("response_headers", |d| {
            d.response_headers.push("transfer-encoding".to_owned())
        }),
        ("response_headers", |d| {
            d.response_headers.push("x-forwarded-for".to_owned())
        }),
        ("response_headers", |d| {
            d.response_headers.push("x y".to_owned())
        }),
        ("timeout", |d| d.timeout = Duration::ZERO),
        ("max_body", |d| d.max_body = MAX_MAX_BODY + 1),
    ];
    for (what, edit) in cases {
        let mut d = ok.clone();
        edit(&mut d);
        let e = d.validate().expect_err(what);
        assert!(e.contains(what), "{what}: {e}");
    }
}

#[test]
fn span_headers_finds_every_field_of_a_name() {
    use crate::http::Span;
    let buf = b"Cookie: a=1\r\nHost: x\r\ncookie: b=2\r\n";
    let span = |s: usize, e: usize| Span {
        start: s as u32,
        end: e as u32,
    };
    let headers = [
        HeaderSpan {
            name: span(0, 6),
            value: span(8, 11),
        },
        HeaderSpan {
            name: span(13, 17),
            value: span(19, 20),
        },
        HeaderSpan {
            name: span(22, 28),
            value: span(30, 33),
        },
        // Out of range: skipped, never a panic.
        HeaderSpan {
            name: span(90, 96),
            value: span(0, 1),
        },
    ];
    let view = SpanHeaders {
        headers: &headers,
        buf,
        added: b"X-Request-ID: gen-1\r\n",
    };
    let mut seen = Vec::new();
    view.for_each(b"cookie", &mut |n, v| seen.push((text(n), text(v))));
    assert_eq!(
        seen,
        vec![
            ("Cookie".to_owned(), "a=1".to_owned()),
            ("cookie".to_owned(), "b=2".to_owned())
        ]
    );
    // A field a plugin set for the upstream goes as set, in place of the client's.
    let mut seen = Vec::new();
    view.for_each(b"x-request-id", &mut |n, v| seen.push((text(n), text(v))));
    assert_eq!(seen, vec![("X-Request-ID".to_owned(), "gen-1".to_owned())]);
}
