//! Byte tunnel after a `101 Switching Protocols` (WebSocket and other upgrades).
//!
//! Invariants:
//! - both directions are copied independently; traffic in either one keeps the whole tunnel alive
//!   (one shared idle timer, like HAProxy's `timeout tunnel`), so a stream that only ever flows one
//!   way is not cut off;
//! - EOF in one direction is passed on as a half-close (shutdown of the other side's write half) and
//!   the reverse direction goes on, so a client that sends and then shuts down still gets its answer;
//! - the tunnel ends when both directions have ended, on the first read or write error, or when
//!   nothing moved either way for `idle`, or when the drain deadline passed (`cut`, which the
//!   drain sets before waking the connection's task); dropping the halves then closes both sockets.

use std::cell::Cell;
use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::upstream::conn::UpstreamConn;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};

use super::{io, ClientIo};

const TUNNEL_BUF: usize = 16 * 1024;

/// Bytes a tunnel relayed (for the access log).
#[derive(Debug, Clone, Copy, Default)]
pub struct Relayed {
    pub to_upstream: u64,
    pub to_client: u64,
    /// The drain deadline ended it.
    pub cut: bool,
}

/// `pending`: client bytes that arrived after the upgrade request head; they go upstream first.
pub async fn run<S: ClientIo>(
    client: S,
    mut upstream: UpstreamConn,
    mut pending: Vec<u8>,
    idle: Duration,
    cut: &Cell<bool>,
) -> Relayed {
    let first = pending.len() as u64;
    if !pending.is_empty()
        && io::send_all(&mut upstream, &mut pending, idle)
            .await
            .is_err()
    {
        return Relayed::default();
    }
    let up_bytes = Cell::new(first);
    let down_bytes = Cell::new(0);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut up_rd, mut up_wr) = upstream.into_split();
    let last = Cell::new(Instant::now());
    let mut to_upstream = std::pin::pin!(copy(&mut client_rd, &mut up_wr, &last, idle, &up_bytes));
    let mut to_client = std::pin::pin!(copy(&mut up_rd, &mut client_wr, &last, idle, &down_bytes));
    let mut idled_out = std::pin::pin!(idle_out(&last, idle));
    let (mut up_done, mut down_done) = (false, false);
    let mut was_cut = false;
    std::future::poll_fn(|cx| {
        if cut.get() {
            was_cut = true;
            return Poll::Ready(());
        }
        if !up_done {
            if let Poll::Ready(r) = to_upstream.as_mut().poll(cx) {
                if r.is_err() {
                    return Poll::Ready(());
                }
                up_done = true;
            }
        }
        if !down_done {
            if let Poll::Ready(r) = to_client.as_mut().poll(cx) {
                if r.is_err() {
                    return Poll::Ready(());
                }
                down_done = true;
            }
        }
        if up_done && down_done {
            return Poll::Ready(());
        }
        idled_out.as_mut().poll(cx)
    })
    .await;
    Relayed {
        to_upstream: up_bytes.get(),
        to_client: down_bytes.get(),
        cut: was_cut,
    }
}

/// Copies `from` to `to` until EOF, then half-closes `to`. Err: a read or write failed (or a write
/// stalled for `write_limit`), which ends the whole tunnel. Reads have no timeout of their own: a
/// direction may rightly stay quiet while the other one talks (`idle_out` ends a silent tunnel).
/// `moved` counts the bytes written to `to`.
async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    to: &mut W,
    last: &Cell<Instant>,
    write_limit: Duration,
    moved: &Cell<u64>,
) -> Result<(), ()> {
    let mut buf = Vec::with_capacity(TUNNEL_BUF);
    loop {
        buf.clear();
        let (res, b) = from.read(buf).await;
        buf = b;
        match res {
            Ok(0) => break,
            Ok(_) => last.set(Instant::now()),
            Err(_) => return Err(()),
        }
        let n = buf.len() as u64;
        io::send_all(to, &mut buf, write_limit)
            .await
            .map_err(drop)?;
        moved.set(moved.get() + n);
        last.set(Instant::now());
    }
    to.shutdown().await.map_err(drop)
}

/// Resolves once nothing has moved in either direction for `idle`.
async fn idle_out(last: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        monoio::time::sleep_until(monoio::time::Instant::from_std(deadline)).await;
    }
}
