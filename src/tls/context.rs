//! `TlsContext`: the server-side rustls config of one loaded `Config`, with SNI certificate selection.
//!
//! Built on the main thread from certificates `config::load` already read and parsed (no file I/O
//! here either), then handed to workers. Reload: load the config again (which re-reads the
//! certificate files), `TlsContext::build` it, and give each worker the new `Arc` with
//! the worker's config snapshot (see `worker::Compiled`); connections already established keep the context they were accepted with, new
//! ones use the new one. Nothing is dropped.
//!
//! Choices: TLS 1.3 and 1.2 with *ring*'s default suites (AEAD only, ECDHE only); ALPN `http/1.1`;
//! session resumption by stateless tickets (one ticket key shared by all workers, read-locked only
//! while a ticket is issued or decrypted) and no server-side session cache (which would be a mutex
//! shared by every worker's handshakes).

use std::collections::HashMap;
use std::sync::Arc;

use monoio_rustls::TlsAcceptor;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::model::{Config, ListenKind};
use crate::config::ConfigError;

/// What TLS listeners need. Immutable; replaced whole on reload.
pub struct TlsContext {
    /// `None` when the config has no certificates (then it has no TLS listener either).
    acceptor: Option<TlsAcceptor>,
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
    pub fn build(cfg: &Config) -> Result<Arc<TlsContext>, Vec<ConfigError>> {
        if cfg.certificates.is_empty() {
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
        let resolver = SniResolver::new(cfg);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| vec![error(cfg, "certificates", format!("TLS setup failed: {e}"))])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| {
            vec![error(
                cfg,
                "certificates",
                format!("TLS session tickets: {e}"),
            )]
        })?;
        Ok(Arc::new(TlsContext {
            acceptor: Some(TlsAcceptor::from(Arc::new(server))),
        }))
    }

    /// The acceptor for new connections (`None`: no certificates configured).
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
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

/// Picks the certificate for a ClientHello: exact SNI, then a `*.` wildcard for the name minus its
/// first label, then the default. Names are compared lower-case, without a trailing dot.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Key: the suffix after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    pub fn new(cfg: &Config) -> SniResolver {
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
        SniResolver {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for `server_name` (`None` = the client sent no SNI).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = server_name {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(k.clone());
            }
            if let Some((_, suffix)) = name.split_once('.') {
                if let Some(k) = self.wildcard.get(suffix) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}
