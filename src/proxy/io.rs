//! Timed reads and writes with owned buffers (monoio's rent model), keeping the buffer in place.
//!
//! A read appends into the spare capacity of a `Vec<u8>`; a write sends a sub-range of one. When a
//! timeout cancels the operation the buffer goes down with the cancelled op and the caller's `Vec` is
//! left empty (capacity 0): after a timeout the caller always closes the connection, so nothing reads
//! from that buffer again.

use std::io;
use std::ops::Range;
use std::time::Duration;

use std::future::Future;
use std::task::Poll;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelableAsyncReadRent, Canceller,
};
use monoio::net::TcpStream;

fn timed_out() -> io::Error {
    io::Error::from(io::ErrorKind::TimedOut)
}

/// Reads once into `buf`'s spare capacity. `Ok(0)` means EOF. The caller guarantees spare capacity.
pub async fn fill<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<usize> {
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    if len == cap {
        *buf = owned;
        return Err(io::Error::other("read buffer full"));
    }
    match monoio::time::timeout(limit, s.read(owned.slice_mut(len..cap))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res
        }
        Err(_) => Err(timed_out()),
    }
}

/// Like `fill` on an idle socket, but gives up after `grace` without losing data: the read is
/// cancelled and awaited, so bytes that raced the cancel are returned as a normal read. Gives an
/// error that `is_idle` recognizes when nothing came. `canceller` must not have been cancelled.
pub async fn fill_or_idle(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    grace: Duration,
    canceller: &mut Canceller,
) -> io::Result<usize> {
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    if len == cap {
        *buf = owned;
        return Err(io::Error::other("read buffer full"));
    }
    let read = s.cancelable_read(owned.slice_mut(len..cap), canceller.handle());
    let mut read = std::pin::pin!(read);
    let mut sleep = std::pin::pin!(monoio::time::sleep(grace));
    let first = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = read.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        sleep.as_mut().poll(cx).map(|()| None)
    })
    .await;
    let (res, slice) = match first {
        Some(done) => done,
        None => {
            // `cancel` hands back a fresh canceller (an allocation); the caller drops this one.
            let _ = std::mem::take(canceller).cancel();
            read.await
        }
    };
    *buf = slice.into_inner();
    match res {
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => Err(idle()),
        r => r,
    }
}

fn idle() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "idle")
}

/// The error `fill_or_idle` gives when nothing arrived within its grace period.
pub fn is_idle(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Writes `buf[range]` completely.
pub async fn send<S: AsyncWriteRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    range: Range<usize>,
    limit: Duration,
) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    if range.end > owned.len() {
        *buf = owned;
        return Err(io::Error::other("write range out of bounds"));
    }
    match monoio::time::timeout(limit, s.write_all(owned.slice(range))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ())
        }
        Err(_) => Err(timed_out()),
    }
}

/// Writes all of `buf`.
pub async fn send_all<S: AsyncWriteRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<()> {
    let len = buf.len();
    send(s, buf, 0..len, limit).await
}

pub fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
}
