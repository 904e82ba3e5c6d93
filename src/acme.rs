//! ACME (RFC 8555) certificates: `[[certificates]]` entries with `acme = true` are obtained from the
//! CA named in `[acme]` and renewed before they expire, with no restart and no reload.
//!
//! - `store`: `AcmeStore`, the lock-free hand-over to workers (issued certificates for the TLS
//!   resolver, HTTP-01 tokens for plain listeners, TLS-ALPN-01 certificates for TLS listeners);
//! - `manager`: the thread that schedules orders and renewals, with backoff, and reports state;
//! - `issue`: one account + order conversation with the CA (instant-acme, tokio, off the workers);
//! - `files`: the storage directory (account key, certificates, keys; written atomically, 0600).
//!
//! The worker side is two lookups: `proxy` and `tls::redirect` answer
//! `GET /.well-known/acme-challenge/{token}` from the store, and `tls::context`'s resolver serves
//! the store's certificate for a name (or its challenge certificate to an `acme-tls/1` client).

pub mod files;
pub mod issue;
pub mod manager;
pub mod store;

pub use manager::{AcmeManager, AcmeStatus};
pub use store::AcmeStore;

/// The HTTP-01 path prefix (RFC 8555 §8.3).
pub const CHALLENGE_PREFIX: &[u8] = b"/.well-known/acme-challenge/";

/// The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The HTTP-01 answer for a request to `path`, if it asks for a token the store holds: a `GET` or
/// `HEAD` without a body for `/.well-known/acme-challenge/{token}`. Requests for other tokens are
/// not answered here (they are routed as usual, so another ACME client behind the gateway keeps
/// working).
pub fn challenge_answer(store: &AcmeStore, method: &[u8], path: &[u8]) -> Option<String> {
    if method != b"GET" && method != b"HEAD" {
        return None;
    }
    store.key_authorization(path.strip_prefix(CHALLENGE_PREFIX)?)
}

/// Writes the 200 carrying `key_authorization` (RFC 8555 §8.3: `application/octet-stream`). A HEAD
/// gets it without the body: the senders cut every answer of theirs to HEAD to its head.
pub fn write_challenge_answer(out: &mut Vec<u8>, key_authorization: &str, close: bool) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
        key_authorization.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    out.extend_from_slice(key_authorization.as_bytes());
}
