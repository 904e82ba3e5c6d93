//! One TLS connection: handshake (bounded by `[server.timeouts] tls_handshake`), then the same proxy
//! loop as plain HTTP with `X-Forwarded-Proto: https`.
//!
//! A client that sends something other than a TLS ClientHello (plain HTTP to the TLS port) gets a TLS
//! alert from rustls and the connection is closed; a client that sends nothing is closed when the
//! handshake timeout passes. Neither is logged above debug level (scanners do both all day).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use monoio::net::TcpStream;

use super::CancelSafe;
use crate::proxy::{self, Listener};
use crate::worker::Shard;

/// Runs the handshake with the worker's current `TlsContext`, then serves the connection.
pub async fn serve(stream: TcpStream, peer: SocketAddr, port: u16, shard: Rc<Shard>) {
    // The raw fd is taken before the TcpStream disappears into the TLS stream: the idle registry
    // half-closes idle connections by fd when draining.
    let fd = stream.as_raw_fd();
    let snap = shard.snapshot();
    let ctx = snap.tls.clone();
    let Some(acceptor) = ctx.acceptor() else {
        crate::debug!("tls connection without certificates peer={}", peer);
        return;
    };
    let limit = snap.config.server.timeouts.tls_handshake;
    let tls = match monoio::time::timeout(limit, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            crate::debug!("tls handshake failed peer={} error=\"{}\"", peer, e);
            return;
        }
        Err(_) => {
            crate::debug!("tls handshake timed out peer={}", peer);
            return;
        }
    };
    drop(ctx);
    // A TLS-ALPN-01 validation connection (RFC 8737): the handshake was the whole answer.
    if tls.alpn_protocol().as_deref() == Some(crate::acme::ACME_TLS_ALPN) {
        crate::info!("acme tls-alpn-01 validation answered peer={}", peer);
        let mut tls = tls;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut tls).await;
        return;
    }
    let listener = Listener { port, tls: true };
    proxy::serve(CancelSafe::new(tls), fd, peer, listener, shard).await;
}
