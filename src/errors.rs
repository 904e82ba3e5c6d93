//! Errors on the request path: a small `Copy` enum, each variant mapping to one status and one JSON
//! body. Responses are written into the connection's reused write buffer, so producing one allocates
//! nothing.

use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    BadRequest(&'static str),
    RequestTimeout,
    BodyTooLarge,
    UriTooLong,
    HeadersTooLarge,
    NotImplemented,
    VersionNotSupported,
    NoRoute,
    UpstreamConnect,
    /// The upstream closed the connection while the request was being sent, without an answer.
    UpstreamClosed,
    UpstreamTimeout,
    BadResponse,
    /// A response body to edit (response-transformer `json`) is larger than `max_json_bytes`,
    /// partial (206), content-coded or unreadable JSON.
    ResponseTooLarge,
    ServiceUnavailable,
    /// A request body the route must edit (request-transformer `json`) came content-coded.
    UnsupportedEncoding,
    /// TRACE on a route that does not list it.
    TraceNotAllowed,
    /// Every target the request could go to is at its `max_conns`.
    UpstreamFull,
}

impl GatewayError {
    pub fn status(self) -> u16 {
        match self {
            GatewayError::BadRequest(_) => 400,
            GatewayError::NoRoute => 404,
            GatewayError::TraceNotAllowed => 405,
            GatewayError::RequestTimeout => 408,
            GatewayError::BodyTooLarge => 413,
            GatewayError::UriTooLong => 414,
            GatewayError::HeadersTooLarge => 431,
            GatewayError::UnsupportedEncoding => 415,
            GatewayError::NotImplemented => 501,
            GatewayError::VersionNotSupported => 505,
            GatewayError::UpstreamConnect
            | GatewayError::UpstreamClosed
            | GatewayError::BadResponse
            | GatewayError::ResponseTooLarge => 502,
            GatewayError::ServiceUnavailable | GatewayError::UpstreamFull => 503,
            GatewayError::UpstreamTimeout => 504,
        }
    }

    fn reason(self) -> &'static str {
        crate::plugins::reason(self.status())
    }

    /// The JSON `message`. Never echoes request content (no reflection, no credentials).
    pub fn message(self) -> &'static str {
        match self {
            GatewayError::BadRequest(why) => why,
            GatewayError::RequestTimeout => "request timed out",
            GatewayError::BodyTooLarge => "request body too large",
            GatewayError::UriTooLong => "request target too long",
            GatewayError::HeadersTooLarge => "request header fields too large",
            GatewayError::NotImplemented => "transfer coding or method not implemented",
            GatewayError::VersionNotSupported => "HTTP version not supported: HTTP/1.1 only",
            GatewayError::NoRoute => "no route matched",
            GatewayError::TraceNotAllowed => {
                "TRACE and TRACK are not allowed (a route must list them in `methods`)"
            }
            GatewayError::UpstreamConnect => "upstream connect failed",
            GatewayError::UpstreamClosed => "upstream closed the connection",
            GatewayError::UpstreamTimeout => "upstream timed out",
            GatewayError::BadResponse => "invalid upstream response",
            GatewayError::ResponseTooLarge => {
                "upstream response cannot be transformed (too large, partial, encoded or unreadable)"
            }
            GatewayError::ServiceUnavailable => "service unavailable",
            GatewayError::UpstreamFull => "every upstream target is at its connection limit",
            GatewayError::UnsupportedEncoding => "a content-coded request body cannot be edited",
        }
    }

    /// Whether the client connection must be closed after this answer even if its framing was fine.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            GatewayError::BadRequest(_)
                | GatewayError::RequestTimeout
                | GatewayError::BodyTooLarge
                | GatewayError::UriTooLong
                | GatewayError::HeadersTooLarge
                | GatewayError::NotImplemented
                | GatewayError::VersionNotSupported
        )
    }

    /// Appends the full response (head and JSON body) to `out`.
    pub fn write_response(self, close: bool, out: &mut Vec<u8>) {
        self.write_response_with(close, &[], out);
    }

    /// Like `write_response`, with header lines plugins added (`Name: value\r\n`: CORS headers, an
    /// echoed correlation id) for errors that happen after the route's plugin chain ran.
    pub fn write_response_with(self, close: bool, extra: &[u8], out: &mut Vec<u8>) {
        let msg = self.message();
        // The message is a static string without quotes or backslashes, so it needs no escaping.
        let body_len = msg.len() + 15; // {"message":"…"}\n
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status(),
            self.reason(),
            body_len,
        );
        out.extend_from_slice(extra);
        if self == GatewayError::TraceNotAllowed {
            // A 405 must say what is allowed (RFC 9110 §15.5.6). Only a route without `methods`
            // gets here (one that lists methods without TRACE does not match a TRACE at all), so
            // everything but TRACE is; CONNECT is a 501 anyway.
            out.extend_from_slice(b"Allow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        let _ = write!(out, "\r\n{{\"message\":\"{msg}\"}}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_matches_body() {
        for e in [
            GatewayError::NoRoute,
            GatewayError::BadRequest("bad host"),
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamClosed,
        ] {
            let mut out = Vec::new();
            e.write_response(true, &mut out);
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            let cl: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(cl, body.len(), "{text}");
            assert!(head.contains("Connection: close"));
        }
    }
}
