//! `TlsContext`: the server-side rustls config of one loaded `Config`, with SNI certificate selection.
//!
//! Built on the main thread from certificates `config::load` already read and parsed (no file I/O
//! here either), then handed to workers. Reload: load the config again (which re-reads the
//! certificate files), `TlsContext::build` it, and give each worker the new `Arc` with
//! the worker's config snapshot (see `worker::Compiled`); connections already established keep the context they were accepted with, new
//! ones use the new one. Nothing is dropped.
//!
//! ACME: names of `acme = true` certificates are looked up in the process's `AcmeStore` at handshake
//! time (one lock-free load), so certificates the ACME manager issues or renews are served from the
//! next handshake on, without a reload. With `challenge = "tls-alpn-01"`, `acme-tls/1` is offered too
//! and a client asking for it gets the challenge certificate (and nothing else: `accept` closes it).
//!
//! Choices: TLS 1.3 and 1.2 with *ring*'s default suites (AEAD only, ECDHE only); ALPN `http/1.1`;
//! session resumption by stateless tickets (one ticket key shared by all workers, read-locked only
//! while a ticket is issued or decrypted) and no server-side session cache (which would be a mutex
//! shared by every worker's handshakes). The ticket key belongs to the process (`TlsShared`), not to
//! a generation, so tickets issued before a reload still resume after it; rustls rotates the key
//! every 6 hours. A reload that changes the certificates (files, names, defaults) gets a new key:
//! resumption skips certificate selection, so a client must not resume into a session made with a
//! certificate that was just replaced (say, a compromised one).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::acme::{AcmeStore, ACME_TLS_ALPN};
use crate::config::model::{AcmeChallenge, Config, ListenKind};
use crate::config::ConfigError;

/// What the TLS contexts of every config generation share; made once per process.
pub struct TlsShared {
    /// Where `acme = true` certificates (and TLS-ALPN-01 answers) are found.
    pub acme: Arc<AcmeStore>,
    /// Session ticket keys (rotating), so reloads do not end resumption, with the fingerprint of
    /// the certificates they were made for (`None`: none yet). Locked only by `TlsContext::build`
    /// (start and reloads, main thread).
    tickets: Mutex<(Option<u64>, Arc<dyn rustls::server::ProducesTickets>)>,
}

impl TlsShared {
    pub fn new() -> Result<TlsShared, rustls::Error> {
        Ok(TlsShared {
            acme: AcmeStore::new(),
            tickets: Mutex::new((None, rustls::crypto::ring::Ticketer::new()?)),
        })
    }

    /// The ticket keys for a generation with `cfg`'s certificates: the current ones, or new ones
    /// when the certificates differ from those the current ones were made for.
    fn ticketer(
        &self,
        cfg: &Config,
    ) -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
        let fp = certificates_fingerprint(cfg);
        let mut t = match self.tickets.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        match t.0 {
            Some(old) if old != fp => *t = (Some(fp), rustls::crypto::ring::Ticketer::new()?),
            Some(_) => {}
            None => t.0 = Some(fp),
        }
        Ok(t.1.clone())
    }
}

/// What a session was made with: every file certificate (chain, names, default) and the names of
/// ACME certificates (renewals keep them; the names are what a session vouches for).
fn certificates_fingerprint(cfg: &Config) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for c in &cfg.certificates {
        c.snis.hash(&mut h);
        c.default.hash(&mut h);
        for der in &c.key.cert {
            der.as_ref().hash(&mut h);
        }
    }
    for c in &cfg.acme_certificates {
        c.snis.hash(&mut h);
        c.default.hash(&mut h);
    }
    h.finish()
}

/// What TLS listeners need. Immutable; replaced whole on reload.
pub struct TlsContext {
    /// `None` when the config has no certificates (then it has no TLS listener either).
    acceptor: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("enabled", &self.acceptor.is_some())
            .finish()
    }
}

impl TlsContext {
    /// A context without certificates (for configs without TLS listeners).
    pub fn empty() -> Arc<TlsContext> {
        Arc::new(TlsContext { acceptor: None })
    }

    /// Builds the server config from `cfg.certificates`. Errors are located at `certificates` (or at
    /// the TLS listener) in `cfg.source`; `config::load` has already validated everything that can
    /// fail, so in practice this only fails if the crypto provider refuses the protocol versions.
    /// `shared`: the process's ACME store and ticket keys.
    pub fn build(cfg: &Config, shared: &TlsShared) -> Result<Arc<TlsContext>, Vec<ConfigError>> {
        if cfg.certificates.is_empty() && cfg.acme_certificates.is_empty() {
            if let Some(i) = cfg
                .server
                .listeners
                .iter()
                .position(|l| l.kind == ListenKind::Https)
            {
                return Err(vec![error(
                    cfg,
                    &format!("server.listen[{i}]"),
                    "TLS listener without certificates".to_owned(),
                )]);
            }
            return Ok(TlsContext::empty());
        }
        let resolver = SniResolver::new(cfg, &shared.acme);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| vec![error(cfg, "certificates", format!("TLS setup failed: {e}"))])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        if resolver_alpn_challenge(cfg) {
            server.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.ticketer = shared.ticketer(cfg).map_err(|e| {
            vec![error(
                cfg,
                "certificates",
                format!("TLS session tickets: {e}"),
            )]
        })?;
        Ok(Arc::new(TlsContext {
            acceptor: Some(Arc::new(server)),
        }))
    }

    /// The server config for new connections (`None`: no certificates configured).
    pub fn acceptor(&self) -> Option<&Arc<ServerConfig>> {
        self.acceptor.as_ref()
    }
}

fn error(cfg: &Config, key: &str, message: String) -> ConfigError {
    ConfigError {
        file: cfg.source.display().to_string(),
        line: 0,
        column: 0,
        key: key.to_owned(),
        message,
    }
}

/// Whether TLS listeners answer TLS-ALPN-01 validation.
fn resolver_alpn_challenge(cfg: &Config) -> bool {
    cfg.acme
        .as_ref()
        .is_some_and(|a| a.challenge == AcmeChallenge::TlsAlpn01)
}

/// Picks the certificate for a ClientHello: exact SNI (a file certificate, else the ACME store's,
/// once issued), then a `*.` wildcard for the name minus its first label (a file certificate's,
/// else an issued ACME one's), then the default. Names
/// are compared lower-case, without a trailing dot.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Key: the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Names of `acme = true` certificates, served from `store`.
    acme_names: HashSet<String>,
    /// `acme = true` wildcards (DNS-01): the suffix after `*.` -> the name the store keys.
    acme_wildcards: HashMap<String, String>,
    /// The first name of the default certificate when that one is an ACME certificate.
    acme_default: Option<String>,
    /// Answer `acme-tls/1` handshakes with the store's challenge certificates.
    alpn_challenge: bool,
    store: Arc<AcmeStore>,
}

impl SniResolver {
    pub fn new(cfg: &Config, store: &Arc<AcmeStore>) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        let mut default = None;
        for c in &cfg.certificates {
            for name in &c.snis {
                match name.strip_prefix("*.") {
                    Some(suffix) => wildcard.insert(suffix.to_owned(), c.key.clone()),
                    None => exact.insert(name.clone(), c.key.clone()),
                };
            }
            if c.default {
                default = Some(c.key.clone());
            }
        }
        let acme_names = cfg
            .acme_certificates
            .iter()
            .flat_map(|c| c.snis.iter().cloned())
            .collect();
        let acme_wildcards = cfg
            .acme_certificates
            .iter()
            .flat_map(|c| &c.snis)
            .filter_map(|n| Some((n.strip_prefix("*.")?.to_owned(), n.clone())))
            .collect();
        let acme_default = cfg
            .acme_certificates
            .iter()
            .find(|c| c.default)
            .and_then(|c| c.snis.first().cloned());
        SniResolver {
            exact,
            wildcard,
            default,
            acme_names,
            acme_wildcards,
            acme_default,
            alpn_challenge: resolver_alpn_challenge(cfg),
            store: store.clone(),
        }
    }

    /// The certificate for `server_name` (`None` = the client sent no SNI).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if self.acme_names.contains(&name) {
                if let Some(k) = self.store.cert(&name) {
                    return Some(k);
                }
            }
            if let Some((_, suffix)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(suffix) {
                    return Some(k.clone());
                }
                if let Some(k) = self
                    .acme_wildcards
                    .get(suffix)
                    .and_then(|w| self.store.cert(w))
                {
                    return Some(k);
                }
            }
        }
        match &self.acme_default {
            Some(name) => self.store.cert(name),
            None => self.default.clone(),
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.alpn_challenge {
            // A validation client offers `acme-tls/1` and nothing else (RFC 8737 §3); a client
            // offering it next to `http/1.1` would get the challenge certificate and then be
            // proxied, so it is not taken for one.
            let mut alpn = hello.alpn().into_iter().flatten();
            if alpn.next() == Some(ACME_TLS_ALPN) && alpn.next().is_none() {
                // Only the challenge certificate: no name, no certificate.
                let name = hello
                    .server_name()?
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                let cert = self.store.alpn_cert(&name);
                // Logged here, where a challenge certificate is really served: a client that
                // offers `acme-tls/1` with another protocol also ends up with it negotiated, and
                // must not write "validation answered" lines at will (found by a review).
                if cert.is_some() {
                    crate::info!("acme tls-alpn-01 validation answered name={name}");
                }
                return cert;
            }
        }
        self.pick(hello.server_name())
    }
}
