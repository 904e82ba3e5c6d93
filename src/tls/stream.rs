//! `CancelSafe<S>`: a stream wrapper that refuses further reads (writes) once a read (write) was
//! cancelled mid-flight, returning an error instead of calling into the inner stream.
//!
//! Used for upstream TLS (client connections use `tls::ServerStream`, whose reads and writes are
//! cancel-safe). Why: monoio-rustls moves its record buffer into the pending socket read; when a
//! timeout drops that read, the buffer is gone and the next read would panic inside the library.
//! The proxy always closes a connection after a timeout, but some close paths still try to write an
//! error or drain input; with this wrapper they get an `io::Error` and the connection simply closes.
//!
//! Invariant: the flags are set only across an `.await` of the inner operation, so a flag that is set
//! on entry means the previous operation of that kind never completed.

use std::io;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::BufResult;

pub struct CancelSafe<S> {
    inner: S,
    reading: bool,
    writing: bool,
}

impl<S> CancelSafe<S> {
    pub fn new(inner: S) -> CancelSafe<S> {
        CancelSafe {
            inner,
            reading: false,
            writing: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

fn cancelled() -> io::Error {
    io::Error::other("an earlier operation on this TLS stream was cancelled")
}

// SAFETY: reads and writes use separate flags and delegate to `S`, which is itself `Split`.
unsafe impl<S: Split> Split for CancelSafe<S> {}

impl<S: AsyncReadRent> AsyncReadRent for CancelSafe<S> {
    async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.reading {
            return (Err(cancelled()), buf);
        }
        self.reading = true;
        let r = self.inner.read(buf).await;
        self.reading = false;
        r
    }

    async fn readv<T: IoVecBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.reading {
            return (Err(cancelled()), buf);
        }
        self.reading = true;
        let r = self.inner.readv(buf).await;
        self.reading = false;
        r
    }
}

impl<S: AsyncWriteRent> AsyncWriteRent for CancelSafe<S> {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.writing {
            return (Err(cancelled()), buf);
        }
        self.writing = true;
        let r = self.inner.write(buf).await;
        self.writing = false;
        r
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        if self.writing {
            return (Err(cancelled()), buf);
        }
        self.writing = true;
        let r = self.inner.writev(buf).await;
        self.writing = false;
        r
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.writing {
            return Err(cancelled());
        }
        self.writing = true;
        let r = self.inner.flush().await;
        self.writing = false;
        r
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        if self.writing {
            return Err(cancelled());
        }
        self.writing = true;
        let r = self.inner.shutdown().await;
        self.writing = false;
        r
    }
}
