//! WebSocket upgrade through the gateway: the Upgrade/Connection headers reach the upstream (the one
//! exception to hop-by-hop removal), the 101 reaches the client, and after it bytes are copied both
//! ways until either side closes. Frames are hand-rolled (`common::ws`).

mod common;

use common::ws;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Connects through the gateway and completes the handshake; returns the stream positioned after the
/// 101 head, and the head.
fn handshake(gw: &Gateway) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(
        format!(
            "GET /chat HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let head = read_head(&mut s);
    (s, head)
}

/// Reads one HTTP head, byte by byte so nothing after it (frames, tunnelled bytes) is consumed.
fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => panic!("head ended early: {:?}", String::from_utf8_lossy(&head)),
        }
        assert!(head.len() < 16384, "huge head");
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

#[test]
fn upgrade_and_frames_both_ways() {
    let up = Upstream::start(Behaviour::WebSocketEcho);
    let gw = gateway_for(&up);
    let (mut s, head) = handshake(&gw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{head}"
    );
    assert!(
        header(&head, "connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{head}"
    );
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(ws::accept_key(KEY).as_str())
    );

    // The upstream saw the upgrade request with its Upgrade/Connection headers.
    let req = up.last_request();
    assert_eq!(
        req.header("upgrade")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("websocket")
    );
    assert!(req
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    assert_eq!(req.header("sec-websocket-key"), Some(KEY));

    // Server → client first, unprompted.
    let f = ws::read_frame(&mut s).expect("greeting frame");
    assert_eq!((f.opcode, f.masked), (ws::OP_TEXT, false));
    assert_eq!(f.payload, b"hello from upstream");

    // Client → server masked frames of three length encodings, echoed back unmasked.
    let medium: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let large: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let msgs: Vec<(u8, Vec<u8>)> = vec![
        (ws::OP_TEXT, b"hi".to_vec()),
        (ws::OP_BINARY, medium),
        (ws::OP_BINARY, large),
        (ws::OP_PING, b"p".to_vec()),
    ];
    for (i, (op, payload)) in msgs.iter().enumerate() {
        ws::write_frame(&mut s, *op, payload, Some([0x11, 0x22, 0x33, i as u8])).unwrap();
        let f = ws::read_frame(&mut s).unwrap_or_else(|e| panic!("echo of frame {i}: {e}"));
        let want = if *op == ws::OP_PING { ws::OP_PONG } else { *op };
        assert_eq!((f.opcode, f.masked), (want, false), "frame {i}");
        assert_eq!(&f.payload, payload, "frame {i} payload");
    }

    // Close handshake initiated by the client.
    ws::write_frame(&mut s, ws::OP_CLOSE, &[0x03, 0xe8], Some([1, 2, 3, 4])).unwrap();
    let f = ws::read_frame(&mut s).expect("close echo");
    assert_eq!(f.opcode, ws::OP_CLOSE);
    let mut rest = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert!(
        matches!(s.read(&mut rest), Ok(0) | Err(_)),
        "tunnel not closed after the upstream closed"
    );

    let frames = up.ws_frames();
    assert_eq!(frames.len(), 5);
    assert!(
        frames.iter().all(|f| f.masked),
        "client frames must arrive masked, byte for byte"
    );
    assert_eq!(frames[2].payload.len(), 100_000);
}

/// An upgrade that arrives during a drain (on a connection kept alive across its start) gets a 503
/// and a close, not a tunnel that the drain deadline would cut (found by a review); a plain
/// request on such a connection is still served.
#[test]
fn an_upgrade_during_a_drain_is_refused() {
    // An echo upstream: plain requests get 200, and an upgrade reaching it would be recorded.
    let up = Upstream::echo("up");
    let gw = Gateway::start(&basic_config(&up, "drain_timeout = \"5s\"", ""));
    let mut upgrade = Conn::connect(gw.addr());
    let mut plain = Conn::connect(gw.addr());
    assert_eq!(plain.get(HOST, "/before").status, 200);
    assert_eq!(upgrade.get(HOST, "/before").status, 200);
    gw.sigterm();
    // The worker is draining once its listener refuses new connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(gw.addr()).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "never started draining"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    upgrade
        .send(format!("GET /chat HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes())
        .expect("send");
    let r = upgrade.read_response().expect("an answer");
    r.assert_json_error(503);
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    let r = plain.get(HOST, "/during");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !up.requests().iter().any(|r| r.target == "/chat"),
        "the upgrade never reached the upstream"
    );
}

#[test]
fn upstream_closing_the_tunnel_closes_the_client() {
    let up = Upstream::start(Behaviour::WebSocketEcho);
    let gw = gateway_for(&up);
    let (mut s, head) = handshake(&gw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws::read_frame(&mut s).expect("greeting");
    // "bye" makes the upstream echo it and drop the TCP connection without a close frame.
    ws::write_frame(&mut s, ws::OP_TEXT, b"bye", Some([5, 6, 7, 8])).unwrap();
    assert_eq!(ws::read_frame(&mut s).expect("echo").payload, b"bye");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 16];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "client side not closed"
    );
}

#[test]
fn client_closing_the_tunnel_closes_the_upstream() {
    let up = Upstream::start(Behaviour::WebSocketEcho);
    let gw = gateway_for(&up);
    let (mut s, _) = handshake(&gw);
    ws::read_frame(&mut s).expect("greeting");
    ws::write_frame(&mut s, ws::OP_TEXT, b"x", Some([1, 1, 1, 1])).unwrap();
    ws::read_frame(&mut s).expect("echo");
    drop(s);
    assert!(
        up.wait_for(Duration::from_secs(3), |r| r.peer_closed >= 1),
        "upstream side of the tunnel still open after the client left"
    );
}

#[test]
fn declined_upgrade_stays_http() {
    // An upstream that answers the upgrade request with a plain 200 keeps the connection in HTTP mode.
    let up = Upstream::echo("plain");
    let gw = gateway_for(&up);
    let mut c = Conn::connect(gw.addr());
    let r = c.request(
        format!("GET /chat HTTP/1.1\r\nHost: test.local\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(!r.has_header("upgrade"));
    assert_eq!(c.get(HOST, "/next").header("x-echo-path"), Some("/next"));
}

/// A raw upgrade upstream on its own thread: answers the first request head with a 101, then runs
/// `after` on the socket. Returns its address and the thread's handle (which yields what `after` did).
fn raw_upgrade_upstream<T: Send + 'static>(
    after: impl FnOnce(TcpStream) -> T + Send + 'static,
) -> (std::net::SocketAddr, std::thread::JoinHandle<T>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        read_head(&mut s);
        s.write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        after(s)
    });
    (addr, h)
}

/// A one-worker gateway in front of `addr` with the given upstream read timeout (the tunnel's idle
/// timeout).
fn tunnel_gateway(addr: std::net::SocketAddr, idle: &str) -> Gateway {
    Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[server.timeouts]\nupstream_read = \"{idle}\"\n\n[[services]]\nname = \"svc\"\nurl = \"http://{addr}\"\n\n[[routes]]\nname = \"all\"\nservice = \"svc\"\npaths = [\"/\"]\n"
    ))
}

/// Sends the upgrade request and reads the 101 head (byte by byte, so nothing after it is consumed).
fn raw_upgrade(gw: &Gateway) -> TcpStream {
    let mut s = TcpStream::connect(gw.addr()).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(
        b"GET /t HTTP/1.1\r\nHost: test.local\r\nUpgrade: test\r\nConnection: Upgrade\r\n\r\n",
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

#[test]
fn traffic_one_way_keeps_the_tunnel_open_past_the_idle_timeout() {
    // The upstream only listens (a log stream, a one-way feed): the quiet direction must not end the
    // tunnel while the other one is busy.
    let (addr, up) = raw_upgrade_upstream(|mut s| {
        let mut got = Vec::new();
        let mut b = [0u8; 256];
        while let Ok(n) = s.read(&mut b) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&b[..n]);
        }
        got
    });
    let gw = tunnel_gateway(addr, "1s");
    let mut s = raw_upgrade(&gw);
    for i in 0..8 {
        s.write_all(format!("msg{i};").as_bytes())
            .expect("tunnel cut off while in use");
        std::thread::sleep(Duration::from_millis(300));
    }
    // 2.4 s of one-way traffic, over twice the idle timeout; then the client leaves.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = up.join().expect("upstream thread");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "msg0;msg1;msg2;msg3;msg4;msg5;msg6;msg7;"
    );
}

#[test]
fn a_half_closed_client_still_gets_the_answer() {
    // The client sends its request and shuts down its write side; the upstream answers after it saw
    // EOF. The half-close must be passed on, and the answer relayed back.
    let (addr, up) = raw_upgrade_upstream(|mut s| {
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("read to EOF");
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(b"ECHO:").unwrap();
        s.write_all(&got).unwrap();
    });
    let gw = tunnel_gateway(addr, "5s");
    let mut s = raw_upgrade(&gw);
    s.write_all(b"ping").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("answer, then EOF");
    assert_eq!(answer, b"ECHO:ping");
    up.join().expect("upstream thread");
}

#[test]
fn a_tunnel_silent_both_ways_closes_after_the_idle_timeout() {
    let (addr, up) = raw_upgrade_upstream(|mut s| {
        let mut b = [0u8; 16];
        // Returns once the gateway closes its side.
        let _ = s.read(&mut b);
    });
    let gw = tunnel_gateway(addr, "1s");
    closes_after_about_a_second(&gw);
    up.join().expect("upstream thread");
}

/// Opens a tunnel through `gw` that stays silent both ways and asserts the gateway closes it after
/// about a second (a 1 s idle timeout).
fn closes_after_about_a_second(gw: &Gateway) {
    let mut s = raw_upgrade(gw);
    let start = std::time::Instant::now();
    let mut b = [0u8; 16];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    let t = start.elapsed();
    assert!(
        t >= Duration::from_millis(800) && t < Duration::from_secs(3),
        "closed after {t:?}, not after a 1 s idle timeout"
    );
}

/// The tunnel's idle timeout is the service's `read_timeout` when it sets one (before, the
/// server-wide `upstream_read` cut a quiet tunnel whatever the service said: found by a review).
#[test]
fn a_services_read_timeout_is_its_tunnels_idle_timeout() {
    let (addr, up) = raw_upgrade_upstream(|mut s| {
        let mut b = [0u8; 16];
        let _ = s.read(&mut b);
    });
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n[server.timeouts]\nupstream_read = \"5s\"\n\n[[services]]\nname = \"svc\"\nurl = \"http://{addr}\"\nread_timeout = \"1s\"\n\n[[routes]]\nname = \"all\"\nservice = \"svc\"\npaths = [\"/\"]\n"
    ));
    closes_after_about_a_second(&gw);
    up.join().expect("upstream thread");
}

/// `ringgate_upstream_connections{…,state="active"}` of the one target, once it equals `want` (or
/// after 3 s, the last value seen).
fn active_upstream(gw: &Gateway, want: u64) -> Option<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = send_raw(
            gw.admin_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
        );
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let v = body
            .lines()
            .find(|l| {
                l.starts_with("ringgate_upstream_connections{") && l.contains("state=\"active\"}")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.trim().parse().ok());
        if v == Some(want) || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_open_tunnel_counts_as_an_active_upstream_connection() {
    let up = Upstream::start(Behaviour::WebSocketEcho);
    let gw = Gateway::start(&basic_config(
        &up,
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[metrics]\nflush_interval = \"100ms\"",
        "",
    ));
    let (mut s, head) = handshake(&gw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws::read_frame(&mut s).expect("greeting");
    assert_eq!(
        active_upstream(&gw, 1),
        Some(1),
        "the tunnel holds its upstream connection"
    );
    drop(s);
    assert_eq!(
        active_upstream(&gw, 0),
        Some(0),
        "released when the tunnel ended"
    );
}

/// An open tunnel does not hold its config generation: after a reload that removed a target, the
/// target's idle pooled connection is closed within seconds although the tunnel (opened under the
/// old generation) is still up, and the tunnel keeps working.
#[test]
fn an_open_tunnel_does_not_keep_a_removed_target_pooled() {
    let chat = Upstream::start(Behaviour::WebSocketEcho);
    let a = Upstream::echo("a");
    let b = Upstream::echo("b");
    let config = |api: &Upstream| {
        format!(
            r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[[services]]
name = "chat"
url = "{chat}"

[[services]]
name = "api"
url = "{api}"

[[routes]]
name = "chat"
service = "chat"
paths = ["/chat"]
strip_path = false

[[routes]]
name = "api"
service = "api"
paths = ["/api"]
"#,
            chat = chat.url(),
            api = api.url()
        )
    };
    let gw = Gateway::start(&config(&a));
    let (mut s, head) = handshake(&gw);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        ws::read_frame(&mut s).expect("greeting").payload,
        b"hello from upstream"
    );
    assert_eq!(
        get(gw.addr(), HOST, "/api/1").header("x-upstream"),
        Some("a")
    );
    gw.rewrite_config(&config(&b));
    gw.reload_to(2);
    assert!(
        a.wait_for(Duration::from_secs(5), |r| r.peer_closed > 0),
        "the removed target's idle connection is still open"
    );
    assert_eq!(
        get(gw.addr(), HOST, "/api/2").header("x-upstream"),
        Some("b")
    );
    ws::write_frame(&mut s, ws::OP_TEXT, b"still here", Some([1, 2, 3, 4])).expect("write");
    assert_eq!(ws::read_frame(&mut s).expect("echo").payload, b"still here");
}

/// h2c is never tunnelled, also spelt with a version (`h2c/1`, RFC 9110 §7.8's
/// `protocol-name/protocol-version`), and a 101 must switch to a protocol the client offered:
/// anything else is a 502, not a tunnel (an upstream switching to h2c would take HTTP/2 requests
/// for any path past routing and auth).
#[test]
fn a_switch_to_a_protocol_not_offered_is_502() {
    for (offered, switched) in [
        ("h2c/1", "h2c"),
        ("websocket, h2c/2.0", "h2c"),
        ("websocket", "h2c"),
        ("websocket", "foo"),
        ("websocket", "websocket, h2c"),
    ] {
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: {switched}\r\n\r\n"
        );
        let up = Upstream::start(Behaviour::Fixed(answer.into_bytes()));
        let gw = gateway_for(&up);
        let mut c = Conn::connect(gw.addr());
        let r = c.request(
            format!(
                "GET /chat HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: {offered}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 502, "{offered} -> {switched}: {r:?}");
        if offered.contains("h2c") {
            // Not offered upstream at all: the request went as plain HTTP/1.1.
            let seen = up.last_request();
            assert_eq!(seen.header("upgrade"), None, "{offered}: {seen:?}");
        }
    }
}

/// An upgrade request with a body that comes after its head: the 101 is checked against the
/// protocols the head offered, copied before the body overwrote the client buffer. Reading them
/// from the buffer afterwards sliced past its end and aborted the whole process (found in review).
#[test]
fn a_101_after_an_upgrade_request_body_is_checked_against_its_head() {
    for chunked in [false, true] {
        let up = Upstream::start(Behaviour::Fixed(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec(),
        ));
        let gw = gateway_for(&up);
        let (framing, body) = if chunked {
            ("Transfer-Encoding: chunked", "5\r\nhello\r\n0\r\n\r\n")
        } else {
            ("Content-Length: 5", "hello")
        };
        let mut s = TcpStream::connect(gw.addr()).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(
            format!(
                "GET /chat HTTP/1.1\r\nHost: test.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n{framing}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("head");
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(body.as_bytes()).expect("body");
        let head = read_head(&mut s);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "chunked={chunked}: {head}"
        );
        // Still serving (a 101 to a request that offered no upgrade is a 502).
        assert_eq!(get(gw.addr(), HOST, "/x").status, 502);
    }
}
