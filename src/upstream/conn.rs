//! `UpstreamConn`: a connection to an upstream target, plain TCP or TLS over TCP, used by the pool
//! and the proxy through `AsyncReadRent`/`AsyncWriteRent` (and `Split` for upgrade tunnels).
//!
//! The raw fd is kept for the pool's non-blocking liveness peek (`MSG_PEEK` on the socket works the
//! same under TLS: a quiet socket has no record pending; a close_notify or FIN makes it not quiet).

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use monoio_rustls::ClientTlsStream;

use crate::tls::CancelSafe;

pub enum UpstreamConn {
    Plain(TcpStream),
    /// Boxed: a rustls session plus its buffers is much larger than a `TcpStream`.
    Tls {
        stream: Box<CancelSafe<ClientTlsStream<TcpStream>>>,
        fd: RawFd,
    },
}

impl UpstreamConn {
    /// Wraps an established TLS stream (`fd` is its socket's, taken before the handshake).
    pub fn tls(stream: ClientTlsStream<TcpStream>, fd: RawFd) -> UpstreamConn {
        UpstreamConn::Tls {
            stream: Box::new(CancelSafe::new(stream)),
            fd,
        }
    }

    /// The socket of a plain-TCP connection, whose bytes `MSG_PEEK` shows as they are (under TLS
    /// a waiting record may be a session ticket, not an answer).
    pub fn plain_fd(&self) -> Option<RawFd> {
        match self {
            UpstreamConn::Plain(s) => Some(s.as_raw_fd()),
            UpstreamConn::Tls { .. } => None,
        }
    }

    /// The socket, for `MSG_PEEK` liveness checks. Valid as long as `self` lives.
    pub fn raw_fd(&self) -> RawFd {
        match self {
            UpstreamConn::Plain(s) => s.as_raw_fd(),
            UpstreamConn::Tls { fd, .. } => *fd,
        }
    }
}

// SAFETY: both variants are `Split` (TcpStream; monoio-rustls streams over a `Split` IO), and the
// enum only delegates.
unsafe impl Split for UpstreamConn {}

impl AsyncReadRent for UpstreamConn {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamConn::Plain(s) => s.read(buf).await,
            UpstreamConn::Tls { stream, .. } => stream.read(buf).await,
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamConn::Plain(s) => s.readv(buf).await,
            UpstreamConn::Tls { stream, .. } => stream.readv(buf).await,
        }
    }
}

impl AsyncWriteRent for UpstreamConn {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamConn::Plain(s) => s.write(buf).await,
            UpstreamConn::Tls { stream, .. } => stream.write(buf).await,
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            UpstreamConn::Plain(s) => s.writev(buf).await,
            UpstreamConn::Tls { stream, .. } => stream.writev(buf).await,
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        match self {
            UpstreamConn::Plain(s) => s.flush().await,
            UpstreamConn::Tls { stream, .. } => stream.flush().await,
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            UpstreamConn::Plain(s) => s.shutdown().await,
            UpstreamConn::Tls { stream, .. } => stream.shutdown().await,
        }
    }
}
