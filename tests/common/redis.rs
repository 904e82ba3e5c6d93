//! A real `redis-server` on a free loopback port for the cluster rate-limit tests; killed (by PID)
//! when dropped. `Redis::missing()` says whether a test must go without it (`.ci/run` installs it).
//! `Redis::start_tls()` adds a TLS port (Debian's redis-server is built with TLS) that wants a
//! client certificate, with a PKI generated at test time (rcgen).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// The redis-server we started; killed by PID when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
    /// `--requirepass`, when started with one.
    password: Option<String>,
    /// The TLS port and its certificates, when started with `start_tls`.
    pub tls: Option<RedisPki>,
}

/// A temp directory of PEM files for a TLS Redis, removed on Drop: `ca.pem`, `server.{pem,key}`
/// (127.0.0.1, signed by ca), `client.{pem,key}` (signed by ca), `other-ca.pem` (signs nothing
/// here: a CA that does not verify the server).
pub struct RedisPki {
    pub port: u16,
    dir: std::path::PathBuf,
}

impl RedisPki {
    fn new(port: u16) -> RedisPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let dir =
            std::env::temp_dir().join(format!("ringgate-redis-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let pki = RedisPki { port, dir };
        let ca = |label: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // Distinct names: OpenSSL takes a leaf named like its issuer for self-signed.
            params.distinguished_name.push(DnType::CommonName, label);
            let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
                .expect("ca cert");
            std::fs::write(pki.path(&format!("{label}.pem")), ca.pem()).expect("write ca");
            ca
        };
        let root = ca("ca");
        ca("other-ca");
        for (label, names) in [("server", vec!["127.0.0.1".to_owned()]), ("client", vec![])] {
            let key = KeyPair::generate().expect("key");
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, label);
            let cert = params.signed_by(&key, &root).expect("sign leaf");
            std::fs::write(pki.path(&format!("{label}.pem")), cert.pem()).expect("write cert");
            std::fs::write(pki.path(&format!("{label}.key")), key.serialize_pem())
                .expect("write key");
        }
        pki
    }

    /// The path of one of the files, as a string for a config.
    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for RedisPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    pub fn start() -> Option<Redis> {
        Self::start_with(None)
    }

    /// A server that wants `AUTH password` first (`--requirepass`).
    pub fn start_with(password: Option<&str>) -> Option<Redis> {
        let port = TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Self::spawn(port, password, None)?;
        let password = password.map(str::to_owned);
        let r = Redis {
            child,
            port,
            password,
            tls: None,
        };
        r.wait_up();
        Some(r)
    }

    /// A server with a TLS port too (`tls.port`), which wants a client certificate signed by the
    /// test CA (`tls-auth-clients yes`, Redis' default). The plain port stays for the tests' own reads.
    pub fn start_tls() -> Option<Redis> {
        let free = || -> Option<u16> {
            Some(
                TcpListener::bind("127.0.0.1:0")
                    .ok()?
                    .local_addr()
                    .ok()?
                    .port(),
            )
        };
        let (port, tls_port) = (free()?, free()?);
        let pki = RedisPki::new(tls_port);
        let child = Self::spawn(port, None, Some(&pki))?;
        let r = Redis {
            child,
            port,
            password: None,
            tls: Some(pki),
        };
        r.wait_up();
        Some(r)
    }

    /// Kills the server and starts an empty one on the same port (no persistence: a restart, or a
    /// failover, that lost every key).
    pub fn restart_empty(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, self.password.as_deref(), self.tls.as_ref())
            .expect("restart redis-server");
        self.wait_up();
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.ping() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer on port {}", self.port);
    }

    fn spawn(port: u16, password: Option<&str>, tls: Option<&RedisPki>) -> Option<Child> {
        let auth = password.map(|p| ["--requirepass", p]);
        let tls = tls.map(|t| {
            [
                "--tls-port".to_owned(),
                t.port.to_string(),
                "--tls-cert-file".to_owned(),
                t.path("server.pem"),
                "--tls-key-file".to_owned(),
                t.path("server.key"),
                "--tls-ca-cert-file".to_owned(),
                t.path("ca.pem"),
                "--tls-auth-clients".to_owned(),
                "yes".to_owned(),
            ]
        });
        Command::new("redis-server")
            .args(auth.iter().flatten())
            .args(tls.iter().flatten())
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()
    }

    pub fn client(&self) -> redis::RedisResult<redis::Connection> {
        let auth = self
            .password
            .as_ref()
            .map(|p| format!(":{p}@"))
            .unwrap_or_default();
        redis::Client::open(format!("redis://{auth}127.0.0.1:{}", self.port))?
            .get_connection_with_timeout(Duration::from_millis(200))
    }

    pub fn ping(&self) -> bool {
        self.client()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain syscall on the PID of the child we spawned.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    /// Whether redis-server is missing and the test is to be skipped (see `tool_missing`: a
    /// missing one fails the test unless `RINGGATE_ALLOW_MISSING_TOOLS=1`).
    pub fn missing() -> bool {
        super::tool_missing(
            "redis-server",
            &["--version"],
            "apt-get install redis-server",
        )
    }
}
