//! Bytes of the forward-auth exchange: the auth request, the header lines an approval adds to the
//! upstream request, and the client response a denial becomes.
//!
//! Invariants: everything is appended to caller-owned `Vec`s (no allocation once they have grown);
//! every header value written was either configured (validated at load) or came through the
//! strict parser (no CR, LF or other CTL but HTAB), so no written line can split into two; names
//! that carry framing, hop-by-hop meaning or gateway-set forwarding facts are never copied across,
//! whatever the configuration says (`forbidden_request_header`, `forbidden_response_header`).

use std::io::Write;

use super::{AuthRequest, RequestHeaders};
use crate::http::headers::{eq_ignore_case, is_hop_by_hop, is_listed};
use crate::http::parse::ResponseHead;
use crate::proxy::head::{classify, push_u64, Class};

/// Client fields that must not be copied into the auth request: framing and hop-by-hop fields
/// (the auth request has its own framing), Host and Expect, and the forwarding facts this module
/// or the proxy set from the connection (a client must not choose its own `X-Forwarded-For`).
pub fn forbidden_request_header(name: &[u8]) -> bool {
    classify(name) != Class::Plain
        || eq_ignore_case(name, b"x-forwarded-method")
        || eq_ignore_case(name, b"x-forwarded-uri")
}

/// Auth-answer fields that must not be copied into the upstream request: the same framing,
/// hop-by-hop and forwarding fields the proxy writes itself (a second Host or Content-Length
/// would make the upstream request ambiguous).
pub fn forbidden_response_header(name: &[u8]) -> bool {
    classify(name) != Class::Plain
}

/// Bytes allowed in the configured origin-form target: visible ASCII except '#'.
pub fn is_target_byte(b: u8) -> bool {
    b.is_ascii_graphic() && b != b'#'
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the auth request: a bodiless GET on a keep-alive connection.
pub fn write_request(
    out: &mut Vec<u8>,
    path: &[u8],
    host: &[u8],
    copy: &[String],
    req: &AuthRequest<'_>,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_header(out, b"Host", host);
    push_header(out, b"X-Forwarded-Method", req.method);
    push_header(out, b"X-Forwarded-Proto", req.proto);
    push_header(out, b"X-Forwarded-Host", req.host);
    push_header(out, b"X-Forwarded-Uri", req.uri);
    out.extend_from_slice(b"X-Forwarded-For: ");
    // Display for IpAddr writes straight into the Vec: no intermediate String.
    let _ = write!(out, "{}", req.client_ip);
    out.extend_from_slice(b"\r\n");
    for name in copy {
        let name = name.as_bytes();
        // Checked at load too (`ForwardAuthDef::validate`); repeated here because the def is a
        // plain struct and a framing header slipping through would be a smuggling vector.
        if forbidden_request_header(name) {
            continue;
        }
        copy_client_fields(out, req.headers, name);
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

fn copy_client_fields(out: &mut Vec<u8>, headers: &dyn RequestHeaders, name_lower: &[u8]) {
    headers.for_each(name_lower, &mut |name, value| push_header(out, name, value));
}

/// Appends the approved answer's fields named in `names` (lower-case) as `Name: value\r\n` lines,
/// in the answer's order, each occurrence on its own line.
pub fn copy_allowed(out: &mut Vec<u8>, head: &ResponseHead, buf: &[u8], names: &[String]) {
    for h in &head.headers {
        let (Some(name), Some(value)) = (
            buf.get(h.name.start as usize..h.name.end as usize),
            buf.get(h.value.start as usize..h.value.end as usize),
        ) else {
            continue;
        };
        if names.iter().any(|n| eq_ignore_case(name, n.as_bytes()))
            && !forbidden_response_header(name)
        {
            push_header(out, name, value);
        }
    }
}

/// Appends the client response for a denial: the auth service's status and reason, its
/// end-to-end fields, a Content-Length for the body it sent, then the body (always: the proxy
/// cuts it for a client's HEAD). `buf` holds the head at `..head.head_len` and exactly the decoded body after it.
pub fn write_deny(out: &mut Vec<u8>, head: &ResponseHead, buf: &[u8], req: &AuthRequest<'_>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(
        buf.get(head.reason.start as usize..head.reason.end as usize)
            .unwrap_or_default(),
    );
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        let (Some(name), Some(value)) = (
            buf.get(h.name.start as usize..h.name.end as usize),
            buf.get(h.value.start as usize..h.value.end as usize),
        ) else {
            continue;
        };
        // Framing is re-derived below; hop-by-hop fields (and those Connection nominates) belong
        // to the gateway-to-auth connection, not to the client's.
        let skip = is_hop_by_hop(name)
            || eq_ignore_case(name, b"content-length")
            || is_listed(name, &head.conn_tokens, buf)
            || req.answer.overridden(name);
        if !skip {
            push_header(out, name, value);
        }
    }
    let status = head.status;
    let has_body = !(status < 200 || status == 204 || status == 304);
    let body = buf.get(head.head_len..).unwrap_or_default();
    if has_body {
        out.extend_from_slice(b"Content-Length: ");
        push_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(req.answer.extra);
    if req.client_close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // Always the body: the caller cuts it when the client's own request was a HEAD
    // (`req.method` is the method the upstream would run, an override's when there is one, so
    // it cannot decide the framing of the client's answer).
    if has_body {
        out.extend_from_slice(body);
    }
}
