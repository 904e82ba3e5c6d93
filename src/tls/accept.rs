//! One TLS connection: handshake (bounded by `[server.timeouts] tls_handshake`), then the same proxy
//! loop as plain HTTP with `X-Forwarded-Proto: https`.
//!
//! Before the handshake the first byte is peeked (`MSG_PEEK`, nothing consumed): a plain HTTP request
//! sent to the TLS port (`http://host:443/`, a common slip) gets nginx's answer, a 400 saying so,
//! instead of a TLS alert the client cannot show. Any other byte goes to rustls, which answers what is
//! not a ClientHello with an alert. A client that sends nothing is closed when the handshake timeout
//! passes. None of this is logged above debug level (scanners do it all day).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::errors::GatewayError;
use crate::proxy::{self, io, Listener};
use crate::worker::Shard;

/// Runs the handshake with the worker's current `TlsContext`, then serves the connection.
pub async fn serve(stream: TcpStream, peer: SocketAddr, port: u16, shard: Rc<Shard>) {
    // The raw fd is taken before the TcpStream disappears into the TLS stream: the idle registry
    // half-closes idle connections by fd when draining.
    let fd = stream.as_raw_fd();
    // Until the connection is handed to the proxy (which registers it itself): a drain ends a
    // silent or stalled handshake after its grace instead of waiting for `tls_handshake`.
    let first_wait = crate::worker::FirstWait::new(&shard, fd);
    // In the connection metrics from now on, as nginx counts a connection from its accept: a
    // flood of stalled handshakes shows in the gauge.
    let counted = Counted::new(&shard);
    // Only what the handshake needs: the connection must not hold this generation for its whole
    // life (a swapped-out generation's pool and health slots are released once nothing holds it).
    let (ctx, limit) = {
        let snap = shard.snapshot();
        (snap.tls.clone(), snap.config.server.timeouts.tls_handshake)
    };
    let Some(acceptor) = ctx.acceptor() else {
        crate::debug!("tls connection without certificates peer={}", peer);
        return;
    };
    let deadline = Instant::now() + limit;
    match monoio::time::timeout(limit, first_byte(&stream)).await {
        Ok(Some(b)) if b.is_ascii_uppercase() => {
            crate::debug!("plain http on a tls port peer={}", peer);
            count(PLAIN_HTTP);
            plain_http_answer(stream).await;
            return;
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            count(CLOSED);
            return;
        }
        Err(_) => {
            crate::debug!("tls handshake timed out peer={}", peer);
            count(TIMEOUT);
            return;
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let tls =
        match monoio::time::timeout(left, super::server::accept(stream, acceptor.clone())).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                crate::debug!(
                    "tls handshake failed peer={} error=\"{}\"",
                    peer,
                    e.to_string().replace('"', "'")
                );
                count(ERROR);
                return;
            }
            Err(_) => {
                crate::debug!("tls handshake timed out peer={}", peer);
                count(TIMEOUT);
                return;
            }
        };
    drop(ctx);
    // A TLS-ALPN-01 validation connection (RFC 8737): the handshake was the whole answer (the
    // resolver logged it if it served a challenge certificate; a client that offered
    // `acme-tls/1` next to another protocol got the usual one, and is closed all the same).
    if tls.alpn_protocol() == Some(crate::acme::ACME_TLS_ALPN) {
        crate::debug!(
            "acme-tls/1 connection closed after its handshake peer={}",
            peer
        );
        let mut tls = tls;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut tls).await;
        return;
    }
    let listener = Listener { port, tls: true };
    // The proxy's connection guard takes the count over.
    counted.hand_over();
    let serve = proxy::serve(tls, fd, peer, listener, shard, true);
    drop(first_wait);
    serve.await;
}

/// A connection counted in the connection metrics until the proxy takes it over; uncounted when
/// dropped before that (a handshake that failed).
struct Counted(Option<Rc<Shard>>);

impl Counted {
    fn new(shard: &Rc<Shard>) -> Counted {
        shard.metrics.conn_opened();
        Counted(Some(shard.clone()))
    }

    fn hand_over(mut self) {
        self.0 = None;
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(shard) = &self.0 {
            shard.metrics.conn_closed();
        }
    }
}

/// Handshakes that did not make a connection, by reason, process-wide: one atomic add on a path
/// that already failed (a successful handshake counts nothing here).
static FAILED: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
const TIMEOUT: usize = 0;
const ERROR: usize = 1;
const PLAIN_HTTP: usize = 2;
const CLOSED: usize = 3;

fn count(reason: usize) {
    if let Some(c) = FAILED.get(reason) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// `ringgate_tls_handshake_failures_total{reason}` for `/metrics`.
pub fn family() -> crate::metrics::Family {
    use crate::metrics::{Family, FamilyKind};
    let n = |i: usize| FAILED.get(i).map_or(0, |c| c.load(Ordering::Relaxed)) as f64;
    Family::new(
        "ringgate_tls_handshake_failures_total",
        "TLS connections that never became a request stream, by reason: timeout (tls_handshake ran \
         out, silent or stalled clients), error (rejected handshake: no shared version, cipher or \
         protocol, bad records), plain_http (answered 400), closed (closed before a ClientHello).",
        FamilyKind::Counter,
    )
    .sample(&[("reason", "timeout")], n(TIMEOUT))
    .sample(&[("reason", "error")], n(ERROR))
    .sample(&[("reason", "plain_http")], n(PLAIN_HTTP))
    .sample(&[("reason", "closed")], n(CLOSED))
}

/// The first byte the client sent, without consuming it (`None`: closed or failed first).
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    loop {
        stream.readable(false).await.ok()?;
        let mut b = 0u8;
        // SAFETY: one byte into a live local, on the socket `stream` owns.
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                std::ptr::addr_of_mut!(b).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => return Some(b),
            0 => return None,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock => {}
            _ => return None,
        }
    }
}

/// Answers plain HTTP on the TLS port with nginx's 400 and closes. The request is read first (what
/// arrived of it, briefly) and the close lingers, so the answer is not lost to a reset.
async fn plain_http_answer(mut stream: TcpStream) {
    const WAIT: Duration = Duration::from_millis(500);
    let mut buf = Vec::with_capacity(16 * 1024);
    let _ = io::fill(&mut stream, &mut buf, WAIT).await;
    let mut out = Vec::with_capacity(160);
    GatewayError::BadRequest("The plain HTTP request was sent to HTTPS port")
        .write_response(true, &mut out);
    if io::send_all(&mut stream, &mut out, WAIT).await.is_err() {
        return;
    }
    let _ = monoio::io::AsyncWriteRent::shutdown(&mut stream).await;
    io::discard(&mut stream, &mut buf, WAIT, 64 * 1024).await;
}
