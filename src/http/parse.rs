//! Strict request and response head parsing (RFC 9112) on top of httparse.
//!
//! httparse does the tokenizing (request/status line, header name/value bytes); this module adds
//! everything a gateway needs to be strict about and httparse is not (see the tests at the end for
//! what httparse already rejects and what is checked here):
//!
//! * bare LF line terminators are rejected (httparse accepts them; a peer that treats LF and CRLF
//!   differently from us could see different header boundaries);
//! * message framing: at most one Content-Length with a strict digit-only value, no CL together
//!   with Transfer-Encoding, Transfer-Encoding must be exactly one final `chunked`;
//! * a single, well-formed Host (required on HTTP/1.1), request-target forms, CONNECT refused;
//! * limits (431/414) enforced while the head is still incomplete, so a slow or endless head
//!   cannot make the caller buffer without bound.
//!
//! Invariants: the output heads hold `Span`s into the caller's buffer, always within
//! `..head_len <= buf.len()`; `headers`/`conn_tokens` Vecs are cleared and refilled, never
//! reallocated once warm; nothing here panics on any input.

use std::mem::MaybeUninit;

use super::headers::{eq_ignore_case, list_items, starts_with_ignore_case};
use super::num::parse_content_length;
use super::{BodyKind, HeaderSpan, Limits, Span, Version, MAX_HEADERS_CAP};

/// Why a head was rejected. Each maps to exactly one status; the connection is always closed after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// 400: malformed request line / header / framing (smuggling vectors included).
    BadRequest(&'static str),
    /// 414
    UriTooLong,
    /// 431
    HeadersTooLarge,
    /// 501: a Transfer-Encoding other than a single final `chunked`, or the CONNECT method.
    NotImplemented,
    /// 505: a request line naming HTTP/2 or later (`HTTP/2.0`, the h2 prior-knowledge preface
    /// `PRI * HTTP/2.0`), as nginx answers; other malformed versions are a 400.
    VersionNotSupported,
    /// Response side: the upstream sent something malformed (becomes a 502).
    BadResponse(&'static str),
}

/// A parsed request head. Reused across requests on a connection: every parse call resets it.
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: Span,
    /// The request-target as sent (origin-form, absolute-form or `*`).
    pub target: Span,
    /// Path part of the target (for absolute-form: without scheme and authority), without the
    /// query. Empty only for an absolute-form target without a path, which means "/": use
    /// `path_bytes` to get that for free. For `OPTIONS *` it is the `*`.
    pub path: Span,
    /// The query without the '?', if any.
    pub query: Option<Span>,
    pub version: Option<Version>,
    pub headers: Vec<HeaderSpan>,
    /// Length of the head including the final CRLFCRLF (and any CRLFs ignored before the
    /// request line: the request line itself starts at `method.start`).
    pub head_len: usize,
    /// The single Host header value (required on HTTP/1.1).
    pub host: Option<Span>,
    pub body: Option<BodyKind>,
    /// Connection: close seen (or HTTP/1.0 without keep-alive).
    pub close: bool,
    /// `Connection: upgrade` plus an `Upgrade` header.
    pub upgrade: bool,
    /// `Expect: 100-continue` (case-insensitive) on an HTTP/1.1 request.
    pub expect_continue: bool,
    /// A method-override header is present (`X-HTTP-Method-Override`, `X-HTTP-Method`,
    /// `X-Method-Override`): frameworks may run another method than the request line's.
    pub method_override: bool,
    /// Every token of every Connection header (OWS-trimmed, empty elements skipped), so the
    /// caller can drop the headers they nominate as hop-by-hop.
    pub conn_tokens: Vec<Span>,
    /// For an absolute-form target (`http://authority/path`): the authority. RFC 9112 §3.2.2 says
    /// it takes precedence over Host; `effective_host` applies that rule.
    pub authority: Option<Span>,
}

impl RequestHead {
    /// Forget the previous request, keeping the Vec allocations.
    fn reset(&mut self) {
        let mut headers = std::mem::take(&mut self.headers);
        let mut conn_tokens = std::mem::take(&mut self.conn_tokens);
        headers.clear();
        conn_tokens.clear();
        *self = RequestHead {
            headers,
            conn_tokens,
            ..RequestHead::default()
        };
    }

    /// The path to route on: the `path` span, or for an absolute-form target without a path "/",
    /// except for `OPTIONS http://host` with no query, which is `OPTIONS *` (RFC 9112 §3.2.4: the
    /// last proxy sends `*`, as the request asks about the server, not its root resource).
    pub fn path_bytes<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match buf.get(self.path.start as usize..self.path.end as usize) {
            Some(p) if !p.is_empty() => p,
            _ if self.query.is_none() && self.method.get(buf) == b"OPTIONS" => b"*",
            _ => b"/",
        }
    }

    /// The host the request is for: the absolute-form authority if any, else the Host value.
    pub fn effective_host(&self) -> Option<Span> {
        self.authority.or(self.host)
    }
}

/// Outcome of a parse attempt on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// Head complete; `RequestHead`/`ResponseHead` filled in.
    Complete,
    /// Need more bytes. Limits are already enforced on the partial head: a Partial buffer is
    /// always shorter than the head limit, so the caller may keep reading.
    Partial,
}

/// A stack array of header slots for httparse; uninitialized so a parse does not pay for
/// writing 8 KiB of empty headers first.
type HeaderSlots<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS_CAP];

fn header_slots<'b>() -> HeaderSlots<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP]
}

/// Parse a request head from the start of `buf` (the bytes read so far on the connection).
///
/// Errors: see `ParseError`; on any error the connection must be closed after the error reply.
pub fn parse_request(
    buf: &[u8],
    limits: &Limits,
    out: &mut RequestHead,
) -> Result<Parsed, ParseError> {
    out.reset();
    let mut slots = header_slots();
    let max_headers = limits.max_headers.min(MAX_HEADERS_CAP);
    let slots = slots.get_mut(..max_headers).unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return request_partial(buf, limits, &req),
        Err(httparse::Error::TooManyHeaders) => return Err(ParseError::HeadersTooLarge),
        Err(httparse::Error::Version) if names_a_later_major(buf) => {
            return Err(ParseError::VersionNotSupported)
        }
        Err(e) => return Err(ParseError::BadRequest(httparse_reason(e))),
    };
    let bad = ParseError::BadRequest;

    // The request line, in the order a reader meets it.
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("incomplete request line"));
    };
    if target.len() > limits.max_uri_bytes {
        return Err(ParseError::UriTooLong);
    }
    if head_len > limits.max_header_bytes || u32::try_from(head_len).is_err() {
        return Err(ParseError::HeadersTooLarge);
    }
    let head = buf.get(..head_len).ok_or(bad("head beyond buffer"))?;
    if has_bare_lf(head) {
        return Err(bad("bare LF line terminator"));
    }
    // Methods are case-sensitive (RFC 9110 §9.1), but frameworks (Werkzeug, Django, Rails)
    // upper-case what they get: a `delete` that matched no DELETE-only route (and so none of its
    // auth) would run as DELETE there. Upper-case letters, '-' and '_' only, as nginx parses.
    if !method
        .bytes()
        .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
    {
        return Err(bad("method must be upper-case letters"));
    }
    out.head_len = head_len;
    out.method = span_of(head, method.as_bytes()).ok_or(bad("method span"))?;
    out.target = span_of(head, target.as_bytes()).ok_or(bad("target span"))?;
    out.version = Some(version_of(minor).ok_or(bad("unsupported HTTP version"))?);
    if method == "CONNECT" {
        return Err(ParseError::NotImplemented);
    }
    parse_target(head, method.as_bytes(), out)?;

    let fields = collect_headers(head, req.headers, &mut out.headers, &mut out.conn_tokens)
        .map_err(ParseError::BadRequest)?;
    apply_request_fields(&fields, out)
}

/// Limits on a head that is not complete yet (see `Parsed::Partial`).
fn request_partial(
    buf: &[u8],
    limits: &Limits,
    req: &httparse::Request<'_, '_>,
) -> Result<Parsed, ParseError> {
    if has_bare_lf(buf) {
        return Err(ParseError::BadRequest("bare LF line terminator"));
    }
    // httparse fills `method` once the method and its SP are read, and `path` once the target is,
    // so a target still being read spans from after the method's SP to the end of `buf`.
    if let Some(method) = req.method {
        let uri_len = match req.path {
            Some(p) => p.len(),
            None => span_of(buf, method.as_bytes())
                .map_or(0, |m| buf.len().saturating_sub(m.end as usize + 1)),
        };
        if uri_len > limits.max_uri_bytes {
            return Err(ParseError::UriTooLong);
        }
    }
    // The head needs at least one more byte, so reaching the limit already means exceeding it.
    if buf.len() >= limits.max_header_bytes {
        return Err(ParseError::HeadersTooLarge);
    }
    Ok(Parsed::Partial)
}

/// Turn the framing/connection facts into the request's fields, or reject it.
fn apply_request_fields(f: &Fields, out: &mut RequestHead) -> Result<Parsed, ParseError> {
    let bad = ParseError::BadRequest;
    let http10 = out.version == Some(Version::Http10);
    if f.te.seen {
        if f.content_length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if http10 {
            return Err(bad("Transfer-Encoding on HTTP/1.0"));
        }
        if !f.te.is_single_chunked() {
            return Err(ParseError::NotImplemented);
        }
    }
    if f.host_invalid {
        return Err(bad("invalid Host"));
    }
    if f.host_count > 1 {
        return Err(bad("more than one Host"));
    }
    if f.host.is_none() && !http10 {
        return Err(bad("missing Host"));
    }
    out.host = f.host;
    out.body = Some(if f.te.seen {
        BodyKind::Chunked
    } else {
        match f.content_length {
            None | Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    });
    out.close = f.conn_close || (http10 && !f.conn_keep_alive);
    // An h2c upgrade is never tunnelled ("h2c smuggling"): the upstream would then take HTTP/2
    // requests for any path straight from the client, past routing and auth, which saw only the
    // first request. The request goes upstream as plain HTTP/1.1 instead, as through nginx.
    // RFC 9110 §7.8: a server MUST ignore Upgrade in an HTTP/1.0 request.
    out.upgrade = f.conn_upgrade && f.upgrade_header && !f.upgrade_h2c && !http10;
    // RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
    out.expect_continue = f.expect_continue && !http10;
    out.method_override = f.method_override;
    Ok(Parsed::Complete)
}

/// Classify the request-target (RFC 9112 §3.2) and fill `path`, `query` and `authority`.
fn parse_target(head: &[u8], method: &[u8], out: &mut RequestHead) -> Result<(), ParseError> {
    let bad = ParseError::BadRequest;
    let t = out.target.get(head);
    // A fragment is never sent (RFC 9110 §4.2.4); non-ASCII is not URI syntax, and letting it
    // through would let two hops decode the path differently.
    if t.iter()
        .fold(false, |bad, &b| bad | (b == b'#') | (b >= 0x80))
    {
        return Err(bad("invalid byte in request-target"));
    }
    let base = out.target.start;
    match t {
        [b'/', ..] => {
            split_path_query(t, base, out);
            Ok(())
        }
        b"*" if method == b"OPTIONS" => {
            out.path = out.target;
            Ok(())
        }
        b"*" => Err(bad("asterisk-form on a method other than OPTIONS")),
        _ => parse_absolute_target(t, base, out),
    }
}

/// absolute-form: `http[s]://authority[/path][?query]` (case-insensitive scheme).
fn parse_absolute_target(t: &[u8], base: u32, out: &mut RequestHead) -> Result<(), ParseError> {
    let bad = ParseError::BadRequest;
    let scheme_len = if starts_with_ignore_case(t, b"http://") {
        7
    } else if starts_with_ignore_case(t, b"https://") {
        8
    } else {
        return Err(bad(
            "request-target is not origin-, absolute- or asterisk-form",
        ));
    };
    let rest = t.get(scheme_len..).unwrap_or_default();
    let auth_len = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = rest.get(..auth_len).unwrap_or_default();
    if authority.is_empty() || !is_host_value(authority) {
        return Err(bad("invalid authority in request-target"));
    }
    let auth_start = base + scheme_len as u32;
    out.authority = Some(Span {
        start: auth_start,
        end: auth_start + auth_len as u32,
    });
    let path_and_query = rest.get(auth_len..).unwrap_or_default();
    split_path_query(path_and_query, auth_start + auth_len as u32, out);
    Ok(())
}

/// Split `pq` (at offset `base` in the head) at the first '?' into `path` and `query`.
fn split_path_query(pq: &[u8], base: u32, out: &mut RequestHead) {
    let end = base + pq.len() as u32;
    match pq.iter().position(|&b| b == b'?') {
        Some(q) => {
            let q = base + q as u32;
            out.path = Span {
                start: base,
                end: q,
            };
            out.query = Some(Span { start: q + 1, end });
        }
        None => out.path = Span { start: base, end },
    }
}

/// A Host value or an absolute-form authority: `host [":" port]` (RFC 9110 §7.2), where host is
/// an IPv6 literal (`[…]`, which must parse, with an optional RFC 6874 zone `%25…`) or a name or
/// IPv4 address: letters, digits, `-`, `_`, `~` and dots, with no empty label (`..`, a leading
/// `.`; one trailing dot is a fully qualified name), and port is 0..=65535. RFC 3986 also allows
/// percent-escapes and sub-delimiters (`,;=!$&'()*+`) in a name; no DNS name has them, and they
/// are what tricks are made of (`a,b` reads as a list in X-Forwarded-Host, which most frameworks
/// cut at the comma after routing matched the whole value). An http(s) URI always has a host, so
/// an empty one is refused too (RFC 9110 §4.2.1). nginx answers 400 to most of these as well.
fn is_host_value(v: &[u8]) -> bool {
    let port = if v.first() == Some(&b'[') {
        let Some(close) = memchr::memchr(b']', v) else {
            return false;
        };
        let literal = v.get(1..close).unwrap_or_default();
        let (addr, zone) = match memchr::memmem::find(literal, b"%25") {
            Some(i) => (
                literal.get(..i).unwrap_or_default(),
                literal.get(i + 3..).unwrap_or_default(),
            ),
            None => (literal, &b""[..]),
        };
        let zone_ok = zone
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
            && (zone.is_empty() == (addr.len() == literal.len()));
        let addr_ok = std::str::from_utf8(addr)
            .ok()
            .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        if !addr_ok || !zone_ok {
            return false;
        }
        v.get(close + 1..).unwrap_or_default()
    } else {
        let colon = memchr::memchr(b':', v).unwrap_or(v.len());
        let name = v.get(..colon).unwrap_or_default();
        // A fully qualified name may end with one dot; otherwise every label is non-empty.
        let labels = name.strip_suffix(b".").unwrap_or(name);
        let name_byte =
            |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.');
        if labels.is_empty()
            || labels.split(|&b| b == b'.').any(<[u8]>::is_empty)
            || !labels.iter().all(name_byte)
        {
            return false;
        }
        v.get(colon..).unwrap_or_default()
    };
    match port.split_first() {
        None => true,
        // An empty port is allowed (`port = *DIGIT`); leading zeros too.
        Some((b':', [])) => true,
        Some((b':', digits)) => {
            crate::http::num::parse_content_length(digits).is_some_and(|p| p <= 65535)
        }
        Some(_) => false,
    }
}

/// One byte of a host or authority (see `is_host_value`); also what a configured Host may contain.
pub fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'%'
        )
}

/// A parsed response head. Reused across responses: every parse call resets it.
#[derive(Debug, Default)]
pub struct ResponseHead {
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: Span,
    pub version: Option<Version>,
    pub headers: Vec<HeaderSpan>,
    pub head_len: usize,
    pub body: Option<BodyKind>,
    /// The connection cannot be reused after this response: Connection: close, HTTP/1.0 without
    /// keep-alive, or a close-delimited body.
    pub close: bool,
    /// Every token of every Connection header (see `RequestHead::conn_tokens`).
    pub conn_tokens: Vec<Span>,
}

impl ResponseHead {
    fn reset(&mut self) {
        let mut headers = std::mem::take(&mut self.headers);
        let mut conn_tokens = std::mem::take(&mut self.conn_tokens);
        headers.clear();
        conn_tokens.clear();
        *self = ResponseHead {
            headers,
            conn_tokens,
            ..ResponseHead::default()
        };
    }
}

/// Parse a response head from the start of `buf`. `req_was_head`: the request was HEAD, so the
/// response has no body whatever its headers say. Everything malformed is `BadResponse`.
pub fn parse_response(
    buf: &[u8],
    max_header_bytes: usize,
    req_was_head: bool,
    out: &mut ResponseHead,
) -> Result<Parsed, ParseError> {
    out.reset();
    let bad = ParseError::BadResponse;
    let mut slots = header_slots();
    let mut res = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut res, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return response_partial(buf, max_header_bytes),
        Err(e) => return Err(bad(httparse_reason(e))),
    };
    if head_len > max_header_bytes || u32::try_from(head_len).is_err() {
        return Err(bad("response head too large"));
    }
    let head = buf.get(..head_len).ok_or(bad("head beyond buffer"))?;
    if has_bare_lf(head) {
        return Err(bad("bare LF line terminator"));
    }
    let (Some(minor), Some(status)) = (res.version, res.code) else {
        return Err(bad("incomplete status line"));
    };
    let version = version_of(minor).ok_or(bad("unsupported HTTP version"))?;
    // RFC 9110 §15: 100-599; a 600 relayed would reach clients that cannot class it.
    if !(100..600).contains(&status) {
        return Err(bad("status code outside 100-599"));
    }
    out.head_len = head_len;
    out.version = Some(version);
    out.status = status;
    out.reason = reason_span(head);

    let f = collect_headers(head, res.headers, &mut out.headers, &mut out.conn_tokens)
        .map_err(ParseError::BadResponse)?;
    apply_response_fields(&f, req_was_head, out)
}

fn response_partial(buf: &[u8], max_header_bytes: usize) -> Result<Parsed, ParseError> {
    if has_bare_lf(buf) {
        return Err(ParseError::BadResponse("bare LF line terminator"));
    }
    if buf.len() >= max_header_bytes {
        return Err(ParseError::BadResponse("response head too large"));
    }
    Ok(Parsed::Partial)
}

fn apply_response_fields(
    f: &Fields,
    req_was_head: bool,
    out: &mut ResponseHead,
) -> Result<Parsed, ParseError> {
    let bad = ParseError::BadResponse;
    let http10 = out.version == Some(Version::Http10);
    // Framing is validated even where it is then ignored (HEAD, 1xx, 204, 304): a malformed
    // framing header says the upstream is broken, and we do not guess with a broken upstream.
    if f.te.seen {
        if f.content_length.is_some() {
            return Err(bad("both Content-Length and Transfer-Encoding"));
        }
        if http10 {
            return Err(bad("Transfer-Encoding on HTTP/1.0"));
        }
        if !f.te.is_single_chunked() {
            return Err(bad("Transfer-Encoding other than chunked"));
        }
    }
    let status = out.status;
    let no_body = req_was_head || (100..200).contains(&status) || status == 204 || status == 304;
    let body = if no_body {
        BodyKind::None
    } else if f.te.seen {
        BodyKind::Chunked
    } else {
        match f.content_length {
            Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::CloseDelimited,
        }
    };
    out.body = Some(body);
    out.close = f.conn_close || (http10 && !f.conn_keep_alive) || body == BodyKind::CloseDelimited;
    Ok(Parsed::Complete)
}

/// The reason phrase of a complete, LF-checked head: after "HTTP/1.x DDD " up to the CR.
/// httparse replaces a reason with obs-text by a static "", so it is located here instead.
fn reason_span(head: &[u8]) -> Span {
    let mut start = 0;
    while head.get(start..start + 2) == Some(b"\r\n") {
        start += 2;
    }
    let line_end =
        memchr::memchr(b'\n', head.get(start..).unwrap_or_default()).map_or(start, |i| start + i);
    // "HTTP/1.1 200" is 12 bytes; the reason, if any, follows a single SP and ends before CR.
    let code_end = start + 12;
    let (s, e) = if head.get(code_end) == Some(&b' ') {
        (code_end + 1, line_end.saturating_sub(1))
    } else {
        (code_end, code_end)
    };
    if s <= e && e <= head.len() {
        Span {
            start: s as u32,
            end: e as u32,
        }
    } else {
        Span::default()
    }
}

/// Transfer-Encoding codings seen so far, across all TE headers, in order.
#[derive(Debug, Default, Clone, Copy)]
struct TeState {
    seen: bool,
    /// The last coding seen is `chunked`.
    last_chunked: bool,
    /// A coding other than `chunked` was seen.
    other: bool,
}

impl TeState {
    fn add_header(&mut self, value: &[u8]) -> Result<(), &'static str> {
        self.seen = true;
        for r in list_items(value) {
            let coding = value.get(r).unwrap_or_default();
            if coding.is_empty() {
                return Err("empty Transfer-Encoding element");
            }
            // A coding after `chunked` (RFC 9112 §6.1 says such framing is unreliable) counts as
            // "a Transfer-Encoding other than a final chunked": 501 like any other coding we do not
            // implement. Either way the connection closes and nothing is forwarded.
            let chunked = eq_ignore_case(coding, b"chunked");
            if self.last_chunked && chunked {
                return Err("chunked applied more than once");
            }
            self.last_chunked = eq_ignore_case(coding, b"chunked");
            self.other |= !self.last_chunked;
        }
        Ok(())
    }

    fn is_single_chunked(&self) -> bool {
        self.seen && self.last_chunked && !self.other
    }
}

/// What the parsers need to know from the header fields, gathered in one pass.
#[derive(Debug, Default)]
struct Fields {
    content_length: Option<u64>,
    te: TeState,
    host: Option<Span>,
    host_count: u32,
    /// A Host value that is not `host[:port]`.
    host_invalid: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    conn_upgrade: bool,
    upgrade_header: bool,
    /// The Upgrade header offers `h2c`.
    upgrade_h2c: bool,
    expect_continue: bool,
    method_override: bool,
}

/// Convert httparse's headers into spans (pushed to `headers`) and classify them.
fn collect_headers(
    head: &[u8],
    raw: &[httparse::Header<'_>],
    headers: &mut Vec<HeaderSpan>,
    conn_tokens: &mut Vec<Span>,
) -> Result<Fields, &'static str> {
    let mut f = Fields::default();
    for h in raw {
        let name = span_of(head, h.name.as_bytes()).ok_or("header name span")?;
        let value = span_of(head, h.value).ok_or("header value span")?;
        headers.push(HeaderSpan { name, value });
        classify(&mut f, h.name.as_bytes(), value, head, conn_tokens)?;
    }
    Ok(f)
}

/// Record what one header field means for framing and connection handling.
fn classify(
    f: &mut Fields,
    name: &[u8],
    value: Span,
    head: &[u8],
    conn_tokens: &mut Vec<Span>,
) -> Result<(), &'static str> {
    let v = value.get(head);
    // Dispatch on length first: most headers are none of these and cost one compare.
    match name.len() {
        4 if eq_ignore_case(name, b"host") => {
            f.host_count += 1;
            // Judged by the request parser only: a response's Host means nothing (and an
            // upstream sending an odd one must not make its answer a 502).
            f.host_invalid |= !is_host_value(v);
            f.host = Some(value);
        }
        6 if eq_ignore_case(name, b"expect") => {
            f.expect_continue |= eq_ignore_case(v, b"100-continue");
        }
        7 if eq_ignore_case(name, b"upgrade") => {
            f.upgrade_header = true;
            // `h2c/1` names h2c too (RFC 9110 §7.8: protocol-name ["/" protocol-version]).
            f.upgrade_h2c |= super::headers::offers_h2c(v);
        }
        10 if eq_ignore_case(name, b"connection") => {
            connection_tokens(f, value, head, conn_tokens);
        }
        14 if eq_ignore_case(name, b"content-length") => {
            if f.content_length.is_some() {
                return Err("more than one Content-Length");
            }
            let n = parse_content_length(v).ok_or("invalid Content-Length")?;
            f.content_length = Some(n);
        }
        17 if eq_ignore_case(name, b"transfer-encoding") => f.te.add_header(v)?,
        13 | 17 | 22
            if eq_ignore_case(name, b"x-http-method")
                || eq_ignore_case(name, b"x-method-override")
                || eq_ignore_case(name, b"x-http-method-override") =>
        {
            f.method_override = true;
        }
        _ => {}
    }
    Ok(())
}

fn connection_tokens(f: &mut Fields, value: Span, head: &[u8], conn_tokens: &mut Vec<Span>) {
    let v = value.get(head);
    for r in list_items(v) {
        if r.is_empty() {
            continue;
        }
        let tok = v.get(r.clone()).unwrap_or_default();
        f.conn_close |= eq_ignore_case(tok, b"close");
        f.conn_keep_alive |= eq_ignore_case(tok, b"keep-alive");
        f.conn_upgrade |= eq_ignore_case(tok, b"upgrade");
        conn_tokens.push(Span {
            start: value.start + r.start as u32,
            end: value.start + r.end as u32,
        });
    }
}

/// The span of `part` inside `buf`, or None if `part` does not point into `buf`.
///
/// httparse hands back sub-slices of the buffer it was given; turning them back into offsets by
/// address is the cheapest way to get spans. Checked so that a slice from elsewhere (httparse's
/// static "" reason, say) can never produce an out-of-range span. The caller guarantees
/// `buf.len() <= u32::MAX`.
fn span_of(buf: &[u8], part: &[u8]) -> Option<Span> {
    let start = (part.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    if end > buf.len() {
        return None;
    }
    Some(Span {
        start: u32::try_from(start).ok()?,
        end: u32::try_from(end).ok()?,
    })
}

fn version_of(minor: u8) -> Option<Version> {
    match minor {
        0 => Some(Version::Http10),
        1 => Some(Version::Http11),
        _ => None,
    }
}

/// A LF not preceded by CR. httparse accepts bare LF as a line terminator (and rejects a CR not
/// followed by LF), so requiring every LF to follow a CR makes every line end in CRLF exactly.
///
/// Written as a branch-free fold over (previous, current) byte pairs so it vectorizes: on a
/// typical head this is a fraction of the cost of one memchr call per line.
fn has_bare_lf(head: &[u8]) -> bool {
    let Some(&first) = head.first() else {
        return false;
    };
    let prev = head.iter();
    let next = head.get(1..).unwrap_or_default().iter();
    first == b'\n'
        || prev
            .zip(next)
            .fold(false, |bad, (&p, &c)| bad | ((c == b'\n') & (p != b'\r')))
}

/// Whether the request line in `buf` ends in `HTTP/<2..9>` (what of it has arrived). Blank lines
/// before it are skipped, as the parser skips them (RFC 9112 §2.2).
fn names_a_later_major(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let buf = buf.get(start..).unwrap_or_default();
    let line_end = memchr::memchr2(b'\r', b'\n', buf).unwrap_or(buf.len());
    let line = buf.get(..line_end).unwrap_or_default();
    let version = match memchr::memrchr(b' ', line) {
        Some(i) => line.get(i + 1..).unwrap_or_default(),
        None => return false,
    };
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, ..] if (b'2'..=b'9').contains(major))
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name (or obs-fold, or space before colon)",
        httparse::Error::HeaderValue => "invalid byte in header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid method or request-target",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "unsupported HTTP version",
    }
}

#[cfg(test)]
mod tests;
