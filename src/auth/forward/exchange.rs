//! One request/answer exchange with the auth service over one connection: write the request, read
//! the answer head (skipping interim 1xx answers), read the whole body into the same buffer.
//!
//! Buffer layout after a complete answer: `buf[..head.head_len]` is the answer head (the spans of
//! `head` point into it) and `buf[head.head_len..]` is exactly the decoded body: Content-Length and
//! close-delimited bodies stay where they were read, chunked bodies are decoded in place (data runs
//! are moved down over the framing, which only ever shrinks), so the buffer never holds more than
//! head + `max_body` + one read's worth.
//!
//! Invariants: every read and write is bounded by the call's deadline; the buffer grows only up to
//! `MAX_RESPONSE_HEAD` while reading the head and head + `max_body` + `SLACK` while reading the body;
//! every loop ends because each turn consumes at least one byte, fails, or hits the deadline.
//! A timed-out operation takes the buffer down with it (see `proxy::io`): the next call re-grows it.

use std::time::Instant;

use super::{io_verdict, left, wire, AuthRequest, ForwardAuthDef, Scratch, Verdict};
use crate::http::chunked::{Chunk, ChunkedDecoder};
use crate::http::parse::{parse_response, Parsed};
use crate::http::BodyKind;
use crate::proxy::io;
use crate::upstream::conn::UpstreamConn;

use super::MAX_RESPONSE_HEAD;

/// Starting capacity: a request head and a typical small answer in one read.
const INITIAL_BUF: usize = 4 * 1024;
/// Room past the body limit for chunk framing read along with the data, and for noticing an
/// answer that is longer than it said.
const SLACK: usize = 4 * 1024;
/// Interim (1xx) answers skipped before the real one; more is a broken service.
const MAX_INTERIM: usize = 4;

pub enum Outcome {
    /// A complete answer is in the scratch buffer. `reusable`: the connection, if it may be
    /// pooled (clean framing, nothing unread, keep-alive).
    Answer {
        reusable: Option<UpstreamConn>,
    },
    /// A reused pooled connection failed before any answer byte: retry on a fresh one.
    Stale,
    Failed(Verdict),
}

const fn unavailable(why: &'static str) -> Outcome {
    Outcome::Failed(Verdict::Unavailable { why })
}

/// Makes room for one more read, growing `buf` (doubling) up to `limit` bytes of capacity.
/// `false` when `buf` is full at the limit.
fn make_room(buf: &mut Vec<u8>, limit: usize) -> bool {
    if buf.len() < buf.capacity() {
        return true;
    }
    if buf.capacity() >= limit {
        return false;
    }
    let want = buf.capacity().saturating_mul(2).max(INITIAL_BUF).min(limit);
    buf.reserve_exact(want.saturating_sub(buf.len()));
    buf.len() < buf.capacity()
}

/// Writes the request and reads the whole answer.
pub async fn run(
    mut conn: UpstreamConn,
    reused: bool,
    def: &ForwardAuthDef,
    req: &AuthRequest<'_>,
    s: &mut Scratch,
    deadline: Instant,
) -> Outcome {
    s.buf.clear();
    if s.buf.capacity() < INITIAL_BUF {
        s.buf.reserve_exact(INITIAL_BUF);
    }
    wire::write_request(
        &mut s.buf,
        def.path.as_bytes(),
        def.host.as_bytes(),
        &def.request_headers,
        req,
    );
    let Some(limit) = left(deadline) else {
        return Outcome::Failed(Verdict::Timeout);
    };
    if let Err(e) = io::send_all(&mut conn, &mut s.buf, limit).await {
        // A write only fails on a pooled connection the peer closed a while ago (EPIPE/reset);
        // nothing of the request was processed, so it can be replayed.
        if reused && !io::is_timeout(&e) {
            return Outcome::Stale;
        }
        return Outcome::Failed(io_verdict(&e, "write failed"));
    }
    s.buf.clear();
    if let Err(o) = read_head(&mut conn, reused, s, deadline).await {
        return o;
    }
    let body = s.head.body.unwrap_or(BodyKind::None);
    let head_len = s.head.head_len;
    let clean = match read_body(
        &mut conn,
        &mut s.buf,
        head_len,
        body,
        def.max_body,
        deadline,
    )
    .await
    {
        Ok(clean) => clean,
        Err(o) => return o,
    };
    let reusable = (clean && !s.head.close).then_some(conn);
    Outcome::Answer { reusable }
}

/// Reads until a complete final answer head is parsed into `s.head`.
async fn read_head(
    conn: &mut UpstreamConn,
    reused: bool,
    s: &mut Scratch,
    deadline: Instant,
) -> Result<(), Outcome> {
    let mut interim = 0;
    loop {
        if !s.buf.is_empty() {
            // The request is a GET, so the body framing follows the headers (`req_was_head` false).
            match parse_response(&s.buf, MAX_RESPONSE_HEAD, false, &mut s.head) {
                Ok(Parsed::Complete) => {
                    let status = s.head.status;
                    if status == 101 {
                        return Err(unavailable("101 without an upgrade request"));
                    }
                    if status >= 200 {
                        return Ok(());
                    }
                    // 100 / 103 and friends: informational, the final answer follows.
                    interim += 1;
                    if interim > MAX_INTERIM {
                        return Err(unavailable("too many interim answers"));
                    }
                    let hl = s.head.head_len.min(s.buf.len());
                    s.buf.drain(..hl);
                    continue;
                }
                Ok(Parsed::Partial) => {}
                Err(_) => return Err(unavailable("malformed answer head")),
            }
        }
        if !make_room(&mut s.buf, MAX_RESPONSE_HEAD) {
            return Err(unavailable("answer head too large"));
        }
        let Some(limit) = left(deadline) else {
            return Err(Outcome::Failed(Verdict::Timeout));
        };
        // Before the first answer byte, a closed or reset reused connection is stale, not broken.
        let stale_ok = reused && s.buf.is_empty() && interim == 0;
        match io::fill(conn, &mut s.buf, limit).await {
            Ok(0) if stale_ok => return Err(Outcome::Stale),
            Ok(0) => {
                return Err(unavailable(
                    "connection closed before a complete answer head",
                ))
            }
            Ok(_) => {}
            Err(e) if stale_ok && !io::is_timeout(&e) => return Err(Outcome::Stale),
            Err(e) => return Err(Outcome::Failed(io_verdict(&e, "read failed"))),
        }
    }
}

/// Reads the body that follows the head at `buf[..head_len]` and leaves exactly the decoded body
/// after the head. `Ok(clean)`: the framing ended exactly at the end of what was read (nothing
/// unread that could poison the next exchange on this connection).
async fn read_body(
    conn: &mut UpstreamConn,
    buf: &mut Vec<u8>,
    head_len: usize,
    body: BodyKind,
    max_body: usize,
    deadline: Instant,
) -> Result<bool, Outcome> {
    match body {
        BodyKind::None => {
            let clean = buf.len() == head_len;
            buf.truncate(head_len);
            Ok(clean)
        }
        BodyKind::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= max_body)
                .ok_or(unavailable("answer body too large"))?;
            let end = head_len.saturating_add(n);
            while buf.len() < end {
                if !make_room(buf, end) {
                    return Err(unavailable("answer body does not fit"));
                }
                if fill(conn, buf, deadline).await? == 0 {
                    return Err(unavailable("connection closed inside the answer body"));
                }
            }
            let clean = buf.len() == end;
            buf.truncate(end);
            Ok(clean)
        }
        BodyKind::Chunked => read_chunked(conn, buf, head_len, max_body, deadline).await,
        BodyKind::CloseDelimited => {
            let limit = head_len.saturating_add(max_body).saturating_add(1);
            loop {
                if buf.len().saturating_sub(head_len) > max_body || !make_room(buf, limit) {
                    return Err(unavailable("answer body too large"));
                }
                if fill(conn, buf, deadline).await? == 0 {
                    // Delimited by the close: never reusable.
                    return Ok(false);
                }
            }
        }
    }
}

/// Decodes a chunked body in place: data runs are moved down to `end` (the end of the decoded body
/// so far), the framing is dropped, and the next read lands after `end`.
async fn read_chunked(
    conn: &mut UpstreamConn,
    buf: &mut Vec<u8>,
    head_len: usize,
    max_body: usize,
    deadline: Instant,
) -> Result<bool, Outcome> {
    let limit = head_len.saturating_add(max_body).saturating_add(SLACK);
    let mut dec = ChunkedDecoder::new();
    let mut end = head_len;
    let mut pos = head_len;
    loop {
        while pos < buf.len() {
            let rest = buf.get(pos..).unwrap_or_default();
            let (used, chunk) = dec
                .decode(rest)
                .map_err(|_| unavailable("malformed chunked answer body"))?;
            match chunk {
                Chunk::Data(r) => {
                    let len = r.len();
                    if end - head_len + len > max_body {
                        return Err(unavailable("answer body too large"));
                    }
                    // `end <= pos + r.start`: the copy only ever moves data down.
                    buf.copy_within(pos + r.start..pos + r.end, end);
                    end += len;
                }
                Chunk::NeedMore => {}
                Chunk::Done => {
                    let clean = pos + used == buf.len();
                    buf.truncate(end);
                    return Ok(clean);
                }
            }
            if used == 0 {
                break;
            }
            pos += used;
        }
        // Everything read so far is decoded: drop the framing, read on after the data.
        buf.truncate(end);
        pos = end;
        if !make_room(buf, limit) {
            return Err(unavailable("answer body too large"));
        }
        if fill(conn, buf, deadline).await? == 0 {
            return Err(unavailable("connection closed inside the answer body"));
        }
    }
}

/// One read within the deadline.
async fn fill(
    conn: &mut UpstreamConn,
    buf: &mut Vec<u8>,
    deadline: Instant,
) -> Result<usize, Outcome> {
    let Some(limit) = left(deadline) else {
        return Err(Outcome::Failed(Verdict::Timeout));
    };
    io::fill(conn, buf, limit)
        .await
        .map_err(|e| Outcome::Failed(io_verdict(&e, "read failed")))
}
