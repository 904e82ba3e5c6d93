//! ACME certificates end to end against a real CA: Let's Encrypt's pebble test server (with its
//! DNS test server resolving every name to 127.0.0.1), on loopback. The gateway orders, answers the
//! CA's validation (HTTP-01 on a redirect listener, TLS-ALPN-01 on the TLS listener), serves the
//! certificate, keeps it in storage for the next start, and renews a stored one that is due.
//! Clients are curl, verifying against the root pebble issues from.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::pebble::{free_port, Pebble};
use common::{get, send_raw, Gateway, Upstream};

const ISSUE_TIMEOUT: Duration = Duration::from_secs(40);

/// A temporary storage directory, removed on Drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "ringgate-acme-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A gateway config: `listen` entries, `[acme]` (plus `acme_extra`) for `ca`, one ACME certificate
/// for `names`, an admin listener, and a catch-all route to `up`.
fn config(
    listen: &str,
    directory: &str,
    ca_file: &Path,
    storage: &Path,
    acme_extra: &str,
    names: &[&str],
    up: &Upstream,
) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        r#"[server]
listen = [{listen}]
workers = 1

[admin]
listen = "127.0.0.1:0"

[metrics]
flush_interval = "100ms"

[acme]
directory = "{directory}"
ca_file = "{}"
email = "ops@ringgate.test"
storage = "{}"
{acme_extra}

[[certificates]]
acme = true
snis = [{}]

[[services]]
name = "app"
url = "{}"

[[routes]]
name = "r"
service = "app"
paths = ["/"]
strip_path = false
"#,
        ca_file.display(),
        storage.display(),
        names.join(", "),
        up.url()
    )
}

/// `listen` entries: plain HTTP on `http`, TLS on `tls` (both on 127.0.0.1).
fn plain_and_tls(http: u16, tls: u16) -> String {
    format!("\"127.0.0.1:{http}\", {{ addr = \"127.0.0.1:{tls}\", tls = true }}")
}

/// `curl https://{name}:{port}{path}` to 127.0.0.1, verifying against `root`; (exit code, HTTP
/// status, body).
fn curl(name: &str, port: u16, path: &str, root: &Path) -> (i32, String, String) {
    curl_with(name, port, path, &["--cacert", &root.display().to_string()])
}

/// Like `curl`, accepting any certificate: a failure is then a failed handshake (no certificate
/// at all), never a verification error.
fn curl_any_cert(name: &str, port: u16, path: &str) -> (i32, String, String) {
    curl_with(name, port, path, &["-k"])
}

fn curl_with(name: &str, port: u16, path: &str, tls: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(tls)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        status.to_owned(),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// The `acme` entry of `/status` for `name`.
fn acme_status(gw: &Gateway, name: &str) -> serde_json::Value {
    let r = send_raw(
        gw.admin_addr(),
        b"GET /status HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
    );
    let status: serde_json::Value = serde_json::from_slice(&r.body).expect("status json");
    status["acme"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["certificate"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no acme entry for {name}: {status}"))
}

/// The value of the first `/metrics` line starting with `prefix`.
fn metric(gw: &Gateway, prefix: &str) -> Option<f64> {
    let r = send_raw(
        gw.admin_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n\r\n",
    );
    let body = String::from_utf8_lossy(&r.body).into_owned();
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[track_caller]
fn wait_issued(gw: &Gateway, ca: &Pebble) {
    assert!(
        gw.wait_log("acme certificate issued", ISSUE_TIMEOUT),
        "no certificate issued; gateway log:\n{}\npebble log:\n{}",
        gw.logs().join("\n"),
        ca.log()
    );
}

#[test]
fn http01_on_the_redirect_listener_issues_serves_stores_and_reuses_the_certificate() {
    let up = Upstream::echo("app");
    let (http, tls) = (free_port(), free_port());
    let mut ca = Pebble::start(http, tls);
    let storage = Dir::new();
    let listen = format!(
        "{{ addr = \"127.0.0.1:{http}\", redirect_https = 308, https_port = {tls} }}, {{ addr = \"127.0.0.1:{tls}\", tls = true }}"
    );
    let names = ["api.ringgate.test", "www.ringgate.test"];
    let cfg = config(
        &listen,
        &ca.directory(),
        &ca.ca_file(),
        &storage.0,
        "",
        &names,
        &up,
    );
    let gw = Gateway::start(&cfg);
    wait_issued(&gw, &ca);
    assert!(gw.wait_log("acme account created", Duration::from_secs(5)));
    // Both names validated through the redirect listener (pebble validates from several
    // perspectives, so each token was fetched more than once).
    // The conversation with the CA is over: no connection to it is left open for weeks.
    // (/proc/net/tcp: established (state 01) sockets whose remote port is the CA's.)
    let to_ca = || {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        let port = format!(":{:04X}", ca.listen.port());
        table
            .lines()
            .skip(1)
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(2).is_some_and(|r| r.ends_with(&port)) && f.get(3) == Some(&"01")
            })
            .count()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while to_ca() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections to the CA left open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answered = gw
        .logs()
        .iter()
        .filter(|l| l.contains("acme http-01 challenge answered"))
        .count();
    assert!(answered >= 2, "answered {answered} validations");

    let root = ca.issuing_root();
    for name in names {
        let (code, status, body) = curl(name, tls, "/hello", &root);
        assert_eq!((code, status.as_str()), (0, "200"), "{name}: {body}");
        assert!(body.contains("/hello"), "{name}: {body}");
    }
    // Everything else on the redirect listener still redirects.
    let r = get(
        SocketAddr::from(([127, 0, 0, 1], http)),
        "api.ringgate.test",
        "/x",
    );
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location"),
        Some(format!("https://api.ringgate.test:{tls}/x").as_str())
    );

    // Stored, private.
    let dir = storage.0.join("certificates").join("api.ringgate.test");
    for f in ["privkey.pem", "fullchain.pem"] {
        let mode = std::fs::metadata(dir.join(f))
            .expect(f)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    let account = storage
        .0
        .join("accounts")
        .join(format!("127.0.0.1_{}.json", ca.listen.port()));
    let account = std::fs::metadata(account).expect("account");
    assert_eq!(account.permissions().mode() & 0o777, 0o600);

    // Metrics: expiry in the future, one successful order.
    let expiry = metric(
        &gw,
        "ringgate_acme_certificate_expiry_timestamp_seconds{certificate=\"api.ringgate.test\"} ",
    )
    .expect("expiry metric");
    assert!(expiry > now_unix() + 86_400.0, "expiry {expiry}");
    assert_eq!(
        metric(
            &gw,
            "ringgate_acme_orders_total{certificate=\"api.ringgate.test\",result=\"ok\"} "
        ),
        Some(1.0)
    );
    let st = acme_status(&gw, "api.ringgate.test");
    assert!(st["not_after"].is_string(), "{st}");
    assert!(st["next_attempt"].is_string(), "{st}");
    assert_eq!(st["failures"], 0, "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    drop(gw);

    // Next start: the stored certificate is served at once, with the CA gone, and nothing is
    // ordered (it is not due).
    ca.stop();
    let gw = Gateway::start(&cfg);
    assert!(
        gw.wait_log("acme certificate loaded", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    let (code, status, body) = curl("www.ringgate.test", tls, "/again", &root);
    assert_eq!((code, status.as_str()), (0, "200"), "{body}");
    assert!(!gw.log_contains("acme order"), "{:?}", gw.logs());
}

#[test]
fn tls_alpn01_is_answered_on_the_tls_listener() {
    let up = Upstream::echo("app");
    let tls = free_port();
    // No plain listener at all: TLS-ALPN-01 needs only port 443.
    let ca = Pebble::start(free_port(), tls);
    let storage = Dir::new();
    let listen = format!("{{ addr = \"127.0.0.1:{tls}\", tls = true }}");
    let cfg = config(
        &listen,
        &ca.directory(),
        &ca.ca_file(),
        &storage.0,
        "challenge = \"tls-alpn-01\"",
        &["alpn.ringgate.test"],
        &up,
    );
    let gw = Gateway::start(&cfg);
    wait_issued(&gw, &ca);
    assert!(
        gw.wait_log(
            "acme tls-alpn-01 validation answered",
            Duration::from_secs(5)
        ),
        "{:?}",
        gw.logs()
    );
    let root = ca.issuing_root();
    let (code, status, body) = curl("alpn.ringgate.test", tls, "/x", &root);
    assert_eq!((code, status.as_str()), (0, "200"), "{body}");
}

/// Starts a gateway whose storage holds a certificate for `renew.ringgate.test` valid from
/// `not_before` to `not_after` (years; `None` = next year's first day), recorded as issued by
/// `directory` (`None`: no record); asserts it is loaded, then replaced by one from pebble.
fn stored_certificate_is_replaced(
    not_before: i32,
    not_after: Option<i32>,
    directory: Option<&str>,
) {
    let up = Upstream::echo("app");
    let (http, tls) = (free_port(), free_port());
    let ca = Pebble::start(http, tls);
    let storage = Dir::new();
    let year = 1970 + (now_unix() / 31_556_952.0) as i32;
    let mut params =
        rcgen::CertificateParams::new(vec!["renew.ringgate.test".to_owned()]).expect("params");
    params.not_before = rcgen::date_time_ymd(not_before, 1, 1);
    params.not_after = rcgen::date_time_ymd(not_after.unwrap_or(year + 1), 1, 1);
    let key = rcgen::KeyPair::generate().expect("key");
    let old = params.self_signed(&key).expect("cert");
    let dir = storage.0.join("certificates").join("renew.ringgate.test");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("fullchain.pem"), old.pem()).expect("chain");
    std::fs::write(dir.join("privkey.pem"), key.serialize_pem()).expect("key");
    if let Some(d) = directory {
        std::fs::write(dir.join("directory"), format!("{d}\n")).expect("directory");
    }

    let listen = plain_and_tls(http, tls);
    let cfg = config(
        &listen,
        &ca.directory(),
        &ca.ca_file(),
        &storage.0,
        "",
        &["renew.ringgate.test"],
        &up,
    );
    let gw = Gateway::start(&cfg);
    wait_issued(&gw, &ca);
    // In service from the start (loaded before the workers ran), then replaced.
    let logs = gw.logs();
    let at = |what: &str| {
        logs.iter()
            .position(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line: {logs:?}"))
    };
    assert!(at("acme certificate loaded") < at("ready"), "{logs:?}");
    assert!(at("acme certificate loaded") < at("acme order"), "{logs:?}");
    let root = ca.issuing_root();
    let (code, status, body) = curl("renew.ringgate.test", tls, "/", &root);
    assert_eq!((code, status.as_str()), (0, "200"), "{body}");
    let stored = std::fs::read_to_string(dir.join("fullchain.pem")).expect("chain");
    assert_ne!(
        stored,
        old.pem(),
        "the renewed chain replaced the stored one"
    );
    let recorded = std::fs::read_to_string(dir.join("directory")).expect("directory");
    assert_eq!(recorded.trim(), ca.directory());
}

#[test]
fn a_stored_certificate_that_is_due_is_served_then_renewed() {
    // Issued 2020-01-01, expiring at the start of next year: less than a third of its lifetime is
    // left, so it is due.
    stored_certificate_is_replaced(2020, None, None);
}

#[test]
fn a_stored_certificate_from_another_ca_is_replaced_at_once() {
    // Valid for decades, so not due by its lifetime; but the directory changed (staging to
    // production, say).
    stored_certificate_is_replaced(
        2020,
        Some(2090),
        Some("https://acme-staging-v02.api.letsencrypt.org/directory"),
    );
}

#[test]
fn without_a_certificate_yet_handshakes_fail_cleanly_and_other_tokens_are_routed() {
    // The CA is unreachable (nothing listens on its port): the order fails and is retried later;
    // meanwhile the gateway serves plain traffic, refuses TLS for the name, and routes challenge
    // paths it holds no token for (another ACME client behind the gateway keeps working).
    let up = Upstream::echo("app");
    let (http, tls) = (free_port(), free_port());
    let storage = Dir::new();
    let ca_file = storage.0.with_extension("ca.pem");
    // Any PEM certificate will do: the CA is never reached.
    let throwaway = rcgen::generate_simple_self_signed(vec!["x.test".to_owned()]).expect("cert");
    std::fs::write(&ca_file, throwaway.cert.pem()).expect("ca file");
    let listen = plain_and_tls(http, tls);
    let cfg = config(
        &listen,
        &format!("https://127.0.0.1:{}/dir", free_port()),
        &ca_file,
        &storage.0,
        "",
        &["none.ringgate.test"],
        &up,
    );
    let gw = Gateway::start(&cfg);
    assert!(
        gw.wait_log("acme order failed", Duration::from_secs(10)),
        "{:?}",
        gw.logs()
    );
    assert!(
        gw.wait_log("retry_in_s=60", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    let plain = SocketAddr::from(([127, 0, 0, 1], http));
    let r = get(
        plain,
        "none.ringgate.test",
        "/.well-known/acme-challenge/not-ours",
    );
    assert_eq!(r.status, 200, "routed to the upstream");
    assert!(String::from_utf8_lossy(&r.body).contains("not-ours"));
    let (code, _, body) = curl_any_cert("none.ringgate.test", tls, "/");
    assert_eq!(code, 35, "no certificate yet, so no handshake: {body}");
    let r = get(plain, "none.ringgate.test", "/still-up");
    assert_eq!(r.status, 200);
    assert_eq!(
        metric(
            &gw,
            "ringgate_acme_renewal_failures{certificate=\"none.ringgate.test\"} "
        ),
        Some(1.0)
    );
    // At 3 a.m.: why, and when the next try is.
    let st = acme_status(&gw, "none.ringgate.test");
    assert!(st["not_after"].is_null(), "{st}");
    assert_eq!(st["failures"], 1, "{st}");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("creating an ACME account")),
        "{st}"
    );
    assert!(st["next_attempt"].is_string(), "{st}");
    // A restart (a crash loop, say) does not order again at once: the backoff is kept.
    drop(gw);
    let gw = Gateway::start(&cfg);
    assert!(
        gw.wait_log("acme backoff from a previous run", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!gw.log_contains("acme order"), "{:?}", gw.logs());
    let st = acme_status(&gw, "none.ringgate.test");
    assert_eq!(st["failures"], 1, "{st}");
    assert!(st["last_error"].is_string(), "{st}");
    let _ = std::fs::remove_file(&ca_file);
}

#[test]
fn a_reload_that_adds_a_name_orders_a_certificate_covering_it_without_dropping_the_first() {
    let up = Upstream::echo("app");
    let (http, tls) = (free_port(), free_port());
    let ca = Pebble::start(http, tls);
    let storage = Dir::new();
    let listen = plain_and_tls(http, tls);
    let one = ["a.ringgate.test"];
    let two = ["a.ringgate.test", "b.ringgate.test"];
    let cfg = |names: &[&str]| {
        config(
            &listen,
            &ca.directory(),
            &ca.ca_file(),
            &storage.0,
            "",
            names,
            &up,
        )
    };
    let gw = Gateway::start(&cfg(&one));
    wait_issued(&gw, &ca);
    let root = ca.issuing_root();
    let (code, _, body) = curl_any_cert("b.ringgate.test", tls, "/");
    assert_eq!(code, 0, "b gets the other certificate meanwhile: {body}");
    let (code, _, body) = curl("b.ringgate.test", tls, "/", &root);
    assert_eq!(code, 60, "... which does not name it: {body}");

    gw.rewrite_config(&cfg(&two));
    gw.reload_to(2);
    let deadline = std::time::Instant::now() + ISSUE_TIMEOUT;
    while gw
        .logs()
        .iter()
        .filter(|l| l.contains("acme certificate issued"))
        .count()
        < 2
    {
        // The first name is served throughout.
        let (code, status, body) = curl("a.ringgate.test", tls, "/", &root);
        assert_eq!((code, status.as_str()), (0, "200"), "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "no second certificate; log:\n{}\npebble:\n{}",
            gw.logs().join("\n"),
            ca.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in two {
        let (code, status, body) = curl(name, tls, "/", &root);
        assert_eq!((code, status.as_str()), (0, "200"), "{name}: {body}");
    }
}

#[test]
fn a_ca_that_requires_external_account_binding_gets_it() {
    // ZeroSSL and Google Trust Services hand out a key id and an HMAC key per account.
    let (kid, key) = (
        "kid-1",
        "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W",
    );
    let up = Upstream::echo("app");
    let (http, tls) = (free_port(), free_port());
    let ca = Pebble::start_with(http, tls, Some((kid, key)));
    let listen = plain_and_tls(http, tls);
    // Without the binding, the CA refuses the account, and the gateway says why.
    let storage = Dir::new();
    let cfg = config(
        &listen,
        &ca.directory(),
        &ca.ca_file(),
        &storage.0,
        "",
        &["eab.ringgate.test"],
        &up,
    );
    let gw = Gateway::start(&cfg);
    assert!(
        gw.wait_log("acme order failed", Duration::from_secs(10)),
        "{:?}",
        gw.logs()
    );
    let st = acme_status(&gw, "eab.ringgate.test");
    assert!(
        st["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("creating an ACME account")),
        "{st}"
    );
    drop(gw);
    // With it, the certificate is issued.
    let storage = Dir::new();
    let extra = format!("eab_kid = \"{kid}\"\neab_hmac_key = \"{key}\"");
    let cfg = config(
        &listen,
        &ca.directory(),
        &ca.ca_file(),
        &storage.0,
        &extra,
        &["eab.ringgate.test"],
        &up,
    );
    let gw = Gateway::start(&cfg);
    wait_issued(&gw, &ca);
    let root = ca.issuing_root();
    let (code, status, body) = curl("eab.ringgate.test", tls, "/", &root);
    assert_eq!((code, status.as_str()), (0, "200"), "{body}");
}

/// A `dns_hook` script (lego's exec convention) that logs its calls to `log` and publishes or
/// withdraws the TXT record at pebble's DNS server; `fail` makes `present` exit 3 instead.
fn dns_hook(dir: &Path, ca: &Pebble, log: &Path, fail: bool) -> PathBuf {
    std::fs::create_dir_all(dir).expect("hook dir");
    let hook = dir.join("dns-hook.sh");
    let present = if fail {
        "exit 3".to_owned()
    } else {
        format!(
            r#"curl -sS --fail -X POST -d "{{\"host\":\"$2\",\"value\":\"$3\"}}" http://{}/set-txt"#,
            ca.dns_management
        )
    };
    let script = format!(
        r#"#!/bin/sh
echo "$1 $2 $3" >> "{log}"
case "$1" in
  present) {present} ;;
  cleanup) curl -sS --fail -X POST -d "{{\"host\":\"$2\"}}" http://{mgmt}/clear-txt ;;
  *) exit 2 ;;
esac
"#,
        log = log.display(),
        mgmt = ca.dns_management
    );
    std::fs::write(&hook, script).expect("write hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700)).expect("chmod hook");
    hook
}

/// `config` for DNS-01 through `hook`, with only a TLS listener on `tls` (no challenge comes to the
/// gateway).
fn dns01_config(
    tls: u16,
    ca: &Pebble,
    storage: &Path,
    hook: &Path,
    names: &[&str],
    up: &Upstream,
) -> String {
    config(
        &format!("{{ addr = \"127.0.0.1:{tls}\", tls = true }}"),
        &ca.directory(),
        &ca.ca_file(),
        storage,
        &format!("challenge = \"dns-01\"\ndns_hook = \"{}\"", hook.display()),
        names,
        up,
    )
}

#[test]
fn dns01_through_the_hook_issues_a_wildcard_and_withdraws_the_records() {
    let up = Upstream::echo("app");
    let tls = free_port();
    // pebble validates DNS-01 by asking its DNS server; the HTTP-01/TLS-ALPN-01 ports go unused.
    let mut ca = Pebble::start(free_port(), free_port());
    let storage = Dir::new();
    let hooks = Dir::new();
    let log = hooks.0.join("calls.log");
    let hook = dns_hook(&hooks.0, &ca, &log, false);
    let names = ["*.wild.ringgate.test", "wild.ringgate.test"];
    let cfg = dns01_config(tls, &ca, &storage.0, &hook, &names, &up);
    let gw = Gateway::start(&cfg);
    wait_issued(&gw, &ca);
    let root = ca.issuing_root();
    for name in [
        "a.wild.ringgate.test",
        "other.wild.ringgate.test",
        "wild.ringgate.test",
    ] {
        let (code, status, body) = curl(name, tls, "/hello", &root);
        assert_eq!((code, status.as_str()), (0, "200"), "{name}: {body}");
    }
    // One level only: a.b.wild.ringgate.test gets the default certificate (the first one, this
    // one), which a verifying client refuses for that name, not for its chain.
    let (code, _, out) = curl("a.b.wild.ringgate.test", tls, "/", &root);
    assert_eq!(code, 60, "{out}");
    assert!(out.contains("subject name"), "a name mismatch: {out}");
    // Both names' values went under the one record name, and both were withdrawn.
    let calls = std::fs::read_to_string(&log).expect("hook log");
    let count = |action: &str| {
        calls
            .lines()
            .filter(|l| l.starts_with(&format!("{action} _acme-challenge.wild.ringgate.test. ")))
            .count()
    };
    assert_eq!((count("present"), count("cleanup")), (2, 2), "{calls}");
    let values: std::collections::HashSet<&str> =
        calls.lines().filter_map(|l| l.split(' ').nth(2)).collect();
    assert_eq!(values.len(), 2, "two distinct values: {calls}");
    assert!(storage
        .0
        .join("certificates/_.wild.ringgate.test/fullchain.pem")
        .is_file());
    assert_eq!(acme_status(&gw, "*.wild.ringgate.test")["failures"], 0);
    drop(gw);
    ca.stop();
}

#[test]
fn a_failing_dns_hook_fails_the_order_with_its_status_and_backs_off() {
    let up = Upstream::echo("app");
    let tls = free_port();
    let ca = Pebble::start(free_port(), free_port());
    let storage = Dir::new();
    let hooks = Dir::new();
    let log = hooks.0.join("calls.log");
    let hook = dns_hook(&hooks.0, &ca, &log, true);
    // A record an earlier run published and never withdrew (it was stopped mid-order).
    let cert_dir = storage.0.join("certificates/_.fail.ringgate.test");
    std::fs::create_dir_all(&cert_dir).expect("cert dir");
    for d in [&storage.0, &storage.0.join("certificates"), &cert_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    std::fs::write(
        cert_dir.join("dns-pending"),
        "_acme-challenge.stale.ringgate.test. old-value\n",
    )
    .expect("pending");
    let cfg = dns01_config(tls, &ca, &storage.0, &hook, &["*.fail.ringgate.test"], &up);
    let gw = Gateway::start(&cfg);
    assert!(
        gw.wait_log("acme order failed", ISSUE_TIMEOUT),
        "{}",
        gw.logs().join("\n")
    );
    let st = acme_status(&gw, "*.fail.ringgate.test");
    assert_eq!(st["failures"], 1, "{st}");
    let err = st["last_error"].as_str().unwrap_or_default();
    assert!(
        err.contains("dns_hook") && err.contains("present") && err.contains("exit status: 3"),
        "{err}"
    );
    // No second try right after the first: the backoff (1 minute) holds.
    std::thread::sleep(Duration::from_secs(2));
    let calls = std::fs::read_to_string(&log).expect("hook log");
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("present ")).count(),
        1,
        "one try, then the backoff: {calls}"
    );
    // The stale record was withdrawn before the order; the failed present's record after it
    // (a hook may have published before failing).
    let at = |prefix: &str| lines.iter().position(|l| l.starts_with(prefix));
    let stale = at("cleanup _acme-challenge.stale.ringgate.test. old-value");
    let present = at("present _acme-challenge.fail.ringgate.test. ");
    let cleanup = at("cleanup _acme-challenge.fail.ringgate.test. ");
    assert!(
        stale < present && present < cleanup && stale.is_some(),
        "{calls}"
    );
    assert!(
        !cert_dir.join("dns-pending").exists(),
        "every record withdrawn, nothing left to list"
    );
}
