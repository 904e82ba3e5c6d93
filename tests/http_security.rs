//! Strict HTTP/1.1 parsing on both sides and the limits and client timeouts.
//!
//! Every malformed request is checked where a smuggled request would land: at the upstream, which
//! records every raw byte it receives. For defects in the head, the upstream must receive nothing at
//! all; for defects inside a chunked body (discovered after the gateway may already have started
//! forwarding), the upstream must never receive a complete request and never the smuggled one.
//! Malformed upstream responses must become a 502 and never reach the client.

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Appended to requests so that a gateway that mis-frames would forward a second request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";

/// Head-level defect: `status` JSON error, connection closed, not one byte at the upstream.
fn assert_rejected_at_head(req: &[u8], status: u16) {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let r = send_raw(gw.addr(), req);
    r.assert_json_error(status);
    assert!(
        r.closed,
        "connection left open after {status} for {:?}",
        String::from_utf8_lossy(req)
    );
    settle();
    assert_eq!(
        up.raw_len(),
        0,
        "forwarded to the upstream: {:?}",
        String::from_utf8_lossy(&up.raw_all())
    );
}

/// Body-level defect: 400, closed, the upstream never saw a complete request nor the smuggled one.
fn assert_rejected_in_body(req: &[u8]) {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let r = send_raw(gw.addr(), req);
    r.assert_json_error(400);
    assert!(r.closed, "connection left open after a bad chunked body");
    settle();
    assert!(
        up.complete_requests().is_empty(),
        "a complete request reached the upstream: {:?}",
        String::from_utf8_lossy(&up.raw_all())
    );
    assert!(
        !up.raw_contains(b"/smuggled"),
        "smuggled request reached the upstream"
    );
}

fn with_smuggled(head: &str, body: &str) -> Vec<u8> {
    format!("{head}{body}{SMUGGLED}").into_bytes()
}

macro_rules! head_case {
    ($name:ident, $status:expr, $req:expr) => {
        #[test]
        fn $name() {
            assert_rejected_at_head(&$req, $status);
        }
    };
}

macro_rules! body_case {
    ($name:ident, $req:expr) => {
        #[test]
        fn $name() {
            assert_rejected_in_body(&$req);
        }
    };
}

// --- Content-Length / Transfer-Encoding framing ---------------------------------------------------

head_case!(
    cl_and_te_both,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "0\r\n\r\n"
    )
);
head_case!(
    te_and_cl_both,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        "0\r\n\r\n"
    )
);
head_case!(
    duplicate_cl_different_values,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nContent-Length: 46\r\n\r\n",
        "hello"
    )
);
// Assumption: any duplicate Content-Length is rejected, even with equal values (the issue says
// "duplicate CL"; RFC 9112 only *allows* merging equal ones).
head_case!(
    duplicate_cl_same_values,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_list_value,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5, 5\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_plus_sign,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: +5\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_negative,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: -5\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_vertical_tab_prefix,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: \x0b5\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_inner_space,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1 0\r\n\r\n",
        "helloworld"
    )
);
head_case!(
    cl_hex,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 0x5\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_overflow,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "hello"
    )
);
head_case!(
    cl_empty,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: \r\n\r\n",
        ""
    )
);
head_case!(
    cl_space_before_colon,
    400,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length : 5\r\n\r\n",
        "hello"
    )
);

// --- Transfer-Encoding other than a final chunked: 501 --------------------------------------------

head_case!(
    te_gzip_is_not_implemented,
    501,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: gzip\r\n\r\n",
        "xxxx"
    )
);
head_case!(
    te_identity_is_not_implemented,
    501,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: identity\r\n\r\n",
        ""
    )
);
// Assumption: "chunked" not last is the issue's "TE other than final chunked" -> 501.
head_case!(
    te_chunked_not_final_is_not_implemented,
    501,
    with_smuggled(
        "POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "0\r\n\r\n"
    )
);

// --- HTTP/2 or later on the request line: 505 (nginx's answer), not 400 ----------------------------

head_case!(
    http2_request_line_is_505,
    505,
    with_smuggled("GET / HTTP/2.0\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    h2_prior_knowledge_preface_is_505,
    505,
    with_smuggled("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "")
);

// --- Malformed chunked bodies ---------------------------------------------------------------------

const CHUNKED_HEAD: &str =
    "POST / HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n";

body_case!(
    chunk_size_plus,
    with_smuggled(CHUNKED_HEAD, "+5\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_size_negative,
    with_smuggled(CHUNKED_HEAD, "-5\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_size_0x_prefix,
    with_smuggled(CHUNKED_HEAD, "0x5\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_size_leading_space,
    with_smuggled(CHUNKED_HEAD, " 5\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_size_not_hex,
    with_smuggled(CHUNKED_HEAD, "g\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_size_empty,
    with_smuggled(CHUNKED_HEAD, "\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_size_overflow,
    with_smuggled(CHUNKED_HEAD, "1ffffffffffffffff\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_bare_lf_line_ends,
    with_smuggled(CHUNKED_HEAD, "5\nhello\n0\n\n")
);
body_case!(
    chunk_data_not_followed_by_crlf,
    with_smuggled(CHUNKED_HEAD, "5\r\nhelloXX\r\n0\r\n\r\n")
);
body_case!(
    chunk_ext_empty_name,
    with_smuggled(CHUNKED_HEAD, "5;\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_ext_unterminated_quote,
    with_smuggled(CHUNKED_HEAD, "5;a=\"b\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_ext_control_byte,
    with_smuggled(CHUNKED_HEAD, "5;a\x01b\r\nhello\r\n0\r\n\r\n")
);
body_case!(
    chunk_ext_bare_cr,
    with_smuggled(CHUNKED_HEAD, "5;a\rb\r\nhello\r\n0\r\n\r\n")
);

// --- Bytes that are never allowed in a field --------------------------------------------------------

head_case!(
    header_value_bare_cr,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\rb\r\n\r\n",
        ""
    )
);
head_case!(
    header_value_nul,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\x00b\r\n\r\n",
        ""
    )
);
head_case!(
    header_value_control_byte,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\x01b\r\n\r\n",
        ""
    )
);
head_case!(
    header_value_del,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\x7fb\r\n\r\n",
        ""
    )
);
head_case!(
    header_name_control_byte,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-\x01A: b\r\n\r\n",
        ""
    )
);
head_case!(
    header_obs_fold,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-A: a\r\n b\r\n\r\n",
        ""
    )
);
head_case!(
    header_whitespace_before_colon,
    400,
    with_smuggled("GET / HTTP/1.1\r\nHost: test.local\r\nX-A : b\r\n\r\n", "")
);
head_case!(
    header_line_without_colon,
    400,
    with_smuggled("GET / HTTP/1.1\r\nHost: test.local\r\nX-A b\r\n\r\n", "")
);

// --- Host -----------------------------------------------------------------------------------------

head_case!(
    missing_host_on_http11,
    400,
    with_smuggled("GET / HTTP/1.1\r\nX-A: b\r\n\r\n", "")
);
head_case!(
    duplicate_host,
    400,
    with_smuggled(
        "GET / HTTP/1.1\r\nHost: test.local\r\nHost: other.example\r\n\r\n",
        ""
    )
);

// --- Request line -----------------------------------------------------------------------------------

head_case!(
    request_line_double_space,
    400,
    with_smuggled("GET  / HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_trailing_garbage,
    400,
    with_smuggled("GET / HTTP/1.1 x\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_bad_method_char,
    400,
    with_smuggled("G(T / HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
// A lower-case method would match no method-restricted route (and so skip its auth) while the
// upstream framework upper-cases it; nginx (and so Kong) refuse it too.
head_case!(
    request_line_lowercase_method,
    400,
    with_smuggled("delete /items/1 HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_digit_in_method,
    400,
    with_smuggled("GET2 / HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_space_in_target,
    400,
    with_smuggled("GET /a b HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_nul_in_target,
    400,
    with_smuggled("GET /a\x00b HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_lowercase_version,
    400,
    with_smuggled("GET / http/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_not_origin_form,
    400,
    with_smuggled("GET foo HTTP/1.1\r\nHost: test.local\r\n\r\n", "")
);
head_case!(
    request_line_missing_version,
    400,
    with_smuggled("GET /\r\nHost: test.local\r\n\r\n", "")
);

#[test]
fn valid_request_before_a_smuggling_attempt_is_served_and_the_rest_rejected() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    let mut bytes = b"GET /first HTTP/1.1\r\nHost: test.local\r\n\r\n".to_vec();
    bytes.extend(with_smuggled(
        "POST /second HTTP/1.1\r\nHost: test.local\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "0\r\n\r\n",
    ));
    c.send(&bytes).unwrap();
    let r1 = c.read_response().unwrap();
    assert_eq!(r1.status, 200);
    let r2 = c.read_response().unwrap();
    r2.assert_json_error(400);
    assert!(c.probe_closed(Duration::from_secs(1)));
    settle();
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].target, "/first");
    assert!(!up.raw_contains(b"/smuggled") && !up.raw_contains(b"/second"));
}

// --- Limits ---------------------------------------------------------------------------------------

fn limited_gateway(up: &Upstream, server: &str) -> Gateway {
    Gateway::start(&basic_config(up, server, ""))
}

#[test]
fn header_section_over_max_header_bytes_is_431() {
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_header_bytes = 1024");
    // Just under the limit passes (the limit is not off by a lot)…
    let ok = format!(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(800)
    );
    assert_eq!(send_raw(gw.addr(), ok.as_bytes()).status, 200);
    // …over it is 431 and not forwarded.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: test.local\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let r = send_raw(gw.addr(), big.as_bytes());
    r.assert_json_error(431);
    assert!(
        r.closed,
        "the head was not fully read: the connection must close"
    );
    settle();
    assert_eq!(up.request_count(), 1);
    assert!(!up.raw_contains(b"/big"));
}

#[test]
fn too_many_header_fields_is_431() {
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_headers = 10");
    let mut req = String::from("GET /many HTTP/1.1\r\nHost: test.local\r\n");
    for i in 0..20 {
        req.push_str(&format!("X-H{i}: v\r\n"));
    }
    req.push_str("\r\n");
    send_raw(gw.addr(), req.as_bytes()).assert_json_error(431);
    settle();
    assert_eq!(up.raw_len(), 0);
}

#[test]
fn target_over_max_uri_bytes_is_414() {
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_uri_bytes = 100");
    let ok = format!(
        "GET /{} HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "a".repeat(60)
    );
    assert_eq!(send_raw(gw.addr(), ok.as_bytes()).status, 200);
    let long = format!(
        "GET /long{} HTTP/1.1\r\nHost: test.local\r\n\r\n",
        "a".repeat(300)
    );
    send_raw(gw.addr(), long.as_bytes()).assert_json_error(414);
    settle();
    assert_eq!(up.request_count(), 1);
    assert!(!up.raw_contains(b"/long"));
}

#[test]
fn declared_body_over_max_body_bytes_is_413_before_forwarding() {
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_body_bytes = 100");
    let ok = format!(
        "POST /ok HTTP/1.1\r\nHost: test.local\r\nContent-Length: 100\r\n\r\n{}",
        "b".repeat(100)
    );
    assert_eq!(send_raw(gw.addr(), ok.as_bytes()).status, 200);
    // Only the head is sent: the 413 must come without waiting for a body.
    let r = send_raw(
        gw.addr(),
        b"POST /big HTTP/1.1\r\nHost: test.local\r\nContent-Length: 101\r\n\r\n",
    );
    r.assert_json_error(413);
    settle();
    assert_eq!(up.request_count(), 1);
    assert!(!up.raw_contains(b"/big"));
}

/// A chunk whose size line alone takes the body over the limit is refused at once, like a
/// Content-Length over it: nothing goes upstream, and its data is not waited for.
#[test]
fn a_chunk_announcing_too_much_is_413_before_forwarding() {
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_body_bytes = 100");
    let mut c = Conn::connect(gw.addr());
    // 0x65 = 101 bytes announced; 10 sent, then nothing.
    c.send(format!("{CHUNKED_HEAD}65\r\n{}", "a".repeat(10)).as_bytes())
        .unwrap();
    let r = c.read_response().expect("a 413 response");
    r.assert_json_error(413);
    settle();
    assert!(
        !up.raw_contains(b"aaaaaaaaaa"),
        "nothing of it went upstream"
    );
    // Just at the limit passes.
    let ok = format!("{CHUNKED_HEAD}64\r\n{}\r\n0\r\n\r\n", "b".repeat(100));
    assert_eq!(send_raw(gw.addr(), ok.as_bytes()).status, 200);
}

#[test]
fn chunked_body_crossing_max_body_bytes_is_413() {
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_body_bytes = 100");
    let mut c = Conn::connect(gw.addr());
    c.send(format!("{CHUNKED_HEAD}32\r\n{}\r\n", "a".repeat(50)).as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // 50 + 60 = 110 > 100; the terminating chunk is never sent, so only the limit can end this.
    let _ = c.send(format!("3c\r\n{}\r\n", "b".repeat(60)).as_bytes());
    let r = c.read_response().expect("a 413 response");
    r.assert_json_error(413);
    assert!(
        c.probe_closed(Duration::from_secs(2)),
        "body framing abandoned: must close"
    );
    settle();
    assert!(
        up.complete_requests().is_empty(),
        "over-limit body completed upstream"
    );
    assert!(up.requests().iter().all(|r| r.body.len() <= 100));
}

/// A client that keeps uploading after its 413 is drained for the lingering close's 2 s, once:
/// the close that follows the answer must not linger again (it did whenever input was still
/// arriving, holding such a connection twice as long; found by a review).
#[test]
fn an_upload_that_goes_on_after_its_413_lingers_once() {
    use std::io::{Read, Write};
    let up = Upstream::echo("a");
    let gw = limited_gateway(&up, "max_body_bytes = 100");
    let mut s = std::net::TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    s.write_all(format!("{CHUNKED_HEAD}c8\r\n{}\r\n", "a".repeat(200)).as_bytes())
        .expect("write");
    // Keeps sending 256-byte chunks every ~0.25 ms (about 1 MB/s, so the 4 MiB cap is not what
    // ends the linger, and input is arriving when it ends) for at most 8 s, until a write fails: the gateway closed the socket for good (its
    // half-close at the start of the linger only ends the answer).
    let mut w = s.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        let chunk = format!("100\r\n{}\r\n", "b".repeat(0x100));
        let end = Instant::now() + Duration::from_secs(8);
        while Instant::now() < end && w.write_all(chunk.as_bytes()).is_ok() {
            std::thread::sleep(Duration::from_micros(200));
        }
        Instant::now()
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered: Option<Instant> = None;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if answered.is_none() && got.windows(4).any(|w| w == b"\r\n\r\n") {
                    answered = Some(Instant::now());
                }
            }
        }
    }
    assert!(
        got.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let closed = writer.join().expect("writer");
    let lingered = closed - answered.expect("a 413 head");
    assert!(
        lingered >= Duration::from_millis(1500) && lingered < Duration::from_millis(3300),
        "closed {lingered:?} after the answer (one linger is 2 s)"
    );
}

#[test]
fn per_route_max_body_bytes_overrides_the_server_limit() {
    let up = Upstream::echo("a");
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1
max_body_bytes = "1m"

[[services]]
name = "svc"
url = "{}"

[[routes]]
name = "small"
service = "svc"
paths = ["/small"]
strip_path = false
max_body_bytes = 10

[[routes]]
name = "big"
service = "svc"
paths = ["/big"]
strip_path = false
"#,
        up.url()
    );
    let gw = Gateway::start(&toml);
    let body = "x".repeat(20);
    let big = format!("POST /big HTTP/1.1\r\nHost: test.local\r\nContent-Length: 20\r\n\r\n{body}");
    assert_eq!(send_raw(gw.addr(), big.as_bytes()).status, 200);
    let small =
        format!("POST /small HTTP/1.1\r\nHost: test.local\r\nContent-Length: 20\r\n\r\n{body}");
    send_raw(gw.addr(), small.as_bytes()).assert_json_error(413);
    let chunked = format!(
        "POST /small HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n{body}\r\n0\r\n\r\n"
    );
    send_raw(gw.addr(), chunked.as_bytes()).assert_json_error(413);
    let fits = "POST /small HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\n\r\n0123456789";
    assert_eq!(send_raw(gw.addr(), fits.as_bytes()).status, 200);
    settle();
    let paths: Vec<String> = up
        .complete_requests()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(paths, vec!["/big", "/small"]);
}

// --- Malformed upstream responses: 502, never relayed -----------------------------------------------

fn assert_bad_response_is_502(resp: &[u8]) {
    let up = Upstream::fixed(resp);
    let gw = gateway_for(&up);
    let r = send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n");
    r.assert_json_error(502);
    assert!(!contains(&r.body, b"SECRET"), "upstream body relayed");
    assert!(
        r.header("x-upstream-marker").is_none(),
        "upstream headers relayed"
    );
}

macro_rules! response_case {
    ($name:ident, $resp:expr) => {
        #[test]
        fn $name() {
            assert_bad_response_is_502($resp);
        }
    };
}

response_case!(
    response_cl_and_te,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nSECRET\r\n0\r\n\r\n"
);
response_case!(
    response_duplicate_cl,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: 6\r\nContent-Length: 7\r\n\r\nSECRET!"
);
response_case!(
    response_cl_plus,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: +6\r\n\r\nSECRET"
);
response_case!(
    response_cl_overflow,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: 99999999999999999999\r\n\r\nSECRET"
);
response_case!(
    response_header_nul,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: a\x00b\r\nContent-Length: 6\r\n\r\nSECRET"
);
response_case!(
    response_header_bare_cr,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: a\rb\r\nContent-Length: 6\r\n\r\nSECRET"
);
response_case!(
    response_obs_fold,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: a\r\n b\r\nContent-Length: 6\r\n\r\nSECRET"
);
response_case!(
    response_space_before_colon,
    b"HTTP/1.1 200 OK\r\nX-Upstream-Marker: 1\r\nContent-Length : 6\r\n\r\nSECRET"
);
response_case!(
    response_bad_status_code,
    b"HTTP/1.1 2000 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: 6\r\n\r\nSECRET"
);
response_case!(
    response_status_600,
    b"HTTP/1.1 600 Odd\r\nX-Upstream-Marker: 1\r\nContent-Length: 6\r\n\r\nSECRET"
);
response_case!(
    response_missing_status,
    b"HTTP/1.1 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: 6\r\n\r\nSECRET"
);
response_case!(
    response_not_http,
    b"XTTP/1.1 200 OK\r\nX-Upstream-Marker: 1\r\nContent-Length: 6\r\n\r\nSECRET"
);

#[test]
fn response_with_bad_chunk_size_is_never_relayed_as_complete() {
    // The defect sits in the body, possibly after the gateway already sent the head: either a 502 or
    // an aborted response, never a complete-looking one.
    let up = Upstream::fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n+6\r\nSECRET\r\n0\r\n\r\n",
    );
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .unwrap();
    let r = c.read_response().expect("some response head");
    if r.status == 502 {
        r.assert_json_error(502);
    } else {
        assert!(
            !r.complete,
            "malformed chunked response relayed as complete: {r:?}"
        );
        assert!(c.probe_closed(Duration::from_secs(2)));
    }
    assert!(!contains(&r.body, b"SECRET"));
}

// --- Client-side timeouts ---------------------------------------------------------------------------

fn timeouts_gateway(up: &Upstream, timeouts: &str) -> Gateway {
    Gateway::start(&basic_config(
        up,
        &format!("[server.timeouts]\n{timeouts}"),
        "",
    ))
}

/// Accepts a close with no response or after a 408.
fn assert_no_response_or_408(c: &Conn) {
    let left = String::from_utf8_lossy(c.leftover()).into_owned();
    assert!(
        left.is_empty() || left.starts_with("HTTP/1.1 408"),
        "unexpected response: {left:?}"
    );
}

#[test]
fn slowloris_head_is_cut_off_by_client_header_timeout() {
    let up = Upstream::echo("a");
    let gw = timeouts_gateway(&up, "client_header = \"1s\"");
    let mut c = Conn::connect(gw.addr());
    let head = format!(
        "GET / HTTP/1.1\r\nHost: test.local\r\nX-Slow: {}",
        "a".repeat(100)
    );
    let start = Instant::now();
    let mut closed_after = None;
    // One byte every 100 ms keeps the connection busy; the deadline is on the whole head.
    for b in head.as_bytes() {
        if c.send(&[*b]).is_err() || c.probe_closed(Duration::from_millis(100)) {
            closed_after = Some(start.elapsed());
            break;
        }
        if start.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let closed_after = closed_after.expect("slowloris connection still open after 6 s");
    assert!(
        closed_after >= Duration::from_millis(800),
        "closed too early: {closed_after:?}"
    );
    assert!(
        closed_after <= Duration::from_secs(3),
        "closed too late: {closed_after:?}"
    );
    assert_no_response_or_408(&c);
    assert_eq!(up.raw_len(), 0);
}

#[test]
fn stalled_body_is_cut_off_by_client_body_timeout() {
    let up = Upstream::echo("a");
    let gw = timeouts_gateway(&up, "client_body = \"1s\"");
    let mut c = Conn::connect(gw.addr());
    c.send(b"POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 10\r\n\r\nhello")
        .unwrap();
    let start = Instant::now();
    assert!(c.probe_closed(Duration::from_secs(5)) || c.probe_closed(Duration::from_secs(1)));
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(800) && t <= Duration::from_secs(4),
        "closed after {t:?}"
    );
    if !c.leftover().is_empty() {
        let s = String::from_utf8_lossy(c.leftover()).into_owned();
        assert!(
            s.starts_with("HTTP/1.1 408") || s.starts_with("HTTP/1.1 400"),
            "{s:?}"
        );
    }
    settle();
    assert!(up.complete_requests().is_empty());
}

/// After a 408 the gateway half-closes and keeps reading what the client still sends (a lingering
/// close), as after a 400 or 413: closing with unread input would reset the connection, and a reset
/// can destroy the answer before the client read it. The timed-out read used to keep the buffer the
/// linger needs, so the gateway closed at once.
#[test]
fn a_408_lingers_while_the_client_is_still_sending() {
    let up = Upstream::echo("a");
    let gw = timeouts_gateway(&up, "client_body = \"500ms\"");
    let mut c = Conn::connect(gw.addr());
    c.send(b"POST / HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1000000\r\n\r\nhello")
        .unwrap();
    let head = c.read_head().expect("the 408");
    assert_eq!(head.status, 408);
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        if let Err(e) = c.send(&[b'x'; 1024]) {
            panic!("write {i} after the 408 failed (no lingering close): {e}");
        }
    }
}

#[test]
fn idle_keep_alive_connection_is_closed_after_keepalive_timeout() {
    let up = Upstream::echo("a");
    let gw = timeouts_gateway(&up, "keepalive = \"1s\"");
    let mut c = Conn::connect(gw.addr());
    assert_eq!(c.get(HOST, "/").status, 200);
    let start = Instant::now();
    assert!(
        c.probe_closed(Duration::from_secs(4)),
        "idle connection not closed"
    );
    let t = start.elapsed();
    assert!(t >= Duration::from_millis(800), "closed too early: {t:?}");
    assert!(
        c.leftover().is_empty(),
        "an idle close must not send a response"
    );
}

#[test]
fn an_idle_connection_that_never_sends_is_closed() {
    // The first request on a connection is bounded too (by keepalive or client_header).
    let up = Upstream::echo("a");
    let gw = timeouts_gateway(&up, "keepalive = \"1s\"\nclient_header = \"1s\"");
    let mut c = Conn::connect(gw.addr());
    assert!(c.probe_closed(Duration::from_secs(4)));
}
