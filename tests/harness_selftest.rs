//! Self-tests of the test harness, independent of the gateway: the upstream servers are exercised
//! directly with the raw client (and the client's reader against those upstreams). If these fail,
//! every gateway test result is meaningless; they must pass before the engine exists.

mod common;

use common::gateway::{is_event, kv};
use common::ws;
use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn echo_keeps_alive_and_records_requests_and_bodies() {
    let up = Upstream::echo("a");
    let mut c = Conn::connect(up.addr());
    let r = c.get("h.example", "/x/y?q=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("a"));
    assert_eq!(r.header("x-echo-path"), Some("/x/y?q=1"));
    assert!(
        r.body_str().contains("\"path\":\"/x/y\""),
        "{}",
        r.body_str()
    );
    assert!(
        r.body_str().contains("\"query\":\"q=1\""),
        "{}",
        r.body_str()
    );
    assert!(
        r.body_str().contains("\"host\":\"h.example\""),
        "{}",
        r.body_str()
    );

    let r = c.request(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(r.status, 200);
    assert!(r.body_str().contains("\"body_len\":5"));
    let r = c.request(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nT: v\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body_str().contains("\"body_len\":5"));

    assert_eq!(up.connections(), 1);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path(), "/x/y");
    assert_eq!(reqs[0].query(), Some("q=1"));
    assert_eq!(reqs[0].header("HOST"), Some("h.example"));
    assert_eq!(reqs[1].body, b"hello");
    assert!(reqs[2].chunked && reqs[2].complete);
    assert_eq!(reqs[2].body, b"abcde");
    assert!(up.raw_contains(b"2;ext=1\r\nde\r\n"));
}

#[test]
fn raw_bytes_are_recorded_exactly() {
    let up = Upstream::start(Behaviour::Hang);
    let bytes = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\ngarbage\x00\x01";
    let mut s = TcpStream::connect(up.addr()).unwrap();
    s.write_all(bytes).unwrap();
    assert!(up.wait_for(Duration::from_secs(5), |r| {
        r.raw.concat().len() == bytes.len() && r.requests.len() == 1
    }));
    assert_eq!(up.raw_all(), bytes.to_vec());
    assert_eq!(
        up.request_count(),
        1,
        "the head is recorded even though Hang never answers"
    );
    assert_eq!(up.raw_len(), bytes.len());
}

#[test]
fn hang_never_answers() {
    let up = Upstream::start(Behaviour::Hang);
    let mut c = Conn::connect(up.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    let got = c.read_available(Duration::from_millis(700));
    assert!(got.is_empty(), "hang upstream answered: {got:?}");
    assert!(!c.probe_closed(Duration::from_millis(100)));
}

#[test]
fn echo_head_has_no_body_and_connection_stays_in_sync() {
    let up = Upstream::echo("a");
    let mut c = Conn::connect(up.addr());
    let r = c.request(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(r.header("content-length").unwrap().parse::<u64>().unwrap() > 0);
    let r = c.get("h", "/after");
    assert_eq!(r.header("x-echo-path"), Some("/after"));
}

#[test]
fn echo_answers_expect_100_continue_before_the_body() {
    let up = Upstream::echo("a");
    let mut c = Conn::connect(up.addr());
    c.send(b"POST /e HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let interim = c.read_available(Duration::from_millis(500));
    assert!(
        interim.starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{interim:?}"
    );
    c.send(b"body").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last_request().body, b"body");
}

#[test]
fn reader_skips_interim_responses() {
    let up = Upstream::fixed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let r = get(up.addr(), "h", "/");
    assert_eq!(r.interim, vec![103]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"ok");
}

#[test]
fn fixed_responses_chunked_and_close_delimited() {
    let up = Upstream::fixed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\n");
    let mut c = Conn::connect(up.addr());
    for _ in 0..2 {
        let r = c.get("h", "/");
        assert!(r.complete && r.chunked);
        assert_eq!(r.body, b"hello world");
    }

    let up = Upstream::start(Behaviour::FixedThenClose(
        b"HTTP/1.1 200 OK\r\n\r\nclose delimited".to_vec(),
    ));
    let r = send_raw(up.addr(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(r.complete);
    assert!(r.closed);
    assert_eq!(r.body, b"close delimited");
}

#[test]
fn reset_mid_body_gives_an_incomplete_response() {
    for chunked in [false, true] {
        let up = Upstream::start(Behaviour::ResetMidBody { chunked });
        let mut c = Conn::connect(up.addr());
        let r = c.get("h", "/");
        assert_eq!(r.status, 200);
        assert!(!r.complete, "chunked={chunked}: {:?}", r.body_error);
        assert!(!r.body.is_empty());
        if !chunked {
            assert!(r.body.len() < 100000);
        }
        assert!(
            r.body_error.as_deref().unwrap_or("").contains("reset")
                || r.body_error.as_deref().unwrap_or("").contains("EOF"),
            "{:?}",
            r.body_error
        );
        assert!(c.probe_closed(Duration::from_secs(1)));
    }
}

#[test]
fn close_after_each_response_closes_without_announcing_it() {
    let up = Upstream::start(Behaviour::CloseAfterEachResponse);
    let r = send_raw(up.addr(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.header("connection").is_none());
    assert!(r.closed);
}

#[test]
fn answer_first_only_drops_the_second_request() {
    let up = Upstream::start(Behaviour::AnswerFirstOnly);
    let mut c = Conn::connect(up.addr());
    assert_eq!(c.get("h", "/1").status, 200);
    c.send(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert!(c.read_response().is_err());
    assert!(c.probe_closed(Duration::from_secs(1)));
    assert_eq!(up.request_count(), 2);
    // A fresh connection is answered again.
    assert_eq!(get(up.addr(), "h", "/3").status, 200);
}

#[test]
fn stream_sends_the_pattern_with_both_framings() {
    for chunked in [false, true] {
        let len = 1_000_003u64;
        let up = Upstream::start(Behaviour::Stream { len, chunked });
        let mut c = Conn::connect(up.addr());
        let r = c.get("h", "/");
        assert!(r.complete);
        assert_eq!(r.chunked, chunked);
        assert_eq!(r.body.len() as u64, len);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern_byte(i as u64)));
        // Keep-alive afterwards.
        assert_eq!(c.get("h", "/").body.len() as u64, len);
    }
}

#[test]
fn websocket_echo_upstream() {
    assert_eq!(
        ws::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    assert_eq!(ws::base64(b"f"), "Zg==");
    assert_eq!(ws::base64(b"fo"), "Zm8=");
    assert_eq!(ws::base64(b"foo"), "Zm9v");

    let up = Upstream::start(Behaviour::WebSocketEcho);
    let mut s = TcpStream::connect(up.addr()).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let head = read_until_blank_line(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
    let f = ws::read_frame(&mut s).unwrap();
    assert_eq!(
        (f.opcode, f.masked, f.payload.as_slice()),
        (ws::OP_TEXT, false, &b"hello from upstream"[..])
    );
    let big = vec![7u8; 70_000];
    for (op, payload) in [(ws::OP_TEXT, b"one".to_vec()), (ws::OP_BINARY, big.clone())] {
        ws::write_frame(&mut s, op, &payload, Some([1, 2, 3, 4])).unwrap();
        let f = ws::read_frame(&mut s).unwrap();
        assert_eq!((f.opcode, f.masked), (op, false));
        assert_eq!(f.payload, payload);
    }
    ws::write_frame(&mut s, ws::OP_CLOSE, &[3, 232], Some([9, 9, 9, 9])).unwrap();
    assert_eq!(ws::read_frame(&mut s).unwrap().opcode, ws::OP_CLOSE);
    assert!(
        ws::read_frame(&mut s).is_err(),
        "connection should be closed"
    );
    let frames = up.ws_frames();
    assert_eq!(frames.len(), 3);
    assert!(frames.iter().all(|f| f.masked));
    assert_eq!(frames[1].payload, big);
}

fn read_until_blank_line(s: &mut TcpStream) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\r\n\r\n") && out.len() < 65536 {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn refusing_and_blackhole_addresses() {
    let a = refusing_addr();
    let e = TcpStream::connect_timeout(&a, Duration::from_secs(2)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    let bh = blackhole();
    let t = Instant::now();
    let r = TcpStream::connect_timeout(&bh.addr, Duration::from_millis(500));
    assert!(r.is_err(), "connect to a full accept queue should hang");
    assert!(t.elapsed() >= Duration::from_millis(400));
}

#[test]
fn upstream_drop_unblocks_and_closes_connections() {
    let up = Upstream::start(Behaviour::Hang);
    let mut c = Conn::connect(up.addr());
    c.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    let t = Instant::now();
    drop(up);
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(c.probe_closed(Duration::from_secs(2)));
}

#[test]
fn send_raw_reports_open_connections_as_open() {
    let up = Upstream::echo("a");
    let r = send_raw(up.addr(), b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(!r.closed);
    let r = send_raw(
        up.addr(),
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert!(r.closed);
}

#[test]
fn log_line_parsing() {
    let l = "2026-01-01T00:00:00.123Z INFO listening addr=127.0.0.1:4567";
    assert!(is_event(l, "listening"));
    assert_eq!(kv(l, "addr"), Some("127.0.0.1:4567"));
    assert!(is_event(
        "2026-01-01T00:00:00Z INFO ready workers=2",
        "ready"
    ));
    assert!(!is_event("2026-01-01T00:00:00Z INFO not ready", "ready"));
}

#[test]
fn gateway_start_reports_a_bad_config_instead_of_hanging() {
    let t = Instant::now();
    let r = Gateway::try_start("this is [not valid toml", &[]);
    assert!(r.is_err());
    assert!(t.elapsed() < Duration::from_secs(15));
}

#[test]
fn raise_nofile_raises_the_soft_limit() {
    let n = raise_nofile(4096);
    assert!(n >= 1024, "{n}");
}
