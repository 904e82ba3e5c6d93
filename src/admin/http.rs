//! Reading one admin request: bounded head (httparse), bounded body (read and discarded), a deadline
//! for the head and a later one for the whole request. A request is returned only once it arrived
//! whole: a body cut short or late is an error, never a request to act on.

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Request line + headers.
const MAX_HEAD: usize = 8 * 1024;
/// `POST /reload` takes no body; a small one is read and ignored.
const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 32;

pub struct Request {
    pub method: String,
    /// Without the query.
    pub path: String,
    /// After `?`, still percent-encoded ("" when absent).
    pub query: String,
    pub authorization: Option<String>,
}

pub enum ReadError {
    /// The client went away or sent nothing: no answer.
    Closed,
    /// Answer with this status and message, then close.
    Status(u16, &'static str),
}

/// Reads one request: its head within `head_within`, head and body within `whole_within` (both from
/// now).
pub fn read_request(
    stream: &mut TcpStream,
    head_within: Duration,
    whole_within: Duration,
) -> Result<Request, ReadError> {
    let start = Instant::now();
    let head_deadline = start + head_within.min(whole_within);
    let deadline = start + whole_within;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let (req, head_len, body_len) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let (req, body_len) = build(&parsed)?;
                break (req, n, body_len);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Status(431, "too many headers"))
            }
            Err(_) => return Err(ReadError::Status(400, "malformed request")),
        }
        if buf.len() >= MAX_HEAD {
            return Err(ReadError::Status(431, "request head too large"));
        }
        match read_some(stream, &mut chunk, head_deadline) {
            Ok(0) | Err(Timeout::Io) => {
                return Err(if buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Status(400, "incomplete request")
                })
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(Timeout::Elapsed) => return Err(ReadError::Status(408, "request timeout")),
        }
    };
    // The body is read (and discarded) whole before the request counts: a client that announced
    // more than it sent gets an error, not a reload. Reading it also keeps closing from resetting the
    // connection before the client reads the answer.
    let mut left = body_len.saturating_sub(buf.len().saturating_sub(head_len));
    while left > 0 {
        match read_some(stream, &mut chunk, deadline) {
            Ok(0) => return Err(ReadError::Status(400, "incomplete request body")),
            Ok(n) => left = left.saturating_sub(n),
            Err(Timeout::Elapsed) => return Err(ReadError::Status(408, "request timeout")),
            Err(Timeout::Io) => return Err(ReadError::Closed),
        }
    }
    Ok(req)
}

enum Timeout {
    Elapsed,
    Io,
}

fn read_some(
    stream: &mut TcpStream,
    chunk: &mut [u8],
    deadline: Instant,
) -> Result<usize, Timeout> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(Timeout::Elapsed);
    }
    if stream.set_read_timeout(Some(left)).is_err() {
        return Err(Timeout::Io);
    }
    match stream.read(chunk) {
        Ok(n) => Ok(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(Timeout::Elapsed)
        }
        Err(_) => Err(Timeout::Io),
    }
}

fn build(p: &httparse::Request<'_, '_>) -> Result<(Request, usize), ReadError> {
    let method = p.method.unwrap_or("").to_owned();
    let target = p.path.unwrap_or("");
    if !target.starts_with('/') {
        return Err(ReadError::Status(400, "request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut authorization = None;
    let mut body_len = None;
    for h in p.headers.iter() {
        if h.name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(ReadError::Status(400, "duplicate Authorization header"));
            }
            authorization = std::str::from_utf8(h.value).ok().map(str::to_owned);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // One framing only, like the proxy (even two equal values): where two parsers could
            // disagree about where a body ends, neither should guess.
            if body_len.is_some() {
                return Err(ReadError::Status(400, "more than one Content-Length"));
            }
            let v = h.value;
            if v.is_empty() || v.len() > 10 || !v.iter().all(u8::is_ascii_digit) {
                return Err(ReadError::Status(400, "invalid Content-Length"));
            }
            let n = v.iter().fold(0usize, |a, d| {
                a.saturating_mul(10).saturating_add(usize::from(d - b'0'))
            });
            if n > MAX_BODY {
                return Err(ReadError::Status(413, "request body too large"));
            }
            body_len = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ReadError::Status(
                411,
                "send a Content-Length, not a chunked body",
            ));
        }
    }
    Ok((
        Request {
            method,
            path: path.to_owned(),
            query: query.to_owned(),
            authorization,
        },
        body_len.unwrap_or(0),
    ))
}

/// `%XX` decoding and `+` as space; `None` on a bad escape or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                let hi = hex(*b.get(i + 1)?)?;
                let lo = hex(*b.get(i + 2)?)?;
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%").as_deref(), None);
        assert_eq!(percent_decode("%4").as_deref(), None);
        assert_eq!(percent_decode("%ff").as_deref(), None);
        assert_eq!(percent_decode("").as_deref(), Some(""));
    }
}
