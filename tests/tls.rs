//! TLS termination, SNI certificate selection, https redirects and upstream TLS, over real loopback
//! sockets. Certificates are generated at test time (rcgen): a test CA and leaves for `api.test`,
//! `*.wild.test`, `default.test` and `localhost` (the TLS test upstream), plus an unrelated CA.
//! Clients are rustls (sync `StreamOwned` over `std::net::TcpStream`) and, when present, curl.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{raise_nofile, run_cli, send_raw, Gateway, TempFile, Upstream};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

// ---------------------------------------------------------------------------------------------
// Test PKI

/// A directory of generated PEM files, removed on Drop.
struct Pki {
    dir: PathBuf,
    /// DER of each leaf by label, to check which certificate the gateway presented.
    leaves: Vec<(String, Vec<u8>)>,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringgate-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut pki = Pki {
            dir,
            leaves: Vec::new(),
        };
        let ca = pki.ca("ca", "ringgate test CA");
        pki.leaf(&ca, "api", &["api.test"]);
        pki.leaf(&ca, "wild", &["*.wild.test"]);
        pki.leaf(&ca, "default", &["default.test"]);
        pki.leaf(
            &ca,
            "localhost",
            &["localhost", "127.0.0.1", "upstream.test"],
        );
        let other = pki.ca("other-ca", "some other CA");
        pki.leaf(&other, "other", &["api.test"]);
        pki
    }

    fn ca(&self, label: &str, cn: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("ca key");
        let ca = CertifiedIssuer::self_signed(params, key).expect("ca cert");
        std::fs::write(self.path(&format!("{label}.pem")), ca.pem()).expect("write ca");
        ca
    }

    fn leaf(&mut self, ca: &CertifiedIssuer<'static, KeyPair>, label: &str, names: &[&str]) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, label.to_string());
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, ca).expect("sign leaf");
        std::fs::write(self.path(&format!("{label}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{label}.key")), key.serialize_pem()).expect("write key");
        self.leaves.push((label.to_string(), cert.der().to_vec()));
    }

    /// A leaf valid from `from` to `until` (years, Jan 1st).
    fn leaf_valid(
        &mut self,
        ca: &CertifiedIssuer<'static, KeyPair>,
        label: &str,
        names: &[&str],
        (from, until): (i32, i32),
    ) {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(until, 1, 1);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, ca).expect("sign leaf");
        std::fs::write(self.path(&format!("{label}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{label}.key")), key.serialize_pem()).expect("write key");
        self.leaves.push((label.to_string(), cert.der().to_vec()));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Which leaf has this DER.
    fn label_of(&self, der: &[u8]) -> String {
        self.leaves
            .iter()
            .find(|(_, d)| d == der)
            .map(|(l, _)| l.clone())
            .unwrap_or_else(|| "unknown certificate".to_string())
    }

    /// `[[certificates]]` for api, wild and default (the default one marked).
    fn certificates_toml(&self) -> String {
        format!(
            r#"
[[certificates]]
cert = "{api}"
key = "{api_key}"
snis = ["api.test"]

[[certificates]]
cert = "{wild}"
key = "{wild_key}"
snis = ["*.wild.test"]

[[certificates]]
cert = "{def}"
key = "{def_key}"
snis = ["default.test"]
default = true
"#,
            api = self.p("api.pem"),
            api_key = self.p("api.key"),
            wild = self.p("wild.pem"),
            wild_key = self.p("wild.key"),
            def = self.p("default.pem"),
            def_key = self.p("default.key"),
        )
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Clients

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_pem: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca_pem).expect("ca pem") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    roots
}

/// A verifying client for `versions`, offering ALPN `http/1.1`.
fn client(
    ca_pem: &Path,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn default_client(pki: &Pki) -> Arc<ClientConfig> {
    client(
        &pki.path("ca.pem"),
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

/// Accepts any certificate (signatures still checked): to see which one the gateway presents for
/// names it has no certificate for.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn any_cert_client(send_sni: bool) -> Arc<ClientConfig> {
    let mut c = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    c.enable_sni = send_sni;
    Arc::new(c)
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, sni: &str, cfg: Arc<ClientConfig>) -> Result<Tls, String> {
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).ok();
    tcp.set_write_timeout(Some(Duration::from_secs(10))).ok();
    let name = ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    // Drive the handshake to completion.
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(tls)
}

/// A response read from a TLS stream (Content-Length bodies only: all the gateway sends here).
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response and nothing past it (the head a byte at a time, then exactly the body), so
/// pipelined responses that arrive together are each there for the next call.
fn read_response(s: &mut impl Read) -> Result<Resp, String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    let head_end = loop {
        if buf.ends_with(b"\r\n\r\n") {
            break buf.len();
        }
        if Instant::now() > deadline {
            return Err("no response head in time".into());
        }
        match s.read(&mut tmp[..1]) {
            Ok(0) => return Err(format!("EOF before a response head: {buf:?}")),
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let want = (len - body.len()).min(tmp.len());
        match s.read(&mut tmp[..want]) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
            Err(e) => return Err(format!("body read: {e}")),
        }
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn get(tls: &mut Tls, host: &str, path: &str) -> Resp {
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .expect("write request");
    read_response(tls).unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Config: one worker, a TLS listener first, then a plain one; one `url` service to `up`.
fn tls_config(pki: &Pki, up: &Upstream, server_extra: &str) -> String {
    format!(
        r#"[server]
listen = [{{ addr = "127.0.0.1:0", tls = true }}, "127.0.0.1:0"]
workers = 1
{server_extra}

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
strip_path = false
{certs}"#,
        url = up.url(),
        certs = pki.certificates_toml()
    )
}

/// Whether the peer closes `s` within `wait` (EOF or reset); the bytes received before that.
fn wait_closed(s: &mut TcpStream, wait: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (false, got);
        }
        s.set_read_timeout(Some(left)).ok();
        match s.read(&mut tmp) {
            Ok(0) => return (true, got),
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (false, got)
            }
            Err(_) => return (true, got),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Termination

#[test]
fn https_request_is_proxied_with_forwarded_proto_https() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let tls_addr = gw.addrs()[0];
    let mut tls = connect(tls_addr, "api.test", default_client(&pki)).expect("handshake");
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    // Keep-alive: two requests on one connection.
    for path in ["/one?a=1", "/two"] {
        let r = get(&mut tls, "api.test", path);
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("x-upstream"), Some("up"));
        assert!(!r.body.is_empty());
        let seen = up.last_request();
        assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
        assert_eq!(
            seen.header("x-forwarded-port"),
            Some(tls_addr.port().to_string().as_str())
        );
    }
    // The plain listener still says http.
    let r = common::get(gw.addrs()[1], "api.test", "/plain");
    assert_eq!(r.status, 200);
    assert_eq!(up.last_request().header("x-forwarded-proto"), Some("http"));
}

/// A sticky-session cookie the gateway sets (`hash_on_cookie_path`) is `Secure` on a TLS listener,
/// so the browser never sends it in the clear, and not on a plain one (where a `Secure` cookie
/// would be dropped by the browser).
#[test]
fn a_sticky_cookie_set_over_tls_is_secure() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let text = tls_config(&pki, &up, "").replace(
        &format!("[[services]]\nname = \"svc\"\nurl = \"{}\"", up.url()),
        &format!(
            "[[upstreams]]\nname = \"pool\"\ntargets = [{{ target = \"{}\" }}]\nalgorithm = \"consistent_hash\"\nhash_on = \"cookie\"\nhash_on_cookie = \"sticky\"\nhash_on_cookie_path = \"/\"\n\n[[services]]\nname = \"svc\"\nupstream = \"pool\"",
            up.addr()
        ),
    );
    assert!(text.contains("hash_on_cookie_path"), "{text}");
    let gw = Gateway::start(&text);
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    let r = get(&mut tls, "api.test", "/");
    assert_eq!(r.status, 200, "{r:?}");
    let set = r.header("set-cookie").unwrap_or_default();
    assert!(
        set.starts_with("sticky=") && set.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"),
        "{set:?}"
    );
    let r = common::get(gw.addrs()[1], "api.test", "/");
    let set = r.header("set-cookie").unwrap_or_default();
    assert!(
        set.starts_with("sticky=") && set.ends_with("; Path=/; HttpOnly; SameSite=Lax"),
        "{set:?}"
    );
}

/// A client that offers only protocols the gateway does not speak (ALPN `h2` alone) gets the
/// `no_application_protocol` alert (RFC 7301 §3.2), not a connection it would then misread; one
/// that offers no ALPN at all is served HTTP/1.1.
#[test]
fn alpn_without_http1_is_refused_with_no_application_protocol() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let with_alpn = |protocols: Vec<Vec<u8>>| {
        let mut c = (*default_client(&pki)).clone();
        c.alpn_protocols = protocols;
        Arc::new(c)
    };
    let err = match connect(gw.addrs()[0], "api.test", with_alpn(vec![b"h2".to_vec()])) {
        Ok(_) => panic!("an h2-only client completed the handshake"),
        Err(e) => e,
    };
    assert!(err.contains("NoApplicationProtocol"), "{err}");
    let mut tls = connect(gw.addrs()[0], "api.test", with_alpn(Vec::new())).expect("handshake");
    assert_eq!(tls.conn.alpn_protocol(), None);
    assert_eq!(get(&mut tls, "api.test", "/x").status, 200);
}

#[test]
fn connection_close_ends_with_close_notify() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut all = Vec::new();
    // rustls reports a missing close_notify as an UnexpectedEof error; a clean end is Ok.
    tls.read_to_end(&mut all)
        .expect("clean TLS end (close_notify)");
    assert!(
        all.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&all)
    );
}

#[test]
fn sni_selects_exact_wildcard_and_default_certificates() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let addr = gw.addrs()[0];
    let presented = |sni: &str, send_sni: bool| -> String {
        let tls = connect(addr, sni, any_cert_client(send_sni)).expect("handshake");
        let der = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        pki.label_of(&der)
    };
    assert_eq!(presented("api.test", true), "api");
    assert_eq!(presented("API.Test", true), "api");
    assert_eq!(presented("a.wild.test", true), "wild");
    assert_eq!(presented("zzz.wild.test", true), "wild");
    // A wildcard covers one label only.
    assert_eq!(presented("a.b.wild.test", true), "default");
    assert_eq!(presented("wild.test", true), "default");
    assert_eq!(presented("unknown.example", true), "default");
    assert_eq!(presented("api.test", false), "default", "no SNI: default");
    // And the verified path: a real client trusting the test CA accepts the wildcard certificate.
    let mut tls = connect(addr, "x.wild.test", default_client(&pki)).expect("verified wildcard");
    assert_eq!(get(&mut tls, "x.wild.test", "/").status, 200);
}

#[test]
fn tls12_and_tls13_both_work() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client(&pki.path("ca.pem"), &[version]);
        let mut tls = connect(gw.addrs()[0], "api.test", cfg).expect("handshake");
        assert_eq!(tls.conn.protocol_version(), Some(want));
        assert_eq!(get(&mut tls, "api.test", "/v").status, 200);
    }
}

#[test]
fn untrusted_client_view_fails_verification() {
    // A client that trusts another CA refuses the gateway's certificate (sanity check of the PKI).
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let cfg = client(&pki.path("other-ca.pem"), &[&rustls::version::TLS13]);
    assert!(connect(gw.addrs()[0], "api.test", cfg).is_err());
}

#[test]
fn plaintext_to_tls_port_gets_nginxs_400_and_gateway_stays_healthy() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(
        &pki,
        &up,
        "[server.timeouts]\ntls_handshake = \"5s\"",
    ));
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addrs()[0]).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .expect("write");
    let (closed, got) = wait_closed(&mut s, Duration::from_secs(4));
    assert!(closed, "plaintext connection left open");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?} (should not wait for the handshake timeout)",
        started.elapsed()
    );
    // nginx's answer, which a browser or curl can show (a TLS alert they cannot).
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400 "), "{text:?}");
    assert!(
        text.contains("The plain HTTP request was sent to HTTPS port"),
        "{text:?}"
    );
    assert!(text.contains("Connection: close"), "{text:?}");
    // Anything else that is not TLS still gets an alert (content type 21) or nothing.
    let mut s = TcpStream::connect(gw.addrs()[0]).expect("connect");
    s.write_all(b"\x01\x02\x03\x04\x05garbage").expect("write");
    let (closed, got) = wait_closed(&mut s, Duration::from_secs(4));
    assert!(closed, "garbage connection left open");
    assert!(
        got.is_empty() || got[0] == 0x15,
        "unexpected bytes: {:?}",
        String::from_utf8_lossy(&got)
    );
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    assert_eq!(get(&mut tls, "api.test", "/after").status, 200);
    // Per-connection causes are debug lines: not printed by default.
    assert!(
        !gw.log_contains("plain http on a tls port"),
        "{:?}",
        gw.logs()
    );
}

/// `run --log-level debug` prints the per-connection causes the default level leaves out (here:
/// plain HTTP on a TLS port). Before, nothing could turn debug lines on.
#[test]
fn log_level_debug_prints_per_connection_causes() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start_with_args(&tls_config(&pki, &up, ""), &["--log-level", "debug"]);
    let mut s = TcpStream::connect(gw.addrs()[0]).expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .expect("write");
    let (closed, _) = wait_closed(&mut s, Duration::from_secs(4));
    assert!(closed);
    assert!(
        gw.wait_log("plain http on a tls port", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    assert!(
        gw.logs().iter().any(|l| l.contains(" DEBUG ")),
        "{:?}",
        gw.logs()
    );
}

#[test]
fn silent_client_is_closed_after_the_handshake_timeout() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(
        &pki,
        &up,
        "[server.timeouts]\ntls_handshake = \"600ms\"",
    ));
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addrs()[0]).expect("connect");
    let (closed, got) = wait_closed(&mut s, Duration::from_secs(5));
    let took = started.elapsed();
    assert!(closed, "silent connection left open");
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );
    // A partial ClientHello (a record header promising more) is cut off the same way.
    let started = Instant::now();
    let mut s = TcpStream::connect(gw.addrs()[0]).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .expect("write");
    let (closed, _) = wait_closed(&mut s, Duration::from_secs(5));
    assert!(closed && started.elapsed() < Duration::from_secs(4));
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    assert_eq!(get(&mut tls, "api.test", "/after").status, 200);
}

#[test]
fn slow_head_over_tls_gets_408_and_the_worker_survives() {
    // The header timeout cancels a TLS read mid-flight; the 408 and the lingering close that follow
    // must not touch the cancelled stream's lost buffer (CancelSafe), and nothing may panic.
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(
        &pki,
        &up,
        "[server.timeouts]\nclient_header = \"500ms\"\nclient_body = \"500ms\"",
    ));
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    tls.write_all(b"GET /slow HTTP/1.1\r\nHost: api.test\r\n")
        .expect("write");
    let r = read_response(&mut tls).expect("a 408");
    assert_eq!(r.status, 408);
    // Same for a body that stops arriving.
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    tls.write_all(b"POST /b HTTP/1.1\r\nHost: api.test\r\nContent-Length: 10\r\n\r\nabc")
        .expect("write");
    let r = read_response(&mut tls).expect("a response");
    assert!(
        r.status == 408 || r.status == 502 || r.status == 504,
        "{r:?}"
    );
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    assert_eq!(get(&mut tls, "api.test", "/after").status, 200);
    assert!(!gw.log_contains("panic"), "{:?}", gw.logs());
}

#[test]
fn curl_over_https() {
    if common::tool_missing("curl", &["--version"], "apt-get install curl") {
        return;
    }
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let port = gw.addrs()[0].port();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &pki.p("ca.pem"),
            "--resolve",
            &format!("api.test:{port}:127.0.0.1"),
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{ssl_verify_result}",
            &format!("https://api.test:{port}/x?y=1"),
        ])
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200"), "{stdout}");
    assert!(stdout.trim_end().ends_with("1.1 0"), "{stdout}");
    assert_eq!(up.last_request().path(), "/x");
    assert_eq!(up.last_request().header("x-forwarded-proto"), Some("https"));
}

// ---------------------------------------------------------------------------------------------
// Redirect listeners

#[test]
fn redirect_listeners_answer_301_and_308_keeping_path_and_query() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&format!(
        r#"[server]
listen = [
  {{ addr = "127.0.0.1:0", redirect_https = 301 }},
  {{ addr = "127.0.0.1:0", redirect_https = 308, https_port = 8443 }},
]
workers = 1

[[services]]
name = "svc"
url = "{}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
"#,
        up.url()
    ));
    let (a301, a308) = (gw.addrs()[0], gw.addrs()[1]);
    let r = common::send_raw(
        a301,
        b"GET /a/b?x=1&y=%20 HTTP/1.1\r\nHost: Example.com:8080\r\n\r\n",
    );
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some("https://example.com/a/b?x=1&y=%20")
    );
    assert!(r.closed);
    let r = common::send_raw(
        a308,
        b"POST /p HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(r.status, 308);
    assert_eq!(r.header("location"), Some("https://api.test:8443/p"));
    // No host to redirect to: 400.
    let r = common::send_raw(a301, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 400);
    // A HEAD gets the head alone, of the 400 as of the redirect.
    for (req, status) in [
        (&b"HEAD / HTTP/1.0\r\n\r\n"[..], "400"),
        (b"HEAD /h HTTP/1.1\r\nHost: a.test\r\n\r\n", "301"),
    ] {
        let mut c = std::net::TcpStream::connect(a301).expect("connect");
        c.write_all(req).expect("write");
        let mut got = Vec::new();
        c.read_to_end(&mut got).expect("read");
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with(&format!("HTTP/1.1 {status}")) && got.ends_with("\r\n\r\n"),
            "{got:?}"
        );
    }
    // Nothing reached the upstream.
    assert_eq!(up.request_count(), 0);
}

#[test]
fn redirect_listener_answers_refused_heads_with_the_proxys_status() {
    let up = Upstream::echo("up");
    let gw = Gateway::start(&format!(
        r#"[server]
listen = [{{ addr = "127.0.0.1:0", redirect_https = 308 }}]
workers = 1
max_uri_bytes = 64

[[services]]
name = "svc"
url = "{}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
"#,
        up.url()
    ));
    let long = format!("GET /{} HTTP/1.1\r\nHost: a.test\r\n\r\n", "a".repeat(100));
    let r = common::send_raw(gw.addr(), long.as_bytes());
    assert_eq!(r.status, 414, "URI over max_uri_bytes");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(40 * 1024)
    );
    let r = common::send_raw(gw.addr(), big.as_bytes());
    assert_eq!(r.status, 431, "head over max_header_bytes");
    let r = common::send_raw(
        gw.addr(),
        b"POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\n\r\n",
    );
    assert_eq!(r.status, 501, "unimplemented transfer coding");
    let r = common::send_raw(gw.addr(), b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    assert_eq!(r.status, 400);
    assert_eq!(up.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Upstream TLS

/// A TLS upstream on a std thread: answers every request `200` with the SNI it saw in `X-Sni` and
/// the request path in `X-Path`; keep-alive. Stops on Drop.
struct TlsUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    handshakes: Arc<Mutex<usize>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsUpstream {
    fn start(pki: &Pki) -> TlsUpstream {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(pki.path("localhost.pem"))
                .expect("cert")
                .map(|c| c.expect("cert"))
                .collect();
        let key = PrivateKeyDer::from_pem_file(pki.path("localhost.key")).expect("key");
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let handshakes = Arc::new(Mutex::new(0));
        let (s, h) = (stop.clone(), handshakes.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: stops on Drop, or after 60 s whatever happens.
            let end = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let cfg = cfg.clone();
                        let h = h.clone();
                        std::thread::spawn(move || serve_tls_upstream(tcp, cfg, h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        TlsUpstream {
            addr,
            stop,
            handshakes,
            thread: Some(thread),
        }
    }

    fn handshakes(&self) -> usize {
        *self.handshakes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_tls_upstream(
    tcp: TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    handshakes: Arc<Mutex<usize>>,
) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    *handshakes.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    let sni = tls.conn.server_name().unwrap_or("-").to_string();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    for _ in 0..1000 {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match tls.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    buf.extend_from_slice(&tmp[..n]);
                    continue;
                }
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let path = head.split(' ').nth(1).unwrap_or("-").to_string();
        let host = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Host: ")
                    .or_else(|| l.strip_prefix("host: "))
            })
            .unwrap_or("-")
            .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\nX-Sni: {sni}\r\nX-Path: {path}\r\nX-Host: {host}\r\nContent-Length: 2\r\n\r\nok"
        );
        if tls.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

fn upstream_tls_gateway(service: &str) -> Gateway {
    Gateway::start(&format!(
        r#"[server]
listen = ["127.0.0.1:0"]
workers = 1

{service}

[[routes]]
name = "all"
service = "svc"
paths = ["/"]
strip_path = false
"#
    ))
}

#[test]
fn https_upstream_with_ca_file_verifies_and_sends_sni() {
    let pki = Pki::new();
    let up = TlsUpstream::start(&pki);
    let gw = upstream_tls_gateway(&format!(
        "[[services]]\nname = \"svc\"\nurl = \"https://localhost:{}/base\"\nca_file = \"{}\"",
        up.addr.port(),
        pki.p("ca.pem")
    ));
    let mut c = common::Conn::connect(gw.addr());
    for i in 0..3 {
        let r = c.get("client.test", &format!("/r{i}?q=1"));
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, b"ok");
        assert_eq!(r.header("x-sni"), Some("localhost"));
        assert_eq!(r.header("x-path"), Some(format!("/base/r{i}?q=1").as_str()));
        assert_eq!(
            r.header("x-host"),
            Some(format!("localhost:{}", up.addr.port()).as_str())
        );
    }
    // Pooled: one TLS connection upstream for the three requests.
    assert_eq!(up.handshakes(), 1);
}

/// The CA file's contents change (the upstream's CA is no longer trusted) and the config is
/// reloaded: pooled connections verified against the old roots are not reused (they were: the
/// pool was keyed by the file's path).
#[test]
fn a_ca_file_that_changed_retires_the_connections_verified_with_it() {
    let pki = Pki::new();
    let up = TlsUpstream::start(&pki);
    let ca = pki.path("trusted-ca.pem");
    std::fs::copy(pki.path("ca.pem"), &ca).expect("copy ca");
    let gw = upstream_tls_gateway(&format!(
        "[[services]]\nname = \"svc\"\nurl = \"https://localhost:{}\"\nca_file = \"{}\"",
        up.addr.port(),
        ca.display()
    ));
    let mut c = common::Conn::connect(gw.addr());
    assert_eq!(c.get("client.test", "/a").status, 200);
    assert_eq!(up.handshakes(), 1);
    std::fs::copy(pki.path("other-ca.pem"), &ca).expect("replace ca");
    gw.reload_to(2);
    let r = c.get("client.test", "/b");
    assert_eq!(
        r.status, 502,
        "served over a connection the new roots do not trust: {r:?}"
    );
}

#[test]
fn https_upstream_block_with_tls_server_name() {
    let pki = Pki::new();
    let up = TlsUpstream::start(&pki);
    let gw = upstream_tls_gateway(&format!(
        r#"[[upstreams]]
name = "u"
targets = [{{ target = "127.0.0.1:{port}" }}]
tls = true
ca_file = "{ca}"
tls_server_name = "upstream.test"

[[services]]
name = "svc"
upstream = "u""#,
        port = up.addr.port(),
        ca = pki.p("ca.pem")
    ));
    let r = common::get(gw.addr(), "client.test", "/z");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-sni"), Some("upstream.test"));
}

#[test]
fn https_upstream_with_wrong_ca_is_502() {
    let pki = Pki::new();
    let up = TlsUpstream::start(&pki);
    let gw = upstream_tls_gateway(&format!(
        "[[services]]\nname = \"svc\"\nurl = \"https://localhost:{}\"\nca_file = \"{}\"",
        up.addr.port(),
        pki.p("other-ca.pem")
    ));
    let r = common::get(gw.addr(), "client.test", "/");
    assert_eq!(r.status, 502, "{r:?}");
    // The log says why (it said `error="io error"` for every cause), and which upstream and name.
    assert!(gw.wait_log("upstream tls handshake failed", Duration::from_secs(5)));
    let line = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("upstream tls handshake failed"))
        .unwrap_or_default();
    assert!(
        line.contains("invalid peer certificate") && line.contains("server_name=localhost"),
        "{line}"
    );
    assert!(line.contains("upstream="), "{line}");
    // A name the certificate does not cover fails the same way.
    let gw2 = upstream_tls_gateway(&format!(
        "[[services]]\nname = \"svc\"\nurl = \"https://localhost:{}\"\nca_file = \"{}\"\ntls_server_name = \"nope.test\"",
        up.addr.port(),
        pki.p("ca.pem")
    ));
    assert_eq!(common::get(gw2.addr(), "client.test", "/").status, 502);
    assert!(gw2.wait_log("not valid for name", Duration::from_secs(5)));
}

/// Three upstreams on one address (a shared ingress serving several names): a connection opened with
/// SNI `localhost` must not be reused for the upstream that asks for `upstream.test`, nor for one whose
/// CA does not trust the server at all (it used to be: the pool was keyed by address alone).
#[test]
fn pooled_tls_connections_are_not_shared_across_server_names_or_roots() {
    let pki = Pki::new();
    let up = TlsUpstream::start(&pki);
    let upstream = |name: &str, sni: &str, ca: &str| {
        format!(
            "[[upstreams]]\nname = \"{name}\"\ntargets = [{{ target = \"127.0.0.1:{port}\" }}]\n\
             tls = true\nca_file = \"{ca}\"\ntls_server_name = \"{sni}\"\n\n\
             [[services]]\nname = \"{name}\"\nupstream = \"{name}\"\n\n\
             [[routes]]\nname = \"{name}\"\nservice = \"{name}\"\npaths = [\"/{name}\"]\n\n",
            port = up.addr.port(),
            ca = pki.p(ca),
        )
    };
    let gw = Gateway::start(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n\n{}{}{}",
        upstream("a", "localhost", "ca.pem"),
        upstream("b", "upstream.test", "ca.pem"),
        upstream("c", "localhost", "other-ca.pem"),
    ));
    let mut c = common::Conn::connect(gw.addr());
    let r = c.get("client.test", "/a");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-sni"), Some("localhost"));
    let r = c.get("client.test", "/b");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-sni"),
        Some("upstream.test"),
        "reused a's connection"
    );
    let r = c.get("client.test", "/c");
    assert_eq!(
        r.status, 502,
        "a connection verified by another CA was reused: {r:?}"
    );
    // Each name keeps its own pooled connection.
    let r = c.get("client.test", "/a");
    assert_eq!(r.header("x-sni"), Some("localhost"));
    let r = c.get("client.test", "/b");
    assert_eq!(r.header("x-sni"), Some("upstream.test"));
    assert_eq!(up.handshakes(), 2);
}

// ---------------------------------------------------------------------------------------------
// Config

fn load_errors(text: &str) -> Vec<(String, String)> {
    match ringgate::config::load_str(text, "test.toml") {
        Ok(_) => panic!("config loaded but should not:\n{text}"),
        Err(errs) => errs
            .into_iter()
            .map(|e| {
                assert!(e.line > 0, "error without position: {e}");
                (e.key, e.message)
            })
            .collect(),
    }
}

#[track_caller]
fn expect_error(text: &str, key: &str, fragment: &str) {
    let errs = load_errors(text);
    assert!(
        errs.iter().any(|(k, m)| k == key && m.contains(fragment)),
        "no error at {key} containing {fragment:?}; got {errs:#?}"
    );
}

const ROUTE: &str = r#"
[[services]]
name = "s"
url = "http://127.0.0.1:9001"

[[routes]]
name = "r"
service = "s"
paths = ["/"]
"#;

fn cfg_with(listen: &str, certs: &str) -> String {
    format!("[server]\nlisten = [{listen}]\n{ROUTE}{certs}")
}

fn cert_entry(pki: &Pki, cert: &str, key: &str, extra: &str) -> String {
    format!(
        "\n[[certificates]]\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
        pki.p(cert),
        pki.p(key)
    )
}

#[test]
fn config_errors_are_located_at_their_keys() {
    let pki = Pki::new();
    let tls = r#"{ addr = "127.0.0.1:8443", tls = true }"#;
    // TLS listener without certificates.
    expect_error(&cfg_with(tls, ""), "server.listen[0]", "no certificate");
    // Certificates without a TLS listener: a plain listener on 443 next to a certificate used to
    // pass `check` and then serve plain HTTP.
    expect_error(
        &cfg_with(
            "\"127.0.0.1:443\"",
            &cert_entry(&pki, "api.pem", "api.key", ""),
        ),
        "certificates[0]",
        "no listener has `tls = true`",
    );
    // ... but not on top of a TLS listener that was refused.
    let errs = load_errors(&cfg_with(
        r#"{ addr = "127.0.0.1:99999", tls = true }, "127.0.0.1:80""#,
        &cert_entry(&pki, "api.pem", "api.key", ""),
    ));
    assert_eq!(errs.len(), 1, "{errs:#?}");
    // Unreadable files.
    expect_error(
        &cfg_with(tls, &cert_entry(&pki, "missing.pem", "api.key", "")),
        "certificates[0].cert",
        "cannot read certificate file",
    );
    expect_error(
        &cfg_with(tls, &cert_entry(&pki, "api.pem", "missing.key", "")),
        "certificates[0].key",
        "cannot read key file",
    );
    // Not PEM / wrong PEM.
    expect_error(
        &cfg_with(tls, &cert_entry(&pki, "api.key", "api.key", "")),
        "certificates[0].cert",
        "no \"BEGIN CERTIFICATE\"",
    );
    expect_error(
        &cfg_with(tls, &cert_entry(&pki, "api.pem", "api.pem", "")),
        "certificates[0].key",
        "no private key",
    );
    // Key of another certificate.
    expect_error(
        &cfg_with(tls, &cert_entry(&pki, "api.pem", "wild.key", "")),
        "certificates[0].key",
        "does not match",
    );
    // SNI not covered by the certificate, duplicate SNI, IP as SNI.
    expect_error(
        &cfg_with(
            tls,
            &cert_entry(&pki, "api.pem", "api.key", "snis = [\"other.test\"]"),
        ),
        "certificates[0].snis[0]",
        "not valid for",
    );
    let two = format!(
        "{}{}",
        cert_entry(&pki, "api.pem", "api.key", "snis = [\"api.test\"]"),
        cert_entry(&pki, "other.pem", "other.key", "snis = [\"api.test\"]")
    );
    expect_error(
        &cfg_with(tls, &two),
        "certificates[1].snis[0]",
        "already served by certificates[0]",
    );
    expect_error(
        &cfg_with(
            tls,
            &cert_entry(&pki, "api.pem", "api.key", "snis = [\"127.0.0.1\"]"),
        ),
        "certificates[0].snis[0]",
        "not a valid SNI name",
    );
    // Two defaults; an unreachable certificate.
    let two_defaults = format!(
        "{}{}",
        cert_entry(&pki, "api.pem", "api.key", "default = true"),
        cert_entry(&pki, "wild.pem", "wild.key", "default = true")
    );
    expect_error(
        &cfg_with(tls, &two_defaults),
        "certificates[1].default",
        "only one certificate can be the default",
    );
    let unreachable = format!(
        "{}{}",
        cert_entry(&pki, "api.pem", "api.key", ""),
        cert_entry(&pki, "wild.pem", "wild.key", "")
    );
    expect_error(
        &cfg_with(tls, &unreachable),
        "certificates[1]",
        "never be served",
    );
    // Listener options.
    expect_error(
        &cfg_with(r#"{ addr = "127.0.0.1:80", redirect_https = 302 }"#, ""),
        "server.listen[0].redirect_https",
        "301",
    );
    expect_error(
        &cfg_with(r#"{ addr = "127.0.0.1:80", https_port = 443 }"#, ""),
        "server.listen[0].https_port",
        "only goes with `redirect_https",
    );
    expect_error(
        &cfg_with(r#"{ addr = "127.0.0.1:80", tlz = true }"#, ""),
        "server.listen[0].tlz",
        "unknown field",
    );
    // Upstream TLS options.
    let svc = |extra: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n[[services]]\nname = \"s\"\n{extra}\n\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/\"]\n"
        )
    };
    expect_error(
        &svc("url = \"http://127.0.0.1:9001\"\nca_file = \"x.pem\""),
        "services[0].ca_file",
        "only applies to https",
    );
    expect_error(
        &svc(&format!(
            "url = \"https://127.0.0.1:9001\"\nca_file = \"{}\"",
            pki.p("api.key")
        )),
        "services[0].ca_file",
        "no \"BEGIN CERTIFICATE\"",
    );
    expect_error(
        &svc("url = \"https://127.0.0.1:9001\"\ntls_server_name = \"bad name\""),
        "services[0].tls_server_name",
        "not a valid TLS server name",
    );
}

#[test]
fn valid_tls_config_and_certificate_files_are_reread_on_each_load() {
    let pki = Pki::new();
    // The certificate path stays the same; its content changes between two loads (rotation).
    let live_cert = pki.path("live.pem");
    let live_key = pki.path("live.key");
    std::fs::copy(pki.path("api.pem"), &live_cert).expect("copy");
    std::fs::copy(pki.path("api.key"), &live_key).expect("copy");
    // Relative paths are relative to the config file's directory.
    let text = cfg_with(
        r#"{ addr = "127.0.0.1:8443", tls = true }, { addr = "127.0.0.1:8080", redirect_https = 308 }"#,
        "\n[[certificates]]\ncert = \"live.pem\"\nkey = \"live.key\"\n",
    );
    let config_file = pki.path("ringgate.toml");
    std::fs::write(&config_file, &text).expect("write config");
    let load = || ringgate::config::load(&config_file).unwrap_or_else(|e| panic!("{e:?}"));
    let cfg = load();
    assert_eq!(cfg.certificates.len(), 1);
    assert!(
        cfg.certificates[0].default,
        "a single certificate is the default"
    );
    assert_eq!(pki.label_of(&cfg.certificates[0].key.cert[0]), "api");
    assert!(ringgate::tls::TlsContext::build(
        &cfg,
        &ringgate::tls::TlsShared::new().expect("tls shared")
    )
    .is_ok());
    let summary = ringgate::config::summary(&cfg);
    assert!(summary.contains("127.0.0.1:8443 (tls)"), "{summary}");
    assert!(summary.contains("redirect 308"), "{summary}");

    std::fs::copy(pki.path("default.pem"), &live_cert).expect("copy");
    std::fs::copy(pki.path("default.key"), &live_key).expect("copy");
    let cfg = load();
    assert_eq!(pki.label_of(&cfg.certificates[0].key.cert[0]), "default");
    assert!(ringgate::tls::TlsContext::build(
        &cfg,
        &ringgate::tls::TlsShared::new().expect("tls shared")
    )
    .is_ok());
}

/// Certificates are re-read on reload (SIGHUP): new handshakes present the rotated certificate while
/// an established TLS connection keeps working.
#[test]
fn rotated_certificate_is_served_after_reload_without_dropping_connections() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let addr = gw.addrs()[0];
    let presented = |tls: &Tls| -> String {
        let der = tls
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .unwrap_or_default();
        pki.label_of(&der)
    };
    let mut old = connect(addr, "api.test", any_cert_client(true)).expect("handshake");
    assert_eq!(presented(&old), "api");
    assert_eq!(get(&mut old, "api.test", "/before").status, 200);

    // Rotate api.test's certificate files in place (the "other" leaf also covers api.test).
    std::fs::copy(pki.path("other.pem"), pki.path("api.pem")).expect("rotate cert");
    std::fs::copy(pki.path("other.key"), pki.path("api.key")).expect("rotate key");
    gw.reload_to(2);

    let fresh = connect(addr, "api.test", any_cert_client(true)).expect("handshake after reload");
    assert_eq!(presented(&fresh), "other");
    // The connection established before the reload is still served.
    assert_eq!(get(&mut old, "api.test", "/after").status, 200);
}

/// One GET to api.test over a new connection with `cfg` (whose session cache it shares with the
/// other visits); how the handshake went.
fn visit(addr: SocketAddr, cfg: &Arc<ClientConfig>, path: &str) -> Option<rustls::HandshakeKind> {
    let mut tls = connect(addr, "api.test", cfg.clone()).expect("handshake");
    // The response read also reads the tickets the server sent after the handshake.
    assert_eq!(get(&mut tls, "api.test", path).status, 200);
    tls.conn.handshake_kind()
}

#[test]
fn sessions_resume_across_a_reload() {
    // One ticket key per process: a reload (new routes, the same certificates) must not turn every
    // returning client's resumption into a full handshake.
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let addr = gw.addrs()[0];
    // One client config = one session cache, like a browser.
    let cfg = default_client(&pki);
    let visit = |path: &str| visit(addr, &cfg, path);
    assert_eq!(visit("/first"), Some(rustls::HandshakeKind::Full));
    assert_eq!(visit("/second"), Some(rustls::HandshakeKind::Resumed));
    gw.reload_to(2);
    assert_eq!(
        visit("/after-reload"),
        Some(rustls::HandshakeKind::Resumed),
        "the reload ended resumption"
    );
}

#[test]
fn a_reload_that_replaces_a_certificate_ends_resumption() {
    // Resumption skips certificate selection: a session made with a replaced (say, compromised)
    // certificate must not be resumed.
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let addr = gw.addrs()[0];
    let cfg = any_cert_client(true);
    let visit = |path: &str| visit(addr, &cfg, path);
    assert_eq!(visit("/first"), Some(rustls::HandshakeKind::Full));
    assert_eq!(visit("/second"), Some(rustls::HandshakeKind::Resumed));
    std::fs::copy(pki.path("other.pem"), pki.path("api.pem")).expect("rotate cert");
    std::fs::copy(pki.path("other.key"), pki.path("api.key")).expect("rotate key");
    gw.reload_to(2);
    assert_eq!(
        visit("/after-rotation"),
        Some(rustls::HandshakeKind::Full),
        "resumed into a session of the replaced certificate"
    );
    assert_eq!(visit("/again"), Some(rustls::HandshakeKind::Resumed));
}

/// An https upstream at `target` with an active check (`ca` as its `ca_file`), probed every
/// 100 ms, out after one failed probe.
fn actively_checked_tls_gateway(target: SocketAddr, ca: &str) -> Gateway {
    upstream_tls_gateway(&format!(
        r#"[[upstreams]]
name = "u"
targets = [{{ target = "{target}" }}]
tls = true
ca_file = "{ca}"
tls_server_name = "upstream.test"
[upstreams.health.active]
path = "/healthz"
interval = "100ms"
timeout = "1s"
unhealthy_threshold = 1

[[services]]
name = "svc"
upstream = "u""#,
    ))
}

#[test]
fn active_checks_of_https_upstreams_run_over_verified_tls() {
    let pki = Pki::new();
    // Verified like requests: probes handshake (with SNI and the CA) and get a status.
    let up = TlsUpstream::start(&pki);
    let gw = actively_checked_tls_gateway(up.addr, &pki.p("ca.pem"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.handshakes() < 3 {
        assert!(Instant::now() < deadline, "no TLS probes: {:?}", gw.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !gw.log_contains("unhealthy (active check)"),
        "{:?}",
        gw.logs()
    );
    drop(gw);

    // A target whose certificate the upstream's CA does not vouch for is unhealthy, as its
    // requests would fail: a TCP connect alone would have passed it.
    let up = TlsUpstream::start(&pki);
    let gw = actively_checked_tls_gateway(up.addr, &pki.p("other-ca.pem"));
    assert!(
        gw.wait_log(
            "upstream target unhealthy (active check)",
            Duration::from_secs(5)
        ),
        "{:?}",
        gw.logs()
    );
    assert!(
        gw.logs()
            .iter()
            .any(|l| l.contains("unhealthy (active check)") && l.contains("certificate")),
        "the reason names the certificate: {:?}",
        gw.logs()
    );
}

#[test]
fn an_https_target_trickling_its_handshake_fails_its_check_within_the_timeout() {
    // A TLS record header announcing 16 KiB, then a byte every 200 ms: each read gets something
    // well within the timeout, so only a deadline over the whole probe ends it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let server = std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(20);
        while !s.load(Ordering::SeqCst) && Instant::now() < end {
            match listener.accept() {
                Ok((mut tcp, _)) => {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        let _ = tcp.set_nonblocking(false);
                        let _ = tcp.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
                        while !s.load(Ordering::SeqCst) && Instant::now() < end {
                            if tcp.write_all(&[0]).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    let pki = Pki::new();
    let gw = actively_checked_tls_gateway(addr, &pki.p("ca.pem"));
    let started = Instant::now();
    assert!(
        gw.wait_log(
            "upstream target unhealthy (active check)",
            Duration::from_secs(5)
        ),
        "the probe never ended: {:?}",
        gw.logs()
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        gw.wait_log("timed out", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    stop.store(true, Ordering::SeqCst);
    let _ = server.join();
}

/// A TLS connection holds only the generation of its latest request: after a reload that moved the
/// service to another upstream, and one request under the new generation on the same connection,
/// the old target's idle pooled connection is closed within seconds (not kept until
/// `idle_timeout` because the connection was accepted under the old generation).
#[test]
fn a_tls_connection_lets_go_of_the_generation_it_was_accepted_under() {
    let pki = Pki::new();
    let a = Upstream::echo("a");
    let b = Upstream::echo("b");
    let gw = Gateway::start(&tls_config(&pki, &a, ""));
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    assert_eq!(
        get(&mut tls, "api.test", "/one").header("x-upstream"),
        Some("a")
    );
    gw.rewrite_config(&tls_config(&pki, &b, ""));
    gw.reload_to(2);
    assert_eq!(
        get(&mut tls, "api.test", "/two").header("x-upstream"),
        Some("b")
    );
    assert!(
        a.wait_for(Duration::from_secs(5), |r| r.peer_closed > 0),
        "the removed target's idle connection is still open"
    );
    assert_eq!(
        get(&mut tls, "api.test", "/three").header("x-upstream"),
        Some("b")
    );
}

/// A TLS connection that never sends its ClientHello does not hold a drain up for `tls_handshake`:
/// the handshake is a fresh wait, ended after the drain's grace.
#[test]
fn a_silent_tls_connection_does_not_hold_the_drain() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let mut gw = Gateway::start(&tls_config(
        &pki,
        &up,
        "drain_timeout = \"20s\"\n\n[server.timeouts]\ntls_handshake = \"30s\"\n",
    ));
    let silent = TcpStream::connect(gw.addrs()[0]).expect("connect");
    std::thread::sleep(Duration::from_millis(100));
    let took = gw.sigterm_drain_time();
    assert!(took < Duration::from_secs(4), "drain took {took:?}");
    drop(silent);
}

/// An expired or not-yet-valid certificate is served (as nginx does: a new one may be on its way)
/// but said: `check` warns with the file and the date, start and reload log it, and
/// `ringgate_tls_certificate_expiry_timestamp_seconds` shows every file certificate's expiry.
/// Before, `check` said `ok` and a reload that swapped in an expired certificate logged only
/// `reloaded`.
#[test]
fn expired_certificates_are_warned_about_and_exported() {
    let mut pki = Pki::new();
    let ca = pki.ca("old-ca", "old CA");
    pki.leaf_valid(&ca, "expired", &["old.test"], (2020, 2021));
    pki.leaf_valid(&ca, "future", &["new.test"], (2099, 2100));
    let up = Upstream::echo("up");
    let config = format!(
        r#"[server]
listen = [{{ addr = "127.0.0.1:0", tls = true }}]
workers = 1

[admin]
listen = "127.0.0.1:0"

[[services]]
name = "svc"
url = "{url}"

[[routes]]
name = "all"
service = "svc"
paths = ["/"]

[[certificates]]
cert = "{expired}"
key = "{expired_key}"
snis = ["old.test"]

[[certificates]]
cert = "{future}"
key = "{future_key}"
snis = ["new.test"]
"#,
        url = up.url(),
        expired = pki.p("expired.pem"),
        expired_key = pki.p("expired.key"),
        future = pki.p("future.pem"),
        future_key = pki.p("future.key"),
    );
    let f = TempFile::new(".toml", &config);
    let out = run_cli(&["check", &f.path_str()], Duration::from_secs(10));
    assert_eq!(out.code(), Some(0), "{out:?}");
    let text = out.all();
    assert!(
        text.contains(&format!(
            "warning: certificate {} expired on 2021-01-01",
            pki.p("expired.pem")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "warning: certificate {} is not valid until 2099-01-01",
            pki.p("future.pem")
        )),
        "{text}"
    );
    let gw = Gateway::start(&config);
    assert!(
        gw.wait_log("expired on 2021-01-01", Duration::from_secs(5)),
        "{:?}",
        gw.logs()
    );
    let r = send_raw(
        gw.admin_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n",
    );
    let metrics = r.body_str();
    assert!(
        metrics.contains(&format!(
            "ringgate_tls_certificate_expiry_timestamp_seconds{{certificate=\"{}\"}} 1609459200",
            pki.p("expired.pem")
        )),
        "{metrics}"
    );
}

/// TLS connections that never became a request stream are counted by reason:
/// `ringgate_tls_handshake_failures_total` (before, they showed nowhere but debug logs).
#[test]
fn failed_handshakes_are_counted_by_reason() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(
        &tls_config(&pki, &up, "[server.timeouts]\ntls_handshake = \"300ms\"").replace(
            "workers = 1\n",
            "workers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        ),
    );
    let tls_addr = gw.addrs()[0];
    // Garbage that is not TLS, then a silent client that times out.
    let mut s = TcpStream::connect(tls_addr).expect("connect");
    s.write_all(b"\x16\x03\x01\x00\x05garbage").expect("write");
    let _ = wait_closed(&mut s, Duration::from_secs(3));
    let mut silent = TcpStream::connect(tls_addr).expect("connect");
    let (closed, _) = wait_closed(&mut silent, Duration::from_secs(3));
    assert!(closed, "silent client not closed");
    let r = send_raw(
        gw.admin_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n",
    );
    let m = r.body_str();
    for reason in ["error", "timeout"] {
        let line = format!("ringgate_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
        let n = m
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {line:?} in {m}"));
        assert!(n >= 1, "{reason}: {n}");
    }
    // Both connections were accepted ones, though neither finished its handshake: they count
    // from their accept (they were missing, so a handshake flood did not show).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = send_raw(
            gw.admin_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: admin\r\n\r\n",
        )
        .body_str();
        let accepted = m
            .lines()
            .find_map(|l| l.strip_prefix("ringgate_downstream_connections_accepted_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let open = m
            .lines()
            .find_map(|l| l.strip_prefix("ringgate_downstream_connections "))
            .and_then(|v| v.trim().parse::<u64>().ok());
        if accepted >= 2 && open == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "accepted {accepted}, open {open:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A gateway with `keepalive = "2s"` and a TLS connection to it that has served one request.
fn served_once_with_2s_keep_alive(pki: &Pki, up: &Upstream) -> (Gateway, Tls) {
    let gw = Gateway::start(&tls_config(
        pki,
        up,
        "[server.timeouts]\nkeepalive = \"2s\"",
    ));
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(pki)).expect("handshake");
    assert_eq!(get(&mut tls, "api.test", "/first").status, 200);
    (gw, tls)
}

/// Idle past the park threshold (500 ms), a TLS connection gives up its task and buffers and keeps
/// only rustls' state in the parking lot; what the client sends next (a pipelined pair with a
/// body) is served in order on the same connection, and it parks again. At its keep-alive
/// deadline the lot closes it with a close_notify, as an active connection closes: the client sees
/// a clean end, not a truncation.
#[test]
fn an_idle_tls_connection_parks_resumes_and_closes_with_close_notify() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let (_gw, mut tls) = served_once_with_2s_keep_alive(&pki, &up);
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(800));
        tls.write_all(
            format!(
                "POST /r{round}/a HTTP/1.1\r\nHost: api.test\r\nContent-Length: 2\r\n\r\nhi\
                 GET /r{round}/b HTTP/1.1\r\nHost: api.test\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write after parking");
        // Both answers are in before the first is read: each read must leave the other.
        std::thread::sleep(Duration::from_millis(100));
        for path in ["a", "b"] {
            let r = read_response(&mut tls).expect("response after parking");
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
    // Parked, then past the 2 s keep-alive: closed by the lot's sweep, with close_notify (rustls
    // reports a close without one as an UnexpectedEof error).
    let started = Instant::now();
    let mut rest = Vec::new();
    tls.read_to_end(&mut rest)
        .expect("clean TLS end (close_notify) at the keep-alive deadline");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Idle TLS keep-alive connections hold little memory once parked: rustls' state, not the
/// connection's task (~12 KiB) and stream buffers (monoio-rustls kept 32 KiB). Measured as the
/// marginal cost of a second batch once a first batch has parked, as `tests/scale.rs` measures
/// plain connections. Before: ~37 KiB per connection; now ~9 KiB; nginx ~16 KiB (its buffers
/// released on idle). Every connection still serves its next request.
#[test]
fn idle_tls_connections_park_and_hold_little_memory() {
    const BATCH: usize = 1000;
    let limit = raise_nofile(4096);
    assert!(
        limit >= 2 * BATCH as u64 + 200,
        "RLIMIT_NOFILE too low: {limit}"
    );
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let client = default_client(&pki);
    let open_batch = |tag: &str| -> Vec<Tls> {
        let mut conns: Vec<Tls> = (0..BATCH)
            .map(|_| connect(gw.addrs()[0], "api.test", client.clone()).expect("handshake"))
            .collect();
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(get(c, "api.test", &format!("/{tag}/{i}")).status, 200);
        }
        // Past parking (0.5 s), mimalloc's purge delay and the workers' once-a-second mi_collect.
        std::thread::sleep(Duration::from_millis(2500));
        conns
    };
    let mut first = open_batch("first");
    let before = gw.rss_kb();
    assert!(before > 0, "cannot read VmRSS of the gateway");
    let mut second = open_batch("second");
    let after = gw.rss_kb();
    let per_conn = (after.saturating_sub(before) * 1024) as f64 / BATCH as f64;
    eprintln!("idle TLS connections: {before} KiB, then {after} KiB: {per_conn:.0} B/conn");
    assert!(
        per_conn < 14.0 * 1024.0,
        "{per_conn:.0} bytes per idle TLS connection ({before} KiB, then {after} KiB)"
    );
    for (i, c) in first.iter_mut().chain(second.iter_mut()).enumerate() {
        assert_eq!(
            get(c, "api.test", &format!("/again/{i}")).status,
            200,
            "connection {i}"
        );
    }
    assert_eq!(up.request_count(), 4 * BATCH);
}

/// A client that trickles a TLS record a byte at a time never completes a request: it is closed
/// at its keep-alive deadline. (Parking must not restart that wait on each byte: the bytes feed
/// rustls but produce no plaintext, so a connection holding part of a record does not park.)
#[test]
fn a_tls_record_trickled_a_byte_at_a_time_does_not_outlive_keep_alive() {
    let pki = Pki::new();
    let up = Upstream::echo("up");
    let (_gw, mut tls) = served_once_with_2s_keep_alive(&pki, &up);
    // One encrypted request, sent raw, a byte every 300 ms.
    tls.conn
        .writer()
        .write_all(b"GET /slow HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .expect("encrypt");
    let mut record = Vec::new();
    while tls.conn.wants_write() {
        tls.conn.write_tls(&mut record).expect("record");
    }
    let started = Instant::now();
    let mut closed = None;
    for b in &record[..record.len() - 1] {
        std::thread::sleep(Duration::from_millis(300));
        if tls.sock.write_all(&[*b]).is_err() {
            closed = Some(started.elapsed());
            break;
        }
        if started.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    let closed = closed.or_else(|| {
        let (gone, _) = wait_closed(&mut tls.sock, Duration::from_millis(500));
        gone.then(|| started.elapsed())
    });
    let closed = closed.expect("the trickling connection was still open after 6 s");
    assert!(closed < Duration::from_secs(5), "closed after {closed:?}");
    assert!(up.requests().iter().all(|r| r.path() != "/slow"));
}

/// A WebSocket through a TLS listener: the 101, the upstream's greeting, then 1 MiB of frames in
/// each direction echoed back intact. The tunnel copies both ways over the one TLS stream split in
/// two (an `unsafe impl` of `Split`), so this is the test for it.
#[test]
fn a_websocket_over_tls_tunnels_both_ways() {
    use common::ws;
    use common::Behaviour;
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::WebSocketEcho);
    let gw = Gateway::start(&tls_config(&pki, &up, ""));
    let mut tls = connect(gw.addrs()[0], "api.test", default_client(&pki)).expect("handshake");
    tls.write_all(b"GET /chat HTTP/1.1\r\nHost: api.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .expect("send");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut b).expect("head");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let hello = ws::read_frame(&mut tls).expect("greeting");
    assert_eq!(hello.payload, b"hello from upstream");
    // 64 frames of 16 KiB, each a different pattern, written and read back one by one.
    for i in 0..64u32 {
        let payload: Vec<u8> = (0..16 * 1024u32)
            .map(|j| (j.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
            .collect();
        ws::write_frame(&mut tls, ws::OP_BINARY, &payload, Some([1, 2, 3, 4])).expect("write");
        let back = ws::read_frame(&mut tls).expect("echo");
        assert_eq!(back.opcode, ws::OP_BINARY);
        assert!(back.payload == payload, "frame {i} came back different");
    }
}
