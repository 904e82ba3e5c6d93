//! The `redirect_https` listener: every request is answered with a 301 or 308 to
//! `https://{host}[:{https_port}]{path}[?{query}]` (the port omitted when 443) and the connection is
//! closed. The request head is read with the proxy's parser and limits, and a head it refuses gets
//! the proxy's answer (400, 414, 431 or 501); a request without a usable host gets a 400. Nothing
//! is forwarded upstream, but ACME HTTP-01 validation requests get their token's answer (200).
//! Each answer gets an access log line like the proxy's (no route).

use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use crate::access_log::format::{self as log_format, Outcome};
use crate::errors::GatewayError;
use crate::http::parse::{self, Parsed, RequestHead};
use crate::http::Limits;
use crate::proxy::io;
use crate::worker::Shard;

/// After answering, unread request bytes are drained for at most this long (so closing with unread
/// input does not reset the connection before the client read the redirect).
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 64 * 1024;

pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    status: u16,
    https_port: u16,
    shard: Rc<Shard>,
) {
    // A silent client must not hold a drain up for `client_header`.
    let _first_wait =
        crate::worker::FirstWait::new(&shard, std::os::fd::AsRawFd::as_raw_fd(&stream));
    let snap = shard.snapshot();
    let server = &snap.config.server;
    let limits = Limits {
        max_header_bytes: server.max_header_bytes,
        max_uri_bytes: server.max_uri_bytes,
        max_headers: server.max_headers,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(server.max_header_bytes + 1024);
    let mut head = RequestHead::default();
    let deadline = Instant::now() + server.timeouts.client_header;
    let mut out = Vec::with_capacity(512);
    let mut first_byte = None;
    // (status answered, whether the head parsed)
    let answer = loop {
        if !buf.is_empty() {
            first_byte.get_or_insert_with(Instant::now);
            match parse::parse_request(&buf, &limits, &mut head) {
                Ok(Parsed::Complete) => {
                    // ACME HTTP-01 validation: port 80 is usually this listener.
                    let challenge = snap.acme_http.as_ref().and_then(|store| {
                        let method = head.method.get(&buf);
                        crate::acme::challenge_answer(store, method, head.path_bytes(&buf))
                    });
                    if let Some(answer) = challenge {
                        crate::acme::write_challenge_answer(&mut out, &answer, true);
                        crate::info!("acme http-01 challenge answered peer={}", peer);
                        break (200, true);
                    }
                    break match location(&buf, &head, https_port) {
                        Some(loc) => {
                            redirect(&mut out, status, &loc);
                            (status, true)
                        }
                        None => {
                            let e = GatewayError::BadRequest("missing or invalid Host header");
                            e.write_response(true, &mut out);
                            (e.status(), true)
                        }
                    };
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    // The proxy's answer: 414, 431 and 501 keep their status, as from nginx.
                    let e = crate::proxy::request_parse_error(e);
                    e.write_response(true, &mut out);
                    break (e.status(), false);
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || buf.len() == buf.capacity() {
            return;
        }
        match io::fill(&mut stream, &mut buf, left).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    };
    if answer.1 && head.method.get(&buf) == b"HEAD" {
        crate::http::keep_head_only(&mut out);
    }
    let bytes_sent = out.len() as u64;
    let sent = io::send_all(&mut stream, &mut out, server.timeouts.client_body).await;
    if shard.access_log.on() {
        let r = if answer.1 {
            crate::proxy::request_fields(&head, &buf, peer, false, &snap.auth.trusted_proxies)
        } else {
            log_format::Request {
                client_ip: crate::auth::client_ip::canonical(peer.ip()),
                remote_addr: peer,
                method: None,
                host: None,
                path: None,
                protocol: None,
                tls: false,
                user_agent: None,
                request_id: None,
            }
        };
        let mut staged = Vec::with_capacity(256);
        log_format::push_request(&mut staged, &r);
        let took = first_byte.map_or(Duration::ZERO, |t: Instant| t.elapsed());
        shard.access_log.append(
            &staged,
            &Outcome {
                status: answer.0,
                bytes_sent: if sent.is_ok() { bytes_sent } else { 0 },
                request_bytes: buf.len() as u64,
                duration_us: Some(u64::try_from(took.as_micros()).unwrap_or(u64::MAX)),
                ..Outcome::default()
            },
        );
    }
    let _ = stream.shutdown().await;
    // Lingering close: read and discard what the client still sends, briefly.
    io::discard(&mut stream, &mut buf, LINGER, LINGER_BYTES).await;
}

fn redirect(out: &mut Vec<u8>, status: u16, location: &[u8]) {
    let reason = if status == 301 {
        "Moved Permanently"
    } else {
        "Permanent Redirect"
    };
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\nLocation: ");
    out.extend_from_slice(location);
    out.extend_from_slice(b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

/// `https://host[:port]/path[?query]`, from the request's host (port dropped) and target as sent.
fn location(buf: &[u8], head: &RequestHead, https_port: u16) -> Option<Vec<u8>> {
    let host = head.effective_host().map(|h| h.get(buf))?;
    let host = crate::proxy::host_without_port(host);
    if !valid_host(host) {
        return None;
    }
    let path = head.path_bytes(buf);
    let path: &[u8] = if path.first() == Some(&b'/') {
        path
    } else {
        b"/"
    };
    let mut loc = Vec::with_capacity(16 + host.len() + path.len());
    loc.extend_from_slice(b"https://");
    loc.extend(host.iter().map(u8::to_ascii_lowercase));
    if https_port != 443 {
        let _ = write!(loc, ":{https_port}");
    }
    loc.extend_from_slice(path);
    if let Some(q) = head.query {
        loc.push(b'?');
        loc.extend_from_slice(q.get(buf));
    }
    Some(loc)
}

/// A DNS name, IPv4 or bracketed IPv6 literal: nothing that could change the URL's structure.
fn valid_host(host: &[u8]) -> bool {
    if let Some(inner) = host.strip_prefix(b"[").and_then(|h| h.strip_suffix(b"]")) {
        return !inner.is_empty()
            && inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-' || *b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert!(valid_host(b"api.example.com"));
        assert!(valid_host(b"[::1]"));
        assert!(valid_host(b"127.0.0.1"));
        assert!(!valid_host(b""));
        assert!(!valid_host(b"a/b"));
        assert!(!valid_host(b"a@b"));
        assert!(!valid_host(b"[x]"));
    }
}
