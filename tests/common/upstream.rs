//! Loopback upstream servers for the tests, on plain std threads and std::net (deliberately not on the
//! gateway's runtime, so a bug there cannot hide a bug here).
//!
//! Every upstream binds 127.0.0.1:0 and records, per accepted connection, every raw byte it received
//! plus each request it could parse. That record is how tests prove "nothing was forwarded": a smuggled
//! request can only be detected where it would land.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::client::{contains, find, is_timeout};
use super::ws;

/// How an upstream answers. Unless stated, a connection is kept alive and serves requests in a loop.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a JSON body describing the request (upstream name, method, path, query, headers, body
    /// length) and response headers `X-Upstream: <name>`, `X-Echo-Path: <target>`. HEAD gets the head
    /// only; `Expect: 100-continue` gets `100 Continue` first; `Connection: close` closes after.
    Echo,
    /// Echo, after a delay (an in-flight request for drain tests).
    EchoDelayed(Duration),
    /// These raw bytes after every request (for malformed, chunked, interim, 204/304 responses).
    Fixed(Vec<u8>),
    /// These raw bytes after the first request, then close (close-delimited responses).
    FixedThenClose(Vec<u8>),
    /// Read and record everything, never answer.
    Hang,
    /// Response head announcing 100000 bytes (or chunked) plus part of the body, then an abortive close
    /// (SO_LINGER 0, so the gateway sees a reset).
    ResetMidBody { chunked: bool },
    /// After every request: `first`, then `gap` later either `then` bytes or (`None`) an abortive close.
    /// For responses whose head and body arrive apart.
    Split {
        first: Vec<u8>,
        gap: Duration,
        then: Option<Vec<u8>>,
    },
    /// Echo without `Connection: close`, then close the connection anyway (a pooled connection that
    /// the upstream drops between requests).
    CloseAfterEachResponse,
    /// Echo the first request on each connection; for any later request on that connection, read it
    /// completely and close without answering (a stale pooled connection, detected only by using it).
    AnswerFirstOnly,
    /// Echo the first request on each connection; never answer later ones (read and record them): a
    /// pooled connection whose upstream has become slow.
    AnswerFirstThenHang,
    /// `len` bytes of a repeating pattern (`pattern_byte(i)`), Content-Length or chunked, written as
    /// fast as the socket takes them.
    Stream { len: u64, chunked: bool },
    /// After a WebSocket handshake: 101, an unmasked text frame "hello from upstream", then every
    /// masked client frame echoed back unmasked with the same opcode (ping → pong, close → close and
    /// shutdown). A text frame "bye" is echoed and then the TCP connection is closed (upstream-initiated
    /// close without a close frame).
    WebSocketEcho,
}

/// The byte at offset `i` of a `Stream` body (251 is prime, so misaligned copies show up).
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A request as the upstream parsed it.
#[derive(Clone, Debug, Default)]
pub struct RecordedRequest {
    /// Index of the connection (0-based, in accept order).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Names as sent, in order.
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
    /// Whether the body's framing completed (false: the connection ended or framing was invalid).
    pub complete: bool,
    /// The body arrived chunked.
    pub chunked: bool,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_of(&self.headers, name)
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        super::header_all_of(&self.headers, name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }
}

/// Everything an upstream saw.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub connections: usize,
    /// Raw bytes received, per connection.
    pub raw: Vec<Vec<u8>>,
    pub requests: Vec<RecordedRequest>,
    /// WebSocket frames received from the client side (unmasked), in order.
    pub ws_frames: Vec<ws::Frame>,
    /// Connections on which the peer (the gateway) closed or reset the connection.
    pub peer_closed: usize,
}

struct Shared {
    name: String,
    behaviour: Behaviour,
    stop: AtomicBool,
    rec: Mutex<Record>,
    cv: Condvar,
    streams: Mutex<Vec<TcpStream>>,
}

impl Shared {
    fn rec(&self) -> MutexGuard<'_, Record> {
        // A panicking connection thread must not hide the record from the test.
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A running upstream; stops (and unblocks its threads) on Drop.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts an upstream named "up".
    pub fn start(behaviour: Behaviour) -> Upstream {
        Upstream::named("up", behaviour)
    }

    /// Starts an upstream; `name` appears in echo bodies and the `X-Upstream` response header.
    pub fn named(name: &str, behaviour: Behaviour) -> Upstream {
        Upstream::named_at("127.0.0.1:0".parse().expect("addr"), name, behaviour)
    }

    /// Like `named`, listening on `at` (another loopback address, a given port).
    pub fn named_at(at: SocketAddr, name: &str, behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind(at).expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let shared = Arc::new(Shared {
            name: name.to_string(),
            behaviour,
            stop: AtomicBool::new(false),
            rec: Mutex::new(Record::default()),
            cv: Condvar::new(),
            streams: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::Builder::new()
            .name(format!("upstream-{name}-accept"))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn accept thread");
        Upstream {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn echo(name: &str) -> Upstream {
        Upstream::named(name, Behaviour::Echo)
    }

    pub fn fixed(bytes: &[u8]) -> Upstream {
        Upstream::start(Behaviour::Fixed(bytes.to_vec()))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// `http://127.0.0.1:PORT`, for a service `url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A copy of everything recorded so far.
    pub fn record(&self) -> Record {
        self.shared.rec().clone()
    }

    pub fn connections(&self) -> usize {
        self.shared.rec().connections
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.rec().requests.clone()
    }

    pub fn request_count(&self) -> usize {
        self.shared.rec().requests.len()
    }

    /// Requests whose body framing completed.
    pub fn complete_requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .rec()
            .requests
            .iter()
            .filter(|r| r.complete)
            .cloned()
            .collect()
    }

    /// The last recorded request; panics if there is none.
    pub fn last_request(&self) -> RecordedRequest {
        self.shared
            .rec()
            .requests
            .last()
            .cloned()
            .expect("upstream recorded no request")
    }

    /// All raw bytes received, all connections concatenated in accept order.
    pub fn raw_all(&self) -> Vec<u8> {
        self.shared.rec().raw.concat()
    }

    pub fn raw_len(&self) -> usize {
        self.shared.rec().raw.iter().map(Vec::len).sum()
    }

    pub fn raw_contains(&self, needle: &[u8]) -> bool {
        self.shared.rec().raw.iter().any(|r| contains(r, needle))
    }

    pub fn ws_frames(&self) -> Vec<ws::Frame> {
        self.shared.rec().ws_frames.clone()
    }

    pub fn peer_closed(&self) -> usize {
        self.shared.rec().peer_closed
    }

    /// Waits until `pred(record)` holds, up to `timeout`. Returns whether it did.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Record) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.rec();
        loop {
            if pred(&g) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .shared
                .cv
                .wait_timeout(g, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Waits until at least `n` request heads were recorded.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_for(timeout, |r| r.requests.len() >= n)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Unblock connection threads stuck in read/write.
        for s in self
            .shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Unblock accept().
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopped() {
            break;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        // Short read timeouts are ticks to notice `stop`, not limits on the peer.
        let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
        let id = {
            let mut r = shared.rec();
            r.connections += 1;
            r.raw.push(Vec::new());
            r.connections - 1
        };
        if let Ok(c) = stream.try_clone() {
            shared
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(c);
        }
        shared.cv.notify_all();
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("upstream-{}-{id}", shared.name))
            .stack_size(256 * 1024)
            .spawn(move || {
                let mut conn = UpConn {
                    stream,
                    buf: Vec::new(),
                    shared: s,
                    id,
                    eof: false,
                };
                conn.serve();
            });
        if spawned.is_err() {
            // Out of threads: the connection is dropped; the test will see the failure.
            continue;
        }
    }
}

/// One upstream-side connection.
struct UpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    id: usize,
    eof: bool,
}

impl UpConn {
    /// Reads more bytes, recording them. Ok(0) on EOF or stop; retries on timeout ticks.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        loop {
            if self.shared.stopped() {
                return Ok(0);
            }
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    self.mark_eof();
                    return Ok(0);
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    self.shared.rec().raw[self.id].extend_from_slice(&tmp[..n]);
                    self.shared.cv.notify_all();
                    return Ok(n);
                }
                Err(e) if is_timeout(&e) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.mark_eof();
                    return Err(e);
                }
            }
        }
    }

    fn mark_eof(&mut self) {
        if !self.eof {
            self.eof = true;
            self.shared.rec().peer_closed += 1;
            self.shared.cv.notify_all();
        }
    }

    fn read_line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..p + 2).collect();
                return Some(line[..p].to_vec());
            }
            if self.buf.len() > 1 << 20 {
                return None;
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    fn take_exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// Reads one request: records its head as soon as it is parsed (so tests can wait for "the upstream
    /// has seen it"), then its body. None when the connection ended first.
    fn read_request(
        &mut self,
        before_body: &mut dyn FnMut(&mut Self, &RecordedRequest),
    ) -> Option<usize> {
        let end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > 1 << 20 {
                return None;
            }
            match self.fill() {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        };
        let head: Vec<u8> = self.buf.drain(..end).collect();
        let text = String::from_utf8_lossy(&head[..end - 4]).into_owned();
        let mut lines = text.split("\r\n");
        let mut rl = lines.next().unwrap_or("").splitn(3, ' ');
        let mut req = RecordedRequest {
            conn: self.id,
            method: rl.next().unwrap_or("").to_string(),
            target: rl.next().unwrap_or("").to_string(),
            version: rl.next().unwrap_or("").to_string(),
            ..Default::default()
        };
        for line in lines {
            let (n, v) = line.split_once(':').unwrap_or((line, ""));
            req.headers.push((n.to_string(), v.trim().to_string()));
        }
        req.chunked = req
            .header_all("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let idx = {
            let mut r = self.shared.rec();
            r.requests.push(req.clone());
            r.requests.len() - 1
        };
        self.shared.cv.notify_all();
        before_body(self, &req);

        let mut body = Vec::new();
        let mut complete = true;
        if req.chunked {
            complete = false;
            while let Some(line) = self.read_line() {
                let size = line.split(|&b| b == b';').next().unwrap_or(&[]);
                let Ok(size) = u64::from_str_radix(String::from_utf8_lossy(size).trim(), 16) else {
                    break;
                };
                if size == 0 {
                    // Trailers, up to the empty line.
                    while let Some(l) = self.read_line() {
                        if l.is_empty() {
                            complete = true;
                            break;
                        }
                    }
                    break;
                }
                let Some(data) = self.take_exact(size as usize) else {
                    break;
                };
                body.extend_from_slice(&data);
                match self.read_line() {
                    Some(l) if l.is_empty() => {}
                    _ => break,
                }
            }
        } else if let Some(cl) = req.header("content-length") {
            match cl.trim().parse::<usize>() {
                Ok(n) => match self.take_exact(n) {
                    Some(b) => body = b,
                    None => complete = false,
                },
                Err(_) => complete = false,
            }
        }
        {
            let mut r = self.shared.rec();
            r.requests[idx].body = body;
            r.requests[idx].complete = complete;
        }
        self.shared.cv.notify_all();
        if complete {
            Some(idx)
        } else {
            None
        }
    }

    fn request_at(&self, idx: usize) -> RecordedRequest {
        self.shared.rec().requests[idx].clone()
    }

    fn write(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok() && self.stream.flush().is_ok()
    }

    fn serve(&mut self) {
        let behaviour = self.shared.behaviour.clone();
        let mut served = 0usize;
        // Echo-like behaviours answer `Expect: 100-continue` themselves before reading the body.
        let wants_continue = matches!(
            behaviour,
            Behaviour::Echo
                | Behaviour::EchoDelayed(_)
                | Behaviour::CloseAfterEachResponse
                | Behaviour::AnswerFirstOnly
        );
        loop {
            let mut hook = |c: &mut UpConn, r: &RecordedRequest| {
                let expect = r.header("expect").unwrap_or("");
                if wants_continue && expect.eq_ignore_ascii_case("100-continue") {
                    c.write(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
            };
            let Some(idx) = self.read_request(&mut hook) else {
                // For Hang, keep draining (and recording) until the peer goes away.
                if matches!(behaviour, Behaviour::Hang) {
                    while !self.eof && !self.shared.stopped() {
                        if self.fill().is_err() {
                            break;
                        }
                    }
                }
                return;
            };
            let req = self.request_at(idx);
            let keep = match &behaviour {
                Behaviour::Echo => self.echo(&req),
                Behaviour::EchoDelayed(d) => {
                    let until = Instant::now() + *d;
                    while Instant::now() < until && !self.shared.stopped() {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    self.echo(&req)
                }
                Behaviour::Fixed(bytes) => self.write(bytes),
                Behaviour::FixedThenClose(bytes) => {
                    self.write(bytes);
                    false
                }
                Behaviour::Hang => {
                    while !self.eof && !self.shared.stopped() {
                        if self.fill().is_err() {
                            break;
                        }
                    }
                    false
                }
                Behaviour::ResetMidBody { chunked } => {
                    self.reset_mid_body(*chunked);
                    return;
                }
                Behaviour::Split { first, gap, then } => {
                    if !self.write(first) {
                        return;
                    }
                    std::thread::sleep(*gap);
                    match then {
                        Some(rest) => self.write(rest),
                        None => {
                            self.reset();
                            return;
                        }
                    }
                }
                Behaviour::CloseAfterEachResponse => {
                    self.echo(&req);
                    false
                }
                Behaviour::AnswerFirstOnly => served == 0 && self.echo(&req),
                Behaviour::AnswerFirstThenHang if served == 0 => self.echo(&req),
                Behaviour::AnswerFirstThenHang => {
                    while !self.eof && !self.shared.stopped() {
                        if self.fill().is_err() {
                            break;
                        }
                    }
                    false
                }
                Behaviour::Stream { len, chunked } => self.stream_body(&req, *len, *chunked),
                Behaviour::WebSocketEcho => {
                    self.websocket(&req);
                    false
                }
            };
            served += 1;
            if !keep {
                let _ = self.stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }

    /// Writes the echo response; returns whether to keep the connection.
    fn echo(&mut self, req: &RecordedRequest) -> bool {
        let body = echo_json(&self.shared.name, req);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Upstream: {}\r\nX-Echo-Path: {}\r\n",
            body.len(),
            self.shared.name,
            req.target
        );
        let close = req
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !req.method.eq_ignore_ascii_case("HEAD") {
            bytes.extend_from_slice(body.as_bytes());
        }
        self.write(&bytes) && !close
    }

    fn reset_mid_body(&mut self, chunked: bool) {
        let mut out: Vec<u8> = Vec::new();
        if chunked {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
            for _ in 0..3 {
                out.extend_from_slice(b"1000\r\n");
                out.extend(std::iter::repeat_n(b'x', 0x1000));
                out.extend_from_slice(b"\r\n");
            }
        } else {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            out.extend(std::iter::repeat_n(b'x', 30000));
        }
        self.write(&out);
        // Let the gateway read and relay what was sent before the reset discards it.
        std::thread::sleep(Duration::from_millis(200));
        self.reset();
    }

    /// Abortive close: the gateway sees a reset.
    fn reset(&mut self) {
        set_linger_zero(&self.stream);
        // SO_LINGER 0 makes the *last* close() of the socket send RST. The Drop list holds a dup'd fd
        // of this socket, so remove (and close) that one here; `self.stream` closes when `serve`
        // returns and the connection thread ends.
        let peer = self.stream.peer_addr().ok();
        self.shared
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| s.peer_addr().ok() != peer);
    }

    fn stream_body(&mut self, req: &RecordedRequest, len: u64, chunked: bool) -> bool {
        let head = if chunked {
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
        } else {
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
        };
        if !self.write(head.as_bytes()) {
            return false;
        }
        if req.method.eq_ignore_ascii_case("HEAD") {
            return true;
        }
        const BLOCK: u64 = 64 * 1024;
        let mut off = 0u64;
        let mut block = Vec::with_capacity(BLOCK as usize + 16);
        while off < len {
            if self.shared.stopped() {
                return false;
            }
            let n = BLOCK.min(len - off);
            block.clear();
            if chunked {
                block.extend_from_slice(format!("{n:x}\r\n").as_bytes());
            }
            block.extend((off..off + n).map(pattern_byte));
            if chunked {
                block.extend_from_slice(b"\r\n");
            }
            if !self.write(&block) {
                return false;
            }
            off += n;
        }
        if chunked && !self.write(b"0\r\n\r\n") {
            return false;
        }
        true
    }

    fn websocket(&mut self, req: &RecordedRequest) {
        let upgrade = req.header("upgrade").unwrap_or("");
        let Some(key) = req.header("sec-websocket-key") else {
            self.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        if !upgrade.eq_ignore_ascii_case("websocket") {
            self.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
            return;
        }
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            ws::accept_key(key)
        );
        let mut out = resp.into_bytes();
        out.extend_from_slice(&ws::encode_frame(ws::OP_TEXT, b"hello from upstream", None));
        if !self.write(&out) {
            return;
        }
        loop {
            let frame = match ws::read_frame(self) {
                Ok(f) => f,
                Err(_) => return,
            };
            self.shared.rec().ws_frames.push(frame.clone());
            self.shared.cv.notify_all();
            let (op, payload) = match frame.opcode {
                ws::OP_PING => (ws::OP_PONG, frame.payload.clone()),
                op => (op, frame.payload.clone()),
            };
            if !self.write(&ws::encode_frame(op, &payload, None)) {
                return;
            }
            if frame.opcode == ws::OP_CLOSE
                || (frame.opcode == ws::OP_TEXT && frame.payload == b"bye")
            {
                let _ = self.stream.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

impl Read for UpConn {
    /// Buffered bytes first, then the socket (recording), retrying timeout ticks until stop.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.buf.is_empty() {
            self.fill()?;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf.drain(..n);
        Ok(n)
    }
}

fn echo_json(name: &str, req: &RecordedRequest) -> String {
    let mut headers = String::new();
    for (i, (n, v)) in req.headers.iter().enumerate() {
        if i > 0 {
            headers.push(',');
        }
        headers.push_str(&format!(
            "{}:{}",
            json_str(&n.to_ascii_lowercase()),
            json_str(v)
        ));
    }
    format!(
        "{{\"upstream\":{},\"method\":{},\"path\":{},\"query\":{},\"headers\":{{{}}},\"body_len\":{}}}",
        json_str(name),
        json_str(&req.method),
        json_str(req.path()),
        json_str(req.query().unwrap_or("")),
        headers,
        req.body.len()
    )
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Makes close() send RST instead of FIN.
pub fn set_linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `s`, correctly sized option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// An address on which nothing listens (connect gets ECONNREFUSED). The port stays bound, never
/// listening, for the rest of the test process: a port bound and dropped could be taken by a
/// test running beside this one, which would then answer.
pub fn refusing_addr() -> SocketAddr {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    sock.bind(&any.into()).expect("bind");
    let a = sock
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("addr");
    // Kept bound (not listening) until the process ends.
    std::mem::forget(sock);
    a
}

/// An address nothing listens on now that a test binds later itself (a target that comes back):
/// the port is bound and released, so unlike `refusing_addr` a parallel test could take it
/// meanwhile. Only for that case.
pub fn released_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}

/// A listener whose accept queue is full, so new connects to it hang in SYN-SENT (Linux drops SYNs to
/// a full queue): the loopback way to exercise a connect timeout. Lives until dropped.
pub struct Blackhole {
    pub addr: SocketAddr,
    _fd: OwnedFd,
    _fillers: Vec<TcpStream>,
}

pub fn blackhole() -> Blackhole {
    // SAFETY: plain socket calls with checked return values; the fd is owned by OwnedFd below.
    let (fd, addr) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let owned = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        sa.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len),
            0,
            "bind"
        );
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut olen = len;
        assert_eq!(
            libc::getsockname(fd, &mut out as *mut _ as *mut libc::sockaddr, &mut olen),
            0,
            "getsockname"
        );
        let port = u16::from_be(out.sin_port);
        (owned, SocketAddr::from(([127, 0, 0, 1], port)))
    };
    // Fill the accept queue until a connect times out (bounded).
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => fillers.push(s),
            Err(_) => break,
        }
    }
    Blackhole {
        addr,
        _fd: fd,
        _fillers: fillers,
    }
}
