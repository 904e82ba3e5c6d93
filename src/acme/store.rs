//! `AcmeStore`: what the ACME manager thread hands to the workers, read without locks.
//!
//! Three maps, each replaced whole by a writer (the manager thread; a reload putting stored
//! certificates in service) through `ArcSwap::rcu`, so concurrent writers never lose an update,
//! and read with one `ArcSwap` load by workers:
//! - issued certificates by SNI name (every name of an `acme = true` entry maps to its key), read by
//!   the TLS certificate resolver once per handshake;
//! - HTTP-01 key authorizations by token, read only for requests under
//!   `/.well-known/acme-challenge/` on plain and redirect listeners;
//! - TLS-ALPN-01 challenge certificates by name, read only for handshakes offering `acme-tls/1`.
//!
//! Nothing here is on the per-request path of ordinary traffic. The store lives as long as the
//! process: a reload builds a new TLS context around the same store, so issued certificates survive
//! reloads.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;

type Keys = HashMap<String, Arc<CertifiedKey>>;

#[derive(Default)]
pub struct AcmeStore {
    certs: ArcSwap<Keys>,
    tokens: ArcSwap<HashMap<String, String>>,
    alpn: ArcSwap<Keys>,
}

impl std::fmt::Debug for AcmeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeStore")
            .field("certs", &self.certs.load().len())
            .field("tokens", &self.tokens.load().len())
            .finish()
    }
}

impl AcmeStore {
    pub fn new() -> Arc<AcmeStore> {
        Arc::new(AcmeStore::default())
    }

    /// The issued certificate for `name` (lower-case, no trailing dot), if one was obtained or
    /// loaded from storage.
    pub fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(name).cloned()
    }

    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with.
    pub fn key_authorization(&self, token: &[u8]) -> Option<String> {
        let token = std::str::from_utf8(token).ok()?;
        self.tokens.load().get(token).cloned()
    }

    /// The TLS-ALPN-01 challenge certificate for `name`.
    pub fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.load().get(name).cloned()
    }

    /// Serves `key` for every name in `names` from now on.
    pub fn install(&self, names: &[String], key: Arc<CertifiedKey>) {
        self.certs.rcu(|m| {
            let mut m = Keys::clone(m);
            for n in names {
                m.insert(n.clone(), key.clone());
            }
            m
        });
    }

    /// Drops the certificates of names no longer configured.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.certs.rcu(|m| {
            let mut m = Keys::clone(m);
            m.retain(|n, _| keep(n));
            m
        });
    }

    pub fn add_token(&self, token: &str, key_authorization: &str) {
        self.tokens.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(token.to_owned(), key_authorization.to_owned());
            m
        });
    }

    pub fn remove_token(&self, token: &str) {
        self.tokens.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(token);
            m
        });
    }

    pub fn add_alpn_cert(&self, name: &str, key: Arc<CertifiedKey>) {
        self.alpn.rcu(|m| {
            let mut m = Keys::clone(m);
            m.insert(name.to_owned(), key.clone());
            m
        });
    }

    pub fn remove_alpn_cert(&self, name: &str) {
        self.alpn.rcu(|m| {
            let mut m = Keys::clone(m);
            m.remove(name);
            m
        });
    }
}
