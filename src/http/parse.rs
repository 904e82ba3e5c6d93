//! Strict request and response head parsing (RFC 9112) on top of httparse.
//! TODO(helper-http): implement.

use super::{BodyKind, HeaderSpan, Limits, Span, Version};

/// Why a head was rejected. Each maps to exactly one status; the connection is always closed after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// 400: malformed request line / header / framing (smuggling vectors included).
    BadRequest(&'static str),
    /// 414
    UriTooLong,
    /// 431
    HeadersTooLarge,
    /// 501: a Transfer-Encoding other than a single final `chunked`.
    NotImplemented,
    /// Response side: the upstream sent something malformed (becomes a 502).
    BadResponse(&'static str),
}

/// A parsed request head. Reused across requests on a connection (call `clear` implicitly via parse).
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: Span,
    /// The request-target as sent (origin-form or absolute-form).
    pub target: Span,
    /// Path part of the target (for absolute-form: without scheme and authority), without the query.
    pub path: Span,
    /// The query without the '?', if any.
    pub query: Option<Span>,
    pub version: Option<Version>,
    pub headers: Vec<HeaderSpan>,
    /// Length of the head including the final CRLFCRLF.
    pub head_len: usize,
    /// The single Host header value (required on HTTP/1.1).
    pub host: Option<Span>,
    pub body: Option<BodyKind>,
    /// Connection: close seen (or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `Connection: upgrade` plus an `Upgrade` header.
    pub upgrade: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Outcome of a parse attempt on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Head complete; `RequestHead`/`ResponseHead` filled in.
    Complete,
    /// Need more bytes (the caller enforces the byte limit via `Limits` being re-checked here).
    Partial,
}

pub fn parse_request(
    _buf: &[u8],
    _limits: &Limits,
    _out: &mut RequestHead,
) -> Result<Parsed, ParseError> {
    todo!()
}

#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    pub reason: Span,
    pub version: Option<Version>,
    pub headers: Vec<HeaderSpan>,
    pub head_len: usize,
    pub body: Option<BodyKind>,
    /// Upstream asked to close (Connection: close, or HTTP/1.0 without keep-alive).
    pub close: bool,
}

/// `req_method_head`: the request was HEAD (no body whatever the headers say).
pub fn parse_response(
    _buf: &[u8],
    _max_header_bytes: usize,
    _req_method_head: bool,
    _out: &mut ResponseHead,
) -> Result<Parsed, ParseError> {
    todo!()
}
