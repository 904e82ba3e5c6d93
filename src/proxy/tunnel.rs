//! Byte tunnel after a `101 Switching Protocols` (WebSocket and other upgrades): both directions are
//! copied until either side closes, errors, or stays idle longer than the idle timeout.

use std::time::Duration;

use crate::upstream::conn::UpstreamConn;
use monoio::io::{AsyncReadRent, AsyncWriteRent, Splitable};

use super::{io, ClientIo};

const TUNNEL_BUF: usize = 16 * 1024;

/// `pending`: client bytes that arrived after the upgrade request head; they go upstream first.
pub async fn run<S: ClientIo>(
    client: S,
    mut upstream: UpstreamConn,
    mut pending: Vec<u8>,
    idle: Duration,
) {
    if !pending.is_empty()
        && io::send_all(&mut upstream, &mut pending, idle)
            .await
            .is_err()
    {
        return;
    }
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut up_rd, mut up_wr) = upstream.into_split();
    let to_upstream = copy(&mut client_rd, &mut up_wr, idle);
    let to_client = copy(&mut up_rd, &mut client_wr, idle);
    // Either direction ending ends the tunnel; dropping the halves closes both sockets.
    monoio::select! {
        _ = to_upstream => {},
        _ = to_client => {},
    }
}

async fn copy<R: AsyncReadRent, W: AsyncWriteRent>(from: &mut R, to: &mut W, idle: Duration) {
    let mut buf = Vec::with_capacity(TUNNEL_BUF);
    loop {
        buf.clear();
        match io::fill(from, &mut buf, idle).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if io::send_all(to, &mut buf, idle).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
