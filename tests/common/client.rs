//! A raw HTTP/1.1 client for the tests: it writes exactly the bytes a test gives it (malformed ones
//! included) and reads responses with a small, deliberately independent reader that understands
//! Content-Length, chunked and close-delimited bodies, interim (1xx) responses and HEAD/204/304.
//!
//! Nothing here can block forever: every socket has read and write timeouts and every loop is bounded
//! by a deadline, so a gateway that hangs makes a test fail instead of hang.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Per-read timeout on client sockets. Generous, because CI machines are slow and a single test may
/// run while others saturate the cores; the tests that measure timeouts use their own deadlines.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `send_raw` waits for the peer's close after a response. A gateway closes right after
/// writing the response, so on loopback this only has to cover scheduling delays.
pub const CLOSE_PROBE: Duration = Duration::from_millis(500);

/// Largest response head the reader accepts (a gateway that sends more is broken anyway).
const MAX_HEAD: usize = 1 << 20;

/// One parsed response, as the client saw it on the wire.
#[derive(Debug, Clone, Default)]
pub struct RawResponse {
    /// `HTTP/1.1`, as sent.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// In wire order, names as sent (use `header()` for case-insensitive lookup).
    pub headers: Vec<(String, String)>,
    /// The decoded body (chunk framing removed).
    pub body: Vec<u8>,
    /// Whether the body's framing completed: all of Content-Length, the terminating 0-chunk, or a clean
    /// EOF for a close-delimited body. False for an aborted response.
    pub complete: bool,
    /// The body was chunked on the wire.
    pub chunked: bool,
    /// Why the body did not complete (EOF, reset, timeout, bad framing), if it did not.
    pub body_error: Option<String>,
    /// Status codes of interim (1xx, not 101) responses received before this one.
    pub interim: Vec<u16>,
    /// Whether the peer had closed the connection after this response (only filled in by `send_raw`
    /// and `Conn::probe_closed`; false otherwise).
    pub closed: bool,
}

impl RawResponse {
    /// First value of a header, case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_of(&self.headers, name)
    }

    /// Every value of a header, case-insensitive, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        super::header_all_of(&self.headers, name)
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the response is a gateway-generated error: the status, `Content-Type: application/json`
    /// and a `{"message":"…"}` body.
    pub fn assert_json_error(&self, status: u16) {
        assert_eq!(self.status, status, "unexpected status; response: {self:?}");
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error response without JSON content type: {self:?}"
        );
        let body = self.body_str();
        let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        assert!(
            compact.starts_with("{\"message\":\"") && compact.ends_with("\"}"),
            "error body is not {{\"message\":\"...\"}}: {body:?}"
        );
        assert!(self.complete, "error response body incomplete: {self:?}");
    }
}

/// The head of a response, before its body is read.
#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub interim: Vec<u16>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::header_of(&self.headers, name)
    }

    fn is_chunked(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    }
}

/// One client connection with a read buffer, for keep-alive and pipelining sequences.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Set once a read returned 0 (EOF) or an error such as a reset.
    pub eof: bool,
}

impl Conn {
    /// Connects with a 5 s connect timeout; panics on failure (use `try_connect` to expect failure).
    pub fn connect(addr: SocketAddr) -> Conn {
        Conn::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        // Tests write heads and bodies in separate calls on purpose; Nagle would only add delay.
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
            eof: false,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream.local_addr().expect("local_addr")
    }

    /// Writes all bytes. Errors are returned, not panicked on: a gateway may legitimately close while
    /// a test is still sending a request it has already rejected.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Half-closes the write side (the client is done sending).
    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream
            .set_read_timeout(Some(t))
            .expect("set_read_timeout");
    }

    /// Reads more bytes into the buffer. Ok(0) on EOF; Err on timeout/reset.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        match self.stream.read(&mut tmp) {
            Ok(0) => {
                self.eof = true;
                Ok(0)
            }
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(n)
            }
            Err(e) => {
                if !is_timeout(&e) {
                    self.eof = true;
                }
                Err(e)
            }
        }
    }

    /// Takes whatever is buffered plus what arrives within `wait` (until EOF or a quiet timeout).
    pub fn read_available(&mut self, wait: Duration) -> Vec<u8> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            self.set_read_timeout(left.max(Duration::from_millis(1)));
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.set_read_timeout(IO_TIMEOUT);
        std::mem::take(&mut self.buf)
    }

    /// Reads exactly `n` bytes (raw, unframed), or fewer if the peer closes or the deadline passes.
    pub fn read_exact_raw(&mut self, n: usize, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while self.buf.len() < n && !self.eof && Instant::now() < deadline {
            if self.fill().is_err() {
                break;
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// Reads one response head, skipping (and recording) interim 1xx responses other than 101.
    pub fn read_head(&mut self) -> Result<ResponseHead, String> {
        let deadline = Instant::now() + IO_TIMEOUT * 2;
        let mut interim = Vec::new();
        loop {
            let end = loop {
                if let Some(pos) = find(&self.buf, b"\r\n\r\n") {
                    break pos + 4;
                }
                if self.buf.len() > MAX_HEAD {
                    return Err(format!("response head over {MAX_HEAD} bytes"));
                }
                if self.eof || Instant::now() > deadline {
                    return Err(format!(
                        "connection ended before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ));
                }
                match self.fill() {
                    Ok(0) => {
                        return Err(format!(
                            "EOF before a complete response head; got {:?}",
                            String::from_utf8_lossy(&self.buf)
                        ))
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(format!(
                            "reading response head: {e} ({:?}); got {:?}",
                            e.kind(),
                            String::from_utf8_lossy(&self.buf)
                        ))
                    }
                }
            };
            let head: Vec<u8> = self.buf.drain(..end).collect();
            let mut parsed = parse_response_head(&head)?;
            if (100..200).contains(&parsed.status) && parsed.status != 101 {
                interim.push(parsed.status);
                continue;
            }
            parsed.interim = interim;
            return Ok(parsed);
        }
    }

    /// Reads a body per the head's framing, handing decoded bytes to `sink`.
    /// Returns (complete, error). `request_method` decides HEAD handling.
    pub fn read_body_with(
        &mut self,
        head: &ResponseHead,
        request_method: &str,
        sink: &mut dyn FnMut(&[u8]),
    ) -> (bool, Option<String>) {
        if request_method.eq_ignore_ascii_case("HEAD")
            || head.status == 204
            || head.status == 304
            || head.status == 101
            || (100..200).contains(&head.status)
        {
            return (true, None);
        }
        if head.is_chunked() {
            return self.read_chunked(sink);
        }
        if let Some(cl) = head.header("content-length") {
            let Ok(mut left) = cl.trim().parse::<u64>() else {
                return (false, Some(format!("bad content-length {cl:?}")));
            };
            while left > 0 {
                if self.buf.is_empty() {
                    match self.fill() {
                        Ok(0) => {
                            return (false, Some(format!("EOF with {left} body bytes missing")))
                        }
                        Ok(_) => {}
                        Err(e) => {
                            return (false, Some(format!("{e} with {left} body bytes missing")))
                        }
                    }
                }
                let take = (left as usize).min(self.buf.len());
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                left -= take as u64;
            }
            return (true, None);
        }
        // Close-delimited: everything until EOF; an error (reset, timeout) means not known complete.
        loop {
            if !self.buf.is_empty() {
                sink(&self.buf);
                self.buf.clear();
            }
            match self.fill() {
                Ok(0) => return (true, None),
                Ok(_) => {}
                Err(e) => return (false, Some(format!("close-delimited body ended by {e}"))),
            }
        }
    }

    fn read_line(&mut self) -> Result<Vec<u8>, String> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(line[..pos].to_vec());
            }
            if self.buf.len() > 64 * 1024 {
                return Err("chunk line too long".into());
            }
            match self.fill() {
                Ok(0) => return Err("EOF inside chunked body".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("{e} inside chunked body")),
            }
        }
    }

    fn read_chunked(&mut self, sink: &mut dyn FnMut(&[u8])) -> (bool, Option<String>) {
        loop {
            let line = match self.read_line() {
                Ok(l) => l,
                Err(e) => return (false, Some(e)),
            };
            let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
            let size_str = String::from_utf8_lossy(size_part).trim().to_string();
            let Ok(size) = u64::from_str_radix(&size_str, 16) else {
                return (false, Some(format!("bad chunk size line {line:?}")));
            };
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    match self.read_line() {
                        Ok(l) if l.is_empty() => return (true, None),
                        Ok(_) => {}
                        Err(e) => return (false, Some(format!("in trailers: {e}"))),
                    }
                }
            }
            let mut left = size;
            while left > 0 {
                if self.buf.is_empty() {
                    match self.fill() {
                        Ok(0) => return (false, Some("EOF inside a chunk".into())),
                        Ok(_) => {}
                        Err(e) => return (false, Some(format!("{e} inside a chunk"))),
                    }
                }
                let take = (left as usize).min(self.buf.len());
                sink(&self.buf[..take]);
                self.buf.drain(..take);
                left -= take as u64;
            }
            match self.read_line() {
                Ok(l) if l.is_empty() => {}
                Ok(l) => {
                    return (
                        false,
                        Some(format!("chunk data not followed by CRLF: {l:?}")),
                    )
                }
                Err(e) => return (false, Some(e)),
            }
        }
    }

    /// Reads one full response to a request made with `request_method`.
    pub fn read_response_for(&mut self, request_method: &str) -> Result<RawResponse, String> {
        let head = self.read_head()?;
        let mut body = Vec::new();
        let (complete, body_error) =
            self.read_body_with(&head, request_method, &mut |b| body.extend_from_slice(b));
        let chunked = head.is_chunked();
        Ok(RawResponse {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
            complete,
            chunked,
            body_error,
            interim: head.interim,
            closed: false,
        })
    }

    /// Reads one full response to a non-HEAD request.
    pub fn read_response(&mut self) -> Result<RawResponse, String> {
        self.read_response_for("GET")
    }

    /// Sends bytes and reads one response; panics (with the reason) when no response head arrives.
    pub fn request(&mut self, bytes: &[u8]) -> RawResponse {
        let method = method_of(bytes);
        if let Err(e) = self.send(bytes) {
            panic!("sending request: {e}");
        }
        self.read_response_for(&method)
            .unwrap_or_else(|e| panic!("no response to {:?}: {e}", preview(bytes)))
    }

    /// `GET path` with `Host: host`, keep-alive.
    pub fn get(&mut self, host: &str, path: &str) -> RawResponse {
        self.request(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
    }

    /// Waits up to `wait` for the peer to close. True on EOF or reset; false if still open (a timeout)
    /// — unexpected data also counts as open (it stays in the buffer).
    pub fn probe_closed(&mut self, wait: Duration) -> bool {
        if self.eof {
            return true;
        }
        self.set_read_timeout(wait.max(Duration::from_millis(1)));
        let closed = match self.fill() {
            Ok(0) => true,
            // Unexpected data: still open (the bytes stay in the buffer).
            Ok(_) => false,
            Err(e) => !is_timeout(&e),
        };
        self.set_read_timeout(IO_TIMEOUT);
        closed
    }

    /// Bytes read but not yet consumed by a response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }
}

/// Opens a connection, sends `bytes`, reads one response and then checks (for up to `CLOSE_PROBE`)
/// whether the gateway closed the connection. Panics when no response head arrives. Costs the probe
/// time when the connection stays open: use `Conn` for plain request loops.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    try_send_raw(addr, bytes).unwrap_or_else(|e| panic!("request {:?}: {e}", preview(bytes)))
}

/// Like `send_raw` but returns the failure (no response head at all) instead of panicking.
pub fn try_send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<RawResponse, String> {
    let mut c = Conn::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    // A write error is not fatal: the gateway may reject and close before reading everything; the
    // response it wrote first is what the test wants to see.
    let write_err = c.send(bytes).err();
    let mut resp = c
        .read_response_for(&method_of(bytes))
        .map_err(|e| format!("{e} (write error: {write_err:?})"))?;
    resp.closed = c.probe_closed(CLOSE_PROBE);
    Ok(resp)
}

/// `GET path` on a fresh connection with `Host: host`.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    let mut c = Conn::connect(addr);
    c.get(host, path)
}

/// Parses a response head (status line + headers + CRLFCRLF).
fn parse_response_head(head: &[u8]) -> Result<ResponseHead, String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let reason = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((n, v)) = line.split_once(':') else {
            return Err(format!("bad response header line {line:?}"));
        };
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Ok(ResponseHead {
        version,
        status,
        reason,
        headers,
        interim: Vec::new(),
    })
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

fn method_of(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == b' ').unwrap_or(0);
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn preview(bytes: &[u8]) -> String {
    let n = bytes.len().min(200);
    String::from_utf8_lossy(&bytes[..n]).into_owned()
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
