//! Forward authentication: ask an external HTTP service whether a client request may pass
//! (Traefik's `forwardAuth` semantics), over a pooled keep-alive connection of this worker.
//!
//! Per client request, `check`:
//! 1. takes an idle connection to the auth service from the worker's `Pool` (slot of
//!    `ForwardAuthDef::addr`) or connects;
//! 2. sends `GET <path>` with `Host`, `X-Forwarded-{Method,Proto,Host,Uri,For}`, the client's
//!    fields named in `request_headers` (only those; none when the list is empty) and
//!    `Content-Length: 0` (`wire::write_request`);
//! 3. reads the whole answer, head and body, with the strict parser and chunked decoder of
//!    `crate::http` (`exchange`);
//! 4. 2xx: appends the answer's `response_headers` fields to the caller's upstream header lines
//!    (`Verdict::Allow`); anything else: writes the complete client response, status, end-to-end
//!    headers, re-derived Content-Length and body (`Verdict::Deny`).
//!
//! Invariants:
//! - one deadline, `timeout` from the call, bounds everything: connect, write, response head and
//!   body, and the single retry. Nothing waits past it (`Verdict::Timeout`).
//! - an answer counts only when it arrived whole and well-formed within `max_body`; anything else
//!   is `Verdict::Unavailable`, whatever its status (fail closed: a 2xx with a broken body is not an
//!   approval).
//! - a connection goes back to the pool only after a complete, correctly framed answer that left
//!   no unread byte and allowed reuse; a stale pooled connection (closed or reset before any answer
//!   byte) is retried once on a fresh one, which is safe because the auth request is a bodiless GET.
//! - no allocation per call once the caller's buffers have grown; the pool's `RefCell` is never
//!   borrowed across an `.await` (all pool calls are synchronous).
//! - nothing here logs, and `Verdict` carries static text only: header values (credentials) never
//!   reach a log line or an error string.
//! - plain `http://` auth services only; TLS to the auth service can reuse `proxy::connect_one`
//!   later (the pool already holds TLS connections as `UpstreamConn::Tls`).

mod exchange;
mod wire;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::http::headers::eq_ignore_case;
use crate::http::parse::ResponseHead;
use crate::http::HeaderSpan;
use crate::proxy::io;
use crate::upstream::conn::UpstreamConn;
use crate::upstream::pool::Pool;

pub use wire::{forbidden_request_header, forbidden_response_header};

/// Largest auth response head accepted (status line, headers, final CRLF).
pub const MAX_RESPONSE_HEAD: usize = 32 * 1024;
/// Default bound on an auth response body (`ForwardAuthDef::max_body`).
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Largest `max_body` `validate` accepts: a deny body is buffered whole, per connection.
pub const MAX_MAX_BODY: usize = 1024 * 1024;

/// One configured forward-auth service, as the config compiler fills it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardAuthDef {
    /// Resolved at load time (never on a worker).
    pub addr: SocketAddr,
    /// The `Host` header sent: the url's authority (`host[:port]`, port omitted when 80).
    pub host: String,
    /// Path and query of the url: starts with '/'.
    pub path: String,
    /// Client request fields copied into the auth request: ASCII lower-case names. Only these;
    /// an empty list copies none (unlike Traefik, which copies all when unset: a gateway should
    /// not send every cookie and token of every request to a third party unless told to).
    pub request_headers: Vec<String>,
    /// Fields of a 2xx auth answer copied into the upstream request: ASCII lower-case names.
    pub response_headers: Vec<String>,
    /// Bounds the whole check: connect + write + response (+ the one retry).
    pub timeout: Duration,
    /// Largest auth response body accepted; a larger one is `Verdict::Unavailable`.
    pub max_body: usize,
}

impl ForwardAuthDef {
    /// Checks what `check` relies on; for the config compiler (messages name config values, never
    /// request data). Names the proxy or this module set themselves, and framing or hop-by-hop
    /// names, are refused in both header lists (`forbidden_request_header`,
    /// `forbidden_response_header`): copying them would let a client or the auth service change
    /// the framing or the forwarded-for facts of a request.
    pub fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() || !self.host.bytes().all(crate::http::parse::is_host_byte) {
            return Err(format!(
                "forward-auth host {:?} is not a valid Host value",
                self.host
            ));
        }
        if !self.path.starts_with('/') || !self.path.bytes().all(wire::is_target_byte) {
            return Err(format!(
                "forward-auth path {:?} must start with '/' and contain only visible ASCII (no '#')",
                self.path
            ));
        }
        for (list, names, forbidden) in [
            (
                "request_headers",
                &self.request_headers,
                forbidden_request_header as fn(&[u8]) -> bool,
            ),
            (
                "response_headers",
                &self.response_headers,
                forbidden_response_header,
            ),
        ] {
            for name in names {
                let b = name.as_bytes();
                if !crate::http::headers::is_token(b) || b.iter().any(u8::is_ascii_uppercase) {
                    return Err(format!(
                        "forward-auth {list}: {name:?} is not a lower-case header name"
                    ));
                }
                if forbidden(b) {
                    return Err(format!(
                        "forward-auth {list}: {name:?} cannot be copied (framing, hop-by-hop or \
                         set by the gateway)"
                    ));
                }
            }
        }
        if self.timeout.is_zero() {
            return Err("forward-auth timeout must be greater than 0".to_owned());
        }
        if self.max_body > MAX_MAX_BODY {
            return Err(format!(
                "forward-auth max_body {} is above the limit of {MAX_MAX_BODY} bytes",
                self.max_body
            ));
        }
        Ok(())
    }
}

/// Looks up the client request's header fields.
pub trait RequestHeaders {
    /// Calls `f(name, value)` for every field named `name_lower` (ASCII lower-case, compared
    /// case-insensitively), in request order; `name` as the client spelled it.
    fn for_each(&self, name_lower: &[u8], f: &mut dyn FnMut(&[u8], &[u8]));
}

/// `RequestHeaders` over a parsed request head: its header spans and the buffer they point into,
/// and the lines earlier plugins added for the upstream (`added`, `Name: value\r\n`). A field
/// named by an added line is sent as added, in place of the client's copies: the correlation id
/// the plugin generated or put in place of a malformed one, so an auth service that copies the
/// request id logs the one the upstream and the access log get (found by a review). Other client
/// fields go as the client sent them (see the README on `request_headers`).
pub struct SpanHeaders<'a> {
    pub headers: &'a [HeaderSpan],
    pub buf: &'a [u8],
    pub added: &'a [u8],
}

impl SpanHeaders<'_> {
    /// The added lines as (name, value).
    fn added(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.added.split(|&b| b == b'\n').filter_map(|line| {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            Some((name, value.get(1..).unwrap_or_default().trim_ascii()))
        })
    }
}

impl RequestHeaders for SpanHeaders<'_> {
    fn for_each(&self, name_lower: &[u8], f: &mut dyn FnMut(&[u8], &[u8])) {
        if self.added().any(|(n, _)| eq_ignore_case(n, name_lower)) {
            for (name, value) in self.added().filter(|(n, _)| eq_ignore_case(n, name_lower)) {
                f(name, value);
            }
            return;
        }
        for h in self.headers {
            let (Some(name), Some(value)) = (
                self.buf.get(h.name.start as usize..h.name.end as usize),
                self.buf.get(h.value.start as usize..h.value.end as usize),
            ) else {
                continue;
            };
            if eq_ignore_case(name, name_lower) {
                f(name, value);
            }
        }
    }
}

/// The client request being authorized, and what the client side needs for a relayed answer.
pub struct AuthRequest<'a> {
    /// `X-Forwarded-Method`.
    pub method: &'a [u8],
    /// The original request-target as the client sent it: `X-Forwarded-Uri`.
    pub uri: &'a [u8],
    /// The client's Host (or absolute-form authority): `X-Forwarded-Host`.
    pub host: &'a [u8],
    /// `http` or `https`: `X-Forwarded-Proto`.
    pub proto: &'a [u8],
    /// `X-Forwarded-For` (the peer address only; client-sent values are never trusted).
    pub client_ip: IpAddr,
    pub headers: &'a dyn RequestHeaders,
    /// The client connection closes after this answer (client asked, unread request body,
    /// draining): a relayed answer then says `Connection: close`.
    pub client_close: bool,
    /// The client spoke HTTP/1.0: a relayed answer that keeps the connection says so.
    pub http10: bool,
    /// What plugins that ran before add to a relayed denial (CORS lines, the echoed correlation
    /// id), and which of the auth service's fields those replace; `transform` is not applied.
    pub answer: crate::proxy::head::ResponseEdits<'a>,
}

/// The auth service's decision, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: forward the request; the selected answer fields were appended to `out_headers`.
    Allow,
    /// Any other status: the complete client response is in `out_response`. `close`: the caller
    /// must close the client connection after sending it (equals `AuthRequest::client_close`;
    /// the answer said so in a `Connection: close` line).
    Deny { status: u16, close: bool },
    /// Refused, reset, malformed, oversized or truncated answer: 502 (or fail open if configured).
    /// `why` is static text, safe to log.
    Unavailable { why: &'static str },
    /// `ForwardAuthDef::timeout` elapsed: 504 (or fail open if configured).
    Timeout,
}

/// Working memory of `check`, reused across calls. Public fields so a caller can lend it a pooled
/// buffer (`std::mem::take` in and out); an empty one grows on first use.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Request bytes, then the answer: head at `..head.head_len`, decoded body after it.
    pub buf: Vec<u8>,
    pub head: ResponseHead,
}

/// Asks the auth service at `def.addr` about `req`. `slot` is `pool.slot_for(def.addr)`, taken
/// once at config load. Appends to `out_headers` only on `Allow` and to `out_response` only on
/// `Deny` (the caller clears them).
pub async fn check(
    pool: &Pool,
    slot: usize,
    def: &ForwardAuthDef,
    req: &AuthRequest<'_>,
    scratch: &mut Scratch,
    out_headers: &mut Vec<u8>,
    out_response: &mut Vec<u8>,
) -> Verdict {
    let now = Instant::now();
    // `checked_add`: an absurd configured timeout must not panic the worker; a day is forever here.
    let deadline = now
        .checked_add(def.timeout)
        .unwrap_or(now + Duration::from_secs(86_400));
    let mut pooled = pool.checkout(slot);
    // Two attempts at most: a stale pooled connection, then a fresh one (which cannot be stale).
    for _ in 0..2 {
        let reused = pooled.is_some();
        let conn = match pooled.take() {
            Some(c) => c,
            None => match connect(def.addr, deadline).await {
                Ok(c) => c,
                Err(v) => return v,
            },
        };
        match exchange::run(conn, reused, def, req, scratch, deadline).await {
            exchange::Outcome::Answer { reusable } => {
                if let Some(conn) = reusable {
                    pool.checkin(slot, conn);
                }
                let head = &scratch.head;
                let buf = scratch.buf.as_slice();
                if (200..300).contains(&head.status) {
                    wire::copy_allowed(out_headers, head, buf, &def.response_headers);
                    return Verdict::Allow;
                }
                wire::write_deny(out_response, head, buf, req);
                return Verdict::Deny {
                    status: head.status,
                    close: req.client_close,
                };
            }
            exchange::Outcome::Stale => continue,
            exchange::Outcome::Failed(v) => return v,
        }
    }
    Verdict::Unavailable {
        why: "fresh connection failed like a stale one",
    }
}

/// Time left before `deadline`, or `None` once it has passed.
fn left(deadline: Instant) -> Option<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    (!d.is_zero()).then_some(d)
}

async fn connect(addr: SocketAddr, deadline: Instant) -> Result<UpstreamConn, Verdict> {
    let Some(limit) = left(deadline) else {
        return Err(Verdict::Timeout);
    };
    match monoio::time::timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            // Head and answer are single small writes; Nagle would only add latency.
            let _ = stream.set_nodelay(true);
            Ok(UpstreamConn::Plain(stream))
        }
        Ok(Err(_)) => Err(Verdict::Unavailable {
            why: "connect failed",
        }),
        Err(_) => Err(Verdict::Timeout),
    }
}

/// A timed-out I/O maps to `Timeout`, anything else to `Unavailable { why }`.
fn io_verdict(e: &std::io::Error, why: &'static str) -> Verdict {
    if io::is_timeout(e) {
        Verdict::Timeout
    } else {
        Verdict::Unavailable { why }
    }
}

#[cfg(test)]
mod tests;
