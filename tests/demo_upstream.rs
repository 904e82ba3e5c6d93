//! The demo upstream binary (`ringgate-demo-upstream`), exercised directly with the raw client: it is
//! what scripts/demo.sh and the load tests put behind the gateway.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The running binary; killed by PID on Drop.
struct Demo {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(name: &str) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringgate-demo-upstream"))
        .args(["--listen", "127.0.0.1:0", "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn demo upstream");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(a) = line
                .rsplit(' ')
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok())
            {
                let _ = tx.send(a);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("demo upstream did not report its address");
    Demo { child, addr }
}

#[test]
fn answers_json_and_keeps_alive() {
    let d = start("a");
    let mut c = Conn::connect(d.addr);
    for i in 0..3 {
        let r = c.request(
            format!("GET /hello/{i}?x=1 HTTP/1.1\r\nHost: h\r\nX-Test: \"q\"\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let body = r.body_str();
        assert!(
            body.starts_with("{\"upstream\":\"a\",\"method\":\"GET\""),
            "{body}"
        );
        assert!(
            body.contains(&format!("\"path\":\"/hello/{i}?x=1\"")),
            "{body}"
        );
        assert!(body.contains("\"x-test\":\"\\\"q\\\"\""), "{body}");
    }
    // Bodies in both framings are consumed, keeping the connection in sync.
    let r = c.request(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(r.status, 200);
    let r = c.request(
        b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let r = c.request(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n");
    assert!(r.body.is_empty());
    assert_eq!(c.get("h", "/last").status, 200);
}

#[test]
fn bytes_endpoint() {
    let d = start("b");
    let mut c = Conn::connect(d.addr);
    let r = c.get("h", "/bytes/100000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    assert_eq!(r.header("x-upstream"), Some("b"));
    assert_eq!(c.get("h", "/bytes/0").body.len(), 0);
    assert_eq!(c.get("h", "/bytes/nope").status, 400);
}

#[test]
fn malformed_input_is_a_400_not_a_crash() {
    let d = start("c");
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\xff\xfe / HTTP/1.1\r\n\r\n",
    ] {
        let r = send_raw(d.addr, bad);
        assert_eq!(r.status, 400);
        assert!(r.closed);
    }
    // Still serving.
    assert_eq!(get(d.addr, "h", "/").status, 200);
}

#[test]
fn connection_close_and_http10() {
    let d = start("d");
    let r = send_raw(
        d.addr,
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    );
    assert!(r.closed);
    let r = send_raw(d.addr, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200);
    assert!(r.closed);
}
