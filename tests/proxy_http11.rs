//! HTTP/1.1 proxying on both sides: keep-alive, pipelining, streaming bodies in every framing,
//! `Expect: 100-continue`, bodiless responses (HEAD, 1xx, 204, 304), hop-by-hop header removal in both
//! directions, X-Forwarded-* and the Host header per `preserve_host`.
//!
//! What the gateway forwarded is asserted at the upstream, from the bytes it received.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn keep_alive_on_both_sides() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    for i in 0..10 {
        let r = c.get(HOST, &format!("/k/{i}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-echo-path"), Some(format!("/k/{i}").as_str()));
        assert!(r.complete);
    }
    assert!(
        !c.probe_closed(Duration::from_millis(200)),
        "client connection closed"
    );
    assert_eq!(up.request_count(), 10);
    assert_eq!(
        up.connections(),
        1,
        "upstream connection not reused from the pool"
    );
}

#[test]
fn keepalive_zero_says_connection_close_and_closes() {
    // keepalive = "0s" turns keep-alive off: every response must say so, or a client reusing the
    // connection finds it closed under its next request.
    let up = Upstream::echo("a");
    let gw = Gateway::start(&basic_config(&up, "timeouts = { keepalive = \"0s\" }", ""));
    let r = send_raw(gw.addr(), b"GET /one HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(r.closed);
    // Gateway-made answers too (a 502 otherwise keeps the client connection).
    let dead = refusing_addr();
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\ntimeouts = {{ keepalive = \"0s\" }}\n\n[[services]]\nname = \"svc\"\nurl = \"http://{dead}\"\n\n[[routes]]\nname = \"all\"\nservice = \"svc\"\npaths = [\"/\"]\n"
    ));
    let r = send_raw(gw.addr(), b"GET /x HTTP/1.1\r\nHost: test.local\r\n\r\n");
    r.assert_json_error(502);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(r.closed);
}

#[test]
fn http10_client_without_keep_alive_is_closed_after_the_response() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let r = send_raw(gw.addr(), b"GET /old HTTP/1.0\r\nHost: test.local\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.closed, "HTTP/1.0 without keep-alive must be closed");
    let r = send_raw(
        gw.addr(),
        b"GET /c HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(r.closed, "Connection: close must be honoured");
}

/// An HTTP/1.0 keep-alive client is told `Connection: keep-alive` on the gateway's own answers too
/// (404, a plugin's 401): without it, it closes or waits for the gateway to close (ab -k does).
#[test]
fn http10_keep_alive_clients_hear_keep_alive_on_the_gateways_answers() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&basic_config(&up, "", "").replace(
        "strip_path = false",
        "strip_path = false\n\n[[plugins]]\nname = \"key-auth\"\nroute = \"all\"",
    ));
    let mut c = Conn::connect(gw.addr());
    for (path, status) in [("/anything", 401), ("/again", 401)] {
        let r = c.request(
            format!("GET {path} HTTP/1.0\r\nHost: test.local\r\nConnection: keep-alive\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, status);
        assert_eq!(
            r.header("connection"),
            Some("keep-alive"),
            "{:?}",
            r.headers
        );
    }
    let r = c.request(b"GET /nope HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("connection"), Some("keep-alive"));
}

#[test]
fn a_parked_idle_connection_wakes_for_its_next_requests() {
    // Idle past the gateway's park threshold (500 ms), the connection drops its buffers and waits
    // for readability; what the client sends next (here a pipelined pair with a body) is served in
    // order on the same connection, and parking again works just as well.
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    assert_eq!(c.get(HOST, "/first").status, 200);
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(800));
        c.send(
            format!(
                "POST /r{round}/a HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi\
                 GET /r{round}/b HTTP/1.1\r\nHost: test.local\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        for path in ["a", "b"] {
            let r = c.read_response().expect("response after parking");
            assert_eq!(r.status, 200);
            assert_eq!(
                r.header("x-echo-path"),
                Some(format!("/r{round}/{path}").as_str())
            );
        }
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(reqs[1].body, b"hi");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    let mut batch = Vec::new();
    for i in 0..5 {
        batch.extend_from_slice(
            format!("GET /p/{i} HTTP/1.1\r\nHost: test.local\r\n\r\n").as_bytes(),
        );
    }
    // A body-carrying request inside the pipeline too.
    batch.extend_from_slice(
        b"POST /p/5 HTTP/1.1\r\nHost: test.local\r\nContent-Length: 3\r\n\r\nabc",
    );
    batch.extend_from_slice(b"GET /p/6 HTTP/1.1\r\nHost: test.local\r\n\r\n");
    c.send(&batch).unwrap();
    for i in 0..7 {
        let r = c
            .read_response()
            .unwrap_or_else(|e| panic!("response {i}: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-echo-path"),
            Some(format!("/p/{i}").as_str()),
            "out of order at {i}"
        );
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 7);
    assert_eq!(reqs[5].body, b"abc");
}

#[test]
fn request_body_with_content_length_streams_to_upstream() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&basic_config(&up, "max_body_bytes = \"16m\"", ""));
    let body: Vec<u8> = (0..4 * 1024 * 1024u64).map(pattern_byte).collect();
    let mut c = Conn::connect(gw.addr());
    let mut req = format!(
        "PUT /upload HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let r = c.request(&req);
    assert_eq!(r.status, 200);
    let got = up.last_request();
    assert!(got.complete);
    assert_eq!(got.body.len(), body.len());
    assert!(got.body == body, "request body corrupted in transit");
}

#[test]
fn chunked_request_body_reaches_upstream_intact() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    c.send(b"POST /chunked HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    // Sent in pieces with pauses, so a gateway that waits for the whole body before connecting still
    // works but one that mis-frames partial reads would show.
    for part in [
        &b"5\r\nhello\r\n"[..],
        b"1;name=value\r\n \r\n",
        b"5\r\nworld\r\n",
        b"0\r\n\r\n",
    ] {
        c.send(part).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    let got = up.last_request();
    assert!(got.complete);
    assert_eq!(got.body, b"hello world");
    // The upstream must get a framed body it can delimit: re-chunked or a Content-Length, not both.
    assert!(
        got.chunked ^ got.has_header("content-length"),
        "{:?}",
        got.headers
    );
    // Keep-alive still in sync afterwards.
    assert_eq!(c.get(HOST, "/next").header("x-echo-path"), Some("/next"));
}

#[test]
fn response_body_with_content_length_is_relayed() {
    let up = Upstream::start(Behaviour::Stream {
        len: 300_000,
        chunked: false,
    });
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    for _ in 0..2 {
        let r = c.get(HOST, "/");
        assert_eq!(r.status, 200);
        assert!(r.complete);
        assert_eq!(r.body.len(), 300_000);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)));
    }
}

/// A connection that closes after its response (`Connection: close`) while the client has
/// already sent its next request: closing with that input unread would send a reset, and the
/// client's kernel drops the unread end of the response (a review cut a 4 MiB body at 2.4 MB).
/// The gateway lingers instead: every byte, then EOF.
#[test]
fn closing_after_a_response_with_input_pending_loses_nothing() {
    const LEN: u64 = 4 * 1024 * 1024;
    let up = Upstream::start(Behaviour::Stream {
        len: LEN,
        chunked: false,
    });
    let gw = gateway_for(&up);
    // A small receive buffer, so most of the body is still in the gateway's send queue when it
    // finishes and closes.
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    sock.connect(&gw.addr().into()).expect("connect");
    let mut s: std::net::TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(
        format!("GET /big HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("write");
    std::thread::sleep(Duration::from_millis(50));
    // The next request, which the gateway never reads (it said close).
    let _ = s.write_all(format!("GET /next HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("after {} bytes: {e}", got.len()),
        }
    }
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        (got.len() - head_end) as u64,
        LEN,
        "the whole body, then EOF"
    );
}

#[test]
fn chunked_response_is_relayed() {
    let up = Upstream::fixed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    for _ in 0..3 {
        let r = c.get(HOST, "/");
        assert_eq!(r.status, 200);
        assert!(r.complete, "{:?}", r.body_error);
        assert_eq!(r.body, b"hello world");
    }
}

#[test]
fn close_delimited_response_is_relayed_completely() {
    let up = Upstream::start(Behaviour::FixedThenClose(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the upstream closes".to_vec(),
    ));
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    let r = c.get(HOST, "/");
    assert_eq!(r.status, 200);
    assert!(r.complete, "{:?}", r.body_error);
    assert_eq!(r.body, b"until the upstream closes");
    // Re-framed as chunked the client connection may stay open; close-delimited it must close.
    if !r.chunked && r.header("content-length").is_none() {
        assert!(c.probe_closed(Duration::from_secs(2)));
    } else {
        let r2 = c.get(HOST, "/again");
        assert_eq!(r2.body, b"until the upstream closes");
    }
}

#[test]
fn expect_100_continue_works() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    c.send(b"POST /e HTTP/1.1\r\nHost: test.local\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    // The client waits for the interim response before sending the body (curl waits 1 s).
    let interim = c.read_available(Duration::from_secs(3));
    assert!(
        interim.starts_with(b"HTTP/1.1 100"),
        "no 100 Continue within 3 s: {:?}",
        String::from_utf8_lossy(&interim)
    );
    c.send(b"hello world").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last_request().body, b"hello world");
}

#[test]
fn head_response_has_no_body_and_keep_alive_stays_in_sync() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    let r = c.request(b"HEAD /h HTTP/1.1\r\nHost: test.local\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    // The representation's length is passed through, but no body bytes follow.
    assert!(
        r.header("content-length").is_some_and(|v| v != "0"),
        "{:?}",
        r.headers
    );
    let r = c.get(HOST, "/after-head");
    assert_eq!(
        r.header("x-echo-path"),
        Some("/after-head"),
        "framing lost after HEAD"
    );
    assert_eq!(up.requests()[0].method, "HEAD");
}

#[test]
fn answers_the_gateway_writes_to_head_carry_no_body() {
    // 404 (no route), 401 (a plugin's answer), 502 (upstream refused): each is the head alone for
    // a HEAD, so the next response on the connection is read where it starts.
    let up = Upstream::echo("a");
    let toml = format!(
        r#"{}
[[services]]
name = "down"
url = "http://{}"

[[routes]]
name = "down"
service = "down"
paths = ["/down"]

[[routes]]
name = "keyed"
service = "svc"
paths = ["/keyed"]

[[plugins]]
name = "key-auth"
route = "keyed"
"#,
        basic_config(&up, "", "").replace(r#"paths = ["/"]"#, r#"paths = ["/ok"]"#),
        refusing_addr()
    );
    let gw = Gateway::start(&toml);
    let mut c = Conn::connect(gw.addr());
    for (path, status) in [("/nope", 404), ("/keyed", 401), ("/down", 502)] {
        let r = c.request(format!("HEAD {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes());
        assert_eq!(r.status, status, "HEAD {path}");
        assert!(
            r.header("content-length").is_some_and(|v| v != "0"),
            "HEAD {path} keeps the GET answer's length: {:?}",
            r.headers
        );
        // What a GET gets instead: the same length, with the body.
        let g = c.get(HOST, path);
        assert_eq!(
            g.status, status,
            "GET {path} after HEAD {path}: framing lost"
        );
        assert_eq!(
            g.header("content-length"),
            r.header("content-length"),
            "{path}"
        );
        assert!(!g.body.is_empty(), "GET {path}");
    }
    let r = c.get(HOST, "/ok");
    assert_eq!(
        r.header("x-echo-path"),
        Some("/ok"),
        "framing lost after HEADs"
    );
    assert!(c.leftover().is_empty(), "extra bytes: {:?}", c.leftover());
    // A HEAD whose head is refused (a bad header line, a long URI, CL + TE) gets the head alone
    // as well, then the close: nothing a client that pipelined after it would read as its next
    // response.
    for (head, status) in [
        "HEAD /ok HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n".to_owned(),
        format!("HEAD /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000)),
        "\r\nHEAD /ok HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
    ]
    .iter()
    .zip([400, 414, 400])
    {
        let mut c = Conn::connect(gw.addr());
        c.send(head.as_bytes()).expect("send");
        let got = c.read_available(std::time::Duration::from_secs(3));
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with(&format!("HTTP/1.1 {status} ")), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "a body after the head: {text:?}");
    }
}

#[test]
fn no_content_and_not_modified_carry_no_body() {
    for resp in [
        &b"HTTP/1.1 204 No Content\r\nX-Kind: 204\r\n\r\n"[..],
        // RFC 9110 §8.6: a 204 never carries Content-Length, even when the upstream sends one.
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 1234\r\n\r\n",
    ] {
        let up = Upstream::fixed(resp);
        let gw = gateway_for(&up);
        let mut c = Conn::connect(gw.addr());
        for _ in 0..3 {
            let r = c.get(HOST, "/");
            assert!(r.status == 204 || r.status == 304);
            assert!(r.body.is_empty());
            let cl = r.header("content-length");
            if r.status == 204 {
                assert_eq!(cl, None, "Content-Length on a 204");
            } else {
                assert_eq!(cl, Some("1234"), "a 304 keeps the representation's length");
            }
            assert!(
                !r.chunked,
                "{} relayed with Transfer-Encoding: chunked",
                r.status
            );
        }
        // Nothing extra followed the bodiless responses on the wire.
        assert!(c.leftover().is_empty(), "extra bytes: {:?}", c.leftover());
        assert_eq!(up.request_count(), 3);
    }
}

#[test]
fn interim_responses_are_not_mistaken_for_the_final_one() {
    let up = Upstream::fixed(
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
    );
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    for _ in 0..2 {
        let r = c.get(HOST, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"final");
    }
    // A long job's `102 Processing` heads (WebDAV keeps the request alive with them) are dropped
    // however many come (more than eight used to be a 502, found by a review).
    let up = Upstream::fixed(
        format!(
            "{}HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
            "HTTP/1.1 102 Processing\r\n\r\n".repeat(40)
        )
        .as_bytes(),
    );
    let gw = gateway_for(&up);
    let r = get(gw.addr(), HOST, "/job");
    assert_eq!((r.status, r.body_str()), (200, "done".to_string()), "{r:?}");
    // Interim responses restart the read timeout; an upstream sending them without end gets a 502
    // after 1,024 instead of holding the request forever.
    let hints = "HTTP/1.1 103 Early Hints\r\n\r\n".repeat(1025);
    let up =
        Upstream::fixed(format!("{hints}HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").as_bytes());
    let gw = gateway_for(&up);
    get(gw.addr(), HOST, "/").assert_json_error(502);
}

/// RFC 9110 §15.2: a proxy forwards 1xx answers. A 103's `Link` reaches the client while the
/// upstream still works (that is what Early Hints are for), without the hop-by-hop fields; a 100
/// the gateway did not ask for is dropped; an HTTP/1.0 client gets none (it would take the 1xx for
/// its answer).
#[test]
fn early_hints_reach_http11_clients_before_the_answer() {
    let up = Upstream::start(Behaviour::Split {
        first: b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n".to_vec(),
        gap: Duration::from_millis(1500),
        then: Some(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal".to_vec()),
    });
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    c.send(b"GET /page HTTP/1.1\r\nHost: test.local\r\n\r\n")
        .expect("send");
    // Well within the upstream's 1.5 s pause, so the answer cannot have come yet.
    let early = c.read_available(Duration::from_millis(500));
    assert_eq!(
        String::from_utf8_lossy(&early),
        "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n",
        "the hints before the answer"
    );
    let r = c.read_response().expect("answer");
    assert_eq!(
        (r.status, r.body_str()),
        (200, "final".to_string()),
        "{r:?}"
    );
    // The connection stays usable.
    let r = c.get(HOST, "/again");
    assert_eq!(
        (r.status, r.interim.clone()),
        (200, vec![103, 102]),
        "{r:?}"
    );

    let mut c = Conn::connect(gw.addr());
    c.send(b"GET /page HTTP/1.0\r\nHost: test.local\r\n\r\n")
        .expect("send");
    let r = c.read_response().expect("answer");
    assert_eq!((r.status, r.interim.clone()), (200, vec![]), "{r:?}");
    assert_eq!(r.body, b"final");
}

/// Each interim head restarts the read timeout: an upstream that sends `102 Processing` every
/// 300 ms keeps a 3 s job alive past `upstream_read = "1s"`; one that goes quiet for longer than
/// the timeout after its last 102 gets the 504.
#[test]
fn interim_heads_restart_the_read_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().take(2).enumerate() {
            let Ok(mut s) = stream else { return };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            for _ in 0..10 {
                std::thread::sleep(Duration::from_millis(300));
                let _ = s.write_all(b"HTTP/1.1 102 Processing\r\n\r\n");
            }
            // The second job goes quiet for 1.5 s after its last 102.
            if i == 1 {
                std::thread::sleep(Duration::from_millis(1500));
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
            );
        }
    });
    let gw = Gateway::start(&format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[server.timeouts]
upstream_read = "1s"

[[services]]
name = "svc"
url = "http://{addr}"

[[routes]]
name = "r"
service = "svc"
paths = ["/"]
"#
    ));
    let r = get(gw.addr(), HOST, "/job");
    assert_eq!((r.status, r.body_str()), (200, "done".to_string()), "{r:?}");
    assert_eq!(r.interim, vec![102; 10], "each 102 forwarded as it came");
    get(gw.addr(), HOST, "/quiet").assert_json_error(504);
}

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let r = send_raw(
        gw.addr(),
        b"GET /hop HTTP/1.1\r\nHost: test.local\r\nConnection: keep-alive, X-Custom-Hop\r\nX-Custom-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-Foo\r\nUpgrade: h2c\r\nProxy-Authorization: Basic cHJveHk6cGFzcw==\r\nX-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-End-To-End: kept\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = up.last_request();
    for h in [
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
        "proxy-authorization",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert!(
            !got.has_header(h),
            "hop-by-hop {h} reached the upstream: {:?}",
            got.headers
        );
    }
    for v in got.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-custom-hop"),
            "client's Connection header forwarded: {v}"
        );
    }
    assert_eq!(got.header("x-end-to-end"), Some("kept"));
}

/// With pooling off (`max_idle = 0`) the gateway closes every upstream connection after its
/// response, and says so (RFC 9112 §9.6, as nginx does); with pooling on it says nothing.
#[test]
fn an_unpooled_upstream_request_says_connection_close() {
    let up = Upstream::echo("a");
    for (pool, want) in [("pool = { max_idle = 0 }", Some("close")), ("", None)] {
        let gw = Gateway::start(&basic_config(&up, pool, ""));
        assert_eq!(get(gw.addr(), HOST, "/c").status, 200);
        assert_eq!(up.last_request().header("connection"), want, "{pool:?}");
    }
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let up = Upstream::fixed(
        b"HTTP/1.1 200 OK\r\nConnection: X-Resp-Hop\r\nX-Resp-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTrailer: X-Foo\r\nUpgrade: h2c\r\nX-End-To-End: kept\r\nContent-Length: 2\r\n\r\nok",
    );
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    let r = c.get(HOST, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
    for h in [
        "x-resp-hop",
        "keep-alive",
        "proxy-connection",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !r.has_header(h),
            "hop-by-hop {h} reached the client: {:?}",
            r.headers
        );
    }
    for v in r.header_all("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-resp-hop"),
            "upstream Connection relayed: {v}"
        );
    }
    assert_eq!(r.header("x-end-to-end"), Some("kept"));
    // The upstream's "Connection: X-Resp-Hop" did not ask to close: the client connection is reusable.
    assert_eq!(c.get(HOST, "/").status, 200);
}

#[test]
fn x_forwarded_headers_are_appended_and_set() {
    let up = Upstream::echo("a");
    let gw = gateway_for(&up);
    let port = gw.port().to_string();

    let r = send_raw(
        gw.addr(),
        b"GET /xf HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = up.last_request();
    assert_eq!(got.header_all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(got.header_all("x-forwarded-host"), vec!["api.example.com"]);
    assert_eq!(got.header_all("x-forwarded-port"), vec![port.as_str()]);
    assert!(
        !got.has_header("x-forwarded-prefix"),
        "nothing was stripped"
    );

    // A client's XFF is appended to; its Proto/Host/Port claims are replaced, not trusted.
    let r = send_raw(
        gw.addr(),
        b"GET /xf HTTP/1.1\r\nHost: api.example.com\r\nX-Forwarded-For: 10.1.2.3, 10.4.5.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Port: 1\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = up.last_request();
    assert_eq!(
        got.header_all("x-forwarded-for"),
        vec!["10.1.2.3, 10.4.5.6, 127.0.0.1"]
    );
    assert_eq!(got.header_all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(got.header_all("x-forwarded-host"), vec!["api.example.com"]);
    assert_eq!(got.header_all("x-forwarded-port"), vec![port.as_str()]);

    // HTTP/1.0 may come without a Host: no X-Forwarded-Host then, and never the client's.
    let r = send_raw(
        gw.addr(),
        b"GET /xf HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert!(!up.last_request().has_header("x-forwarded-host"));
    // A Host that names no host is refused (nginx too), not forwarded.
    let before = up.request_count();
    for host in ["", ":80", "a..b", "a,b"] {
        let r = send_raw(
            gw.addr(),
            format!("GET /xf HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "Host: {host:?}");
    }
    assert_eq!(up.request_count(), before);
}

fn host_config(service: &str, preserve_host: bool) -> String {
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

{service}

[[routes]]
name = "r"
service = "svc"
paths = ["/"]
strip_path = false
preserve_host = {preserve_host}
"#
    )
}

#[test]
fn host_header_per_preserve_host() {
    let up = Upstream::echo("a");
    let url_service = format!("[[services]]\nname = \"svc\"\nurl = \"{}\"", up.url());

    // preserve_host = false with a url service: the url's host:port.
    let gw = Gateway::start(&host_config(&url_service, false));
    send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: client.example\r\n\r\n");
    assert_eq!(
        up.last_request().header_all("host"),
        vec![format!("127.0.0.1:{}", up.port())]
    );
    drop(gw);

    // preserve_host = true: the client's Host, as sent.
    let gw = Gateway::start(&host_config(&url_service, true));
    send_raw(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: client.example:8443\r\n\r\n",
    );
    assert_eq!(
        up.last_request().header_all("host"),
        vec!["client.example:8443"]
    );
    drop(gw);

    // preserve_host = false, upstream entity with host_header.
    let ups = format!(
        "[[upstreams]]\nname = \"pool\"\nhost_header = \"internal.svc\"\ntargets = [{{ target = \"{}\" }}]\n\n[[services]]\nname = \"svc\"\nupstream = \"pool\"",
        up.addr()
    );
    let gw = Gateway::start(&host_config(&ups, false));
    send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: client.example\r\n\r\n");
    assert_eq!(up.last_request().header_all("host"), vec!["internal.svc"]);
    drop(gw);

    // preserve_host = false, upstream entity without host_header: the target's host:port.
    let ups = format!(
        "[[upstreams]]\nname = \"pool\"\ntargets = [{{ target = \"{}\" }}]\n\n[[services]]\nname = \"svc\"\nupstream = \"pool\"",
        up.addr()
    );
    let gw = Gateway::start(&host_config(&ups, false));
    send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: client.example\r\n\r\n");
    assert_eq!(
        up.last_request().header_all("host"),
        vec![up.addr().to_string()]
    );
    drop(gw);
}

#[test]
fn service_path_is_prepended_and_query_preserved() {
    let up = Upstream::echo("a");
    let toml = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[[services]]
name = "svc"
url = "{}/base"

[[routes]]
name = "r"
service = "svc"
paths = ["/api"]
"#,
        up.url()
    );
    let gw = Gateway::start(&toml);
    let r = send_raw(
        gw.addr(),
        b"GET /api/users/7?x=1&y=%20 HTTP/1.1\r\nHost: test.local\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let got = up.last_request();
    assert_eq!(got.target, "/base/users/7?x=1&y=%20");
    assert_eq!(got.header("x-forwarded-prefix"), Some("/api"));
}

/// RFC 9112 §2.2: a stray CRLF after a request (some clients send one after a body) is ignored:
/// the next request on the connection is served, with no unsolicited answer (before: a 408). Blank
/// lines start the `client_header` deadline like any byte (as with nginx), so a client cannot hold
/// a connection open with them; one that runs out on blank lines alone closes silently.
#[test]
fn a_stray_crlf_between_requests_is_ignored() {
    let up = Upstream::echo("a");
    let gw = Gateway::start(&basic_config(
        &up,
        "[server.timeouts]\nclient_header = \"1s\"\nkeepalive = \"10s\"",
        "",
    ));
    let mut c = Conn::connect(gw.addr());
    let r = c.request(b"POST /a HTTP/1.1\r\nHost: test.local\r\nContent-Length: 2\r\n\r\nhi\r\n");
    assert_eq!(r.status, 200);
    std::thread::sleep(Duration::from_millis(300));
    let r = c.get(HOST, "/b");
    assert_eq!(r.status, 200, "the CRLF got an answer of its own");
    assert_eq!(r.header("x-echo-path"), Some("/b"));
    // Blank lines only, for longer than client_header: closed, without a 408.
    c.send(b"\r\n\r\n").expect("send");
    let t = std::time::Instant::now();
    assert!(c.probe_closed(Duration::from_secs(5)), "still open");
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert!(
        c.leftover().is_empty(),
        "{:?}",
        String::from_utf8_lossy(c.leftover())
    );
    // A HEAD whose head never completes: the 408 is a head alone (the timed-out read took the
    // buffer the method was read from).
    let mut c = Conn::connect(gw.addr());
    c.send(b"HEAD /h HTTP/1.1\r\nHost: test.local\r\n")
        .expect("send");
    let got = c.read_available(Duration::from_secs(3));
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "a body after the head: {text:?}"
    );
}
