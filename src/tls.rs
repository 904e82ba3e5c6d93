//! TLS termination (rustls 0.23 on *ring*) and the https-redirect listener.
//!
//! - `context`: `TlsContext`, built from a loaded `Config` on the main thread (certificate files were
//!   already read and parsed by `config::load`), shared read-only by workers; each worker holds an
//!   `Arc` it can replace between connections (certificate reload).
//! - `accept`: per-connection handshake under `[server.timeouts] tls_handshake`, then the proxy loop.
//! - `expiry`: warnings and a metric for file certificates that are expired or expire soon.
//! - `redirect`: listeners with `redirect_https` answer every request with a 301/308 to https.
//! - `server`: `ServerStream`, the TLS connection a client opened (rustls over the socket, no I/O
//!   buffer held while idle).
//! - `stream`: `CancelSafe`, a wrapper that turns "use after a cancelled operation" into an error
//!   (monoio-rustls, used for upstream TLS, loses its buffer when a read is dropped mid-flight and
//!   would panic on the next one).

pub mod accept;
pub mod context;
pub mod expiry;
pub mod redirect;
pub mod server;
pub mod stream;

pub use context::{TlsContext, TlsShared};

/// What went wrong in a handshake, as a log line can say it: monoio-rustls' own `Display` is only
/// "io error" or "rustls error", while the cause (`invalid peer certificate: certificate not valid
/// for name "api.internal"`, `received fatal alert: HandshakeFailure`, an EOF) is inside.
pub fn handshake_error(e: &monoio_rustls::TlsError) -> String {
    match e {
        monoio_rustls::TlsError::Io(e) => e.to_string(),
        monoio_rustls::TlsError::Rustls(e) => e.to_string(),
    }
}
pub use stream::CancelSafe;
