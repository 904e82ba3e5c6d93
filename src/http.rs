//! HTTP/1.1 wire handling: strict head parsing (`parse`), streaming chunked decoding (`chunked`),
//! strict number parsing (`num`), header classification (`headers`) and query strings (`query`).
//!
//! Everything here is allocation-free on the hot path: heads are parsed into caller-owned, reused
//! structures that hold byte offsets (`Span`) into the caller's read buffer, never copies.

pub mod chunked;
pub mod headers;
pub mod num;
pub mod parse;
pub mod query;

/// A byte range into the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// The bytes in `buf`; empty when the span is not within it (a buffer reused since the span
    /// was taken must never abort the process).
    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        buf.get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }
}

/// One header field: name and value (value without surrounding OWS).
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How a message body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (Content-Length: 0 / absent on a request; HEAD, 1xx, 204, 304 responses).
    None,
    Length(u64),
    Chunked,
    /// Response only: delimited by the upstream closing the connection.
    CloseDelimited,
}

/// Cuts the complete response in `out` down to its head: what a HEAD request gets (RFC 9110
/// §9.3.2), Content-Length included. Body bytes after it would be read by the client as the start
/// of the next response on the connection.
pub fn keep_head_only(out: &mut Vec<u8>) {
    if let Some(end) = memchr::memmem::find(out, b"\r\n\r\n") {
        out.truncate(end + 4);
    }
}

/// Adds `Connection: keep-alive` to the head of the complete response in `out`, unless it has a
/// Connection field already (for HTTP/1.0 clients, which close otherwise).
pub fn say_keep_alive(out: &mut Vec<u8>) {
    let Some(end) = memchr::memmem::find(out, b"\r\n\r\n") else {
        return;
    };
    let head = out.get(..end + 2).unwrap_or_default();
    let has_connection = head.split(|&b| b == b'\n').any(|line| {
        line.get(..11)
            .is_some_and(|name| headers::eq_ignore_case(name, b"connection:"))
    });
    if !has_connection {
        out.splice(
            end + 2..end + 2,
            b"Connection: keep-alive\r\n".iter().copied(),
        );
    }
}

/// Limits applied while parsing a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request line + headers + final CRLF, in bytes.
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub max_headers: usize,
}

/// The most header fields any head may carry, whatever the config says (bounds a stack array).
pub const MAX_HEADERS_CAP: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_cut_to_their_head_or_told_to_keep_alive() {
        let mut out = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_vec();
        say_keep_alive(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
        say_keep_alive(&mut out);
        keep_head_only(&mut out);
        assert_eq!(
            out, b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n",
            "said once; no body"
        );
        let mut out = b"HTTP/1.1 401 X\r\nconnection: close\r\n\r\n".to_vec();
        say_keep_alive(&mut out);
        assert_eq!(out, b"HTTP/1.1 401 X\r\nconnection: close\r\n\r\n");
    }
}
