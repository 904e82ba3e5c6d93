//! The `compression` plugin end to end over real sockets: gzip for a client that takes it (every
//! upstream framing: a length, read whole or streamed, chunks, up to the close; curl
//! `--compressed`; not HTTP/1.0 clients), the head rewritten as nginx's gzip does (no ranges, a
//! weak ETag, `Vary`; a length only when compressed whole), and every case it must leave alone.

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
    gateway_with(up, config, "")
}

/// `gateway` with `extra` appended (more plugins).
fn gateway_with(up: &Upstream, config: &str, extra: &str) -> Gateway {
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

{extra}
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
    // It fits the gateway's buffer: read whole, compressed, sent with its new length.
    assert!(r.complete && !r.chunked, "{r:?}");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert!(!r.has_header("accept-ranges"), "{r:?}");
    assert!(
        r.body.len() * 5 < body.len(),
        "{} of {}",
        r.body.len(),
        body.len()
    );
    assert_eq!(gunzip(&r.body), body.as_bytes());
    // The upstream connection went back to the pool: the next request reuses it.
    let again = c.request(
        format!("GET /doc HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n").as_bytes(),
    );
    assert_eq!(gunzip(&again.body), body.as_bytes());
    assert_eq!(
        up.connections(),
        1,
        "the upstream connection was not reused"
    );
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

/// Chunked and close-delimited upstream bodies; an HTTP/1.0 client is not compressed (nginx's
/// `gzip_http_version 1.1`).
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
    let r = send_raw(
        gw.addr(),
        format!("GET /doc HTTP/1.0\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n").as_bytes(),
    );
    assert!(!r.has_header("content-encoding"), "{r:?}");
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.body, body.as_bytes());
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
/// (206), `no-transform`; an upstream's `Content-Encoding: identity` is replaced, not kept beside
/// gzip; and an error status is compressed like any other.
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
        (
            "Content-Type: application/json\r\nContent-Encoding: identity",
            true,
        ),
    ];
    for (extra, compressed) in cases {
        let status = if compressed {
            "422 Unprocessable Content"
        } else {
            "200 OK"
        };
        let up = Upstream::start(fixed(
            &format!(
                "HTTP/1.1 {status}\r\n{extra}\r\nContent-Length: {}",
                body.len()
            ),
            &body,
        ));
        let gw = gateway(&up, "");
        let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
        if compressed {
            assert_eq!(r.status, 422);
            assert_eq!(r.header_all("content-encoding"), ["gzip"], "{extra}: {r:?}");
            assert_eq!(gunzip(&r.body), body.as_bytes(), "{extra}");
        } else {
            assert_ne!(r.header("content-encoding"), Some("gzip"), "{extra}: {r:?}");
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

/// A body the response-transformer edits as JSON is compressed whole: a length, not chunks.
#[test]
fn an_edited_json_body_is_compressed_whole() {
    let body = format!("{{\"secret\":\"s3cr3t\",\"items\":{}}}", json(8_000));
    let up = Upstream::start(fixed(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nETag: \"e\"",
            body.len()
        ),
        &body,
    ));
    let gw = gateway_with(
        &up,
        "",
        "[[plugins]]\nname = \"response-transformer\"\nconfig = { remove = { json = [\"secret\"] } }\n",
    );
    let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"), "{r:?}");
    assert!(!r.chunked);
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let plain = String::from_utf8(gunzip(&r.body)).expect("utf-8");
    assert!(
        !plain.contains("s3cr3t") && plain.contains("\"items\""),
        "{plain:.80}"
    );
    assert_eq!(r.header("etag"), Some("W/\"e\""));
}

/// A body that arrives after its head, in pieces, decodes whole, both one read whole (it fits
/// the buffer: sent with a length) and one streamed (larger: chunks). Cut off midway, the first
/// is a 502 (nothing was sent yet) and the second never looks complete: no last chunk, and the
/// connection closes.
#[test]
fn late_bodies_and_a_cut_off_one() {
    for (size, streamed) in [(20_000, false), (100_000, true)] {
        let body = json(size);
        let (a, b) = body.split_at(10_000);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let up = Upstream::start(Behaviour::Split {
            first: format!("{head}{a}").into_bytes(),
            gap: std::time::Duration::from_millis(150),
            then: Some(b.as_bytes().to_vec()),
        });
        let gw = gateway(&up, "");
        let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
        assert!(r.complete && r.chunked == streamed, "{size}: {r:?}");
        assert_eq!(gunzip(&r.body), body.as_bytes());
        drop(gw);
        if !streamed {
            let up = Upstream::start(Behaviour::Split {
                first: format!("{head}{a}").into_bytes(),
                gap: std::time::Duration::from_millis(150),
                then: None,
            });
            let gw = gateway(&up, "");
            let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
            assert_eq!(r.status, 502, "{r:?}");
        }
    }

    let body = json(100_000);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let a = &body[..10_000];
    let up = Upstream::start(Behaviour::Split {
        first: format!("{head}{a}").into_bytes(),
        gap: std::time::Duration::from_millis(150),
        then: None,
    });
    let gw = gateway(&up, "");
    let mut c = Conn::connect(gw.addr());
    c.send(
        format!("GET /doc HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n").as_bytes(),
    )
    .expect("send");
    let r = c.read_response().expect("a head");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert!(
        !r.complete,
        "a cut-off body must not end with the last chunk: {r:?}"
    );
    assert!(c.probe_closed(std::time::Duration::from_secs(2)));
}

/// More whole bodies than a worker may stream at once, then a streamed one: whole bodies give
/// their compressor back (a leak would leave the streamed one uncompressed); a whole body that
/// stalls past the read timeout is a 504.
#[test]
fn whole_bodies_return_their_compressor_and_a_stalled_one_is_a_504() {
    let small = json(4_000);
    let big = json(100_000);
    let small_up = Upstream::start(fixed(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}",
            small.len()
        ),
        &small,
    ));
    let big_up = Upstream::start(fixed(
        &format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}",
            big.len()
        ),
        &big,
    ));
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n[[services]]\nname = \"small\"\nurl = \"{}\"\n\n[[services]]\nname = \"big\"\nurl = \"{}\"\n\n[[routes]]\nname = \"small\"\nservice = \"small\"\npaths = [\"/small\"]\n\n[[routes]]\nname = \"big\"\nservice = \"big\"\npaths = [\"/big\"]\n\n[[plugins]]\nname = \"compression\"\n",
        small_up.url(),
        big_up.url()
    );
    let gw = Gateway::start(&text);
    let mut c = Conn::connect(gw.addr());
    for _ in 0..80 {
        let r = c.request(
            format!("GET /small HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.header("content-encoding"), Some("gzip"));
    }
    let r = c.request(
        format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\nAccept-Encoding: gzip\r\n\r\n").as_bytes(),
    );
    assert!(r.chunked, "{r:?}");
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "the pool lost count"
    );
    assert_eq!(gunzip(&r.body), big.as_bytes());
    drop(gw);

    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        small.len()
    );
    let stalled = Upstream::start(Behaviour::Split {
        first: format!("{head}{}", &small[..1_000]).into_bytes(),
        gap: std::time::Duration::from_secs(3),
        then: Some(small.as_bytes()[1_000..].to_vec()),
    });
    let gw = gateway_with(
        &stalled,
        "",
        "[server.timeouts]\nupstream_read = \"300ms\"\n",
    );
    let r = get_with(&gw, "Accept-Encoding: gzip\r\n");
    assert_eq!(r.status, 504, "{r:?}");
}
