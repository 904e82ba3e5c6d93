//! A real ACME CA for the ACME tests: Let's Encrypt's `pebble` test server with its
//! `pebble-challtestsrv` as the DNS server (every name resolves to 127.0.0.1), both from Debian's
//! `pebble` package (`.ci/run` installs it). Ports are picked free on loopback; pebble's own HTTPS
//! certificate comes from a CA generated here, which the gateway is given as `[acme] ca_file`.
//! Both processes are killed by PID on Drop.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A loopback port nobody listens on right now, for a server that must be told its port before
/// it starts (the CA validates on the gateway's ports).
///
/// Not `bind(0)`: two tests running at once could each be handed the same released port, and two
/// gateways binding it with SO_REUSEPORT would both succeed and split the connections. Ports come
/// instead from a counter below the kernel's ephemeral range (32768 and up), from a base that
/// differs per process, each checked free by binding it once.
pub fn free_port() -> u16 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    const LOW: u64 = 20_000;
    const SPAN: u64 = 12_000;
    let base = u64::from(std::process::id()) * 97 % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let Ok(port) = u16::try_from(LOW + (base + n) % SPAN) else {
            continue;
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

pub struct Pebble {
    pebble: Child,
    dns: Child,
    pub dir: PathBuf,
    pub listen: SocketAddr,
    pub management: SocketAddr,
    /// pebble-challtestsrv's management API (`/set-txt`, `/clear-txt`: DNS-01 records).
    pub dns_management: SocketAddr,
}

impl Pebble {
    /// Panics with an install hint when the binaries are missing: these tests must not pass by
    /// skipping.
    pub fn require() {
        for bin in ["pebble", "pebble-challtestsrv"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {bin}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                found,
                "{bin} is not installed: apt-get install pebble (.ci/run does)"
            );
        }
    }

    /// Starts the DNS server and the CA. The CA validates HTTP-01 on `http_port` and TLS-ALPN-01
    /// on `tls_port` (where the gateway will listen).
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        Pebble::start_with(http_port, tls_port, None)
    }

    /// Like `start`; with `eab` = (key id, base64url HMAC key), the CA requires External Account
    /// Binding with that key.
    pub fn start_with(http_port: u16, tls_port: u16, eab: Option<(&str, &str)>) -> Pebble {
        Pebble::require();
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ringgate-pebble-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("pebble dir");
        // pebble's HTTPS certificate, from a CA of ours (ca.pem: the gateway's `ca_file`).
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pebble test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("ca");
        let leaf_key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("leaf params")
            .signed_by(&leaf_key, &ca)
            .expect("leaf");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        std::fs::write(dir.join("cert.pem"), leaf.pem()).expect("write cert");
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).expect("write key");

        let dns_port = free_port();
        let dns_mgmt = free_port();
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                &format!("127.0.0.1:{dns_port}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn pebble-challtestsrv");
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let eab_json = match eab {
            Some((kid, key)) => format!(
                r#""externalAccountBindingRequired":true,"externalAccountMACKeys":{{"{kid}":"{key}"}}"#
            ),
            None => r#""externalAccountBindingRequired":false"#.to_owned(),
        };
        let config = format!(
            r#"{{"pebble":{{"listenAddress":"{listen}","managementListenAddress":"{management}","certificate":"{}","privateKey":"{}","httpPort":{http_port},"tlsPort":{tls_port},"ocspResponderURL":"",{eab_json}}}}}"#,
            dir.join("cert.pem").display(),
            dir.join("key.pem").display(),
        );
        std::fs::write(dir.join("pebble.json"), config).expect("write pebble config");
        let log = std::fs::File::create(dir.join("pebble.log")).expect("pebble log");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            // No random validation delays; no injected bad nonces (a retry after one would take
            // the gateway's one-minute backoff).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn pebble");
        let p = Pebble {
            pebble,
            dns,
            dir,
            listen,
            management,
            dns_management: SocketAddr::from(([127, 0, 0, 1], dns_mgmt)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(listen).is_err() || TcpStream::connect(management).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble did not listen on {listen}; log:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// `[acme] directory`.
    pub fn directory(&self) -> String {
        format!("https://{}/dir", self.listen)
    }

    /// The CA file pebble's own HTTPS certificate chains to (`[acme] ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// pebble's root for the certificates it issues (PEM), fetched with curl from its management
    /// interface and written next to its config; returns the path.
    pub fn issuing_root(&self) -> PathBuf {
        let out = self.dir.join("issuing-root.pem");
        let st = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(self.ca_file())
            .arg("-o")
            .arg(&out)
            .arg(format!("https://{}/roots/0", self.management))
            .status()
            .expect("run curl");
        assert!(st.success(), "fetching pebble's root failed");
        out
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Stops the CA (the DNS server too).
    pub fn stop(&mut self) {
        for c in [&mut self.pebble, &mut self.dns] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
