//! Body streaming in both directions through bounded buffers. The exceptions are bodies a
//! transformer edits as JSON (`read_whole` for a response, `read_request_whole` for a request,
//! bounded by its `max_json_bytes`).
//!
//! Requests: the head goes out together with whatever body bytes arrived with it (one write), the
//! rest streams from the client buffer. Chunked bodies are decoded strictly and re-encoded, so chunk
//! extensions and trailers never cross the proxy and a malformed or oversized body is cut off.
//!
//! Responses: Content-Length bodies are relayed as they are; chunked and close-delimited ones are
//! re-encoded as chunked for HTTP/1.1 clients (keeping the client connection reusable) or sent raw
//! and close-delimited to HTTP/1.0 clients. If the upstream fails mid-body the client connection is
//! closed without a terminating chunk, so a truncated response never looks complete.

use crate::upstream::conn::UpstreamConn;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;

use super::head::{push_chunk_size, ClientFraming};
use super::{io, ClientIo, Conn, Shard};

/// Size of the pooled buffer request bodies stream through.
const BODY_BUF: usize = 32 * 1024;
use crate::config::model::ServiceDef;
use crate::http::chunked::{Chunk, ChunkedDecoder};
use crate::http::BodyKind;
use crate::plugins::compression::Gzip;

/// Why streaming the request upstream stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    ClientGone,
    ClientTimeout,
    TooLarge,
    BadChunked,
    UpstreamWrite,
    UpstreamTimeout,
}

/// How relaying the response ended.
pub enum Relay {
    /// The whole body reached the client. `upstream_clean`: the upstream connection holds no unread
    /// bytes and its framing ended cleanly, so it may be pooled.
    Complete { upstream_clean: bool },
    /// Failed after the client saw part of the response: the client connection must be closed.
    Aborted,
    /// The upstream body was malformed or cut short before anything reached the client: answer
    /// 502 instead.
    BadBeforeHead,
    /// The upstream stalled mid-body before anything reached the client: answer 504 instead.
    TimedOutBeforeHead,
}

fn upstream_error(e: std::io::Error) -> SendError {
    if io::is_timeout(&e) {
        SendError::UpstreamTimeout
    } else {
        SendError::UpstreamWrite
    }
}

/// Appends one chunk (size line, data, CRLF).
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    push_chunk_size(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Sends `c.s.out` (the request head) and the request body.
pub async fn send_request<S: ClientIo>(
    c: &mut Conn<S>,
    shard: &Shard,
    body: BodyKind,
    max_body: u64,
    expect_continue: bool,
    svc: &ServiceDef,
    upstream: &mut UpstreamConn,
) -> Result<(), SendError> {
    let write_timeout = svc.write_timeout;
    let read_timeout = c.client_timeout();
    let hl = c.s.head.head_len.min(c.buf.len());
    match body {
        BodyKind::None | BodyKind::Length(0) | BodyKind::CloseDelimited => {
            c.pos = hl;
            io::send_all(upstream, &mut c.s.out, write_timeout)
                .await
                .map_err(upstream_error)?;
            c.t.upstream_head_out = c.stamp();
            Ok(())
        }
        BodyKind::Length(n) => {
            let avail = c.buf.len() - hl;
            let first = (avail as u64).min(n) as usize;
            c.s.out.extend_from_slice(&c.buf[hl..hl + first]);
            c.pos = hl + first;
            // Counted as read, so a body cut short (timeout, client gone) logs what came.
            c.bytes_in += first as u64;
            let len = c.s.out.len();
            send_body(upstream, &mut c.s.out, 0..len, write_timeout).await?;
            c.t.upstream_head_out = c.stamp();
            let mut remaining = n - first as u64;
            if remaining > 0 && expect_continue && avail == 0 {
                send_continue(c).await?;
            }
            while remaining > 0 {
                c.buf.clear();
                c.pos = 0;
                read_client(c, shard, read_timeout, upstream.plain_fd()).await?;
                let take = (c.buf.len() as u64).min(remaining) as usize;
                c.bytes_in += take as u64;
                send_body(upstream, &mut c.buf, 0..take, write_timeout).await?;
                c.pos = take;
                remaining -= take as u64;
            }
            c.body_done = true;
            Ok(())
        }
        BodyKind::Chunked => {
            let mut dec = ChunkedDecoder::new();
            let mut total: u64 = 0;
            let mut start = hl;
            let mut asked_continue = false;
            loop {
                let mut done = false;
                while start < c.buf.len() && !done {
                    let (used, chunk) = dec
                        .decode(&c.buf[start..])
                        .map_err(|_| SendError::BadChunked)?;
                    // What came over the wire, framing included (`request_bytes`).
                    c.bytes_in += used as u64;
                    if let Chunk::Data(r) = &chunk {
                        total += r.len() as u64;
                    }
                    // A chunk whose size line already takes the body over the limit is refused
                    // now, as a Content-Length would be: its data is not waited for, and nothing
                    // of it (nor the head, when it is the first) goes upstream.
                    if max_body > 0 && total.saturating_add(dec.chunk_left()) > max_body {
                        return Err(SendError::TooLarge);
                    }
                    match chunk {
                        Chunk::Data(r) => {
                            let data = c
                                .buf
                                .get(start + r.start..start + r.end)
                                .unwrap_or_default();
                            push_chunk(&mut c.s.out, data);
                        }
                        Chunk::NeedMore => {}
                        Chunk::Done => {
                            c.s.out.extend_from_slice(LAST_CHUNK);
                            done = true;
                        }
                    }
                    if used == 0 && !done {
                        break;
                    }
                    start += used;
                }
                if !c.s.out.is_empty() {
                    let len = c.s.out.len();
                    send_body(upstream, &mut c.s.out, 0..len, write_timeout).await?;
                    c.s.out.clear();
                    if c.timed {
                        c.t.upstream_head_out.get_or_insert_with(Instant::now);
                    }
                }
                if done {
                    c.pos = start;
                    c.body_done = true;
                    return Ok(());
                }
                if expect_continue && !asked_continue {
                    asked_continue = true;
                    send_continue(c).await?;
                }
                c.buf.clear();
                c.pos = 0;
                start = 0;
                read_client(c, shard, read_timeout, upstream.plain_fd()).await?;
            }
        }
    }
}

/// Reads the whole request body, decoded, for an edit (request-transformer `json`): at most
/// `limit` bytes, else `TooLarge` (a 413; for a declared length before any 100 Continue). The
/// head stays where it is in `c.buf` (it is written after the edit, from its spans there), so the
/// body is read in behind it and `c.buf` grows for this request; `recycle` shrinks it back. Leaves
/// `c.pos` after the body (a pipelined next request stays unread) and `c.body_done` set.
pub async fn read_request_whole<S: ClientIo>(
    c: &mut Conn<S>,
    body: BodyKind,
    limit: u64,
    expect_continue: bool,
) -> Result<Vec<u8>, SendError> {
    let timeout = c.client_timeout();
    let hl = c.s.head.head_len.min(c.buf.len());
    let mut asked_continue = !expect_continue;
    match body {
        BodyKind::None | BodyKind::CloseDelimited => {
            c.pos = hl;
            Ok(Vec::new())
        }
        BodyKind::Length(n) => {
            if n > limit {
                return Err(SendError::TooLarge);
            }
            let end = hl + n as usize;
            // Counted as they come, so a body cut short logs what was read.
            let mut counted = c.buf.len().min(end);
            c.bytes_in += (counted - hl) as u64;
            while c.buf.len() < end {
                if !asked_continue && c.buf.len() == hl {
                    asked_continue = true;
                    send_continue(c).await?;
                }
                read_behind(c, end - c.buf.len(), timeout).await?;
                let upto = c.buf.len().min(end);
                c.bytes_in += upto.saturating_sub(counted) as u64;
                counted = upto;
            }
            c.pos = end;
            c.body_done = true;
            Ok(c.buf.get(hl..end).unwrap_or_default().to_vec())
        }
        BodyKind::Chunked => {
            let mut whole = Whole::new(hl);
            loop {
                let before = whole.out.len();
                let decoded = whole.decode(&c.buf, limit);
                // Decoded bytes, as the streaming path counts them.
                c.bytes_in += (whole.out.len() - before) as u64;
                match decoded {
                    Err(WholeError::TooLarge) => return Err(SendError::TooLarge),
                    Err(_) => return Err(SendError::BadChunked),
                    Ok(Some(end)) => {
                        c.pos = end;
                        c.body_done = true;
                        return Ok(whole.out);
                    }
                    Ok(None) => {}
                }
                if (c.buf.len() - hl) as u64 > raw_limit(limit) {
                    return Err(SendError::TooLarge);
                }
                if !asked_continue {
                    asked_continue = true;
                    send_continue(c).await?;
                }
                read_behind(c, BODY_BUF, timeout).await?;
            }
        }
    }
}

/// A chunked body being decoded whole (`read_whole`, `read_request_whole`) out of a buffer that
/// grows as bytes arrive.
struct Whole {
    dec: ChunkedDecoder,
    /// Where undecoded bytes start in the buffer.
    start: usize,
    out: Vec<u8>,
}

impl Whole {
    fn new(start: usize) -> Whole {
        Whole {
            dec: ChunkedDecoder::new(),
            start,
            out: Vec::new(),
        }
    }

    /// Decodes what `raw` holds past `start` into `out` (at most `limit` data bytes).
    /// `Ok(Some(end))`: the body ended at `end`; `Ok(None)`: more bytes are needed.
    fn decode(&mut self, raw: &[u8], limit: u64) -> Result<Option<usize>, WholeError> {
        while self.start < raw.len() {
            let rest = raw.get(self.start..).unwrap_or_default();
            let (used, chunk) = self.dec.decode(rest).map_err(|_| WholeError::Bad)?;
            match chunk {
                Chunk::Data(r) => {
                    self.out.extend_from_slice(rest.get(r).unwrap_or_default());
                    if self.out.len() as u64 > limit {
                        return Err(WholeError::TooLarge);
                    }
                }
                Chunk::NeedMore => {}
                Chunk::Done => return Ok(Some(self.start + used)),
            }
            if used == 0 {
                break;
            }
            self.start += used;
        }
        Ok(None)
    }
}

/// How many raw bytes a chunked body of at most `limit` data bytes may take: chunk framing is
/// bounded too, or tiny chunks could make the raw body many times the data.
fn raw_limit(limit: u64) -> u64 {
    limit.saturating_mul(2).saturating_add(64 * 1024)
}

/// Reads more client bytes in behind what `c.buf` holds, making room for about `want` more.
async fn read_behind<S: ClientIo>(
    c: &mut Conn<S>,
    want: usize,
    timeout: Duration,
) -> Result<(), SendError> {
    c.buf.reserve(want.clamp(1, BODY_BUF));
    match io::fill(&mut c.client, &mut c.buf, timeout).await {
        Ok(0) => Err(SendError::ClientGone),
        Ok(_) => Ok(()),
        Err(e) if io::is_timeout(&e) => Err(SendError::ClientTimeout),
        Err(_) => Err(SendError::ClientGone),
    }
}

/// Sends `c.s.out` (the request head) with a body read whole and edited (`read_request_whole`).
pub async fn send_request_whole<S: ClientIo>(
    c: &mut Conn<S>,
    body: &[u8],
    svc: &ServiceDef,
    upstream: &mut UpstreamConn,
) -> Result<(), SendError> {
    c.s.out.extend_from_slice(body);
    let len = c.s.out.len();
    send_body(upstream, &mut c.s.out, 0..len, svc.write_timeout).await?;
    c.t.upstream_head_out = c.stamp();
    Ok(())
}

/// Writes request-body bytes (with the head, the first time) upstream. On a plain connection a
/// stalled write watches for an early answer (`io::send_watching`), which ends it as
/// `UpstreamWrite`: the caller then reads that answer.
async fn send_body(
    upstream: &mut UpstreamConn,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    limit: Duration,
) -> Result<(), SendError> {
    let sent = match upstream.plain_fd() {
        Some(fd) => io::send_watching(upstream, buf, range, limit, fd).await,
        None => io::send(upstream, buf, range, limit).await,
    };
    sent.map_err(upstream_error)
}

/// Reads more body bytes into the (empty) client buffer. The first time, the small header buffer is
/// set aside for a pooled large one, so a body streams in large reads without every idle connection
/// paying for a large buffer. With a plain-TCP upstream (`watch`), an error answer it sends while
/// the client pauses ends the wait as `UpstreamWrite` (the upstream stopped taking the body): the
/// caller then relays that answer (`io::fill_watching`).
async fn read_client<S: ClientIo>(
    c: &mut Conn<S>,
    shard: &Shard,
    timeout: std::time::Duration,
    watch: Option<std::os::fd::RawFd>,
) -> Result<(), SendError> {
    if c.spare.capacity() == 0 && c.buf.capacity() < BODY_BUF {
        let big = shard.take_buf(BODY_BUF);
        c.spare = std::mem::replace(&mut c.buf, big);
    }
    // Plain clients only: an abandoned read on a TLS client leaves its stream mid-read, and the
    // lingering close after the answer could then not drain it (a reset could destroy the answer).
    let watch = watch.filter(|_| c.client.plain().is_some());
    let got = match watch {
        Some(fd) => io::fill_watching(&mut c.client, &mut c.buf, timeout, fd).await,
        None => io::fill(&mut c.client, &mut c.buf, timeout).await.map(Some),
    };
    match got {
        Ok(None) => Err(SendError::UpstreamWrite),
        Ok(Some(0)) => Err(SendError::ClientGone),
        Ok(Some(_)) => Ok(()),
        Err(e) if io::is_timeout(&e) => Err(SendError::ClientTimeout),
        Err(_) => Err(SendError::ClientGone),
    }
}

/// `Expect: 100-continue`: the gateway answers it itself once the request is routed and within
/// limits (so a 413 goes out instead of a 100 when the declared length is too big).
async fn send_continue<S: ClientIo>(c: &mut Conn<S>) -> Result<(), SendError> {
    let timeout = c.client_timeout();
    // While it is being written, no other answer may follow it (`Conn::cut_short`); once it is
    // out whole, a final answer still may.
    c.answer_out = true;
    let fut = c.client.write_all(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]);
    match monoio::time::timeout(timeout, fut).await {
        Ok((Ok(_), _)) => {
            c.answer_out = false;
            Ok(())
        }
        _ => Err(SendError::ClientGone),
    }
}

/// Sends `c.s.out` (the response head) and relays the body from `c.ubuf` / the upstream.
pub async fn relay_response<S: ClientIo>(
    c: &mut Conn<S>,
    svc: &ServiceDef,
    upstream: &mut UpstreamConn,
    body: BodyKind,
    framing: ClientFraming,
) -> Relay {
    let write_timeout = c.client_timeout();
    let read_timeout = svc.read_timeout;
    let hl = c.s.resp.head_len.min(c.ubuf.len());
    match body {
        BodyKind::None => {
            let clean = c.ubuf.len() == hl;
            match send_out(c, write_timeout).await {
                Ok(()) => Relay::Complete {
                    upstream_clean: clean,
                },
                Err(_) => Relay::Aborted,
            }
        }
        BodyKind::Length(n) => {
            // A response that fits the buffer whole goes out in one write once it is all here, as
            // nginx's buffering does: upstreams often send the head and the body in separate
            // segments, and relaying them as they come costs the client an extra TCP segment (and
            // both cores its processing) on a large share of small responses.
            if fits_buffer(c, n) && ((c.ubuf.len() - hl) as u64) < n {
                if let Err(r) = fill_length(c, upstream, n, read_timeout).await {
                    return r;
                }
            }
            let avail = c.ubuf.len() - hl;
            let first = (avail as u64).min(n) as usize;
            let mut clean = avail == first;
            c.answer_out = true;
            let sent = if c.client.plain().is_some() {
                // Head and the body bytes that came with it in one writev: the body is not copied.
                let n_out = c.s.out.len() + first;
                let r = io::send_pair(
                    &mut c.client,
                    &mut c.s.out,
                    &mut c.ubuf,
                    hl..hl + first,
                    &mut c.s.iov,
                    write_timeout,
                )
                .await;
                if r.is_ok() {
                    head_sent(c, n_out);
                }
                r
            } else {
                // TLS writes one iovec per record: copy, so head and body stay one record.
                c.s.out.extend_from_slice(&c.ubuf[hl..hl + first]);
                send_out(c, write_timeout).await
            };
            if sent.is_err() {
                return Relay::Aborted;
            }
            let mut remaining = n - first as u64;
            while remaining > 0 {
                c.ubuf.clear();
                match io::fill(upstream, &mut c.ubuf, read_timeout).await {
                    Ok(0) | Err(_) => return Relay::Aborted,
                    Ok(got) => {
                        let take = (got as u64).min(remaining) as usize;
                        clean &= take == got;
                        let sent =
                            io::send(&mut c.client, &mut c.ubuf, 0..take, write_timeout).await;
                        c.bytes_out += take as u64;
                        if sent.is_err() {
                            return Relay::Aborted;
                        }
                        remaining -= take as u64;
                    }
                }
            }
            Relay::Complete {
                upstream_clean: clean,
            }
        }
        BodyKind::Chunked => {
            relay_chunked(c, upstream, hl, framing, read_timeout, write_timeout).await
        }
        BodyKind::CloseDelimited => {
            relay_until_close(c, upstream, hl, framing, read_timeout, write_timeout).await
        }
    }
}

/// Whether a response body of `n` bytes fits the upstream buffer behind its head.
pub fn fits_buffer<S: ClientIo>(c: &Conn<S>, n: u64) -> bool {
    let hl = c.s.resp.head_len.min(c.ubuf.len());
    (hl as u64).saturating_add(n) <= c.ubuf.capacity() as u64
}

/// Reads until the whole body of `n` bytes (which `fits_buffer`) is in the upstream buffer behind
/// its head. Nothing has gone to the client yet, so a failure is an answer of the gateway's own:
/// `BadBeforeHead` (502) or `TimedOutBeforeHead` (504).
pub async fn fill_length<S: ClientIo>(
    c: &mut Conn<S>,
    upstream: &mut UpstreamConn,
    n: u64,
    read_timeout: Duration,
) -> Result<(), Relay> {
    let hl = c.s.resp.head_len.min(c.ubuf.len());
    if ((c.ubuf.len() - hl) as u64) >= n {
        return Ok(());
    }
    while ((c.ubuf.len() - hl) as u64) < n {
        match io::fill(upstream, &mut c.ubuf, read_timeout).await {
            Ok(0) => return Err(Relay::BadBeforeHead),
            Ok(_) => {}
            Err(e) if io::is_timeout(&e) => return Err(Relay::TimedOutBeforeHead),
            Err(_) => return Err(Relay::BadBeforeHead),
        }
    }
    // The gateway's own time resumes here: waiting for the body was the upstream's.
    c.t.upstream_head_in = c.stamp();
    Ok(())
}

/// Why reading a whole response body (`read_whole`) stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeError {
    /// Larger than the limit (known from Content-Length, or on the way).
    TooLarge,
    /// Malformed, cut short or reset.
    Bad,
    TimedOut,
}

/// Reads the whole response body, decoded, for an edit (response-transformer `json`): at most
/// `limit` bytes. `c.ubuf` holds the head and the body bytes that came with it and is left as it
/// is (the head is written from it afterwards); later bytes go to a buffer of this response's own.
/// Returns the body and whether the upstream connection is clean (the framing ended exactly).
pub async fn read_whole<S: ClientIo>(
    c: &mut Conn<S>,
    svc: &ServiceDef,
    upstream: &mut UpstreamConn,
    body: BodyKind,
    limit: u64,
) -> Result<(Vec<u8>, bool), WholeError> {
    let timeout = svc.read_timeout;
    let hl = c.s.resp.head_len.min(c.ubuf.len());
    let mut raw: Vec<u8> = c.ubuf.get(hl..).unwrap_or_default().to_vec();
    match body {
        BodyKind::None => Ok((Vec::new(), raw.is_empty())),
        BodyKind::Length(n) => {
            if n > limit {
                return Err(WholeError::TooLarge);
            }
            while (raw.len() as u64) < n {
                read_more(upstream, &mut raw, timeout).await?;
            }
            let clean = raw.len() as u64 == n;
            raw.truncate(n as usize);
            Ok((raw, clean))
        }
        BodyKind::Chunked => {
            let mut whole = Whole::new(0);
            loop {
                if let Some(end) = whole.decode(&raw, limit)? {
                    return Ok((whole.out, end == raw.len()));
                }
                if raw.len() as u64 > raw_limit(limit) {
                    return Err(WholeError::TooLarge);
                }
                read_more(upstream, &mut raw, timeout).await?;
            }
        }
        BodyKind::CloseDelimited => loop {
            if raw.len() as u64 > limit {
                return Err(WholeError::TooLarge);
            }
            if raw.len() == raw.capacity() {
                raw.reserve(16 * 1024);
            }
            // The close ends the body; a reset or a timeout does not.
            match io::fill(upstream, &mut raw, timeout).await {
                Ok(0) => return Ok((raw, false)),
                Ok(_) => {}
                Err(e) if io::is_timeout(&e) => return Err(WholeError::TimedOut),
                Err(_) => return Err(WholeError::Bad),
            }
        },
    }
}

/// Appends one read from the upstream to `raw`, growing it as needed; EOF is `Bad` (cut short).
async fn read_more(
    upstream: &mut UpstreamConn,
    raw: &mut Vec<u8>,
    timeout: Duration,
) -> Result<usize, WholeError> {
    if raw.len() == raw.capacity() {
        raw.reserve(16 * 1024);
    }
    match io::fill(upstream, raw, timeout).await {
        Ok(0) => Err(WholeError::Bad),
        Ok(n) => Ok(n),
        Err(e) if io::is_timeout(&e) => Err(WholeError::TimedOut),
        Err(_) => Err(WholeError::Bad),
    }
}

/// Sends `c.s.out` (the response head) with an edited body behind it.
pub async fn send_edited<S: ClientIo>(c: &mut Conn<S>, body: &[u8], upstream_clean: bool) -> Relay {
    c.s.out.extend_from_slice(body);
    match send_out(c, c.client_timeout()).await {
        Ok(()) => Relay::Complete { upstream_clean },
        Err(_) => Relay::Aborted,
    }
}

/// Sends `c.s.out` to the client, counting bytes and noting when the response head went out (the
/// first client write of a response always carries its head).
async fn send_out<S: ClientIo>(c: &mut Conn<S>, timeout: Duration) -> std::io::Result<()> {
    c.answer_out = true;
    let n = c.s.out.len();
    io::send_all(&mut c.client, &mut c.s.out, timeout).await?;
    head_sent(c, n);
    Ok(())
}

/// Sends what `c.s.out` holds, if anything, and empties it; `Ok(true)` when something went out.
async fn send_pending<S: ClientIo>(c: &mut Conn<S>, timeout: Duration) -> Result<bool, ()> {
    if c.s.out.is_empty() {
        return Ok(false);
    }
    send_out(c, timeout).await.map_err(|_| ())?;
    c.s.out.clear();
    Ok(true)
}

/// Counts `n` bytes written to the client and notes when the response head went out.
fn head_sent<S: ClientIo>(c: &mut Conn<S>, n: usize) {
    c.bytes_out += n as u64;
    if c.timed {
        c.t.client_head_out.get_or_insert_with(Instant::now);
    }
}

/// Appends upstream body data to `c.s.out` in the client's framing.
fn frame_into(out: &mut Vec<u8>, data: &[u8], framing: ClientFraming) {
    if data.is_empty() {
        return;
    }
    if framing == ClientFraming::Chunked {
        push_chunk(out, data);
    } else {
        out.extend_from_slice(data);
    }
}

/// Why `decode_chunks` stopped short.
enum Stop {
    /// The upstream's chunked framing is broken.
    Malformed,
    /// `data` said no (the compressor failed).
    Sink,
}

/// Decodes the chunked body bytes in `buf[*start..]` (advancing `start` past what it used), handing
/// each piece of data to `data`; `Ok(true)` once the last chunk (and any trailers) went by, so the
/// bytes after `start` belong to no body. Shared by the plain and the compressed relay.
fn decode_chunks(
    dec: &mut ChunkedDecoder,
    buf: &[u8],
    start: &mut usize,
    mut data: impl FnMut(&[u8]) -> bool,
) -> Result<bool, Stop> {
    while *start < buf.len() {
        let (used, chunk) = dec
            .decode(buf.get(*start..).unwrap_or_default())
            .map_err(|_| Stop::Malformed)?;
        match chunk {
            Chunk::Data(r) => {
                let piece = buf
                    .get(*start + r.start..*start + r.end)
                    .unwrap_or_default();
                if !data(piece) {
                    return Err(Stop::Sink);
                }
            }
            Chunk::NeedMore => {}
            Chunk::Done => {
                *start += used;
                return Ok(true);
            }
        }
        if used == 0 {
            break;
        }
        *start += used;
    }
    Ok(false)
}

async fn relay_chunked<S: ClientIo>(
    c: &mut Conn<S>,
    upstream: &mut UpstreamConn,
    hl: usize,
    framing: ClientFraming,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
) -> Relay {
    let mut dec = ChunkedDecoder::new();
    let mut start = hl;
    let mut head_sent = false;
    loop {
        let out = &mut c.s.out;
        let decoded = decode_chunks(&mut dec, &c.ubuf, &mut start, |data| {
            frame_into(out, data, framing);
            true
        });
        let done = match decoded {
            Ok(done) => done,
            Err(_) if !head_sent => return Relay::BadBeforeHead,
            Err(_) => return Relay::Aborted,
        };
        if done && framing == ClientFraming::Chunked {
            c.s.out.extend_from_slice(LAST_CHUNK);
        }
        match send_pending(c, write_timeout).await {
            Ok(sent) => head_sent |= sent,
            Err(()) => return Relay::Aborted,
        }
        if done {
            return Relay::Complete {
                upstream_clean: start == c.ubuf.len(),
            };
        }
        c.ubuf.clear();
        start = 0;
        match io::fill(upstream, &mut c.ubuf, read_timeout).await {
            Ok(0) | Err(_) => return Relay::Aborted,
            Ok(_) => {}
        }
    }
}

async fn relay_until_close<S: ClientIo>(
    c: &mut Conn<S>,
    upstream: &mut UpstreamConn,
    hl: usize,
    framing: ClientFraming,
    read_timeout: std::time::Duration,
    write_timeout: std::time::Duration,
) -> Relay {
    let data = c.ubuf.get(hl..).unwrap_or_default();
    frame_into(&mut c.s.out, data, framing);
    loop {
        if send_out(c, write_timeout).await.is_err() {
            return Relay::Aborted;
        }
        c.s.out.clear();
        c.ubuf.clear();
        match io::fill(upstream, &mut c.ubuf, read_timeout).await {
            Ok(0) => break,
            Ok(_) => {
                let data = c.ubuf.as_slice();
                frame_into(&mut c.s.out, data, framing);
            }
            // A reset or timeout is not a clean end: leave the response unterminated.
            Err(_) => return Relay::Aborted,
        }
    }
    if framing == ClientFraming::Chunked {
        c.s.out.extend_from_slice(LAST_CHUNK);
        if send_out(c, write_timeout).await.is_err() {
            return Relay::Aborted;
        }
    }
    Relay::Complete {
        upstream_clean: false,
    }
}

/// Relays a response body gzip'd (`plugins::compression`): the upstream's framing is decoded
/// (a length, chunks, or up to the close) and every piece read goes through `gz`; a chunked or
/// close-delimited body (a stream, perhaps of events) is flushed after each read so nothing is
/// held back, one of known length only as deflate's blocks fill. The output goes to the client in
/// its `framing` (chunked; close-delimited is kept for completeness: HTTP/1.0 clients are not
/// compressed).
/// The head waiting in `c.s.out` goes out with the first compressed bytes, or alone if the body is
/// not there yet. As for plain relays, an upstream that fails mid-body leaves the client's answer
/// unterminated (the connection is closed), so a cut-short body never looks complete.
pub async fn relay_compressed<S: ClientIo>(
    c: &mut Conn<S>,
    svc: &ServiceDef,
    upstream: &mut UpstreamConn,
    body: BodyKind,
    framing: ClientFraming,
    gz: &mut Gzip,
) -> Relay {
    let write_timeout = c.client_timeout();
    let read_timeout = svc.read_timeout;
    let mut start = c.s.resp.head_len.min(c.ubuf.len());
    let mut remaining = match body {
        BodyKind::Length(n) => n,
        _ => u64::MAX,
    };
    let mut dec = ChunkedDecoder::new();
    let mut sent_any = false;
    // A close-delimited body's end: the next pass finishes the stream.
    let mut eof = false;
    gz.start();
    loop {
        // What the buffer holds of the body, through the compressor.
        let avail = c.ubuf.get(start..).unwrap_or_default();
        let done;
        match body {
            BodyKind::Length(_) => {
                let take = (avail.len() as u64).min(remaining) as usize;
                let data = avail.get(..take).unwrap_or_default();
                // A body of known length is a document, not a stream: no flush per read, so
                // deflate blocks span reads (better ratio, fewer chunks and writes).
                if take > 0 && gz.write(data, false).is_err() {
                    return Relay::Aborted;
                }
                remaining -= take as u64;
                start += take;
                done = remaining == 0;
            }
            BodyKind::Chunked => {
                let mut fed = false;
                let decoded = decode_chunks(&mut dec, &c.ubuf, &mut start, |data| {
                    fed = true;
                    gz.write(data, false).is_ok()
                });
                done = match decoded {
                    Ok(done) => done,
                    Err(Stop::Malformed) if !sent_any => return Relay::BadBeforeHead,
                    Err(_) => return Relay::Aborted,
                };
                if fed && !done && gz.write(&[], true).is_err() {
                    return Relay::Aborted;
                }
            }
            BodyKind::CloseDelimited | BodyKind::None => {
                if !avail.is_empty() && gz.write(avail, true).is_err() {
                    return Relay::Aborted;
                }
                start = c.ubuf.len();
                done = body == BodyKind::None || eof;
            }
        }
        if done && gz.finish().is_err() {
            return Relay::Aborted;
        }
        frame_into(&mut c.s.out, &gz.out, framing);
        gz.out.clear();
        if done && framing == ClientFraming::Chunked {
            c.s.out.extend_from_slice(LAST_CHUNK);
        }
        match send_pending(c, write_timeout).await {
            Ok(sent) => sent_any |= sent,
            Err(()) => return Relay::Aborted,
        }
        if done {
            return Relay::Complete {
                upstream_clean: body != BodyKind::CloseDelimited && start == c.ubuf.len(),
            };
        }
        c.ubuf.clear();
        start = 0;
        match io::fill(upstream, &mut c.ubuf, read_timeout).await {
            // The close ends the body: the next pass finishes the stream.
            Ok(0) if body == BodyKind::CloseDelimited => eof = true,
            Ok(0) | Err(_) => return Relay::Aborted,
            Ok(_) => {}
        }
    }
}
