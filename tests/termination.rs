//! `request-termination` end to end: a route, a consumer or a triggered request gets the fixed
//! answer and the upstream sees nothing of it; everything else is proxied. The answer carries what
//! earlier plugins add (CORS, rate-limit headers), obeys HEAD, and a reload switches it on and off.

mod common;

use common::*;

const BASE: &str = r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

[[services]]
name = "svc"
url = "URL"

[[routes]]
name = "maint"
service = "svc"
paths = ["/maint"]

[[routes]]
name = "open"
service = "svc"
paths = ["/open"]

[[routes]]
name = "keyed"
service = "svc"
paths = ["/keyed"]

[[consumers]]
username = "alice"
keyauth_credentials = [{ key = "alice-key-0123456789" }]

[[consumers]]
username = "mallory"
keyauth_credentials = [{ key = "mallory-key-0123456789" }]

[[plugins]]
name = "key-auth"
route = "keyed"

[[plugins]]
name = "cors"
config = { origins = ["https://app.example.com"] }

[[plugins]]
name = "rate-limiting"
route = "maint"
config = { minute = 1000 }
"#;

fn config(up: &Upstream, plugins: &str) -> String {
    format!("{}\n{plugins}", BASE.replace("URL", &up.url()))
}

fn req(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n").into_bytes()
}

#[test]
fn a_terminated_route_answers_itself_and_the_others_are_proxied() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(
        &up,
        "[[plugins]]\nname = \"request-termination\"\nroute = \"maint\"\n\
         config = { message = \"Down for maintenance until 04:00\" }\n",
    ));
    let mut c = Conn::connect(gw.addr());
    let r = c.request(&req(
        "GET",
        "/maint/x",
        "Origin: https://app.example.com\r\n",
    ));
    assert_eq!(r.status, 503);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body_str(),
        "{\"message\":\"Down for maintenance until 04:00\"}\n"
    );
    // Plugins that ran before it still speak: the browser can read the answer, and the request
    // was counted.
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        r.has_header("x-ratelimit-remaining-minute"),
        "{:?}",
        r.headers
    );
    // HEAD: the same head, no body; the connection stays in step.
    let h = c.request(&req("HEAD", "/maint/x", ""));
    assert_eq!(h.status, 503);
    assert!(h.body.is_empty());
    assert_eq!(h.header("content-length"), r.header("content-length"));
    let r = c.get(HOST, "/open/y");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-path"), Some("/y"), "strip_path");
    // A request whose body was never read: answered, then the connection closes, so the body's
    // bytes are never read as a next request.
    let mut c2 = Conn::connect(gw.addr());
    let body = "GET /open/smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n";
    let r2 = c2.request(
        format!(
            "POST /maint HTTP/1.1\r\nHost: test.local\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(r2.status, 503);
    assert_eq!(r2.header("connection"), Some("close"));
    assert!(
        c2.probe_closed(std::time::Duration::from_secs(3)),
        "closed after the answer"
    );
    assert_eq!(
        up.requests()
            .iter()
            .map(|r| r.target.clone())
            .collect::<Vec<_>>(),
        ["/y"],
        "the terminated requests never reached the upstream"
    );
}

#[test]
fn a_trigger_terminates_only_the_requests_that_carry_it() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(
        &up,
        "[[plugins]]\nname = \"request-termination\"\n\
         config = { status_code = 418, body = \"<p>debug stop</p>\", content_type = \"text/html\", trigger = \"X-Stop\" }\n",
    ));
    let mut c = Conn::connect(gw.addr());
    for (path, extra) in [("/open/a", "x-stop: 1\r\n"), ("/open/a?X-Stop", "")] {
        let r = c.request(&req("GET", path, extra));
        assert_eq!(r.status, 418, "{path} {extra:?}");
        assert_eq!(r.header("content-type"), Some("text/html"));
        assert_eq!(r.body_str(), "<p>debug stop</p>");
    }
    for (path, extra) in [("/open/b", "X-Stopper: 1\r\n"), ("/open/b?x-stop=1", "")] {
        let r = c.request(&req("GET", path, extra));
        assert_eq!(r.status, 200, "{path} {extra:?}");
    }
    assert_eq!(up.request_count(), 2);
}

#[test]
fn a_consumer_can_be_blocked_by_name() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(
        &up,
        "[[plugins]]\nname = \"request-termination\"\nconsumer = \"mallory\"\n\
         config = { status_code = 403, message = \"Account suspended\" }\n",
    ));
    let mut c = Conn::connect(gw.addr());
    let r = c.request(&req("GET", "/keyed", "apikey: mallory-key-0123456789\r\n"));
    assert_eq!(r.status, 403);
    assert_eq!(r.body_str(), "{\"message\":\"Account suspended\"}\n");
    let r = c.request(&req("GET", "/keyed", "apikey: alice-key-0123456789\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo-path"), Some("/"), "strip_path");
    // Auth runs first: without a key it is the 401, not the block.
    let r = c.request(&req("GET", "/keyed", ""));
    assert_eq!(r.status, 401);
    assert_eq!(up.request_count(), 1);
}

#[test]
fn a_reload_switches_termination_on_and_off() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&config(&up, ""));
    assert_eq!(get(gw.addr(), HOST, "/open/1").status, 200);
    gw.rewrite_config(&config(
        &up,
        "[[plugins]]\nname = \"request-termination\"\nservice = \"svc\"\n",
    ));
    gw.reload_to(2);
    let r = get(gw.addr(), HOST, "/open/2");
    assert_eq!(r.status, 503);
    assert_eq!(r.body_str(), "{\"message\":\"Service Unavailable\"}\n");
    gw.rewrite_config(&config(&up, ""));
    gw.reload_to(3);
    assert_eq!(get(gw.addr(), HOST, "/open/3").status, 200);
    assert_eq!(up.request_count(), 2);
}
