//! Writing heads: the request head sent upstream and the response head sent to the client.
//!
//! Both are written into a reused `Vec<u8>` (no allocation once it has grown). Hop-by-hop headers
//! (RFC 9110 §7.6.1: Connection, every header it lists, Keep-Alive, Proxy-Connection, TE, Trailer,
//! Transfer-Encoding, Upgrade) are dropped, and framing (Content-Length / Transfer-Encoding) is
//! re-derived from what the proxy will actually send, never copied.

use std::io::Write;
use std::net::IpAddr;

use crate::auth::steps::Edits;
use crate::http::headers::{eq_ignore_case, is_listed};
use crate::http::parse::{RequestHead, ResponseHead};
use crate::http::{BodyKind, Span};
use crate::plugins::cors;
use crate::plugins::transform::{HeaderTransform, RequestTransform, Seen};

/// Headers the proxy treats specially, classified by length first so the common case is one compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Plain,
    HopByHop,
    Upgrade,
    Host,
    ContentLength,
    Expect,
    XForwardedFor,
    /// X-Forwarded-Proto/Host/Port/Prefix and X-Real-IP: set by the proxy, never trusted from clients.
    ProxySet,
    /// X-Consumer-*, X-Credential-Identifier, X-Anonymous-Consumer: set by auth plugins only; a
    /// client's copies are always dropped, whether or not an auth plugin runs on the route.
    AuthSet,
    /// X-Original-URL, X-Rewrite-URL: read as the request's URI by IIS-style stacks and old
    /// Symfony and Zend versions (CVE-2018-14773), so a client's copy could send the application
    /// to a path the gateway never routed (`/public` + `X-Original-URL: /admin`). Dropped from
    /// requests; on responses they mean nothing and pass.
    UrlOverride,
}

pub fn classify(name: &[u8]) -> Class {
    let is = |s: &[u8]| eq_ignore_case(name, s);
    match name.len() {
        2 if is(b"te") => Class::HopByHop,
        4 if is(b"host") => Class::Host,
        6 if is(b"expect") => Class::Expect,
        7 if is(b"upgrade") => Class::Upgrade,
        7 if is(b"trailer") => Class::HopByHop,
        9 if is(b"x-real-ip") => Class::ProxySet,
        13 if is(b"x-consumer-id") => Class::AuthSet,
        13 if is(b"x-rewrite-url") => Class::UrlOverride,
        14 if is(b"x-original-url") => Class::UrlOverride,
        17 if is(b"x-consumer-groups") => Class::AuthSet,
        19 if is(b"x-consumer-username") => Class::AuthSet,
        // Credentials for a proxy on the way (RFC 9110 §11.7.2), not for the application: a
        // client's proxy password must not reach backends and their logs (found by a review).
        19 if is(b"proxy-authorization") => Class::HopByHop,
        20 if is(b"x-consumer-custom-id") || is(b"x-anonymous-consumer") => Class::AuthSet,
        23 if is(b"x-credential-identifier") => Class::AuthSet,
        10 if is(b"connection") || is(b"keep-alive") => Class::HopByHop,
        14 if is(b"content-length") => Class::ContentLength,
        15 if is(b"x-forwarded-for") => Class::XForwardedFor,
        16 if is(b"proxy-connection") => Class::HopByHop,
        16 if is(b"x-forwarded-host") || is(b"x-forwarded-port") => Class::ProxySet,
        17 if is(b"transfer-encoding") => Class::HopByHop,
        17 if is(b"x-forwarded-proto") => Class::ProxySet,
        18 if is(b"x-forwarded-prefix") => Class::ProxySet,
        _ => Class::Plain,
    }
}

/// Appends the decimal form of `n` without going through `fmt`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `ip` in its standard text form. IPv4 (the common case) is written digit by digit: going
/// through `fmt` cost more than the rest of a small request head (bench/head.rs).
pub fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends a chunk-size line: lower-case hex and CRLF.
pub fn push_chunk_size(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n as u64;
    loop {
        i -= 1;
        digits[i] = HEX[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// What the upstream request says about the client and the route.
pub struct Forwarded<'a> {
    /// The peer: appended to X-Forwarded-For.
    pub client_ip: IpAddr,
    /// The client after `trusted_proxies` (the peer without them): X-Real-IP.
    pub real_ip: IpAddr,
    pub listen_port: u16,
    /// The client's Host value as sent (for X-Forwarded-Host).
    pub client_host: &'a [u8],
    /// The prefix strip_path removed (empty when nothing was stripped).
    pub prefix: &'a [u8],
    /// `http` or `https`.
    pub proto: &'a [u8],
    /// The gateway will not keep the upstream connection (pooling is off): the request says
    /// `Connection: close`, as RFC 9112 §9.6 asks and nginx does.
    pub close: bool,
}

/// Writes the upstream request head. `buf` is the client read buffer the `head` spans point into;
/// `path_and_query` is the already rewritten upstream target; `host` the Host to send; `edits`
/// what plugins changed (hidden credentials, consumer headers); `transform` a request-transformer's
/// edits of the client's plain headers and its `http_method` (a HEAD stays a HEAD: its response has
/// no body whatever its Content-Length, and the client asked for none).
#[allow(clippy::too_many_arguments)]
pub fn write_request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    head: &RequestHead,
    path_and_query: &[u8],
    host: &[u8],
    fwd: &Forwarded<'_>,
    body: BodyKind,
    edits: &Edits,
    transform: Option<&RequestTransform>,
) {
    let method = head.method.get(buf);
    match transform.and_then(|t| t.method.as_deref()) {
        Some(m) if method != b"HEAD" => out.extend_from_slice(m),
        _ => out.extend_from_slice(method),
    }
    let transform = transform.map(|t| &t.headers);
    out.push(b' ');
    out.extend_from_slice(path_and_query);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, b"Host", host);

    let mut has_xff = false;
    let mut had_content_length = false;
    let mut upgrade_value: Option<Span> = None;
    let edited = !edits.skip.is_empty() || edits.skip_names.is_some() || edits.whole_body;
    // Whether a plain client header goes upstream. Names with '_' are dropped (nginx's
    // `underscores_in_headers off`): CGI-style backends read `X_Consumer_ID` as X-Consumer-ID,
    // which would smuggle identity headers past the gateway.
    let forwarded = |i: usize, name: &[u8]| {
        (head.conn_tokens.is_empty() || !is_listed(name, &head.conn_tokens, buf))
            && memchr::memchr(b'_', name).is_none()
            && !(edited && edits.skips(i, name))
    };
    // The transform sees the headers that are written (a rename's source that is dropped
    // renames, and so overwrites, nothing).
    let mut seen = transform.map_or_else(Seen::default, |t| {
        t.start(head.headers.iter().enumerate().filter_map(|(i, h)| {
            let name = h.name.get(buf);
            (classify(name) == Class::Plain && forwarded(i, name)).then_some(name)
        }))
    });
    for (i, h) in head.headers.iter().enumerate() {
        let name = h.name.get(buf);
        match classify(name) {
            Class::Plain => {
                if forwarded(i, name) {
                    match transform {
                        Some(t) => t.emit(out, name, h.value.get(buf), &mut seen),
                        None => push_header(out, name, h.value.get(buf)),
                    }
                }
            }
            Class::XForwardedFor => has_xff = true,
            Class::ContentLength => had_content_length = true,
            Class::Upgrade => upgrade_value = Some(h.value),
            Class::HopByHop
            | Class::Host
            | Class::Expect
            | Class::ProxySet
            | Class::AuthSet
            | Class::UrlOverride => {}
        }
    }
    if let Some(t) = transform {
        t.finish(out, &seen);
    }
    out.extend_from_slice(&edits.add);
    // Appended to, never trusted: every XFF field the client sent is one comma list (RFC 9110 §5.3)
    // to which the peer address is added, as a single field.
    out.extend_from_slice(b"X-Forwarded-For: ");
    if has_xff {
        for h in &head.headers {
            let v = h.value.get(buf);
            if !v.is_empty() && classify(h.name.get(buf)) == Class::XForwardedFor {
                out.extend_from_slice(v);
                out.extend_from_slice(b", ");
            }
        }
    }
    push_ip(out, fwd.client_ip);
    out.extend_from_slice(b"\r\nX-Real-IP: ");
    push_ip(out, fwd.real_ip);
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(fwd.proto);
    // An HTTP/1.0 request may come without a Host: then there is none to pass on.
    if !fwd.client_host.is_empty() {
        out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
        out.extend_from_slice(fwd.client_host);
    }
    out.extend_from_slice(b"\r\nX-Forwarded-Port: ");
    push_u64(out, u64::from(fwd.listen_port));
    out.extend_from_slice(b"\r\n");
    if !fwd.prefix.is_empty() {
        push_header(out, b"X-Forwarded-Prefix", fwd.prefix);
    }
    match body {
        BodyKind::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        BodyKind::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyKind::None | BodyKind::CloseDelimited => {
            if had_content_length {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
    }
    match upgrade_value.filter(|_| head.upgrade) {
        Some(v) => {
            out.extend_from_slice(b"Connection: upgrade\r\n");
            push_header(out, b"Upgrade", v.get(buf));
        }
        None if fwd.close => out.extend_from_slice(b"Connection: close\r\n"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is framed towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body (HEAD, 204, 304): the upstream's Content-Length, if any, is passed through as metadata.
    NoBody,
    /// No body, and no Content-Length either: a HEAD whose GET would be edited (response-transformer
    /// `json`), so the upstream's length is not the one a GET gets (RFC 9110 §9.3.2 lets a HEAD
    /// leave out what only generating the content determines).
    NoBodyUnknownLength,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client and a body of unknown length: delimited by closing.
    Close,
}

/// What plugins do to a response head from the upstream.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseEdits<'a> {
    /// Header lines plugins add (already `Name: value\r\n`), e.g. rate-limit and CORS headers.
    pub extra: &'a [u8],
    /// The cors plugin ran: the upstream's own `Access-Control-*` headers are dropped.
    pub drop_cors: bool,
    /// The rate-limiting plugin wrote its headers: the upstream's own `X-RateLimit-*` and
    /// `RateLimit-*` are dropped.
    pub drop_rate_limit: bool,
    /// A header plugins write in `extra` themselves (the echoed correlation id): the upstream's
    /// copies are dropped, so the client gets one.
    pub replaced: Option<&'a [u8]>,
    /// A response-transformer's edits of the upstream's end-to-end headers.
    pub transform: Option<&'a HeaderTransform>,
    /// The body goes out gzip'd (`plugins::compression`): `Content-Encoding: gzip` replaces the
    /// upstream's (at most `identity`), its `Accept-Ranges` is dropped and a strong `ETag` made
    /// weak.
    pub gzip: bool,
    /// The response could be compressed for a client that takes gzip: `Vary: Accept-Encoding`.
    pub vary: bool,
}

impl ResponseEdits<'_> {
    /// Whether a header of the answer being relayed (upstream's, auth service's) gives way to what
    /// plugins write themselves.
    pub fn overridden(&self, name: &[u8]) -> bool {
        (self.drop_cors && cors::owned(name))
            || (self.drop_rate_limit && crate::limit::header_owned(name))
            || self.replaced.is_some_and(|r| eq_ignore_case(r, name))
            || (self.gzip
                && (eq_ignore_case(name, b"accept-ranges")
                    || eq_ignore_case(name, b"content-encoding")))
    }
}

/// Writes the client response head.
pub fn write_response_head(
    out: &mut Vec<u8>,
    ubuf: &[u8],
    resp: &ResponseHead,
    framing: ClientFraming,
    close: bool,
    http10_client: bool,
    edits: &ResponseEdits<'_>,
) {
    push_status_line(out, ubuf, resp);
    let keep = |name: &[u8]| match classify(name) {
        Class::HopByHop | Class::Upgrade => false,
        // RFC 9110 §8.6: never on a 204 (HEAD and 304 pass the upstream's length on).
        Class::ContentLength => framing == ClientFraming::NoBody && resp.status != 204,
        _ => {
            (resp.conn_tokens.is_empty() || !is_listed(name, &resp.conn_tokens, ubuf))
                && !edits.overridden(name)
        }
    };
    // The transform sees the headers that are written (see the request side).
    let mut seen = edits.transform.map_or_else(Seen::default, |t| {
        t.start(
            resp.headers
                .iter()
                .map(|h| h.name.get(ubuf))
                .filter(|n| keep(n)),
        )
    });
    for h in &resp.headers {
        let name = h.name.get(ubuf);
        if keep(name) {
            let at = out.len();
            match edits.transform {
                Some(t) => t.emit(out, name, h.value.get(ubuf), &mut seen),
                None => push_header(out, name, h.value.get(ubuf)),
            }
            if edits.gzip {
                weaken_etag(out, at);
            }
        }
    }
    if let Some(t) = edits.transform {
        t.finish(out, &seen);
    }
    if edits.gzip {
        out.extend_from_slice(b"Content-Encoding: gzip\r\n");
    }
    if edits.vary {
        out.extend_from_slice(b"Vary: Accept-Encoding\r\n");
    }
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::NoBody | ClientFraming::NoBodyUnknownLength | ClientFraming::Close => {}
    }
    out.extend_from_slice(edits.extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10_client {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Makes the line written at `out[at..]` weak if it is a strong `ETag` (`"x"` becomes `W/"x"`): a
/// compressed body is not byte for byte the one the upstream tagged (RFC 9110 §8.8.1).
fn weaken_etag(out: &mut Vec<u8>, at: usize) {
    let line = out.get(at..).unwrap_or_default();
    if line.len() > 6 && eq_ignore_case(&line[..6], b"etag: ") && line[6] == b'"' {
        out.splice(at + 6..at + 6, *b"W/");
    }
}

/// Writes an interim (1xx) head forwarded to the client: status line and end-to-end headers, less
/// what the final answer's edits drop (headers plugins own, the response-transformer's `remove`,
/// so a `Server` an operator strips does not show on a 103 either). Plugins' own lines and the
/// transformer's renames and additions belong on the final answer; a 1xx has no body, so no
/// framing.
pub fn write_interim_head(
    out: &mut Vec<u8>,
    ubuf: &[u8],
    resp: &ResponseHead,
    edits: &ResponseEdits<'_>,
) {
    push_status_line(out, ubuf, resp);
    for h in &resp.headers {
        let name = h.name.get(ubuf);
        let removed = edits.transform.is_some_and(|t| t.removes(name));
        if end_to_end(name, resp, ubuf) && !edits.overridden(name) && !removed {
            push_header(out, name, h.value.get(ubuf));
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// `HTTP/1.1 <status> <reason>\r\n` of a response relayed to the client.
fn push_status_line(out: &mut Vec<u8>, ubuf: &[u8], resp: &ResponseHead) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(resp.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.get(ubuf));
    out.extend_from_slice(b"\r\n");
}

/// Whether a response header is end-to-end: not hop-by-hop, not named by the response's
/// `Connection`, and not framing (which the proxy writes itself).
fn end_to_end(name: &[u8], resp: &ResponseHead, ubuf: &[u8]) -> bool {
    match classify(name) {
        Class::HopByHop | Class::Upgrade | Class::ContentLength => false,
        _ => resp.conn_tokens.is_empty() || !is_listed(name, &resp.conn_tokens, ubuf),
    }
}

/// Writes a `101 Switching Protocols` head: end-to-end headers, the lines plugins add (`edits`,
/// whose `transform` is not applied), plus the upgrade pair.
pub fn write_upgrade_head(
    out: &mut Vec<u8>,
    ubuf: &[u8],
    resp: &ResponseHead,
    edits: &ResponseEdits<'_>,
) {
    out.extend_from_slice(b"HTTP/1.1 101 ");
    out.extend_from_slice(resp.reason.get(ubuf));
    out.extend_from_slice(b"\r\n");
    let mut upgrade: Option<Span> = None;
    for h in &resp.headers {
        let name = h.name.get(ubuf);
        match classify(name) {
            Class::Upgrade => upgrade = Some(h.value),
            Class::HopByHop | Class::ContentLength => {}
            _ => {
                if !is_listed(name, &resp.conn_tokens, ubuf) && !edits.overridden(name) {
                    push_header(out, name, h.value.get(ubuf));
                }
            }
        }
    }
    // What plugins add (echoed correlation id, CORS, rate-limit lines), as on any response; the
    // response-transformer is not applied to a 101.
    out.extend_from_slice(edits.extra);
    out.extend_from_slice(b"Connection: upgrade\r\n");
    if let Some(v) = upgrade {
        push_header(out, b"Upgrade", v.get(ubuf));
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_as_text() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "255.255.255.255",
            "10.20.3.4",
            "::1",
            "2001:db8::5",
        ] {
            let mut out = Vec::new();
            push_ip(&mut out, ip.parse().expect("ip"));
            assert_eq!(out, ip.as_bytes());
        }
    }

    #[test]
    fn classify_is_case_insensitive_and_exact() {
        assert_eq!(classify(b"Transfer-Encoding"), Class::HopByHop);
        assert_eq!(classify(b"TE"), Class::HopByHop);
        assert_eq!(classify(b"X-Forwarded-For"), Class::XForwardedFor);
        assert_eq!(classify(b"x-forwarded-prefix"), Class::ProxySet);
        assert_eq!(classify(b"Content-Type"), Class::Plain);
        assert_eq!(classify(b"Hosts"), Class::Plain);
        assert_eq!(classify(b"Content-Length"), Class::ContentLength);
        assert_eq!(classify(b"X-Original-URL"), Class::UrlOverride);
        assert_eq!(classify(b"x-rewrite-url"), Class::UrlOverride);
    }

    #[test]
    fn interim_heads_keep_end_to_end_fields_only() {
        let raw = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\nLink: </b.js>\r\n\r\n";
        let mut resp = ResponseHead::default();
        let parsed = crate::http::parse::parse_response(raw, 4096, false, &mut resp);
        assert!(
            matches!(parsed, Ok(crate::http::parse::Parsed::Complete)),
            "{parsed:?}"
        );
        let mut out = Vec::new();
        write_interim_head(&mut out, raw, &resp, &ResponseEdits::default());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>\r\n\r\n"
        );
    }

    #[test]
    fn chunk_sizes_are_hex() {
        for (n, hex) in [(0usize, "0"), (10, "a"), (4096, "1000"), (65535, "ffff")] {
            let mut out = Vec::new();
            push_chunk_size(&mut out, n);
            assert_eq!(out, format!("{hex}\r\n").into_bytes());
        }
    }

    #[test]
    fn push_u64_formats() {
        for n in [0u64, 7, 10, 12345, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }
}
