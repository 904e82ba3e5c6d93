//! `ServerStream`: a TLS connection a client opened to us (rustls' `ServerConnection` over the
//! accepted socket) that holds no I/O buffer while it waits.
//!
//! Why not monoio-rustls (still used for upstream TLS): its stream owns a 16 KiB read and a 16 KiB
//! write buffer for the connection's life, and a pending read lends the read buffer to the ring, so
//! an idle keep-alive TLS connection cost ~37 KB against nginx's ~16 KB (measured, 3,000
//! connections). Here the socket is read only once it is readable (a poll through the ring, no
//! buffer), with a non-blocking `recv` into a per-thread scratch buffer, and ciphertext leaves with a
//! non-blocking `send` from another; only what the kernel does not take at once is kept, in a
//! buffer of the connection's that is freed once it is sent. An idle connection holds rustls'
//! state and nothing else.
//!
//! Invariants:
//! - the scratch buffers are borrowed only in synchronous sections, never across an `.await`;
//! - ciphertext leaves in the order rustls produced it: `wbuf`, what the kernel has not taken yet,
//!   always goes first, and new ciphertext is queued behind it while it is not empty;
//! - bytes read from the socket are never dropped: what rustls cannot take yet (its plaintext
//!   buffer is full) waits in `rpending` and is fed before the socket is read again;
//! - the socket is touched only in synchronous sections, so a read or write dropped mid-flight (a
//!   timeout) loses nothing and leaves the stream usable (no `CancelSafe` needed).

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::{ServerConfig, ServerConnection};

/// Ciphertext taken per `recv`: one record of the largest size a peer may send, with its header.
const READ_CHUNK: usize = 16 * 1024 + 2048 + 5;
/// Slices of one `writev` encrypted together (more are left for the caller's next call).
const MAX_IOVS: usize = 8;
/// A write scratch grown past this (a large response written at once) is not kept for the next.
const SCRATCH_KEEP: usize = 64 * 1024;

thread_local! {
    /// Ciphertext just received, until rustls has taken it.
    static RSCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Ciphertext rustls produced, until the kernel has taken it.
    static WSCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub struct ServerStream {
    tcp: TcpStream,
    /// Boxed: it moves to and from the parking lot whole.
    conn: Box<ServerConnection>,
    /// Received ciphertext rustls could not take yet. Almost always empty, capacity 0.
    rpending: Vec<u8>,
    /// Ciphertext the kernel has not taken yet. Empty (capacity 0) unless the client reads slowly.
    wbuf: Vec<u8>,
    /// The client closed its side; rustls was told.
    eof: bool,
    /// The last `recv` filled its chunk: more is probably waiting, so the next read tries the
    /// socket before waiting for readability (otherwise it waits first: a `recv` that would block
    /// is a syscall for nothing).
    more: bool,
    /// Ciphertext went to rustls since plaintext last came out: part of a record may be waiting.
    /// Such a connection does not park: each trickled byte would wake it into a fresh keep-alive
    /// wait, so a client sending a record a byte at a time would never time out.
    fed: bool,
}

/// Runs the server side of a handshake on `tcp`. Errors carry rustls' reason (`InvalidData`) or
/// the socket's; an alert rustls wants sent is sent first, without waiting for it.
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<ServerStream> {
    let conn = ServerConnection::new(config).map_err(invalid)?;
    let mut s = ServerStream::resume(tcp, Box::new(conn));
    while s.conn.is_handshaking() {
        if s.conn.wants_write() {
            s.flush_all().await?;
        } else if s.eof {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the client closed the connection during the handshake",
            ));
        } else {
            s.fill().await?;
        }
    }
    // TLS 1.3 session tickets, sent after the client's Finished.
    s.flush_all().await?;
    s.fed = false;
    Ok(s)
}

fn invalid(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A non-blocking `recv` of up to `READ_CHUNK` bytes into `buf` (replacing its contents);
/// `None`: nothing to read yet.
fn recv_into(fd: RawFd, buf: &mut Vec<u8>) -> io::Result<Option<usize>> {
    buf.clear();
    buf.reserve(READ_CHUNK);
    loop {
        // SAFETY: `buf` has room for READ_CHUNK bytes; the kernel writes at most that many.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), READ_CHUNK, libc::MSG_DONTWAIT) };
        if let Ok(n) = usize::try_from(n) {
            // SAFETY: the kernel initialised the first `n` bytes.
            unsafe { buf.set_len(n) };
            return Ok(Some(n));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// Non-blocking `send`s of `data` until all went or the socket is full; returns how much went.
fn send_nb(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    let mut off = 0;
    while let Some(rest) = data.get(off..).filter(|r| !r.is_empty()) {
        // SAFETY: `rest` is valid for `rest.len()` bytes; MSG_NOSIGNAL: a closed peer is an error,
        // not a SIGPIPE.
        let n = unsafe {
            libc::send(
                fd,
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(n) => off += n,
            Err(_) => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => break,
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(off)
}

impl ServerStream {
    /// The stream of a connection coming back from the parking lot (or starting its handshake).
    pub fn resume(tcp: TcpStream, conn: Box<ServerConnection>) -> ServerStream {
        ServerStream {
            tcp,
            conn,
            rpending: Vec::new(),
            wbuf: Vec::new(),
            eof: false,
            more: false,
            fed: false,
        }
    }

    /// The ALPN protocol agreed in the handshake.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Gives `data` to rustls and decrypts what is complete; returns how much it took (the rest
    /// must wait until plaintext was read). A TLS error is answered with its alert (best effort).
    fn feed(&mut self, data: &[u8]) -> io::Result<usize> {
        self.fed |= !data.is_empty();
        let mut rest = data;
        while !rest.is_empty() {
            match self.conn.read_tls(&mut rest) {
                // After close_notify rustls takes nothing more: the rest means nothing.
                Ok(0) => return Ok(data.len()),
                Ok(_) => {}
                // Its plaintext buffer is full: the rest waits for the application's next read.
                Err(e) if e.kind() == io::ErrorKind::Other => break,
                Err(e) => return Err(e),
            }
            if let Err(e) = self.conn.process_new_packets() {
                let _ = self.flush_nb();
                return Err(invalid(e));
            }
        }
        Ok(data.len() - rest.len())
    }

    /// Gets more ciphertext into rustls: what waits in `rpending` first, else the socket's (waiting
    /// for it to be readable without holding a buffer), else its EOF.
    async fn fill(&mut self) -> io::Result<()> {
        if !self.rpending.is_empty() {
            let pending = std::mem::take(&mut self.rpending);
            let took = self.feed(&pending)?;
            if took == 0 {
                // Called only when rustls has no plaintext to give: taking nothing now means it
                // never will (a record it cannot hold), and trying again would spin.
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS record too large for the receive buffer",
                ));
            }
            if took < pending.len() {
                self.rpending = pending;
                self.rpending.drain(..took);
            }
            return Ok(());
        }
        if !self.more {
            self.tcp.readable(false).await?;
        }
        loop {
            let fd = self.tcp.as_raw_fd();
            let got = RSCRATCH.with_borrow_mut(|scratch| -> io::Result<bool> {
                let got = recv_into(fd, scratch)?;
                self.more = got == Some(READ_CHUNK);
                match got {
                    None => Ok(false),
                    Some(0) => {
                        self.eof = true;
                        let _ = self.conn.read_tls(&mut io::empty());
                        self.conn.process_new_packets().map_err(invalid)?;
                        Ok(true)
                    }
                    Some(n) => {
                        let took = self.feed(&scratch[..n])?;
                        if took < n {
                            self.rpending.extend_from_slice(&scratch[took..n]);
                        }
                        Ok(true)
                    }
                }
            })?;
            if got {
                return Ok(());
            }
            self.tcp.readable(false).await?;
        }
    }

    /// Sends what rustls has for the peer without waiting; `true` when all of it went, `false`
    /// when the rest waits in `wbuf`.
    fn flush_nb(&mut self) -> io::Result<bool> {
        let fd = self.tcp.as_raw_fd();
        if !self.wbuf.is_empty() {
            let sent = send_nb(fd, &self.wbuf)?;
            self.wbuf.drain(..sent);
            if !self.wbuf.is_empty() {
                while self.conn.wants_write() {
                    self.conn.write_tls(&mut self.wbuf)?;
                }
                return Ok(false);
            }
            self.wbuf = Vec::new();
        }
        if !self.conn.wants_write() {
            return Ok(true);
        }
        WSCRATCH.with_borrow_mut(|out| {
            out.clear();
            while self.conn.wants_write() {
                self.conn.write_tls(out)?;
            }
            let sent = send_nb(fd, out)?;
            let all = sent == out.len();
            if let Some(rest) = out.get(sent..).filter(|r| !r.is_empty()) {
                self.wbuf.extend_from_slice(rest);
            }
            if out.capacity() > SCRATCH_KEEP {
                *out = Vec::new();
            }
            Ok(all)
        })
    }

    /// Sends everything rustls has for the peer, waiting for the socket as needed.
    async fn flush_all(&mut self) -> io::Result<()> {
        while !self.flush_nb()? {
            self.tcp.writable(false).await?;
        }
        Ok(())
    }

    /// Decrypted bytes into `dst`; 0 at the client's close_notify (a close without one is an
    /// `UnexpectedEof` error, as rustls reports it: a truncation the application must not trust).
    async fn read_plain(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        if dst.is_empty() {
            return Ok(0);
        }
        loop {
            match self.conn.reader().read(dst) {
                Ok(n) => {
                    self.fed &= n == 0;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            // An alert or a KeyUpdate answer rustls wants sent: best effort, not waited for.
            if self.conn.wants_write() {
                self.flush_nb()?;
            }
            self.fill().await?;
        }
    }

    /// Encrypts `src` (as much as rustls takes) and sends it.
    async fn write_plain(&mut self, src: &[IoSlice<'_>]) -> io::Result<usize> {
        // Earlier ciphertext first, so no more than one write's worth waits in memory.
        self.flush_all().await?;
        let n = self.conn.writer().write_vectored(src)?;
        self.flush_all().await?;
        Ok(n)
    }
}

/// Parks like plain TCP once idle, keeping rustls' state (its keys, sequence numbers and any part
/// of a record already received) in the parking lot; the task and its buffers go.
impl crate::proxy::ClientIo for ServerStream {
    fn parks_after_timed_read(&self) -> bool {
        true
    }

    fn can_park(&self) -> bool {
        self.rpending.is_empty()
            && self.wbuf.is_empty()
            && !self.eof
            && !self.fed
            && !self.conn.wants_write()
    }

    fn into_parked(self) -> Option<(TcpStream, Option<Box<ServerConnection>>)> {
        self.can_park().then_some((self.tcp, Some(self.conn)))
    }
}

/// Sends a parked connection's close_notify without waiting (an idle socket's send buffer is
/// empty, so it goes unless the peer is gone), before the lot closes `fd`: clients tell a server's
/// idle close from a truncation by it.
pub fn close_parked(fd: RawFd, conn: &mut ServerConnection) {
    conn.send_close_notify();
    WSCRATCH.with_borrow_mut(|out| {
        out.clear();
        while conn.wants_write() {
            if conn.write_tls(out).is_err() {
                return;
            }
        }
        let _ = send_nb(fd, out);
    });
}

// SAFETY: the read and write halves share `conn` and the socket only in synchronous sections on
// the worker's one thread; neither holds a borrow of them across an `.await` (the invariants above).
unsafe impl Split for ServerStream {}

impl AsyncReadRent for ServerStream {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's spare capacity, valid for `bytes_total` bytes while we hold it; u8
        // has no invalid values, and only the `n` bytes written are marked initialised.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        let r = self.read_plain(dst).await;
        if let Ok(n) = r {
            // SAFETY: `read_plain` wrote `n` bytes at the start of the buffer.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // Into the first non-empty slice, as a plain `read` would.
        let (ptr, len) = {
            // SAFETY: the iovec array is valid for `write_iovec_len` entries while we hold `buf`.
            let iovs =
                unsafe { std::slice::from_raw_parts(buf.write_iovec_ptr(), buf.write_iovec_len()) };
            iovs.iter()
                .find(|v| v.iov_len > 0)
                .map_or((std::ptr::null_mut(), 0), |v| {
                    (v.iov_base.cast::<u8>(), v.iov_len)
                })
        };
        if len == 0 {
            return (Ok(0), buf);
        }
        // SAFETY: as in `read`: one iovec of the caller's buffer, valid while we hold it.
        let dst = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
        let r = self.read_plain(dst).await;
        if let Ok(n) = r {
            // SAFETY: `n` bytes were written at the start of the first non-empty iovec.
            unsafe { buf.set_init(n) };
        }
        (r, buf)
    }
}

impl AsyncWriteRent for ServerStream {
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, valid while we hold it.
        let src = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        let r = self.write_plain(&[IoSlice::new(src)]).await;
        (r, buf)
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        let r = {
            // SAFETY: the iovec array and what it points to are valid while we hold `buf`.
            let iovs =
                unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
            // The first MAX_IOVS (the proxy writes two: head and body); a partial write is allowed.
            let mut slices = [IoSlice::new(&[]); MAX_IOVS];
            for (slot, v) in slices.iter_mut().zip(iovs) {
                // SAFETY: each iovec points to `iov_len` initialised bytes of the caller's buffer.
                *slot = IoSlice::new(unsafe {
                    std::slice::from_raw_parts(v.iov_base.cast::<u8>(), v.iov_len)
                });
            }
            let used = iovs.len().min(MAX_IOVS);
            self.write_plain(&slices[..used]).await
        };
        (r, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.flush_all().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.conn.send_close_notify();
        self.flush_all().await?;
        self.tcp.shutdown().await
    }
}
