//! Bounded mutation fuzzing through a running gateway, over real sockets: keep-alive connections
//! carrying one to three pipelined requests, mostly mutated (`common::mutate`), sent in random
//! pieces, then half-closed. Whatever the bytes, the gateway must:
//! - end every connection promptly once the client is done (EOF seen): no wait on a timeout, no hang;
//! - answer only in well-formed HTTP/1.1 responses (framed so a client can read them one by one);
//! - answer in the statuses a client can act on (400, 413, 414, 431, ...), never a 5xx other than 501 (unsupported transfer coding) or 505 (version): the
//!   upstream is healthy, so a 502 or 500 would be the gateway mishandling a request it accepted;
//! - deliver every response the upstream completed to the client that asked, and only to it: each
//!   connection's requests carry its own token in the path, the upstream echoes the target in
//!   `X-Echo-Path`, and the tokens the upstream answered must be exactly the tokens each client saw
//!   (no lost response, none crossed between clients, no request the client did not send);
//! - hold no client connection open afterwards (no ESTABLISHED or CLOSE_WAIT socket on its port),
//!   still serve a plain request, and log no panic.
//!
//! The second test turns it around: a healthy client and an upstream whose responses are mutated
//! (bad framing, interim responses, close-delimited bodies, garbage), kept alive or closed at
//! random. Each request carries its own token and the upstream puts it in its response, so a
//! response relayed to the wrong request (a desync through the pool) shows. The gateway must answer
//! every request with a relayed response or its own 502/503/504, or end the connection when a
//! relayed response breaks off, all within bounded time.
//!
//! Seeds: a fixed one and one from the clock; a failure prints its seed for `WIRE_FUZZ_SEED=<n>`.

mod common;

use common::mutate::{mutate_bytes, seeds};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Connections per seed, and how many run at once.
const CONNS: usize = 3000;
const THREADS: usize = 8;
/// How long a connection may take to end after the client half-closes it.
const END_WITHIN: Duration = Duration::from_secs(5);

/// Request templates; `{t}` becomes the connection's token.
const TEMPLATES: &[&str] = &[
    "GET /{t}/a HTTP/1.1\r\nHost: h\r\n\r\n",
    "POST /{t}/p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    "POST /{t}/c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n",
    "PUT /{t}/e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "GET /{t}/q?x=1&y=%41 HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Private\r\nX-Private: s\r\nCookie: a=b\r\n\r\n",
    "GET /{t}/w HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "GET http://h/{t}/abs HTTP/1.1\r\nHost: h\r\n\r\n",
    "\r\nGET /{t}/crlf HTTP/1.1\r\nHost: h\r\nX-Obs: caf\u{e9}\t!\r\n\r\n",
    "DELETE /{t}/d HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n",
    "GET /{t}/10 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    // Near the limits below: an edit can push them over (413, 414; `near_head`: 431).
    "POST /{t}/near-body HTTP/1.1\r\nHost: h\r\nContent-Length: 60\r\n\r\n012345678901234567890123456789012345678901234567890123456789",
    "GET /{t}/near-uri/0123456789012345678901234567890123456 HTTP/1.1\r\nHost: h\r\n\r\n",
];

/// Limits low enough for the templates (and `near_head`) to reach.
const LIMITS: &str =
    "max_header_bytes = 1024\nmax_uri_bytes = 64\nmax_headers = 8\nmax_body_bytes = 64";

/// A head 10 bytes under `max_header_bytes` (1024, once `{t}` is a token) with `max_headers` (8)
/// header lines: most edits that add bytes or a line push it over (431).
fn near_head() -> String {
    let head = |pad: usize| {
        let v = "x".repeat(pad);
        format!("GET /{{t}}/near-head HTTP/1.1\r\nHost: h\r\nA: {v}\r\nB: 1\r\nC: 2\r\nD: 3\r\nE: 4\r\nF: 5\r\nG: 6\r\n\r\n")
    };
    let without = head(0).len() + 7;
    head(1024 - 10 - without)
}

/// What one connection sent and got back.
struct Outcome {
    token: String,
    mutated: bool,
    /// Requests sent (before any mutation).
    requests: usize,
    statuses: Vec<u16>,
    /// `X-Echo-Path` of each upstream response the client got.
    echoed: Vec<String>,
    /// Why the connection did not end cleanly, with what was sent.
    problem: Option<String>,
}

fn token(rng: &mut StdRng) -> String {
    (0..10)
        .map(|_| rng.gen_range(b'a'..=b'z') as char)
        .collect()
}

/// One connection: build, maybe mutate, send in pieces, half-close, read every response until EOF.
fn run_conn(addr: SocketAddr, rng: &mut StdRng) -> Outcome {
    let token = token(rng);
    let n = rng.gen_range(1..=3);
    let mut bytes = Vec::new();
    let mut requests = 0;
    for _ in 0..n {
        let i = rng.gen_range(0..=TEMPLATES.len());
        let t = TEMPLATES.get(i).map_or_else(near_head, |t| (*t).to_owned());
        bytes.extend_from_slice(t.replace("{t}", &token).as_bytes());
        requests += 1;
    }
    let mutated = rng.gen_ratio(3, 4);
    if mutated {
        bytes = mutate_bytes(rng, &bytes);
    }
    let mut out = Outcome {
        token,
        mutated,
        requests,
        statuses: Vec::new(),
        echoed: Vec::new(),
        problem: None,
    };
    let mut c = match Conn::try_connect(addr) {
        Ok(c) => c,
        Err(e) => {
            out.problem = Some(format!("connect: {e}"));
            return out;
        }
    };
    let mut rest: &[u8] = &bytes;
    while !rest.is_empty() {
        let take = rng.gen_range(1..=rest.len());
        // A write error is fine: the gateway may reject and close before reading everything.
        if c.send(&rest[..take]).is_err() {
            break;
        }
        rest = &rest[take..];
        if rng.gen_ratio(1, 8) {
            std::thread::sleep(Duration::from_millis(rng.gen_range(1..=3)));
        }
    }
    c.shutdown_write();
    let deadline = Instant::now() + END_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            out.problem = Some("still open after the client half-closed (a hang)".into());
            break;
        }
        c.set_read_timeout(left);
        match c.read_response() {
            Ok(r) => {
                out.statuses.push(r.status);
                if let Some(p) = r.header("x-echo-path") {
                    out.echoed.push(p.to_owned());
                }
                if !r.complete {
                    out.problem = Some(format!(
                        "response {} cut short: {:?}",
                        r.status, r.body_error
                    ));
                    break;
                }
                if r.status == 101 {
                    out.problem = Some("101 from an upstream that never upgrades".into());
                    break;
                }
            }
            // The normal end: EOF with nothing pending.
            Err(_) if c.eof && c.leftover().is_empty() => break,
            Err(e) => {
                out.problem = Some(if c.eof {
                    format!("bytes that are not a response: {e}")
                } else {
                    format!("still open after the client half-closed (a hang): {e}")
                });
                break;
            }
        }
    }
    if let Some(p) = &mut out.problem {
        p.push_str(&format!("; sent {:?}", String::from_utf8_lossy(&bytes)));
    }
    out
}

/// Sockets on the gateway's side of `port` that are ESTABLISHED or CLOSE_WAIT (the gateway has not
/// closed them), from /proc/net/tcp.
fn open_server_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_else(|e| panic!("/proc/net/tcp (the leak check reads it): {e}"));
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && (f[3] == "01" || f[3] == "08")
        })
        .count()
}

#[test]
fn mutated_traffic_through_the_gateway_is_answered_framed_and_never_crossed() {
    let up = Upstream::echo("u");
    let gw = Gateway::start(&basic_config(&up, LIMITS, "").replace("workers = 1", "workers = 2"));
    let addr = gw.addr();
    for seed in seeds("WIRE_FUZZ_SEED") {
        println!("wire_fuzz seed: {seed} (replay with WIRE_FUZZ_SEED={seed})");
        let before = up.complete_requests().len();
        let started = Instant::now();
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(seed ^ (i as u64 + 1));
                        (0..CONNS / THREADS)
                            .map(|_| run_conn(addr, &mut rng))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        assert_eq!(outcomes.len(), CONNS, "a client thread panicked");

        // Every connection ended cleanly, in well-formed responses.
        let problems: Vec<&String> = outcomes.iter().filter_map(|o| o.problem.as_ref()).collect();
        assert!(
            problems.is_empty(),
            "seed {seed}: {} of {CONNS} connections: {:#?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for s in outcomes.iter().flat_map(|o| &o.statuses) {
            *by_status.entry(*s).or_default() += 1;
        }
        println!(
            "seed {seed}: {CONNS} connections in {:?}, statuses {by_status:?}",
            started.elapsed()
        );
        let bad: Vec<_> = by_status
            .keys()
            .filter(|s| **s >= 500 && **s != 501 && **s != 505)
            .collect();
        assert!(bad.is_empty(), "seed {seed}: gateway errors {bad:?}");

        // Unmutated connections: every request answered by the upstream, in order.
        for o in outcomes.iter().filter(|o| !o.mutated) {
            assert_eq!(
                o.statuses,
                vec![200; o.requests],
                "seed {seed}: {}",
                o.token
            );
            assert!(o.echoed.iter().all(|p| p.contains(&o.token)));
        }

        // The tokens the upstream answered are exactly the tokens the clients saw, each on its own
        // connection.
        let tokens: HashMap<&str, usize> = outcomes
            .iter()
            .enumerate()
            .map(|(i, o)| (o.token.as_str(), i))
            .collect();
        let owner = |path: &str| -> Option<usize> {
            path.split('/')
                .find_map(|seg| tokens.get(seg.get(..10).unwrap_or(seg)).copied())
        };
        let mut upstream_answered = vec![0usize; CONNS];
        for r in &up.complete_requests()[before..] {
            if let Some(i) = owner(&r.target) {
                upstream_answered[i] += 1;
            }
        }
        for (i, o) in outcomes.iter().enumerate() {
            let mut seen = 0;
            for p in &o.echoed {
                match owner(p) {
                    Some(j) if j == i => seen += 1,
                    Some(j) => panic!(
                        "seed {seed}: connection {} got the response to {}'s request ({p})",
                        o.token, outcomes[j].token
                    ),
                    None => {}
                }
            }
            assert_eq!(
                seen, upstream_answered[i],
                "seed {seed}: connection {}: the upstream answered {} of its requests, it got {seen}",
                o.token, upstream_answered[i]
            );
        }
    }

    // Nothing left open on the gateway's side, and it still serves.
    let settle_by = Instant::now() + Duration::from_secs(3);
    while open_server_sockets(gw.port()) > 0 && Instant::now() < settle_by {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        open_server_sockets(gw.port()),
        0,
        "client connections the gateway did not close"
    );
    assert_eq!(get(addr, HOST, "/after").status, 200);
    let logs = gw.logs().join("\n");
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Upstream response templates; `{t}` becomes the request's token (10 bytes, so `{t}ok` is 12).
const RESPONSES: &[&str] = &[
    "HTTP/1.1 200 OK\r\nX-Tok: {t}\r\nContent-Length: 12\r\n\r\n{t}ok",
    "HTTP/1.1 200 OK\r\nX-Tok: {t}\r\nTransfer-Encoding: chunked\r\n\r\nc\r\n{t}ok\r\n0\r\nX-Trailer: 1\r\n\r\n",
    "HTTP/1.1 204 No Content\r\nX-Tok: {t}\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nX-Tok: {t}\r\nETag: \"e\"\r\n\r\n",
    "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-Tok: {t}\r\nContent-Length: 12\r\n\r\n{t}ok",
    "HTTP/1.1 404 Not Found\r\nX-Tok: {t}\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nX-Tok: {t}\r\nConnection: close\r\n\r\n{t}ok",
    "HTTP/1.0 200 OK\r\nX-Tok: {t}\r\nContent-Length: 12\r\n\r\n{t}ok",
    "HTTP/1.1 500 Oops\r\nX-Tok: {t}\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\n{t}ok",
];

/// An upstream that answers each request with a (mostly) mutated `RESPONSES` entry carrying the
/// token in the request's first path segment, sometimes with an unasked-for second response behind
/// it, then keeps the connection or closes it at random.
fn mutating_upstream(seed: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"));
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || serve_mutated(conn, seed ^ ((n as u64) << 20)));
        }
    });
    addr
}

fn serve_mutated(mut conn: TcpStream, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        // The gateway sends GETs without bodies: a request is its head.
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match conn.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let token = head
            .split(' ')
            .nth(1)
            .and_then(|t| t.split('/').nth(1))
            .unwrap_or("")
            .to_owned();
        let template = RESPONSES[rng.gen_range(0..RESPONSES.len())].replace("{t}", &token);
        let mut response = template.into_bytes();
        if rng.gen_ratio(3, 4) {
            response = mutate_bytes(&mut rng, &response);
        }
        if rng.gen_ratio(1, 8) {
            // An unasked-for second response right behind the first (a HEAD answered with a body,
            // a buggy app): the connection must not be pooled with it. Bytes that arrive only after
            // the gateway sent the next request cannot be told from its answer, by nginx or anyone;
            // those sent while the connection sits idle are caught by the pool's peek
            // (`upstream_faults::bytes_an_upstream_sends_after_its_response_never_answer_the_next_
            // request`), so here they go out in the same write.
            response.extend_from_slice(RESPONSES[0].replace("{t}", &token).as_bytes());
        }
        if conn.write_all(&response).is_err() {
            return;
        }
        if rng.gen_ratio(1, 3) {
            return;
        }
    }
}

#[test]
fn mutated_upstream_responses_are_relayed_framed_or_refused_never_crossed() {
    for seed in seeds("WIRE_FUZZ_SEED") {
        println!("wire_fuzz (upstream side) seed: {seed} (replay with WIRE_FUZZ_SEED={seed})");
        let up = mutating_upstream(seed);
        let gw = Gateway::start(&format!(
            r#"[server]
listen = ["127.0.0.1:0"]
workers = 2
[server.timeouts]
upstream_read = "300ms"

[[services]]
name = "svc"
url = "http://{up}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
strip_path = false
"#
        ));
        let addr = gw.addr();
        let started = Instant::now();
        let results: Vec<Seen> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(seed ^ (0xC0FFEE + i as u64));
                        let mut seen = Seen::default();
                        for _ in 0..UPSTREAM_CONNS / THREADS {
                            run_upstream_conn(addr, &mut rng, &mut seen);
                        }
                        seen
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let problems: Vec<&String> = results.iter().flat_map(|r| &r.problems).collect();
        assert!(
            problems.is_empty(),
            "seed {seed}: {} problems: {:#?}",
            problems.len(),
            &problems[..problems.len().min(5)]
        );
        let mut by_status: HashMap<u16, usize> = HashMap::new();
        for s in results.iter().flat_map(|r| &r.statuses) {
            *by_status.entry(*s).or_default() += 1;
        }
        println!(
            "seed {seed}: {UPSTREAM_CONNS} connections in {:?}, statuses {by_status:?}",
            started.elapsed()
        );
        assert!(
            by_status.get(&200).copied().unwrap_or(0) > UPSTREAM_CONNS / 4,
            "seed {seed}: too few relayed responses to mean anything: {by_status:?}"
        );
        // No response carries another request's token.
        let all: HashSet<&str> = results
            .iter()
            .flat_map(|r| r.sent.iter().map(String::as_str))
            .collect();
        for (own, text) in results.iter().flat_map(|r| &r.texts) {
            for i in 0..text.len().saturating_sub(9) {
                if let Some(t) = text.get(i..i + 10) {
                    assert!(
                        t == own || !all.contains(t),
                        "seed {seed}: the response to {own} carries {t}'s: {text:?}"
                    );
                }
            }
        }
        let settle_by = Instant::now() + Duration::from_secs(3);
        while open_server_sockets(gw.port()) > 0 && Instant::now() < settle_by {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            open_server_sockets(gw.port()),
            0,
            "seed {seed}: client connections left open"
        );
        let logs = gw.logs().join("\n");
        assert!(!logs.contains("panicked"), "{logs}");
    }
}

/// Connections per seed in the upstream-side test.
const UPSTREAM_CONNS: usize = 500;

/// What one client thread of the upstream-side test saw.
#[derive(Default)]
struct Seen {
    statuses: Vec<u16>,
    problems: Vec<String>,
    /// Every token sent.
    sent: Vec<String>,
    /// Per response: the request's token, and the response's headers and body as text.
    texts: Vec<(String, String)>,
}

/// One client connection of up to three sequential GETs, each with its own token.
fn run_upstream_conn(addr: SocketAddr, rng: &mut StdRng, seen: &mut Seen) {
    let Seen {
        statuses,
        problems,
        sent,
        texts,
    } = seen;
    let mut c = match Conn::try_connect(addr) {
        Ok(c) => c,
        Err(e) => return problems.push(format!("connect: {e}")),
    };
    let deadline = Instant::now() + END_WITHIN;
    // The gateway closes a kept-alive connection only after saying so (`Connection: close`), or
    // when a relayed response broke off (returned below).
    let mut announced_close = false;
    for _ in 0..rng.gen_range(1..=3) {
        let t = token(rng);
        sent.push(t.clone());
        let closed_unannounced = |problems: &mut Vec<String>| {
            if !announced_close {
                problems.push(format!(
                    "{t}: connection closed without an answer after a keep-alive response"
                ));
            }
        };
        if c.send(format!("GET /{t}/x HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes())
            .is_err()
        {
            return closed_unannounced(problems);
        }
        c.set_read_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
        match c.read_response() {
            Ok(r) => {
                statuses.push(r.status);
                let mut text = String::new();
                for (n, v) in &r.headers {
                    text.push_str(&format!("{n}: {v}\n"));
                }
                text.push_str(&String::from_utf8_lossy(&r.body));
                texts.push((t.clone(), text));
                if r.status == 101 {
                    return problems.push(format!("{t}: a 101 without an upgrade request"));
                }
                if !r.complete {
                    return; // a relayed response broke off: the gateway closes, as it must
                }
                announced_close = r
                    .header("connection")
                    .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
            }
            Err(_) if c.eof && c.leftover().is_empty() => return closed_unannounced(problems),
            Err(e) => return problems.push(format!("{t}: no answer within {END_WITHIN:?}: {e}")),
        }
        if Instant::now() > deadline {
            return problems.push(format!("{t}: connection still busy after {END_WITHIN:?}"));
        }
    }
}
