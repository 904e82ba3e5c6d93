//! Timed reads and writes with owned buffers (monoio's rent model), keeping the buffer in place.
//!
//! A read appends into the spare capacity of a `Vec<u8>`; a write sends a sub-range of one. When a
//! timeout cancels the operation the buffer goes down with the cancelled op and the caller's `Vec` is
//! left empty (capacity 0): after a timeout the caller always closes the connection, so nothing reads
//! from that buffer again.

use std::io;
use std::ops::Range;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

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

/// The read half of a lingering close, after the write half was shut: reads and discards what the
/// peer still sends, at most `max_bytes` and for at most `limit` (`buf` is the scratch space).
/// Closing with unread input would send a reset, which can destroy the answer before the client
/// read it.
pub async fn discard<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
    max_bytes: usize,
) {
    if buf.capacity() == 0 {
        // A read that timed out (408, 504 during an upload) kept its buffer: the lingering close
        // still needs one, or it would close at once and reset the answer it just sent.
        *buf = Vec::with_capacity(4096);
    }
    let end = std::time::Instant::now() + limit;
    let mut drained = 0;
    while drained < max_bytes && buf.capacity() > 0 {
        let left = end.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        buf.clear();
        match fill(s, buf, left).await {
            Ok(n) if n > 0 => drained += n,
            _ => break,
        }
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

pub fn idle() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "idle")
}

/// The error `fill_or_idle` gives when nothing arrived within its grace period.
pub fn is_idle(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Takes `buf` out for an owned-buffer write of `range`, or leaves it in place and says why not.
fn take_for_write(buf: &mut Vec<u8>, range: &Range<usize>) -> io::Result<Vec<u8>> {
    if range.end > buf.len() {
        return Err(io::Error::other("write range out of bounds"));
    }
    Ok(std::mem::take(buf))
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
    let owned = take_for_write(buf, &range)?;
    match monoio::time::timeout(limit, s.write_all(owned.slice(range))).await {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ())
        }
        Err(_) => Err(timed_out()),
    }
}

/// How often a stalled request-body write looks for an early answer from the upstream.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// `send` for request-body bytes to a plain-TCP upstream at `fd`: while the write is stalled (the
/// upstream stopped reading), looks every `WATCH_EVERY` for an error answer waiting on the socket,
/// and stops with an error when there is one, so an upstream's 413 or 401 reaches the client
/// now rather than when `limit` runs out (RFC 9112 §9.5; nginx watches both directions too). The
/// cancelled write takes `buf` with it, as a timeout does: the caller stops sending either way.
/// A write that completes at once costs what `send`'s timeout costs: one timer.
pub async fn send_watching<S: AsyncWriteRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    range: Range<usize>,
    limit: Duration,
    fd: RawFd,
) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = take_for_write(buf, &range)?;
    let write = s.write_all(owned.slice(range));
    match watch(std::pin::pin!(write), limit, fd).await {
        Watched::Done((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ())
        }
        Watched::Answered => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "upstream answered before taking the whole body",
        )),
        Watched::TimedOut => Err(timed_out()),
    }
}

/// How `watch` ended.
enum Watched<T> {
    /// The operation completed.
    Done(T),
    /// An error answer from the upstream is waiting: the operation is abandoned (its buffer goes
    /// with it).
    Answered,
    /// `limit` ran out first.
    TimedOut,
}

/// Drives `op` (a ring operation in flight) for at most `limit`, looking every `WATCH_EVERY` it
/// waits for an error answer from the upstream at `fd` (`final_answer_waiting`).
async fn watch<T>(
    mut op: std::pin::Pin<&mut impl Future<Output = T>>,
    limit: Duration,
    fd: RawFd,
) -> Watched<T> {
    let deadline = Instant::now() + limit;
    loop {
        let tick = WATCH_EVERY.min(deadline.saturating_duration_since(Instant::now()));
        let mut sleep = std::pin::pin!(monoio::time::sleep(tick));
        let done = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = op.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            sleep.as_mut().poll(cx).map(|()| None)
        })
        .await;
        if let Some(r) = done {
            return Watched::Done(r);
        }
        if final_answer_waiting(fd) {
            return Watched::Answered;
        }
        if Instant::now() >= deadline {
            return Watched::TimedOut;
        }
    }
}

/// `fill` for request-body bytes from the client while a plain-TCP upstream at `fd` has the
/// request: while the read waits, looks every `WATCH_EVERY` for an error answer waiting from the
/// upstream (`final_answer_waiting`), and returns `Ok(None)` when there is one, so an upstream's
/// early 401 or 413 reaches a client that paused its upload now rather than a 408 after `limit`
/// (nginx watches both directions too). The abandoned read takes `buf` with it (left empty): the
/// caller closes the connection after such an answer anyway, the body being unread.
pub async fn fill_watching<S: AsyncReadRent>(
    s: &mut S,
    buf: &mut Vec<u8>,
    limit: Duration,
    fd: RawFd,
) -> io::Result<Option<usize>> {
    let owned = std::mem::take(buf);
    let (len, cap) = (owned.len(), owned.capacity());
    if len == cap {
        *buf = owned;
        return Err(io::Error::other("read buffer full"));
    }
    let read = s.read(owned.slice_mut(len..cap));
    match watch(std::pin::pin!(read), limit, fd).await {
        Watched::Done((res, slice)) => {
            *buf = slice.into_inner();
            res.map(Some)
        }
        Watched::Answered => Ok(None),
        Watched::TimedOut => Err(timed_out()),
    }
}

/// Whether the socket holds the start of an error answer (status 400 and up) after any complete
/// interim (1xx) heads: the case RFC 9112 §9.5 describes (a 413 or 401 before the body was read).
/// An interim `100 Continue` asks for the rest of the body, and a 2xx or 3xx sent early may come
/// from an upstream that still reads (a streaming API), so neither stops the body. Garbage counts
/// as an answer (the head reader then calls it a bad response).
fn final_answer_waiting(fd: RawFd) -> bool {
    let mut peek = [0u8; 2048];
    // SAFETY: `fd` is the caller's open socket; the buffer is ours and its length is passed.
    let n = unsafe {
        libc::recv(
            fd,
            peek.as_mut_ptr().cast(),
            peek.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return false;
    };
    let mut got = peek.get(..n).unwrap_or_default();
    loop {
        // "HTTP/1.1 4xx": undecided until the status digit is there.
        match got.get(9) {
            Some(b'1') => match memchr::memmem::find(got, b"\r\n\r\n") {
                // A complete interim head: look behind it.
                Some(end) => got = got.get(end + 4..).unwrap_or_default(),
                None => return false,
            },
            Some(d) => return !matches!(d, b'2' | b'3'),
            None if got.is_empty() => return false,
            None => return !b"HTTP/1.1 ".starts_with(got) && !b"HTTP/1.0 ".starts_with(got),
        }
    }
}

/// Two buffers written with one `writev`: all of `head`, then `body[range]`, so a response body
/// that arrived with its head is not copied behind it. `iov` is the iovec pair the kernel reads; it
/// lives on the heap (monoio builds the submission before the op settles in its future, so an
/// inline array would move) and is reused from request to request through the `Scratch`.
pub struct Pair {
    head: Vec<u8>,
    body: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
    /// Index of the first iovec with bytes left.
    first: usize,
}

impl Pair {
    fn new(
        head: Vec<u8>,
        body: Vec<u8>,
        range: Range<usize>,
        mut iov: Box<[libc::iovec; 2]>,
    ) -> Pair {
        let range = range.start.min(body.len())..range.end.min(body.len());
        iov[0] = libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        };
        iov[1] = libc::iovec {
            iov_base: body[range.clone()].as_ptr() as *mut libc::c_void,
            iov_len: range.len(),
        };
        Pair {
            head,
            body,
            iov,
            first: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.iov[self.first..].iter().map(|v| v.iov_len).sum()
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 && self.first < 2 {
            let v = &mut self.iov[self.first];
            let k = n.min(v.iov_len);
            // SAFETY: k <= iov_len, so the pointer stays within (or one past) its buffer.
            v.iov_base = unsafe { (v.iov_base as *mut u8).add(k) } as *mut libc::c_void;
            v.iov_len -= k;
            n -= k;
            if v.iov_len == 0 {
                self.first += 1;
            }
        }
        while self.first < 2 && self.iov[self.first].iov_len == 0 {
            self.first += 1;
        }
    }
}

// SAFETY: the iovecs point into `head` and `body`, whose heap storage does not move while the Pair
// (and so the Vecs) is owned by the runtime; the iovec array itself is boxed, so its address is
// stable too; `first < 2` whenever the runtime reads them (`send_pair` stops at 0 bytes left).
unsafe impl monoio::buf::IoVecBuf for Pair {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov[self.first.min(1)..].as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2 - self.first.min(1)
    }
}

/// Writes all of `head`, then `body[range]`, with `writev` (looping over partial writes). On a
/// timeout the buffers go down with the cancelled op: `head` and `body` are left empty and `iov`
/// `None` (the caller closes the connection, as with `send`).
pub async fn send_pair<S: AsyncWriteRent>(
    s: &mut S,
    head: &mut Vec<u8>,
    body: &mut Vec<u8>,
    range: Range<usize>,
    iov: &mut Option<Box<[libc::iovec; 2]>>,
    limit: Duration,
) -> io::Result<()> {
    let boxed = iov.take().unwrap_or_else(|| Box::new([EMPTY_IOVEC; 2]));
    let pair = Pair::new(std::mem::take(head), std::mem::take(body), range, boxed);
    match monoio::time::timeout(limit, write_pair(s, pair)).await {
        Ok((res, pair)) => {
            *head = pair.head;
            *body = pair.body;
            *iov = Some(pair.iov);
            res
        }
        Err(_) => Err(timed_out()),
    }
}

const EMPTY_IOVEC: libc::iovec = libc::iovec {
    iov_base: std::ptr::null_mut(),
    iov_len: 0,
};

async fn write_pair<S: AsyncWriteRent>(s: &mut S, mut pair: Pair) -> (io::Result<()>, Pair) {
    while pair.remaining() > 0 {
        let (res, back) = s.writev(pair).await;
        pair = back;
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), pair),
            Ok(n) => pair.consume(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(e), pair),
        }
    }
    (Ok(()), pair)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(head: &[u8], body: &[u8], range: Range<usize>) -> Pair {
        Pair::new(
            head.to_vec(),
            body.to_vec(),
            range,
            Box::new([EMPTY_IOVEC; 2]),
        )
    }

    fn left(p: &Pair) -> Vec<u8> {
        let mut out = Vec::new();
        for v in &p.iov[p.first.min(2)..] {
            // SAFETY: the iovecs point into the pair's own buffers.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len)
            });
        }
        out
    }

    #[test]
    fn only_an_early_error_answer_stops_a_stalled_body() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;
        let cases: [(&[u8], bool); 9] = [
            (b"", false),
            (b"HTTP/1.", false),
            (b"HTTP/1.1 100 Continue\r\n\r\n", false),
            (b"HTTP/1.1 413 Payload Too Large\r\n", true),
            (b"HTTP/1.0 401", true),
            (b"garbage", true),
            // An early 2xx may come from an upstream that still reads.
            (b"HTTP/1.1 200 OK\r\n", false),
            // Behind complete interim heads.
            (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413", true),
            (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n", false),
        ];
        for (sent, stops) in cases {
            let (mut a, b) = UnixStream::pair().expect("pair");
            a.write_all(sent).expect("write");
            assert_eq!(final_answer_waiting(b.as_raw_fd()), stops, "{sent:?}");
            // Peeked, not consumed: the answer is still there for the head reader.
            assert_eq!(final_answer_waiting(b.as_raw_fd()), stops, "{sent:?} again");
        }
    }

    #[test]
    fn a_pair_is_head_then_the_body_range_and_partial_writes_advance_across_both() {
        let mut p = pair(b"HEAD", b"xxbodyyy", 2..6);
        assert_eq!(p.remaining(), 8);
        assert_eq!(left(&p), b"HEADbody");
        p.consume(3);
        assert_eq!(left(&p), b"Dbody");
        p.consume(2);
        assert_eq!(p.first, 1);
        assert_eq!(left(&p), b"ody");
        p.consume(3);
        assert_eq!(p.remaining(), 0);
        assert_eq!(p.first, 2);
    }

    #[test]
    fn an_empty_body_range_or_head_is_skipped() {
        let mut p = pair(b"HEAD", b"", 0..0);
        p.consume(4);
        assert_eq!(p.remaining(), 0);
        let mut p = pair(b"", b"body", 0..4);
        p.consume(0);
        assert_eq!(p.first, 1, "an empty head is skipped at once");
        assert_eq!(left(&p), b"body");
        // A range past the buffer is clamped, never read out of bounds.
        let p = pair(b"h", b"ab", 1..9);
        assert_eq!(left(&p), b"hb");
    }
}
