//! The `compression` plugin end to end over real sockets: gzip for a client that takes it (every
//! upstream framing: a length, chunks, up to the close; HTTP/1.1 and 1.0 clients; curl
//! `--compressed`), the head rewritten as nginx's gzip does (no length or ranges, a weak ETag,
//! `Vary`), and every case it must leave alone.

mod common;

use common::*;
use std::io::Read;

/// A JSON document of about `n` bytes that compresses well, as API answers do.
fn json(n: usize) -> String {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user {i}\",\"active\":true}},"
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("not gzip ({} bytes): {e}", bytes.len()));
    out
}

/// One route to `up` with a `compression` plugin of `config`.
fn gateway(up: &Upstream, config: &str) -> Gateway {
    Gateway::start(&format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[[services]]
name = "svc"
url = "{}"

[[routes]]
name = "r"
service = "svc"
paths = ["/"]

[[plugins]]
name = "compression"
config = {{ {config} }}
"#,
        up.url()
    ))
}

fn fixed(head: &str, body: &str) -> Behaviour {
    Behaviour::Fixed(format!("{head}\r\n\r\n{body}").into_bytes())
}

fn get_with(gw: &Gateway, headers: &str) -> RawResponse {
    let mut c = Conn::connect(gw.addr());
    c.request(format!("GET /doc HTTP/1.1\r\nHost: {HOST}\r\n{headers}\r\n").as_bytes())
}

#[test]
fn a_json_answer_is_gzipped_for_a_client_that_takes_it() {
    let body = json(20_000);
    let up = Upstream::start(fixed(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nETag: \"v1\"\r\nAccept-Ranges: bytes",
            body.len()
        ),
        &body,
    ));
    let gw = gateway(&up, "");
    let mut c = Conn::connect(gw.addr());
    let r = c.request(
        format!(
            "GET /doc HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: br;q=1.0, gzip;q=0.8\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.complete && r.chunked, "{r:?}");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert!(
        !r.has_header("content-length") && !r.has_header("accept-ranges"),
        "{r:?}"
    );
    assert!(
        r.body.len() * 5 < body.len(),
        "{} of {}",
        r.body.len(),
        body.len()
    );
    assert_eq!(gunzip(&r.body), body.as_bytes());
    // The same connection goes on; a client without gzip gets the upstream's bytes and head.
    let r = c.request(format!("GET /doc HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body.as_bytes());
    assert_eq!(
        r.header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert!(!r.has_header("content-encoding"));
    let r = c.request(
        format!("GET /doc HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip;q=0, identity\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.body, body.as_bytes());
}

/// Chunked and close-delimited upstream bodies, and an HTTP/1.0 client (close-delimited gzip).
#[test]
fn every_upstream_framing_and_an_http10_client() {
    let body = json(70_000);
    let mut chunked = String::new();
    for piece in body.as_bytes().chunks(7_000) {
        chunked.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            String::from_utf8_lossy(piece)
        ));
    }
    chunked.push_str("0\r\n\r\n");
    let up = Upstream::start(fixed(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked",
        &chunked,
    ));
    let gw = gateway(&up, "content_types = [\"text/*\"]");
    let mut c = Conn::connect(gw.addr());
    for _ in 0..2 {
        let r = c.request(
            format!("GET /doc HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
        assert_eq!(gunzip(&r.body), body.as_bytes());
    }
    // HTTP/1.0: no chunks, the close ends the gzip stream.
    let r = send_raw(
        gw.addr(),
        format!("GET /doc HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n").as_bytes(),
    );
    assert!(r.closed && !r.chunked, "{r:?}");
    assert_eq!(gunzip(&r.body), body.as_bytes());
    drop(gw);

    let up = Upstream::start(Behaviour::FixedThenClose(
        format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n{body}")
            .into_bytes(),
    ));
    let gw = gateway(&up, "");
    let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
    assert!(r.complete);
    assert_eq!(gunzip(&r.body), body.as_bytes());
}

/// What is left alone: a HEAD, a small body, another media type, a body already encoded, a part
/// (206), `no-transform`, and an error body of a listed type is compressed like any other.
#[test]
fn what_is_left_alone() {
    let body = json(4_000);
    let cases = [
        ("Content-Type: image/png", false),
        (
            "Content-Type: application/json\r\nContent-Encoding: br",
            false,
        ),
        (
            "Content-Type: application/json\r\nCache-Control: public, no-transform",
            false,
        ),
        (
            "Content-Type: application/json\r\nCache-Control: max-age=60",
            true,
        ),
        ("Content-Type: application/problem+json", true),
    ];
    for (extra, compressed) in cases {
        let up = Upstream::start(fixed(
            &format!(
                "HTTP/1.1 200 OK\r\n{extra}\r\nContent-Length: {}",
                body.len()
            ),
            &body,
        ));
        let gw = gateway(&up, "");
        let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
        assert_eq!(
            r.has_header("content-encoding") && r.header("content-encoding") == Some("gzip"),
            compressed,
            "{extra}: {r:?}"
        );
        if !compressed {
            assert_eq!(r.body, body.as_bytes(), "{extra}");
        }
    }
    // Below min_length; a HEAD; a 206.
    let up = Upstream::start(fixed(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        ),
        &body,
    ));
    let gw = gateway(&up, "min_length = 5000");
    let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
    assert!(
        !r.has_header("content-encoding") && !r.has_header("vary"),
        "{r:?}"
    );
    drop(gw);
    let gw = gateway(&up, "");
    let mut c = Conn::connect(gw.addr());
    let r = c.request(
        format!("HEAD /doc HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n").as_bytes(),
    );
    assert!(!r.has_header("content-encoding"), "{r:?}");
    drop(gw);
    let up = Upstream::start(fixed(
        "HTTP/1.1 206 Partial Content\r\nContent-Type: application/json\r\nContent-Range: bytes 0-1999/4000\r\nContent-Length: 2000",
        &body[..2000],
    ));
    let gw = gateway(&up, "min_length = 0");
    let r = get_with(&gw, "Accept-Encoding: gzip\r\nRange: bytes=0-1999\r\n");
    assert_eq!(r.status, 206);
    assert!(!r.has_header("content-encoding"), "{r:?}");
    assert_eq!(r.body, &body.as_bytes()[..2000]);
}

/// curl, as a user would: `--compressed` asks for gzip and decodes it.
#[test]
fn curl_compressed() {
    if common::tool_missing("curl", &["--version"], "apt-get install curl") {
        return;
    }
    let body = json(50_000);
    let up = Upstream::start(fixed(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}",
            body.len()
        ),
        &body,
    ));
    let gw = gateway(&up, "level = 6");
    let url = format!("http://{}/doc", gw.addr());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--compressed",
            "-o",
            "-",
            "-D",
            "/dev/stderr",
            "--max-time",
            "10",
            &url,
        ])
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, body.as_bytes());
    let head = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
}
