//! The per-connection request loop: read a head, route it, forward it upstream, relay the answer.
//!
//! One task per client connection; requests on it are handled strictly one after another, which
//! answers pipelined requests in order. For each request:
//!
//! 1. `read_head`: parse into reused buffers, enforcing the header timeout and size limits;
//! 2. `prepare`: normalize the path, route, check the body limit;
//! 3. `forward`: pick a target, take a pooled connection or connect, then `exchange`: write the
//!    request head and stream the body, read the response head, write it and stream the body back;
//! 4. pool the upstream connection only if the exchange left it clean, then loop or close.
//!
//! Invariants: after any error whose framing is unsafe, or once a response has started and cannot be
//! completed, the client connection is closed (never a complete-looking truncated response). Nothing
//! is allocated per request once the connection's buffers have grown to their working size.

mod balance;
mod body;
mod chain;
pub mod head;
pub mod io;
pub mod parking;
mod tunnel;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use std::os::fd::RawFd;

use monoio::io::{AsyncReadRent, AsyncWriteRent, Split};
use monoio::net::TcpStream;
use monoio_rustls::TlsConnector;

use crate::access_log::format::{self as log_format, Outcome};
use crate::auth::client_ip;
use crate::auth::steps::Identity;
use crate::config::model::{Cidr, Config, RouteDef, ServiceDef};
use crate::errors::GatewayError;
use crate::http::headers::eq_ignore_case;
use crate::http::parse::{self, ParseError, Parsed, RequestHead, ResponseHead};
use crate::http::{BodyKind, Limits, Version};
use crate::metrics::Timings;
use crate::plugins::json_body::{Applied, JsonTransform};
use crate::router::normalize::{normalize_path, upstream_path, NormalizeError};
use crate::router::{Occurrence, RequestView};
use crate::upstream::conn::UpstreamConn;
use crate::upstream::health::Who;
use crate::upstream::inflight::InFlight;
use crate::worker::{Shard, Snapshot};
use head::{ClientFraming, Forwarded};

/// `path` with every `%2F` (normalized paths have upper-case hex) made a '/'. Rare: only for a
/// path that has one, so it allocates.
fn decode_slashes(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    let mut rest = path;
    while let Some(i) = memchr::memmem::find(rest, b"%2F") {
        out.extend_from_slice(rest.get(..i).unwrap_or_default());
        out.push(b'/');
        rest = rest.get(i + 3..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    out
}

/// Whether a message's body is one the transformers' `json` edits apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JsonFraming {
    NotJson,
    /// A JSON Content-Type (any of them: with two, the gateway and the application could each
    /// read a different one), no content coding.
    Json,
    /// JSON, but with a content coding the gateway does not decode: it cannot be edited, and is
    /// refused rather than passed on with what a `remove` should hide.
    Encoded,
}

fn json_framing<'a>(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> JsonFraming {
    let (mut json, mut encoded) = (false, false);
    for (name, value) in headers {
        if eq_ignore_case(name, b"content-type") {
            json |= crate::plugins::json_body::is_json_type(value);
        } else if eq_ignore_case(name, b"content-encoding") {
            encoded |= !eq_ignore_case(value.trim_ascii(), b"identity");
        }
    }
    match (json, encoded) {
        (false, _) => JsonFraming::NotJson,
        (true, false) => JsonFraming::Json,
        (true, true) => JsonFraming::Encoded,
    }
}

/// The body edits that apply to a request (see `request_body_edit`).
#[derive(Clone, Copy)]
enum BodyEdit<'t> {
    Json(&'t JsonTransform),
    Form(&'t crate::plugins::form_body::FormTransform),
}

/// RFC 9110 §9.2.2: a request with this method may be sent again.
fn idempotent(method: &[u8]) -> bool {
    [
        &b"GET"[..],
        b"HEAD",
        b"OPTIONS",
        b"TRACE",
        b"PUT",
        b"DELETE",
    ]
    .contains(&method)
}

/// Runs `work` until it completes, or until `cut` is set (checked each time the task is polled;
/// the drain deadline sets it and wakes every connection task): `None`, with `work` dropped
/// wherever it was waiting.
async fn until_cut<T>(cut: &Cell<bool>, work: impl std::future::Future<Output = T>) -> Option<T> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if cut.get() {
            return Poll::Ready(None);
        }
        work.as_mut().poll(cx).map(Some)
    })
    .await
}

/// Whether the client socket has input the gateway has not read (a non-blocking one-byte peek).
fn input_waiting(fd: RawFd) -> bool {
    let mut byte = 0u8;
    // SAFETY: recv into a one-byte local buffer; MSG_PEEK leaves the byte in the socket, and
    // MSG_DONTWAIT keeps the call from blocking the worker.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut byte as *mut u8).cast::<libc::c_void>(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n > 0
}

/// Lingering close: how long and how much unread client input is drained before closing.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// After the upstream stopped taking a request body: how long its early answer may take to show.
/// It was sent before the upstream stopped reading, so it is normally there already.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// Interim (1xx) responses accepted before the final one; more is a 502. Each restarts the read
/// timeout, which is what a WebDAV server's `102 Processing` every few seconds is for (a long job
/// outliving the timeout): eight cut those jobs off (found by a review). The cap only stops an
/// upstream that sends them in a loop.
const MAX_INTERIM: u32 = 1024;
/// The access log's `detail` for a client that went away before its answer (logged as 499).
const CLIENT_LEFT: &str = "client closed before the answer";
/// The access log's `detail` for a request or tunnel the drain deadline ended (`Shard::cut`).
const DRAIN_CUT: &str = "cut at the drain deadline";
/// How long a request cut at the drain deadline gets to write its 503 (the drain waits
/// `worker::CUT_GRACE`, 500 ms, for these answers and their log lines).
const CUT_ANSWER_TIME: Duration = Duration::from_millis(250);
/// How long a TLS close_notify may take to send before the socket is closed anyway.
const CLOSE_NOTIFY_TIME: Duration = Duration::from_secs(1);
/// Initial client read buffer (nginx's `client_header_buffer_size`): enough for typical request heads,
/// grows up to the header limit for large ones and shrinks back afterwards.
const CLIENT_BUF: usize = 1024;
/// A connection with no request for this long parks (`parking`): its task, buffer and request state
/// are freed and its socket waits in the worker's epoll set with a record of under 100 bytes, plus
/// rustls' state for TLS (nginx frees its buffers on idle keep-alive connections the same way).
/// Long enough that back-to-back keep-alive traffic never pays for it (waking a parked connection
/// costs a task allocation and three syscalls).
const PARK_AFTER: Duration = Duration::from_millis(500);
/// Past this the client buffer is shrunk back after a request, so one big head doesn't pin memory.
const CLIENT_BUF_KEEP: usize = 8 * 1024;

/// A client-side stream: plain TCP or TLS over TCP.
pub trait ClientIo: AsyncReadRent + AsyncWriteRent + Split + 'static {
    /// The socket itself when nothing sits between it and us (plain TCP).
    fn plain(&mut self) -> Option<&mut TcpStream> {
        None
    }

    /// Not plain, but a read dropped by its timeout loses nothing, so an idle connection can wait
    /// with a timed read and then park (`tls::ServerStream`).
    fn parks_after_timed_read(&self) -> bool {
        false
    }

    /// Whether the connection can park now (nothing of its own waits to be sent or read). Plain
    /// TCP always can.
    fn can_park(&self) -> bool {
        true
    }

    /// The socket and the TLS state to keep while parked (for `parking`); `None`: cannot park.
    fn into_parked(self) -> Option<(TcpStream, Option<Box<rustls::ServerConnection>>)>
    where
        Self: Sized,
    {
        None
    }
}

impl ClientIo for TcpStream {
    fn plain(&mut self) -> Option<&mut TcpStream> {
        Some(self)
    }

    fn into_parked(self) -> Option<(TcpStream, Option<Box<rustls::ServerConnection>>)> {
        Some((self, None))
    }
}

/// The listener a connection arrived on.
#[derive(Debug, Clone, Copy)]
pub struct Listener {
    pub port: u16,
    pub tls: bool,
}

/// Working memory of one request: parsed heads, rewritten paths, the outgoing-bytes buffer.
/// `Default` is empty and allocation-free; pooled instances keep their grown capacity.
#[derive(Default)]
pub struct Scratch {
    head: RequestHead,
    resp: ResponseHead,
    /// Normalized request path (what routing sees).
    path: Vec<u8>,
    /// Upstream request target (rewritten path + query).
    target: Vec<u8>,
    /// Outgoing bytes: heads, re-encoded chunks, error responses.
    out: Vec<u8>,
    /// Response header lines plugins add (`Name: value\r\n`), e.g. rate-limit headers.
    plugin_headers: Vec<u8>,
    /// Plugin chain state: identity, upstream edits, limiter key.
    chain: chain::ChainState,
    /// The iovec pair of `io::send_pair` (response head + body in one write), made once per scratch.
    iov: Option<Box<[libc::iovec; 2]>>,
    /// The request's access log fields, taken while its head is still in the client buffer (a
    /// streamed body overwrites it); the line is completed when the request ends.
    log: Vec<u8>,
    /// An upgrade request's `Upgrade` values (comma-joined), copied while the head is still in
    /// the client buffer: a 101 is checked against them after a streamed body overwrote it.
    upgrade_offer: Vec<u8>,
    /// The method a method-override header or `_method` parameter names (upper-cased; empty: none).
    /// The upstream's framework runs it instead of the request line's: forward-auth is asked about
    /// it, and a request is replayed only if it is idempotent too.
    override_method: Vec<u8>,
}

impl Scratch {
    pub fn with_capacity() -> Scratch {
        Scratch {
            path: Vec::with_capacity(256),
            target: Vec::with_capacity(256),
            out: Vec::with_capacity(1024),
            log: Vec::with_capacity(512),
            ..Scratch::default()
        }
    }

    /// Whether this scratch may go back to the pool (a huge one is dropped instead).
    pub fn reusable(&self) -> bool {
        self.out.capacity() <= CLIENT_BUF_KEEP
            && self.path.capacity() <= CLIENT_BUF_KEEP
            && self.log.capacity() <= CLIENT_BUF_KEEP
    }
}

/// What the connection loop does after a request.
pub enum Next {
    KeepAlive,
    /// Idle past `PARK_AFTER` with nothing read: park for this much longer before closing.
    Park(Duration),
    Close,
    /// A response cut mid-body whose end the client reads as the close (an HTTP/1.0 client, a
    /// body without length): reset the connection, so the cut is an error, not a complete-looking
    /// response.
    Reset,
    /// A 101 was relayed: the connection becomes a byte tunnel to this upstream connection.
    Upgrade(UpstreamConn),
}

/// Outcome of one attempt at an upstream exchange.
enum Exchange {
    Done(Next),
    /// Failed on a reused pooled connection before any response byte and before anything reached
    /// the client: may be retried on a fresh connection if the request is replayable.
    RetryFresh,
    /// A fresh connection the target accepted, then closed or reset before any response byte,
    /// for a replayable request: the next target gets it, as after a failed connect.
    RetryNext,
}

/// How waiting for a request head ended (errors aside).
enum HeadRead {
    Complete,
    /// The client went away, idled out, or the worker is draining: nothing to answer.
    Closed,
    /// Nothing arrived within `PARK_AFTER`: park for this much longer.
    Park(Duration),
}

/// Facts about the current request that outlive its head (the client buffer is reused for the body).
#[derive(Clone, Copy)]
struct Prepared {
    route: usize,
    strip_len: usize,
    max_body: u64,
    body: BodyKind,
    head_method: bool,
    http10: bool,
    client_close: bool,
    expect_continue: bool,
    upgrade: bool,
    /// Idempotent method without a body: can be sent again after a stale pooled connection failed.
    replayable: bool,
}

struct Conn<S> {
    client: S,
    /// The client socket, for the idle registry (drain wakes idle reads with `shutdown(SHUT_RD)`).
    fd: RawFd,
    /// Slot in the shard's idle registry.
    slot: usize,
    peer: SocketAddr,
    listener: Listener,
    /// The config generation of the current request (refreshed when a request head is complete).
    snap: Rc<Snapshot>,
    /// Client bytes; unconsumed ones start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    /// The small header buffer, set aside while a request body streams through a pooled one.
    spare: Vec<u8>,
    served: u64,
    /// Per-request working memory, borrowed from the shard while a request is being handled, so an
    /// idle keep-alive connection holds none of it.
    s: Scratch,
    /// Upstream read buffer; borrowed from the shard's buffer pool only while a request is upstream.
    ubuf: Vec<u8>,
    /// Whether the current request's body has been fully read from the client.
    body_done: bool,
    /// Cancels the idle read when the connection parks; made on the first idle wait.
    canceller: Option<monoio::io::Canceller>,
    /// Metrics of the current request: phase instants, answer status, client-side bytes, route.
    t: Timings,
    /// `[metrics] enabled` for the current request: when false, nothing recorded per request.
    metrics_on: bool,
    /// The current request gets an access log line (`[access_log]` was on when its head arrived).
    log_on: bool,
    /// Metrics or the access log want this request's phase instants in `t`; when neither does, no
    /// clock is read for them.
    timed: bool,
    /// The target the current request was sent to (the last one tried).
    upstream_addr: Option<SocketAddr>,
    /// When the first byte of a head that took more than one read arrived (the start of a
    /// request the gateway refuses before its head is whole).
    first_byte: Option<Instant>,
    /// Bytes of the head being read held so far (kept apart from `buf`, which a timed-out read
    /// takes with it), for `request_bytes` of a 408.
    head_bytes: u64,
    /// The current request is a HEAD: answers the gateway writes itself go out without their body.
    /// False until a head is parsed, so a refusal of an unparsed head keeps its body.
    head_only: bool,
    /// The current request is HTTP/1.0: answers that keep the connection must say so.
    http10: bool,
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    route: Option<usize>,
    /// The current upstream attempt failed on the upstream's side (timeout, malformed or cut-short
    /// response, write error): counted against the target by passive health.
    upstream_fault: bool,
    /// The status of the current attempt's response head (0 until one arrived).
    upstream_status: u16,
    /// Why the gateway answered the current request itself, or why its exchange failed (the
    /// access log's `detail`): a `GatewayError` message, the plugin that answered, or a sharper
    /// cause found on the way (the first one set wins). `None` for an upstream's answer relayed.
    detail: Option<&'static str>,
    /// Bytes of interim (1xx) heads forwarded to the client for the current request: counted in
    /// `bytes_sent` but kept apart from `bytes_out`, which tells whether the final answer's head
    /// went out.
    bytes_interim: u64,
    /// A response head's write to the client began for the current request, interim or final (it
    /// may be half written): no other answer may follow (see `cut_short`).
    answer_out: bool,
    /// Upstream attempts of the current request: connects and pooled connections tried, failed
    /// ones included (the access log's `upstream_attempts`; nginx lists them in `$upstream_addr`).
    attempts: u32,
    /// The flat target this connection counts `active` in the metrics: set for an exchange and
    /// cleared after it, or kept until the tunnel ends for an upgrade (`serve`), or by `cut_short`
    /// for an exchange the drain deadline dropped.
    held_target: Option<usize>,
    /// The target's in-flight count (least_conn, `max_conns`), held with `held_target` and dropped
    /// with it, or earlier by `fail` (an error answer does not keep the target's room).
    held_load: Option<InFlight>,
    /// The current request's body, read whole and edited by a request-transformer's `json`
    /// (sent instead of streaming the client's; `None` on every other request).
    edited_body: Option<Vec<u8>>,
    /// A lingering close already ran (after an error or an early answer): the connection is done,
    /// and the close that follows must not linger a second time.
    lingered: bool,
}

/// A connection's place in its shard. Dropping it keeps `Shard::active` and the idle registry
/// accurate however the connection ends, unless it was handed over to the parking lot (which then
/// holds the connection and ends it through a new guard).
struct ConnGuard {
    shard: Rc<Shard>,
    at: At,
    handed_over: bool,
}

impl ConnGuard {
    /// The guard of a connection already counted in `shard` (by `serve`, or before it parked).
    fn new(shard: Rc<Shard>, at: At) -> ConnGuard {
        ConnGuard {
            shard,
            at,
            handed_over: false,
        }
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.handed_over {
            return;
        }
        let shard = &self.shard;
        shard.active.set(shard.active.get().saturating_sub(1));
        shard.metrics.conn_closed();
        shard.idle.release(self.at.slot);
    }
}

/// Serves one client connection until it closes or parks (registered with the shard at once, so
/// draining counts it even before its task first runs). `counted`: the connection is already in
/// the connection metrics (a TLS one is counted from its accept, handshake included).
///
/// Memory: while requests flow, the connection's working state (`Conn` and the request future, a
/// few KiB) is its task. When a connection has idled for `PARK_AFTER` the task ends and frees
/// everything (a TLS connection keeps rustls' state); the socket waits in the parking lot, which
/// starts a new task when the client sends again.
pub fn serve<S: ClientIo>(
    client: S,
    fd: RawFd,
    peer: SocketAddr,
    listener: Listener,
    shard: Rc<Shard>,
    counted: bool,
) -> impl std::future::Future<Output = ()> {
    shard.active.set(shard.active.get() + 1);
    if !counted {
        shard.metrics.conn_opened();
    }
    let slot = shard.idle.register();
    let at = At {
        fd,
        slot,
        peer,
        listener,
    };
    run(client, ConnGuard::new(shard, at), 0)
}

/// One active period of a connection: requests until it closes or parks. `served`: requests it
/// served before (in earlier periods).
async fn run<S: ClientIo>(client: S, guard: ConnGuard, served: u64) {
    let ended = active(client, guard.at, served, &guard.shard).await;
    // The task ends here; its waker must not keep the task's memory while the connection parks.
    guard.shard.idle.clear_waker(guard.at.slot);
    if let Ended::Parked {
        client,
        served,
        left,
    } = ended
    {
        if let Some((tcp, tls)) = client.into_parked() {
            let shard = guard.shard.clone();
            shard.parked.park(tcp, tls, guard, served, left);
        }
    }
}

/// Where a connection is: what its active periods need besides the socket.
#[derive(Clone, Copy)]
struct At {
    fd: RawFd,
    slot: usize,
    peer: SocketAddr,
    listener: Listener,
}

/// How an active period ended.
enum Ended<S> {
    Closed,
    /// Idle: the socket goes to the parking lot to wait for readability for `left` more.
    Parked {
        client: S,
        served: u64,
        left: Duration,
    },
}

/// One active period: requests until the connection closes or parks.
async fn active<S: ClientIo>(client: S, at: At, served: u64, shard: &Rc<Shard>) -> Ended<S> {
    let mut conn = Conn {
        client,
        fd: at.fd,
        slot: at.slot,
        peer: at.peer,
        listener: at.listener,
        snap: shard.snapshot(),
        buf: Vec::with_capacity(CLIENT_BUF),
        pos: 0,
        spare: Vec::new(),
        served,
        s: Scratch::default(),
        ubuf: Vec::new(),
        body_done: true,
        canceller: None,
        edited_body: None,
        lingered: false,
        t: Timings::new(Instant::now()),
        metrics_on: true,
        log_on: false,
        timed: true,
        upstream_addr: None,
        held_target: None,
        held_load: None,
        first_byte: None,
        head_bytes: 0,
        head_only: false,
        http10: false,
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
        route: None,
        upstream_fault: false,
        upstream_status: 0,
        detail: None,
        attempts: 0,
        bytes_interim: 0,
        answer_out: false,
    };
    // The drain deadline wakes this task through its waker, whatever it waits for (`Shard::cut`).
    std::future::poll_fn(|cx| {
        shard.idle.set_waker(at.slot, cx.waker());
        Poll::Ready(())
    })
    .await;
    loop {
        let next = conn.request(shard).await;
        // An upgrade is logged when its tunnel ends; its request part must outlive the scratch.
        let tunnel_log = match &next {
            Next::Upgrade(_) if conn.log_on => Some((conn.s.log.clone(), conn.s.chain.id.consumer)),
            _ => None,
        };
        shard.give_buf(std::mem::take(&mut conn.ubuf));
        shard.give_scratch(std::mem::take(&mut conn.s));
        match next {
            Next::KeepAlive => conn.recycle(shard),
            Next::Park(left) => {
                return Ended::Parked {
                    client: conn.client,
                    served: conn.served,
                    left,
                }
            }
            Next::Close => {
                // Input the client sent past this request (pipelined, or the next request
                // already arriving) turns the close into a reset, and a reset makes the client's
                // kernel drop what it has not read yet: the end of a large response. Linger then,
                // as after an error (nginx does too). Otherwise close at once.
                if !conn.lingered && (conn.buf.len() > conn.pos || input_waiting(conn.fd)) {
                    conn.lingering_close().await;
                } else if conn.listener.tls && !conn.lingered {
                    // TLS: say close_notify, so clients can tell a clean end from a truncation.
                    let _ = monoio::time::timeout(CLOSE_NOTIFY_TIME, conn.client.shutdown()).await;
                }
                return Ended::Closed;
            }
            Next::Reset => {
                // SO_LINGER {on, 0}: the close sends RST instead of FIN (and no TLS close_notify).
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: `conn.fd` is the open client socket (closed only when `conn` drops
                // below); the option value is a properly sized `linger`.
                unsafe {
                    libc::setsockopt(
                        conn.fd,
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        std::ptr::addr_of!(linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                return Ended::Closed;
            }
            Next::Upgrade(upstream) => {
                // A tunnel may run for hours: it keeps the config and metrics slots it logs to,
                // not the generation (whose pool and health slots are released once nothing holds
                // it).
                let config = conn.snap.config.clone();
                let metrics = conn.snap.metrics.clone();
                drop(conn.snap);
                // The service's `read_timeout` (merged with the server's): a service that sets
                // `read_timeout = "1h"` for its WebSockets keeps quiet tunnels that long.
                let idle = conn
                    .route
                    .and_then(|r| config.routes.get(r))
                    .and_then(|r| config.services.get(r.service))
                    .map_or(config.server.timeouts.upstream_read, |s| s.read_timeout);
                let pending = conn.buf.get(conn.pos..).unwrap_or_default().to_vec();
                let relayed = tunnel::run(conn.client, upstream, pending, idle, &shard.cut).await;
                if let Some(flat) = conn.held_target.take() {
                    metrics.upstream_released(flat);
                }
                conn.held_load = None;
                if let Some((staged, consumer)) = tunnel_log {
                    conn.t.end = Instant::now();
                    conn.bytes_in += relayed.to_upstream;
                    conn.bytes_out += relayed.to_client;
                    let o = outcome(&config, &conn.t, conn.route, consumer, conn.upstream_addr);
                    shard.access_log.append(
                        &staged,
                        &Outcome {
                            status: 101,
                            bytes_sent: conn.bytes_out + conn.bytes_interim,
                            request_bytes: conn.bytes_in,
                            upstream_attempts: conn.attempts,
                            detail: relayed.cut.then_some(DRAIN_CUT),
                            ..o
                        },
                    );
                }
                return Ended::Closed;
            }
        }
    }
}

impl<S: ClientIo> Conn<S> {
    /// Now, for a phase instant; `None` when neither metrics nor the access log want it.
    #[inline]
    fn stamp(&self) -> Option<Instant> {
        self.timed.then(Instant::now)
    }

    /// The idle wait of a TLS connection (`parks_after_timed_read`): a read bounded by
    /// `PARK_AFTER`, then the park (`Err(idle)`) if nothing of the connection's own is pending, else
    /// the rest of `wait` as an ordinary read. A timed-out read loses nothing but its buffer.
    async fn idle_tls_read(&mut self, wait: Duration) -> std::io::Result<usize> {
        match io::fill(&mut self.client, &mut self.buf, PARK_AFTER).await {
            Err(e) if io::is_timeout(&e) => {
                if self.client.can_park() {
                    return Err(io::idle());
                }
                if self.buf.capacity() == 0 {
                    self.buf = Vec::with_capacity(CLIENT_BUF);
                }
                io::fill(&mut self.client, &mut self.buf, wait - PARK_AFTER).await
            }
            r => r,
        }
    }

    /// Timeout for reading the client's body and for each write to the client.
    fn client_timeout(&self) -> Duration {
        self.snap.config.server.timeouts.client_body
    }

    /// Between requests: drop consumed bytes and give back memory a large request made us take.
    fn recycle(&mut self, shard: &Shard) {
        self.edited_body = None;
        let pos = self.pos.min(self.buf.len());
        if self.spare.capacity() > 0 {
            // The body was streamed through a pooled buffer: keep only the pipelined leftover.
            let mut small = std::mem::take(&mut self.spare);
            small.clear();
            small.extend_from_slice(&self.buf[pos..]);
            shard.give_buf(std::mem::replace(&mut self.buf, small));
        } else {
            self.buf.drain(..pos);
        }
        self.pos = 0;
        if self.buf.capacity() > CLIENT_BUF_KEEP && self.buf.len() < CLIENT_BUF {
            self.buf.shrink_to(CLIENT_BUF);
        }
    }

    async fn request(&mut self, shard: &Shard) -> Next {
        self.bytes_out = 0;
        self.bytes_interim = 0;
        self.answer_out = false;
        self.status = 0;
        self.detail = None;
        self.attempts = 0;
        self.first_byte = None;
        self.head_bytes = 0;
        self.head_only = false;
        self.http10 = false;
        let Some(read) = until_cut(&shard.cut, self.read_head(shard)).await else {
            return self.head_cut(shard).await;
        };
        match read {
            Ok(HeadRead::Complete) => {}
            Ok(HeadRead::Closed) => {
                // Gone in the middle of a head: logged and counted as nginx does, a 400 with
                // nothing sent (a connection closed between requests, with no byte of a next
                // one, is not).
                if self.first_byte.is_some() && !self.buf.is_empty() {
                    let bytes_in = self.buf.len() as u64;
                    let waited = self.first_byte.map_or(Duration::ZERO, |t| t.elapsed());
                    self.record_refused_head(shard, 400, bytes_in, waited);
                }
                return Next::Close;
            }
            Ok(HeadRead::Park(left)) => return Next::Park(left),
            Err(e) => {
                // Taken before the answer: the lingering close reuses the buffer. A read that
                // timed out took the buffer with it: `head_bytes` still knows what came.
                let bytes_in = (self.buf.len() as u64).max(self.head_bytes);
                let waited = self.first_byte.map_or(Duration::ZERO, |t| t.elapsed());
                // A HEAD whose head is refused gets a head only too (as nginx answers any request
                // whose method it read): a client that pipelined after it would read a body as
                // its next response.
                // (A read that timed out took the buffer: `read_head` noted it then.)
                self.head_only |= self
                    .buf
                    .get(leading_blank_lines(&self.buf)..)
                    .is_some_and(|b| b.starts_with(b"HEAD "));
                // Gone before the refusal could be written: a 499, as for any answer.
                let status = if self.reply_error(e, true).await {
                    e.status()
                } else {
                    499
                };
                self.record_refused_head(shard, status, bytes_in, waited);
                return Next::Close;
            }
        }
        // Read once per request (a reload applies from the next one); off: no clock reads either.
        self.metrics_on = self.snap.config.metrics.enabled;
        self.log_on = shard.access_log.on();
        self.timed = self.metrics_on || self.log_on;
        self.t = Timings::new(if self.timed {
            Instant::now()
        } else {
            self.t.head_in
        });
        self.route = None;
        self.upstream_addr = None;
        // A pooled scratch holds the identity of whatever request used it last until the plugin
        // chain resets it, and the chain does not run for a request that matched no route.
        self.s.chain.id = Identity::default();
        self.bytes_in = self.s.head.head_len as u64;
        self.head_only = self.s.head.method.get(&self.buf) == b"HEAD";
        self.http10 = self.s.head.version == Some(Version::Http10);
        let handled = until_cut(&shard.cut, self.handle(shard)).await;
        let next = match handled {
            Some(next) => next,
            None => self.cut_short(shard).await,
        };
        if !self.timed {
            return next;
        }
        self.t.end = Instant::now();
        // No status means the client went away before any answer (nginx logs these as 499).
        let status = if self.status == 0 { 499 } else { self.status };
        if self.log_on && !matches!(next, Next::Upgrade(_)) {
            let o = outcome(
                &self.snap.config,
                &self.t,
                self.route,
                self.s.chain.id.consumer,
                self.upstream_addr,
            );
            let detail = match self.detail {
                None if self.status == 0 => Some(CLIENT_LEFT),
                d => d,
            };
            shard.access_log.append(
                &self.s.log,
                &Outcome {
                    status,
                    bytes_sent: self.bytes_out + self.bytes_interim,
                    request_bytes: self.bytes_in,
                    upstream_attempts: self.attempts,
                    detail,
                    ..o
                },
            );
        }
        if !self.metrics_on {
            return next;
        }
        if let Some(&slot) = self
            .s
            .chain
            .id
            .consumer
            .and_then(|c| self.snap.consumer_slots.get(c))
        {
            shard.consumer_counts.record(slot, status);
        }
        // `route` is an index into the generation of `self.snap` (set when the request started), so
        // it is recorded there even if a reload happened meanwhile.
        let metrics = &self.snap.metrics;
        match self.route {
            Some(route) => metrics.request_done(
                route,
                status,
                self.bytes_in,
                self.bytes_out + self.bytes_interim,
                &self.t,
            ),
            None => metrics.gateway_error(
                None,
                status,
                self.bytes_in,
                self.bytes_out + self.bytes_interim,
            ),
        }
        next
    }

    /// Everything after a complete head: route, forward, relay.
    async fn handle(&mut self, shard: &Shard) -> Next {
        self.served += 1;
        // Nothing a plugin added for an earlier request answers this one (see `fail`).
        self.s.plugin_headers.clear();
        // Request boundary: pick up a reloaded config, if any.
        self.snap = shard.snapshot();
        self.pos = self.s.head.head_len;
        if self.log_on {
            let Scratch { head, log, .. } = &mut self.s;
            let r = request_fields(
                head,
                &self.buf,
                self.peer,
                self.listener.tls,
                &self.snap.auth.trusted_proxies,
            );
            log.clear();
            log_format::push_request(log, &r);
        }
        let body = self.s.head.body.unwrap_or(BodyKind::None);
        self.body_done = matches!(body, BodyKind::None | BodyKind::Length(0));
        self.s.upgrade_offer.clear();
        if self.s.head.upgrade {
            let Scratch {
                head,
                upgrade_offer,
                ..
            } = &mut self.s;
            for h in head
                .headers
                .iter()
                .filter(|h| eq_ignore_case(h.name.get(&self.buf), b"upgrade"))
            {
                if !upgrade_offer.is_empty() {
                    upgrade_offer.push(b',');
                }
                upgrade_offer.extend_from_slice(h.value.get(&self.buf));
            }
        }
        if let Some(next) = self.acme_challenge(shard, body).await {
            return next;
        }
        match self.prepare(body) {
            Ok(p) => {
                self.route = Some(p.route);
                if let Some(next) = self.run_plugins(shard, &p).await {
                    return next;
                }
                self.forward(shard, &p).await
            }
            Err(e) => self.fail(shard, e, self.s.head.close).await,
        }
    }

    /// Answers an ACME HTTP-01 validation request from the store (plain listeners with `[acme]`
    /// `challenge = "http-01"` only), before routing: the CA must get the answer whatever routes say.
    async fn acme_challenge(&mut self, shard: &Shard, body: BodyKind) -> Option<Next> {
        let store = self.snap.acme_http.as_ref()?;
        if self.listener.tls || body != BodyKind::None {
            return None;
        }
        let head = &self.s.head;
        let method = head.method.get(&self.buf);
        let answer = crate::acme::challenge_answer(store, method, head.path_bytes(&self.buf))?;
        let close = self.closing(shard, self.s.head.close);
        self.s.out.clear();
        crate::acme::write_challenge_answer(&mut self.s.out, &answer, close);
        crate::info!("acme http-01 challenge answered peer={}", self.peer);
        self.detail = Some("acme http-01 challenge");
        let sent = self.send_answer(200, close).await;
        Some(if sent && !close {
            Next::KeepAlive
        } else {
            Next::Close
        })
    }

    /// Reads until a complete request head is parsed. `Closed`: the client went away (or idled
    /// out, or the worker is draining) between requests; nothing to answer.
    async fn read_head(&mut self, shard: &Shard) -> Result<HeadRead, GatewayError> {
        let snap = shard.snapshot();
        let server = &snap.config.server;
        let limits = Limits {
            max_header_bytes: server.max_header_bytes,
            max_uri_bytes: server.max_uri_bytes,
            max_headers: server.max_headers,
        };
        let mut deadline: Option<Instant> = None;
        // Only empty lines so far: they are skipped (RFC 9112 §2.2; clients send a stray CRLF
        // after a body) but start the `client_header` deadline like any byte, as with nginx, and
        // one that runs out on them alone ends the connection silently, without a 408.
        let mut saw_blank = false;
        loop {
            let blank = leading_blank_lines(&self.buf);
            if blank > 0 {
                self.buf.drain(..blank);
                saw_blank = true;
            }
            if !self.buf.is_empty() && self.buf != b"\r" {
                if self.s.path.capacity() == 0 {
                    self.s = shard.take_scratch();
                }
                match parse::parse_request(&self.buf, &limits, &mut self.s.head) {
                    Ok(Parsed::Complete) => return Ok(HeadRead::Complete),
                    Ok(Parsed::Partial) => {}
                    Err(e) => return Err(request_parse_error(e)),
                }
                // The first byte of a head: logged as a refused request if it never completes.
                self.first_byte.get_or_insert_with(Instant::now);
                self.head_bytes = self.buf.len() as u64;
                // Kept for an answer after a read that times out, which takes the buffer.
                self.head_only = self.buf.starts_with(b"HEAD ");
            }
            // Slowloris: the whole head must arrive within `client_header` of its first byte.
            if deadline.is_none() && (saw_blank || !self.buf.is_empty()) {
                deadline = Some(Instant::now() + server.timeouts.client_header);
            }
            if self.buf.len() == self.buf.capacity() {
                let cap = server.max_header_bytes + 1024;
                if self.buf.capacity() >= cap {
                    return Err(GatewayError::HeadersTooLarge);
                }
                // Double (a big head is rare; its buffer is shrunk back after the request).
                let want = (self.buf.capacity() * 2).clamp(CLIENT_BUF, cap);
                self.buf.reserve_exact(want - self.buf.len());
            }
            let only_blank = self.first_byte.is_none();
            let read = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return if only_blank {
                            Ok(HeadRead::Closed)
                        } else {
                            Err(GatewayError::RequestTimeout)
                        };
                    }
                    io::fill(&mut self.client, &mut self.buf, left).await
                }
                None => {
                    let fresh = self.served == 0;
                    if shard.draining.get() {
                        // A fresh connection's first request is likely on its way: it gets
                        // `FRESH_GRACE` to arrive (see `IdleRegistry`). So does the next request
                        // of a keep-alive connection whose last response went out (without
                        // `Connection: close`: its head was written before this worker saw the
                        // drain) while the drain began: a busy client sends it microseconds
                        // later, and closing would lose it, POST included. It is answered with
                        // `Connection: close` (HAProxy before 2.4 did the same; nginx closes).
                        // Connections idle when the drain began have the same grace (see
                        // `IdleRegistry`).
                        let grace = server
                            .timeouts
                            .client_header
                            .min(crate::worker::FRESH_GRACE);
                        match io::fill(&mut self.client, &mut self.buf, grace).await {
                            Ok(n) if n > 0 => continue,
                            _ => return Ok(HeadRead::Closed),
                        }
                    }
                    let wait = if fresh {
                        server.timeouts.client_header
                    } else {
                        server.timeouts.keepalive
                    };
                    shard.idle.set_idle(self.slot, self.fd);
                    let parks = wait > PARK_AFTER && shard.parked.available();
                    let tls_parks = parks && self.client.parks_after_timed_read();
                    let r = match self.client.plain() {
                        Some(tcp) if parks => {
                            let c = self.canceller.get_or_insert_with(Default::default);
                            io::fill_or_idle(tcp, &mut self.buf, PARK_AFTER, c).await
                        }
                        _ if tls_parks => self.idle_tls_read(wait).await,
                        _ => io::fill(&mut self.client, &mut self.buf, wait).await,
                    };
                    shard.idle.set_busy(self.slot);
                    if matches!(&r, Err(e) if io::is_idle(e)) {
                        // A cancelled canceller cancels every later read: start afresh next time.
                        self.canceller = None;
                        return Ok(HeadRead::Park(wait - PARK_AFTER));
                    }
                    r
                }
            };
            match read {
                Ok(0) => return Ok(HeadRead::Closed),
                Ok(_) => {}
                Err(e) if io::is_timeout(&e) && deadline.is_some() && !only_blank => {
                    return Err(GatewayError::RequestTimeout)
                }
                Err(_) => return Ok(HeadRead::Closed),
            }
        }
    }

    /// Normalizes, routes and applies the body limit. Allocation-free, except for a path holding an
    /// encoded slash or a `;` (routed a second time without them).
    fn prepare(&mut self, body: BodyKind) -> Result<Prepared, GatewayError> {
        self.s.override_method.clear();
        let head = &self.s.head;
        let buf = &self.buf;
        let raw_path = head.path_bytes(buf);
        if raw_path.first() == Some(&b'/') {
            normalize_path(raw_path, &mut self.s.path).map_err(|e| {
                GatewayError::BadRequest(match e {
                    NormalizeError::Backslash => "backslash in path",
                    _ => "invalid path encoding",
                })
            })?;
        } else {
            // asterisk-form (`OPTIONS *`): routed as-is, so only a route without paths can take it.
            self.s.path.clear();
            self.s.path.extend_from_slice(raw_path);
        }
        let host = host_without_port(
            head.effective_host()
                .map(|h| h.get(buf))
                .unwrap_or_default(),
        );
        let method = head.method.get(buf);
        let query = head.query.map(|q| q.get(buf)).unwrap_or_default();
        let view = HeadView::new(head, buf);
        let (router, routes) = (&self.snap.router, &self.snap.config.routes);
        let route_of = |method: &[u8], path: &[u8], view: &HeadView| {
            route_for(router, routes, host, method, path, query, view).map(|m| m.route)
        };
        let m = route_for(router, routes, host, method, &self.s.path, query, &view)
            .ok_or(GatewayError::NoRoute)?;
        // Readings of the request other than the router's that an upstream may act on must all
        // select the same route, or the request is refused (a 400): the upstream would serve what
        // another route, with other plugins, stands for. Each costs nothing unless the request
        // has what it looks at, and together they are checked in every combination (an override
        // header with a `%2F` path, say):
        // - paths: `%2F` is data here, but WSGI, Rack and Express decode it into a '/'
        //   (`/admin%2Fusers` routed by `/`, served as `/admin/users`); `;parameters` are dropped
        //   by servlet containers, which a regex route (`~/admin$`) does not see;
        // - methods: a method-override header (`X-HTTP-Method-Override`, `X-HTTP-Method`,
        //   `X-Method-Override`) or `_method` query parameter, which Flask's and Express's
        //   method-override middleware run instead (a DELETE route's handler reached as a GET);
        // - readings of a repeated header or query parameter a route condition reads: upstreams
        //   read the first or the last of each, in any combination.
        // An encoded NUL ends the path early in C-string code behind (nginx refuses it too).
        if memchr::memmem::find(&self.s.path, b"%00").is_some() {
            return Err(GatewayError::BadRequest("encoded NUL in path"));
        }
        let has_slash = memchr::memmem::find(&self.s.path, b"%2F").is_some();
        // A dot segment behind an encoded slash leaves the route's prefix (or the service's base
        // path) at an upstream that decodes `%2F` first, whatever route it selects: refused, as
        // nginx refuses `/..%2F..` once decoded.
        if has_slash && crate::router::has_encoded_dot_segment(&self.s.path) {
            return Err(GatewayError::BadRequest(
                "dot segment behind an encoded slash",
            ));
        }
        let has_params = memchr::memchr(b';', &self.s.path).is_some();
        let ambiguous = router.ambiguous(query, &view);
        // Override methods: the headers' values, and `_method` parameters (names compared
        // decoded and leniently: `%5Fmethod`, `.method` are ones too), upper-cased as the
        // middleware does. A header value is read as a list: Express's method-override runs the
        // part before the first comma (`TRACE, GET` is a TRACE; found by a review), so every part
        // counts, and parts that differ are conflicting overrides.
        let mut methods: Vec<Vec<u8>> = Vec::new();
        if head.method_override {
            let values = head
                .headers
                .iter()
                .filter(|h| is_method_override(h.name.get(buf)))
                .flat_map(|h| h.value.get(buf).split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|v| !v.is_empty())
                .map(<[u8]>::to_ascii_uppercase);
            methods.extend(values);
        }
        if memchr::memmem::find(query, b"method").is_some() || memchr::memchr(b'%', query).is_some()
        {
            let values = crate::http::query::params(query)
                // Read as leniently as the names route conditions see: PHP (Laravel, Symfony)
                // reads `.method`, ` _method` and `+_method` as `_method`.
                .filter(|p| crate::http::query::lenient_name_eq(p.name, b"_method"))
                .map(|p| {
                    let mut v: Vec<u8> = crate::http::query::decode(p.value).collect();
                    v.make_ascii_uppercase();
                    v
                });
            methods.extend(values);
        }
        // One distinct override at most: with two (`X-HTTP-Method-Override: PUT` and
        // `_method=DELETE`) which one the upstream runs depends on its framework, so forward-auth
        // could not be asked about the right one. No client needs two.
        methods.sort_unstable();
        methods.dedup();
        if methods.len() > 1 {
            return Err(GatewayError::BadRequest("conflicting method overrides"));
        }
        if let Some(m) = methods.first() {
            // HEAD and CONNECT change how the answer is framed (no body; a tunnel). An upstream
            // that honoured `GET` + override HEAD would answer a length without the bytes, which
            // the gateway, reading for a GET, waits for. No client needs either.
            if m == b"HEAD" || m == b"CONNECT" {
                return Err(GatewayError::BadRequest(
                    "a method override to HEAD or CONNECT is not allowed",
                ));
            }
            self.s.override_method.extend_from_slice(m);
        }
        // TRACE reflects the request, credentials and cookies included, back to whoever sent it
        // (cross-site tracing): refused unless the route lists it, as nginx and Kong answer every
        // TRACE with a 405. So is IIS's TRACK, and either one as a method override (Express's
        // method-override runs a TRACE; found by a review).
        let tracing = |m: &[u8]| m == b"TRACE" || m == b"TRACK";
        for t in std::iter::once(method)
            .chain(methods.first().map(Vec::as_slice))
            .filter(|m| tracing(m))
        {
            let listed = routes
                .get(m.route)
                .is_some_and(|r| r.methods.iter().any(|x| x.as_bytes() == t));
            if !listed {
                return Err(GatewayError::TraceNotAllowed);
            }
        }
        if has_slash || has_params || !methods.is_empty() || ambiguous {
            let mut paths: Vec<Vec<u8>> = Vec::new();
            if has_slash {
                let mut norm = Vec::with_capacity(self.s.path.len());
                if normalize_path(&decode_slashes(&self.s.path), &mut norm).is_err() {
                    return Err(GatewayError::BadRequest(
                        "encoded slash in path selects another route",
                    ));
                }
                paths.push(norm);
            }
            if has_params {
                for i in 0..paths.len() {
                    let mut bare = Vec::new();
                    if let Some(p) = paths.get(i) {
                        crate::router::push_path_without_params(&mut bare, p);
                    }
                    paths.push(bare);
                }
                let mut bare = Vec::with_capacity(self.s.path.len());
                crate::router::push_path_without_params(&mut bare, &self.s.path);
                paths.push(bare);
            }
            // (header occurrence, parameter occurrence, lenient parameter names).
            let readings: &[(Occurrence, Occurrence, bool)] = if ambiguous {
                &[
                    (Occurrence::First, Occurrence::Any, false),
                    (Occurrence::First, Occurrence::First, false),
                    (Occurrence::Last, Occurrence::Last, false),
                    (Occurrence::First, Occurrence::Last, false),
                    (Occurrence::Last, Occurrence::First, false),
                    (Occurrence::First, Occurrence::Any, true),
                    (Occurrence::First, Occurrence::First, true),
                    (Occurrence::Last, Occurrence::Last, true),
                ]
            } else {
                &[(Occurrence::First, Occurrence::Any, false)]
            };
            let all_paths =
                std::iter::once(self.s.path.as_slice()).chain(paths.iter().map(Vec::as_slice));
            for path in all_paths {
                for alt in std::iter::once(method).chain(methods.iter().map(Vec::as_slice)) {
                    for &(headers, params, lenient_names) in readings {
                        let other = HeadView {
                            headers,
                            params,
                            lenient_names,
                            ..view
                        };
                        if route_of(alt, path, &other) != Some(m.route) {
                            return Err(GatewayError::BadRequest(
                                "request selects another route as upstreams may read it",
                            ));
                        }
                    }
                }
            }
        }
        let route: &RouteDef = self
            .snap
            .config
            .routes
            .get(m.route)
            .ok_or(GatewayError::NoRoute)?;
        let max_body = route
            .max_body_bytes
            .unwrap_or(self.snap.config.server.max_body_bytes);
        if let BodyKind::Length(n) = body {
            if max_body > 0 && n > max_body {
                // Refused by the route's limit: logged and counted under the route.
                self.route = Some(m.route);
                return Err(GatewayError::BodyTooLarge);
            }
        }
        let http10 = head.version == Some(Version::Http10);
        // An override is what the upstream runs: `GET` + `X-HTTP-Method-Override: POST` is a POST.
        let replayable = body == BodyKind::None
            && idempotent(method)
            && (self.s.override_method.is_empty() || idempotent(&self.s.override_method));
        Ok(Prepared {
            route: m.route,
            strip_len: m.strip_len.min(self.s.path.len()),
            max_body,
            body,
            head_method: method == b"HEAD",
            http10,
            client_close: head.close,
            expect_continue: head.expect_continue,
            upgrade: head.upgrade,
            replayable,
        })
    }

    /// Picks a target, connects (or reuses), runs the exchange; retries once on a fresh connection
    /// when a reused one turned out stale and the request is replayable.
    async fn forward(&mut self, shard: &Shard, p: &Prepared) -> Next {
        if p.upgrade && shard.draining.get() {
            // A tunnel opened now would be cut at the drain deadline: the client is better off
            // opening it to a process that stays (the listeners are closed, `/health` says
            // draining, so it reconnects elsewhere). Plain requests are still served.
            self.detail = Some("upgrade refused: draining");
            return self
                .fail(shard, GatewayError::ServiceUnavailable, true)
                .await;
        }
        let snap = self.snap.clone();
        let cfg = &*snap.config;
        let Some(route) = cfg.routes.get(p.route) else {
            return self
                .fail(shard, GatewayError::NoRoute, p.client_close)
                .await;
        };
        let Some(svc) = cfg.services.get(route.service) else {
            return self
                .fail(shard, GatewayError::ServiceUnavailable, p.client_close)
                .await;
        };
        // Taken now, while the request head is still in the buffer.
        let key = cfg
            .upstreams
            .get(svc.upstream)
            .and_then(|u| self.balance_key(u));
        let transform = self
            .s
            .chain
            .request_tf
            .and_then(|i| snap.chains.rt.request.get(i));
        // A request-transformer's `http_method` is what the upstream sees: replay only what is
        // idempotent there.
        let changed = transform.and_then(|t| t.method.as_deref());
        let p = &Prepared {
            replayable: p.replayable && changed.is_none_or(|m| p.head_method || idempotent(m)),
            ..*p
        };
        match transform.and_then(|t| t.uri.as_deref()) {
            Some(uri) => {
                self.s.target.clear();
                self.s.target.extend_from_slice(uri);
            }
            None => upstream_path(&svc.path, &self.s.path, p.strip_len, &mut self.s.target),
        }
        // key-auth's hide_credentials may have taken `apikey=…` out of the query.
        let cut = self.s.chain.edits.query_cut;
        let query = self.s.head.query.map(|q| q.get(&self.buf));
        match transform.map(|t| &t.query).filter(|q| !q.is_empty()) {
            Some(edits) => edits.push(&mut self.s.target, query.unwrap_or_default(), cut),
            None => {
                if let Some(q) = query {
                    crate::auth::steps::push_query(&mut self.s.target, q, cut);
                }
            }
        }
        // A request-transformer's JSON or form body edits: the body is read whole and edited
        // first, and goes upstream with its new length (a stale pooled connection may then replay
        // it). `edited_body` is `None` here: `recycle` clears it between requests.
        let edit = match transform.map(|t| self.request_body_edit(t, p)) {
            Some(Err(e)) => return self.fail(shard, e, true).await,
            Some(Ok(edit)) => edit,
            None => None,
        };
        let p = &match edit {
            Some(edit) => {
                let max = match edit {
                    BodyEdit::Json(jt) => jt.max_bytes,
                    BodyEdit::Form(ft) => ft.max_bytes,
                };
                let limit = match p.max_body {
                    0 => max,
                    m => m.min(max),
                };
                let waited = Instant::now();
                // Taken before the body is read: reading it may reuse the client buffer the
                // method's span points into.
                // An override is what the upstream runs (as in `prepare`): `PUT` + override
                // `POST` is never replayed, whatever the body.
                let may_replay = idempotent(changed.unwrap_or(self.s.head.method.get(&self.buf)))
                    && (self.s.override_method.is_empty() || idempotent(&self.s.override_method));
                match body::read_request_whole(self, p.body, limit, p.expect_continue).await {
                    Ok(whole) => {
                        // Waiting for the client's body is not time the gateway added.
                        self.t.connect += waited.elapsed();
                        let edited = match edit {
                            BodyEdit::Form(ft) => ft.apply(&whole),
                            BodyEdit::Json(jt) => match jt.apply(&whole, true) {
                                Applied::Edited(b) => b,
                                Applied::Unchanged => whole,
                                Applied::Unreadable => {
                                    return self
                                        .fail(
                                            shard,
                                            GatewayError::BadRequest(
                                                "request body is not JSON the gateway can read",
                                            ),
                                            true,
                                        )
                                        .await
                                }
                            },
                        };
                        let len = edited.len() as u64;
                        self.edited_body = Some(edited);
                        Prepared {
                            body: BodyKind::Length(len),
                            expect_continue: false,
                            replayable: p.replayable || may_replay,
                            ..*p
                        }
                    }
                    // Only client-side errors come from reading the client (the target index
                    // is for upstream timeouts).
                    Err(e) => return self.request_body_failed(shard, e, p, svc, 0).await,
                }
            }
            None => *p,
        };
        let mut pinned: Option<usize> = None;
        // A target that failed after accepting (`RetryNext`): failover goes on past it.
        let mut after: Option<usize> = None;
        // `retries` bounds failover across targets however a target failed (refused, timed out,
        // or reset after accepting), and `retry_timeout` (if set) how long it goes on. The clock
        // is read for it only where a service sets one.
        let mut failover = Failover {
            budget: svc.retries.saturating_add(1),
            until: svc
                .retry_timeout
                .and_then(|d| Instant::now().checked_add(d)),
            retrying: false,
            out_of_time: false,
            tried: None,
        };
        let mut reset_after_accept = 0;
        loop {
            let started = self.stamp();
            failover.tried = None;
            let before = failover.budget;
            let connected = connect(shard, &snap, svc, pinned, after, key, &mut failover).await;
            let used = u32::try_from(before.saturating_sub(failover.budget)).unwrap_or(u32::MAX);
            self.attempts = self.attempts.saturating_add(used);
            if failover.out_of_time {
                self.detail = Some("failover stopped at retry_timeout");
            }
            let (upstream, target, reused, load) = match connected {
                Ok(c) => c,
                // Past a target that reset after accepting, or a stale pooled connection, with
                // no other target tried (none left, or `retry_timeout` over): that failure is the
                // answer (the access log keeps naming its target).
                Err(_)
                    if failover.tried.is_none()
                        && (after.is_some() || (pinned.is_some() && failover.out_of_time)) =>
                {
                    return self
                        .fail(shard, GatewayError::UpstreamClosed, p.client_close)
                        .await
                }
                Err(e) => {
                    // The access log names the last target tried, as for any answer.
                    self.upstream_addr = failover.tried;
                    return self.fail(shard, e, p.client_close).await;
                }
            };
            if let (false, Some(started)) = (reused, started) {
                self.t.connect += started.elapsed();
            }
            self.upstream_addr = cfg
                .upstreams
                .get(svc.upstream)
                .and_then(|u| u.targets.get(target))
                .map(|t| t.addr);
            let flat = snap.flat_target(svc.upstream, target);
            // Up and down on the same generation's slot, whatever reload happens in between.
            snap.metrics.upstream_acquired(flat);
            self.held_target = Some(flat);
            self.held_load = load;
            self.upstream_fault = false;
            self.upstream_status = 0;
            let outcome = self
                .exchange(shard, p, route, svc, upstream, target, reused)
                .await;
            // An upgrade holds its target until the tunnel ends (`serve` releases it).
            if !matches!(outcome, Exchange::Done(Next::Upgrade(_))) {
                self.held_target = None;
                self.held_load = None;
                snap.metrics.upstream_released(flat);
            }
            // Passive health: a failure on the upstream's side counts against the target, an answer
            // (unless its status is configured as a failure) for it. A stale pooled connection
            // (retried), a response cut mid-body and a client that went away count for neither.
            if self.upstream_fault {
                upstream_failed(shard, &snap, svc.upstream, target);
            } else if self.upstream_status != 0 {
                upstream_answered(shard, &snap, svc.upstream, target, self.upstream_status);
            }
            match outcome {
                Exchange::Done(next) => return next,
                Exchange::RetryFresh if pinned.is_none() && p.replayable => {
                    pinned = Some(target);
                    // The stale connection was not the target's fault: a fresh one to it gets
                    // the whole budget again (not more time: `retry_timeout` still counts from
                    // the first attempt).
                    failover.budget = svc.retries.saturating_add(1);
                }
                // Each other target once at most, as nginx's `proxy_next_upstream` does: with
                // every target resetting, the client's answer comes after one round.
                Exchange::RetryNext
                    if reset_after_accept
                        < cfg
                            .upstreams
                            .get(svc.upstream)
                            .map_or(0, |u| u.targets.len().saturating_sub(1)) =>
                {
                    reset_after_accept += 1;
                    pinned = None;
                    after = Some(target);
                }
                Exchange::RetryNext => {
                    return self
                        .fail(shard, GatewayError::UpstreamClosed, p.client_close)
                        .await
                }
                Exchange::RetryFresh => {
                    return self
                        .fail(shard, GatewayError::UpstreamClosed, p.client_close)
                        .await
                }
            }
        }
    }

    /// One request/response exchange over `upstream`.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &mut self,
        shard: &Shard,
        p: &Prepared,
        route: &RouteDef,
        svc: &ServiceDef,
        mut upstream: UpstreamConn,
        target: usize,
        reused: bool,
    ) -> Exchange {
        let snap = self.snap.clone();
        let cfg = &*snap.config;
        let Some(ups) = cfg.upstreams.get(svc.upstream) else {
            return Exchange::Done(
                self.fail(shard, GatewayError::ServiceUnavailable, p.client_close)
                    .await,
            );
        };
        let Some(tdef) = ups.targets.get(target) else {
            return Exchange::Done(
                self.fail(shard, GatewayError::ServiceUnavailable, p.client_close)
                    .await,
            );
        };

        // 1. Request head (plus whatever body bytes already arrived), then the rest of the body.
        let mut early: Option<body::SendError> = None;
        let client_host = self
            .s
            .head
            .effective_host()
            .map(|h| h.get(&self.buf))
            .unwrap_or_default();
        let host: &[u8] = if route.preserve_host && !client_host.is_empty() {
            client_host
        } else {
            svc.host_header.as_deref().unwrap_or(&tdef.name).as_bytes()
        };
        // X-Real-IP: the client as `trusted_proxies` resolve it (nginx's realip, Kong), as rate
        // limiting and the access log see it; X-Forwarded-For gets the peer appended.
        // Canonical (`::ffff:1.2.3.4` is 1.2.3.4), as the access log has it.
        let real_ip = crate::auth::client_ip::of_head(
            self.peer.ip(),
            &snap.auth.trusted_proxies,
            &self.s.head,
            &self.buf,
        );
        let fwd = Forwarded {
            client_ip: self.peer.ip(),
            real_ip,
            listen_port: self.listener.port,
            client_host,
            prefix: self.s.path.get(..p.strip_len).unwrap_or_default(),
            proto: if self.listener.tls { b"https" } else { b"http" },
            close: cfg.server.pool.max_idle == 0,
        };
        self.s.out.clear();
        head::write_request_head(
            &mut self.s.out,
            &self.buf,
            &self.s.head,
            &self.s.target,
            host,
            &fwd,
            p.body,
            &self.s.chain.edits,
            self.s
                .chain
                .request_tf
                .and_then(|i| snap.chains.rt.request.get(i)),
        );
        let sent = match self.edited_body.take() {
            Some(whole) => {
                let sent = body::send_request_whole(self, &whole, svc, &mut upstream).await;
                self.edited_body = Some(whole);
                sent
            }
            None => {
                body::send_request(
                    self,
                    shard,
                    p.body,
                    p.max_body,
                    p.expect_continue,
                    svc,
                    &mut upstream,
                )
                .await
            }
        };
        match sent {
            Ok(()) => {}
            Err(body::SendError::UpstreamWrite) if reused && p.replayable => {
                return Exchange::RetryFresh
            }
            // The upstream stopped taking the body (it closed, or stopped reading): it may have
            // answered already, a 401 or 413 before reading the body (RFC 9112 §9.5 asks a
            // sender to watch for one). That answer is what the client gets; without one, the
            // send error stands.
            Err(e @ (body::SendError::UpstreamWrite | body::SendError::UpstreamTimeout)) => {
                early = Some(e)
            }
            Err(e) => {
                return Exchange::Done(self.request_body_failed(shard, e, p, svc, target).await)
            }
        }

        // 2. Response head.
        if self.ubuf.capacity() == 0 {
            self.ubuf = shard.take_buf(cfg.server.max_header_bytes + 1024);
        } else {
            self.ubuf.clear();
        }
        let max_head = cfg.server.max_header_bytes;
        let mut heard = false;
        let mut interim = 0;
        let failed = loop {
            if !self.ubuf.is_empty() {
                match parse::parse_response(&self.ubuf, max_head, p.head_method, &mut self.s.resp) {
                    Ok(Parsed::Complete) => {
                        let status = self.s.resp.status;
                        if status == 101 {
                            self.status = 101;
                            self.upstream_status = 101;
                            return self.upgrade(shard, p, upstream).await;
                        }
                        if (100..200).contains(&status) {
                            // Interim (102 Processing, 103 Early Hints, 100 Continue): read on for
                            // the final answer. Each one restarts the read timeout (see
                            // MAX_INTERIM).
                            interim += 1;
                            if interim > MAX_INTERIM {
                                self.detail = Some("upstream sent too many interim responses");
                                break Some(GatewayError::BadResponse);
                            }
                            if !self.forward_interim(p).await {
                                return Exchange::Done(self.client_left_during_interim());
                            }
                            let hl = self.s.resp.head_len.min(self.ubuf.len());
                            self.ubuf.drain(..hl);
                            continue;
                        }
                        self.t.upstream_head_in = self.stamp();
                        self.status = status;
                        self.upstream_status = status;
                        break None;
                    }
                    Ok(Parsed::Partial) => {}
                    Err(e) => {
                        if let ParseError::BadResponse(why) = e {
                            self.detail = Some(why);
                        }
                        break Some(GatewayError::BadResponse);
                    }
                }
            }
            if self.ubuf.len() == self.ubuf.capacity() {
                self.detail = Some("upstream response head too large");
                break Some(GatewayError::BadResponse);
            }
            // An early answer is already on its way if there is one: wait briefly for it.
            let read_timeout = match early {
                Some(_) => svc.read_timeout.min(EARLY_ANSWER_WAIT),
                None => svc.read_timeout,
            };
            match io::fill(&mut upstream, &mut self.ubuf, read_timeout).await {
                // A timeout means a slow upstream, not a stale connection: the request arrived and
                // may be running, so it is never replayed.
                Err(e) if io::is_timeout(&e) => break Some(GatewayError::UpstreamTimeout),
                // Closed or reset before it said anything (interim responses count): the pooled
                // connection was stale when we picked it.
                Ok(0) | Err(_) if reused && !heard && p.replayable => return Exchange::RetryFresh,
                // A fresh connection the target accepted and then closed or reset without a word
                // (a dead backend behind something that still accepts, a full backlog): nothing
                // reached the client, so a replayable request goes to the next target, as
                // nginx's `proxy_next_upstream error` and Kong's `retries` do. It counts against
                // the target.
                Ok(0) | Err(_) if !reused && !heard && p.replayable => {
                    self.upstream_fault = true;
                    return Exchange::RetryNext;
                }
                // Nothing at all came back: not malformed, gone.
                Ok(0) | Err(_) if !heard => break Some(GatewayError::UpstreamClosed),
                Ok(0) | Err(_) => {
                    self.detail = Some("upstream closed in the middle of the response head");
                    break Some(GatewayError::BadResponse);
                }
                Ok(_) => heard = true,
            }
        };
        if let Some(e) = failed {
            // A send error stands only when nothing at all came back after it.
            let early = early.filter(|_| !heard);
            return Exchange::Done(self.head_failed(shard, e, early, p, svc, target).await);
        }

        // 3. Response head and body to the client.
        let resp_body = self.s.resp.body.unwrap_or(BodyKind::None);
        // A response-transformer's JSON body edits: the whole body is read first and goes out
        // edited, with its new length.
        let mut edited: Option<(Vec<u8>, bool)> = None;
        if let Some(jt) = self.json_edits(&snap, resp_body) {
            // Range was not forwarded, so a 206 is a part of a document, and a content-coded body
            // (Accept-Encoding was not forwarded either) cannot be read: neither can be edited,
            // and sent unedited it could show what `remove` hides.
            let Some(jt) = jt.filter(|_| self.s.resp.status != 206) else {
                return Exchange::Done(
                    self.fail(shard, GatewayError::ResponseTooLarge, p.client_close)
                        .await,
                );
            };
            match body::read_whole(self, svc, &mut upstream, resp_body, jt.max_bytes).await {
                Ok((whole, clean)) => {
                    // The gateway's own time resumes here: waiting for the body was the upstream's.
                    self.t.upstream_head_in = self.stamp();
                    let body = match jt.apply(&whole, false) {
                        Applied::Edited(b) => b,
                        Applied::Unchanged => whole,
                        Applied::Unreadable => {
                            return Exchange::Done(
                                self.fail(shard, GatewayError::ResponseTooLarge, p.client_close)
                                    .await,
                            )
                        }
                    };
                    edited = Some((body, clean))
                }
                Err(body::WholeError::TimedOut) => {
                    return Exchange::Done(self.upstream_timed_out(shard, svc, target, p).await)
                }
                Err(e) => {
                    let e = match e {
                        body::WholeError::TooLarge => GatewayError::ResponseTooLarge,
                        _ => GatewayError::BadResponse,
                    };
                    return Exchange::Done(self.fail(shard, e, p.client_close).await);
                }
            }
        }
        // Compression (`plugins::compression`), decided on the head: `vary`, the response could
        // be compressed; `gzip`, it is. An edited body is compressed whole (its length is known);
        // a streamed one goes out chunked.
        let compression = self
            .s
            .chain
            .compress
            .and_then(|i| snap.chains.rt.compression.get(i));
        let vary = !p.head_method
            && compression.is_some_and(|d| {
                let length = match (&edited, resp_body) {
                    (Some((b, _)), _) => Some(b.len() as u64),
                    (None, BodyKind::Length(n)) => Some(n),
                    (None, BodyKind::None) => Some(0),
                    (None, BodyKind::Chunked | BodyKind::CloseDelimited) => None,
                };
                let headers = self
                    .s
                    .resp
                    .headers
                    .iter()
                    .map(|h| (h.name.get(&self.ubuf), h.value.get(&self.ubuf)));
                crate::plugins::compression::eligible(d, self.s.resp.status, length, headers)
            });
        // Not for HTTP/1.0 clients (nginx's `gzip_http_version 1.1`): they would lose keep-alive
        // to a close-delimited body, and 1.0 caches ignore `Vary`.
        let want = compression.filter(|_| vary && self.s.chain.gzip_ok && !p.http10);
        // A body of known length that fits the buffer is read whole first and compressed before
        // its head goes out, as an edited one is: it keeps a Content-Length (no chunks), and the
        // compressor is taken and given back with no await in between (one per worker serves
        // them all). Anything longer, chunked or delimited by the close streams through a
        // compressor held for the response (`body::relay_compressed`).
        let hl = self.s.resp.head_len.min(self.ubuf.len());
        let whole_len = match (want, &edited, resp_body) {
            (Some(_), None, BodyKind::Length(n)) if body::fits_buffer(self, n) => Some(n),
            _ => None,
        };
        if let Some(n) = whole_len {
            if let Err(r) = body::fill_length(self, &mut upstream, n, svc.read_timeout).await {
                return Exchange::Done(match r {
                    body::Relay::TimedOutBeforeHead => {
                        self.upstream_timed_out(shard, svc, target, p).await
                    }
                    _ => {
                        self.fail(shard, GatewayError::BadResponse, p.client_close)
                            .await
                    }
                });
            }
        }
        // `packed`: a whole body compressed, waiting for its head; `streaming`: the compressor
        // a streamed body goes through (`None` past the worker's in-flight limit: uncompressed).
        let mut packed = None;
        let mut streaming = None;
        if let Some(d) = want {
            let whole = match (&edited, whole_len) {
                (Some((b, _)), _) => Some(&b[..]),
                (None, Some(n)) => usize::try_from(n)
                    .ok()
                    .and_then(|n| self.ubuf.get(hl..hl + n)),
                (None, None) => None,
            };
            match whole {
                Some(data) => {
                    let mut g = shard.gzip.take_sync(d.level);
                    g.start();
                    if g.write(data, false).is_ok() && g.finish().is_ok() {
                        packed = Some(g);
                    } else {
                        shard.gzip.give(g);
                    }
                }
                None => streaming = shard.gzip.take(d.level),
            }
        }
        let gzip = packed.is_some() || streaming.is_some();
        let packed_len = packed.as_ref().map(|g| g.out.len() as u64);
        let framing = match (&edited, resp_body) {
            _ if packed_len.is_some() => ClientFraming::Length(packed_len.unwrap_or(0)),
            (Some((b, _)), _) => ClientFraming::Length(b.len() as u64),
            (None, BodyKind::None) if p.head_method && self.json_route_answer(&snap) => {
                ClientFraming::NoBodyUnknownLength
            }
            // A 304's Content-Length, if any, is that of the unedited 200 (RFC 9110 §8.6); on a
            // route that edits JSON bodies the client's 200 had another. 304s rarely say their
            // Content-Type, so any route with JSON edits.
            (None, BodyKind::None)
                if self.s.resp.status == 304 && self.response_json(&snap).is_some() =>
            {
                ClientFraming::NoBodyUnknownLength
            }
            (None, BodyKind::None) => ClientFraming::NoBody,
            (None, BodyKind::Length(_)) if gzip => ClientFraming::Chunked,
            (None, BodyKind::Length(n)) => ClientFraming::Length(n),
            (None, BodyKind::Chunked | BodyKind::CloseDelimited) if p.http10 => {
                ClientFraming::Close
            }
            (None, BodyKind::Chunked | BodyKind::CloseDelimited) => ClientFraming::Chunked,
        };
        // After an early answer the client's body is still coming: the connection cannot be
        // reused.
        let close = self.closing(shard, p.client_close)
            || framing == ClientFraming::Close
            || early.is_some();
        self.s.out.clear();
        let mut edits = self
            .s
            .chain
            .response_edits(&self.s.plugin_headers, &snap.chains.rt, true);
        edits.gzip = gzip;
        edits.vary = vary;
        head::write_response_head(
            &mut self.s.out,
            &self.ubuf,
            &self.s.resp,
            framing,
            close,
            p.http10,
            &edits,
        );
        let relay = if let Some(g) = packed.take() {
            // Behind the head, and the compressor back in the pool before any await.
            self.s.out.extend_from_slice(&g.out);
            shard.gzip.give(g);
            let clean = match &edited {
                Some((_, clean)) => *clean,
                None => whole_len.is_some_and(|n| (self.ubuf.len() - hl) as u64 == n),
            };
            body::send_edited(self, &[], clean).await
        } else {
            match (&edited, streaming.as_mut()) {
                (Some((b, clean)), _) => body::send_edited(self, b, *clean).await,
                (None, Some(g)) => {
                    body::relay_compressed(self, svc, &mut upstream, resp_body, framing, g).await
                }
                (None, None) => {
                    body::relay_response(self, svc, &mut upstream, resp_body, framing).await
                }
            }
        };
        if let Some(g) = streaming {
            shard.gzip.give(g);
        }
        match relay {
            body::Relay::Complete { upstream_clean } => {
                if early.is_some() {
                    // The rest of the body is read and dropped for a while, so closing does not
                    // reset the connection under the answer; the upstream connection is done.
                    drop(upstream);
                    self.lingering_close().await;
                } else if upstream_clean && !self.s.resp.close {
                    if let Some(slot) = self.snap.slot(svc.upstream, target) {
                        shard.pool.checkin(slot, upstream);
                    }
                }
                Exchange::Done(if close { Next::Close } else { Next::KeepAlive })
            }
            body::Relay::Aborted => {
                // The client was gone before any of the answer reached it: logged and counted as
                // nginx does (499), not as the upstream's status with nothing sent.
                if self.bytes_out == 0 {
                    self.status = 499;
                    self.detail = Some(CLIENT_LEFT);
                } else {
                    self.detail = Some("response cut short mid-body");
                }
                // Cut mid-body, by either side, after the client saw the head: passive health
                // counts it neither as a failure (the client may have caused it) nor as a success,
                // unless its status alone is a configured failure.
                if !ups
                    .health
                    .passive
                    .http_statuses
                    .contains(self.upstream_status)
                {
                    self.upstream_status = 0;
                }
                // Delimited by the close: a FIN would read as the end of a complete body.
                Exchange::Done(if framing == ClientFraming::Close {
                    Next::Reset
                } else {
                    Next::Close
                })
            }
            body::Relay::BadBeforeHead => Exchange::Done(
                self.fail(shard, GatewayError::BadResponse, p.client_close)
                    .await,
            ),
            body::Relay::TimedOutBeforeHead => {
                Exchange::Done(self.upstream_timed_out(shard, svc, target, p).await)
            }
        }
    }

    /// The route's response JSON edits and what they make of the response head just read
    /// (whatever its framing); `None` when the route has none.
    fn response_json<'a>(&self, snap: &'a Snapshot) -> Option<(&'a JsonTransform, JsonFraming)> {
        let jt = self
            .s
            .chain
            .response_tf
            .and_then(|i| snap.chains.rt.response_json.get(i))?
            .as_ref()?;
        let framing = json_framing(
            self.s
                .resp
                .headers
                .iter()
                .map(|h| (h.name.get(&self.ubuf), h.value.get(&self.ubuf))),
        );
        Some((jt, framing))
    }

    /// Whether the response head just read is JSON on a route whose response-transformer edits
    /// JSON bodies (whatever its framing: for a HEAD, whose length a GET would not get).
    fn json_route_answer(&self, snap: &Snapshot) -> bool {
        self.response_json(snap)
            .is_some_and(|(_, f)| f != JsonFraming::NotJson)
    }

    /// Which of a request-transformer's body edits apply to this request's body (an empty one
    /// included, which Kong edits as `{}` or an empty form); a request without a body framing has
    /// none. An error when the body cannot be edited but must not pass unedited: a content coding
    /// (415), or Content-Type fields declaring both JSON and a form (400: the application could
    /// read it as the one the edits did not).
    fn request_body_edit<'t>(
        &self,
        t: &'t crate::plugins::transform::RequestTransform,
        p: &Prepared,
    ) -> Result<Option<BodyEdit<'t>>, GatewayError> {
        if t.json.is_none() && t.form.is_none() {
            return Ok(None);
        }
        // One pass over the head: the Content-Types' kinds, a content coding, and whether a
        // Content-Length was sent (`Content-Length: 0` parses as no body; it is an empty one here).
        let (mut json, mut form, mut encoded, mut stated) = (false, false, false, false);
        for h in &self.s.head.headers {
            let (n, v) = (h.name.get(&self.buf), h.value.get(&self.buf));
            if eq_ignore_case(n, b"content-type") {
                json |= crate::plugins::json_body::is_json_type(v);
                form |= crate::plugins::form_body::is_form_type(v);
            } else if eq_ignore_case(n, b"content-encoding") {
                encoded |= !eq_ignore_case(v.trim_ascii(), b"identity");
            } else if eq_ignore_case(n, b"content-length") {
                stated = true;
            }
        }
        if p.body == BodyKind::None && !stated {
            return Ok(None);
        }
        let edit = match (json, form) {
            (false, false) => None,
            (true, true) => {
                return Err(GatewayError::BadRequest(
                    "request declares both a JSON and a form Content-Type",
                ))
            }
            (true, false) => t.json.as_ref().map(BodyEdit::Json),
            (false, true) => t.form.as_ref().map(BodyEdit::Form),
        };
        match edit {
            Some(_) if encoded => Err(GatewayError::UnsupportedEncoding),
            e => Ok(e),
        }
    }

    /// The JSON body edits that apply to the response head just read: a response-transformer with
    /// `json` edits ran, and the response has a body (not HEAD, 204, 304) of a JSON type. `None`
    /// inside: it has a content coding (`Accept-Encoding` was not forwarded, yet the upstream
    /// encoded), so it cannot be read to be edited.
    fn json_edits<'a>(
        &self,
        snap: &'a Snapshot,
        body: BodyKind,
    ) -> Option<Option<&'a JsonTransform>> {
        if body == BodyKind::None {
            return None;
        }
        match self.response_json(snap)? {
            (_, JsonFraming::NotJson) => None,
            (jt, JsonFraming::Json) => Some(Some(jt)),
            (_, JsonFraming::Encoded) => Some(None),
        }
    }

    /// No usable response head came: answer `e` (504 for a timeout), or, when the request body
    /// could not be sent (`early`) and nothing at all came back, what that send error means.
    async fn head_failed(
        &mut self,
        shard: &Shard,
        e: GatewayError,
        early: Option<body::SendError>,
        p: &Prepared,
        svc: &ServiceDef,
        target: usize,
    ) -> Next {
        match (early, e) {
            (Some(send), _) => self.request_body_failed(shard, send, p, svc, target).await,
            (None, GatewayError::UpstreamTimeout) => {
                self.upstream_timed_out(shard, svc, target, p).await
            }
            (None, e) => self.fail(shard, e, p.client_close).await,
        }
    }

    /// Forwards the interim head just parsed to the client, as RFC 9110 §15.2 asks of a proxy: a
    /// `103 Early Hints`' `Link` lets a browser start fetching while the upstream still works, and
    /// a `102 Processing` tells the client the request is alive. Not to an HTTP/1.0 client (it
    /// would take the 1xx for the answer; §15.2 forbids it), and not a `100 Continue`: the gateway
    /// answers `Expect` itself and does not send it upstream, so that one was not asked for. False
    /// when the client is gone.
    async fn forward_interim(&mut self, p: &Prepared) -> bool {
        if p.http10 || self.s.resp.status == 100 {
            return true;
        }
        self.s.out.clear();
        let snap = self.snap.clone();
        let edits = self
            .s
            .chain
            .response_edits(&self.s.plugin_headers, &snap.chains.rt, true);
        head::write_interim_head(&mut self.s.out, &self.ubuf, &self.s.resp, &edits);
        match self.write_out().await {
            Some(len) => {
                self.bytes_interim += len;
                true
            }
            None => false,
        }
    }

    /// Writes `s.out` to the client within the client timeout: its length once it went out whole,
    /// `None` when the client is gone.
    async fn write_out(&mut self) -> Option<u64> {
        self.answer_out = true;
        let len = self.s.out.len() as u64;
        let timeout = self.client_timeout();
        io::send_all(&mut self.client, &mut self.s.out, timeout)
            .await
            .ok()
            .map(|()| len)
    }

    /// The client went away while an interim head was being forwarded: logged as nginx logs a
    /// client that left before its answer (499), counted against no target, and the upstream
    /// connection is dropped with its answer half read.
    fn client_left_during_interim(&mut self) -> Next {
        self.status = 499;
        self.detail = Some(CLIENT_LEFT);
        self.upstream_status = 0;
        Next::Close
    }

    /// The upstream timed out before the client saw anything of the response: count it against the
    /// target and answer 504.
    async fn upstream_timed_out(
        &mut self,
        shard: &Shard,
        svc: &ServiceDef,
        target: usize,
        p: &Prepared,
    ) -> Next {
        self.snap
            .metrics
            .upstream_timeout(self.snap.flat_target(svc.upstream, target));
        self.fail(shard, GatewayError::UpstreamTimeout, p.client_close)
            .await
    }

    async fn request_body_failed(
        &mut self,
        shard: &Shard,
        e: body::SendError,
        p: &Prepared,
        svc: &ServiceDef,
        target: usize,
    ) -> Next {
        match e {
            body::SendError::ClientGone => Next::Close,
            body::SendError::ClientTimeout => {
                self.fail(shard, GatewayError::RequestTimeout, true).await
            }
            body::SendError::TooLarge => self.fail(shard, GatewayError::BodyTooLarge, true).await,
            body::SendError::BadChunked => {
                self.fail(
                    shard,
                    GatewayError::BadRequest("malformed chunked body"),
                    true,
                )
                .await
            }
            body::SendError::UpstreamWrite => {
                self.fail(shard, GatewayError::UpstreamClosed, p.client_close)
                    .await
            }
            body::SendError::UpstreamTimeout => {
                self.upstream_timed_out(shard, svc, target, p).await
            }
        }
    }

    /// Relays a 101 and turns the connection into a tunnel (only for requests that asked to upgrade).
    async fn upgrade(&mut self, shard: &Shard, p: &Prepared, upstream: UpstreamConn) -> Exchange {
        // Only to a protocol the client offered (RFC 9110 §7.8), and never h2c: an upstream that
        // switched to h2c would take HTTP/2 requests for any path past routing and auth.
        // What the client offered, copied before its body (if any) overwrote the head.
        let offered = std::iter::once(self.s.upgrade_offer.as_slice());
        let switched = self
            .s
            .resp
            .headers
            .iter()
            .filter(|h| eq_ignore_case(h.name.get(&self.ubuf), b"upgrade"))
            .map(|h| h.value.get(&self.ubuf));
        if !p.upgrade || !crate::http::headers::switch_was_offered(offered, switched) {
            return Exchange::Done(
                self.fail(shard, GatewayError::BadResponse, p.client_close)
                    .await,
            );
        }
        self.s.out.clear();
        head::write_upgrade_head(
            &mut self.s.out,
            &self.ubuf,
            &self.s.resp,
            &self
                .s
                .chain
                .response_edits(&self.s.plugin_headers, &self.snap.chains.rt, false),
        );
        // Bytes the upstream sent right after its 101 belong to the new protocol.
        let extra_from = self.s.resp.head_len.min(self.ubuf.len());
        self.s.out.extend_from_slice(&self.ubuf[extra_from..]);
        if let Some(len) = self.write_out().await {
            self.bytes_out += len;
        } else {
            // Gone before the 101 reached it: a 499, not an upgrade with nothing sent.
            self.status = 0;
            self.detail = Some(CLIENT_LEFT);
            return Exchange::Done(Next::Close);
        }
        Exchange::Done(Next::Upgrade(upstream))
    }

    /// Whether the connection ends with this response: the client asked to close, its request body
    /// was not fully read (its next bytes would be body), the worker is draining, or keep-alive is
    /// off (`keepalive = "0s"`). Said in the response as `Connection: close`.
    fn closing(&self, shard: &Shard, client_close: bool) -> bool {
        client_close
            || !self.body_done
            || shard.draining.get()
            || self.snap.config.server.timeouts.keepalive.is_zero()
    }

    /// The drain deadline passed while this request was in flight (`Shard::cut`; its future was
    /// dropped wherever it waited). With nothing of an answer begun (no head written to the
    /// client, interim or final; an upstream head read, or a body being read whole for a JSON
    /// edit, does not count) the client gets a 503 and a close: a clear answer rather than a
    /// closed socket. Otherwise a write may have been half done, and a FIN could read as the end
    /// of a whole close-delimited body, so the connection is reset. Either way the access log says
    /// why. Bounded well within the drain's grace for these answers (`CUT_GRACE`): no lingering
    /// close of seconds for a client still uploading.
    async fn cut_short(&mut self, shard: &Shard) -> Next {
        if let Some(flat) = self.held_target.take() {
            self.snap.metrics.upstream_released(flat);
        }
        self.held_load = None;
        self.upstream_status = 0;
        self.detail = Some(DRAIN_CUT);
        if self.answer_out {
            return Next::Reset;
        }
        self.status = 0;
        self.body_done = false;
        // Counts as lingered, so the close that follows does not linger again: the 503's own
        // lingering close is all the client gets, cut at `CUT_ANSWER_TIME`.
        self.lingered = true;
        let answer = self.fail(shard, GatewayError::ServiceUnavailable, true);
        // Out of time (a client not reading, or still uploading during the lingering close):
        // close; a 503 head cut short is still not a whole answer.
        monoio::time::timeout(CUT_ANSWER_TIME, answer)
            .await
            .unwrap_or(Next::Close)
    }

    /// Answers with a gateway error and decides whether the connection survives it: not if the
    /// answer did not go out whole, since the client would read the next response after a torn one.
    async fn fail(&mut self, shard: &Shard, e: GatewayError, client_close: bool) -> Next {
        // The upstream is done with this request: its room under `max_conns` is not held while
        // the answer (and maybe a lingering close of seconds) goes out.
        self.held_load = None;
        if matches!(
            e,
            GatewayError::BadResponse
                | GatewayError::UpstreamTimeout
                | GatewayError::UpstreamConnect
                | GatewayError::UpstreamClosed
        ) {
            self.upstream_fault = true;
        }
        self.detail.get_or_insert(e.message());
        let close = self.closing(shard, client_close) || e.closes_connection();
        // Errors after the chain ran (502, 504, 413 while streaming) carry what plugins added for
        // the client (CORS, correlation id), so a browser app can read them; `handle` cleared the
        // lines, so errors before the chain (no route) carry none.
        self.s.out.clear();
        e.write_response_with(close, &self.s.plugin_headers, &mut self.s.out);
        if self.send_answer(e.status(), close).await && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// The drain deadline passed while a request head was arriving (a slow client; its read was
    /// dropped): a 503 and a close, counted and logged like a refused head with `detail` "cut at
    /// the drain deadline", within `CUT_ANSWER_TIME` (found by a review: the runtime's end dropped
    /// these without a line). A connection with no byte of a next request just closes.
    async fn head_cut(&mut self, shard: &Shard) -> Next {
        if self.first_byte.is_none() {
            return Next::Close;
        }
        // The dropped read took the buffer with it: `head_bytes` knows what came.
        let bytes_in = (self.buf.len() as u64).max(self.head_bytes);
        let waited = self.first_byte.map_or(Duration::ZERO, |t| t.elapsed());
        self.detail = Some(DRAIN_CUT);
        self.lingered = true;
        let answer = self.reply_error(GatewayError::ServiceUnavailable, true);
        // Out of time in the lingering close (the client waits for ours) is still a 503 sent.
        let _ = monoio::time::timeout(CUT_ANSWER_TIME, answer).await;
        let status = if self.status != 0 && self.bytes_out > 0 {
            self.status
        } else {
            499
        };
        self.record_refused_head(shard, status, bytes_in, waited);
        Next::Close
    }

    /// Sends the error response; returns whether it went out.
    async fn reply_error(&mut self, e: GatewayError, close: bool) -> bool {
        self.detail.get_or_insert(e.message());
        self.s.out.clear();
        e.write_response(close, &mut self.s.out);
        self.send_answer(e.status(), close).await
    }

    /// Sends a response the gateway generated itself (already in `out`), records it for metrics, and
    /// closes with a lingering close when asked. Returns whether the response went out.
    async fn send_answer(&mut self, status: u16, close: bool) -> bool {
        self.status = status;
        if self.http10 && !close {
            // An HTTP/1.0 client closes after an answer that does not say keep-alive, or waits
            // for the gateway to close (ab -k does): the answer must say it.
            crate::http::say_keep_alive(&mut self.s.out);
        }
        if self.head_only {
            crate::http::keep_head_only(&mut self.s.out);
        }
        let written = self.write_out().await;
        let sent = written.is_some();
        if let Some(len) = written {
            self.bytes_out += len;
        } else {
            // The client was gone before the answer reached it: logged and counted as 499 (nginx),
            // not as the answer it never got; `detail` keeps what that answer would have said.
            self.status = 0;
        }
        if close {
            self.lingering_close().await;
        }
        sent
    }

    /// The access log line of a request refused before its head was whole (400, 408, 414, 431,
    /// 501): nothing of the request is known for sure, so its fields are null. `waited`: since its
    /// first byte.
    /// Counts and logs a request refused (or cut) before its head was whole. `waited`: from its
    /// first byte to the refusal.
    fn record_refused_head(&mut self, shard: &Shard, status: u16, bytes_in: u64, waited: Duration) {
        if self.snap.config.metrics.enabled {
            self.snap
                .metrics
                .gateway_error(None, status, bytes_in, self.bytes_out);
        }
        if shard.access_log.on() {
            self.log_refused_head(shard, status, bytes_in, waited);
        }
    }

    fn log_refused_head(&mut self, shard: &Shard, status: u16, bytes_in: u64, waited: Duration) {
        let r = log_format::Request {
            client_ip: client_ip::canonical(self.peer.ip()),
            remote_addr: self.peer,
            method: None,
            host: None,
            path: None,
            protocol: None,
            tls: self.listener.tls,
            user_agent: None,
            request_id: None,
        };
        self.s.log.clear();
        log_format::push_request(&mut self.s.log, &r);
        let o = Outcome {
            status,
            bytes_sent: self.bytes_out,
            request_bytes: bytes_in,
            duration_us: Some(u64::try_from(waited.as_micros()).unwrap_or(u64::MAX)),
            detail: self.detail,
            ..Outcome::default()
        };
        shard.access_log.append(&self.s.log, &o);
    }

    /// Half-closes, then reads and discards what the client is still sending (bounded in bytes and
    /// time) before the socket is dropped. Closing a socket with unread input sends a reset, which can
    /// destroy the error response before the client reads it (the 413-while-uploading case).
    async fn lingering_close(&mut self) {
        self.lingered = true;
        // Bounded: a TLS shutdown sends close_notify behind whatever the client has not read yet.
        let _ = monoio::time::timeout(CLOSE_NOTIFY_TIME, self.client.shutdown()).await;
        io::discard(&mut self.client, &mut self.buf, LINGER_TIME, LINGER_BYTES).await;
    }
}

/// A request's failover across `connect` calls: what it may still try, and what it tried.
struct Failover {
    /// Connect attempts left (`retries` + 1: Kong's bound; nginx's `proxy_next_upstream_tries`).
    budget: usize,
    /// `retry_timeout` from the first attempt (nginx's `proxy_next_upstream_timeout`): no retry
    /// starts after it, and a retry's connect ends by it.
    until: Option<Instant>,
    /// A connect was made: the next one is a retry. A pooled connection taken does not count
    /// (as in nginx): when it turns out stale, the fresh connect after it still gets its whole
    /// `connect_timeout`.
    retrying: bool,
    /// Failover stopped at `until` with targets left to try (the access log's `detail`).
    out_of_time: bool,
    /// The address of the last target a connection was attempted to in the latest `connect`
    /// call (for the access log when all failed).
    tried: Option<SocketAddr>,
}

/// Picks a target (by the upstream's algorithm: `balance::first_pick`; `key` is the request's
/// consistent-hash key) and returns a pooled or fresh connection to it, with the hold on the
/// target's in-flight count for least_conn and `max_conns` (taken before connecting, so requests
/// still connecting count: a target slow to accept does not look idle). A target at its
/// `max_conns` is passed over; with nothing tried for that reason alone, `UpstreamFull` (503). A
/// target that refuses or times out is skipped for the next one: nothing was sent yet, so this is
/// always safe.
/// `pinned`: the retry after a stale pooled connection to this target: fresh connections only,
/// starting with this target; if it now refuses (it is restarting: the usual reason its pooled
/// connection went stale), the next targets are tried as on a first attempt. `failover`: what the
/// request may still try, and what it tried.
async fn connect(
    shard: &Shard,
    snap: &Snapshot,
    svc: &ServiceDef,
    pinned: Option<usize>,
    after: Option<usize>,
    key: Option<u64>,
    failover: &mut Failover,
) -> Result<(UpstreamConn, usize, bool, Option<InFlight>), GatewayError> {
    let ups = snap
        .config
        .upstreams
        .get(svc.upstream)
        .ok_or(GatewayError::ServiceUnavailable)?;
    let n = ups.targets.len();
    let health = &shard.health;
    // The clock is read only when health checking skips some target on this worker.
    let mut now: Option<Instant> = None;
    let mut usable = |t: usize| {
        health.all_usable()
            || health.usable(
                snap.health_slot(svc.upstream, t),
                *now.get_or_insert_with(Instant::now),
            )
    };
    let first = match (pinned, after) {
        (Some(t), _) => t,
        // Failover after a target that reset once connected: the ones after it, in turn (in
        // score order for a hashed request, below).
        (None, Some(t)) => (t + 1) % n.max(1),
        (None, None) => balance::first_pick(
            snap,
            ups,
            svc.upstream,
            key,
            health.all_usable(),
            &mut usable,
        ),
    };
    // A failed connect moves on to the next target, within the request's `budget` of attempts
    // (`retries` + 1: Kong's bound; nginx's `proxy_next_upstream_tries`): with every target
    // blackholed a request waits that many connect timeouts, not one per target.
    let mut timed_out = false;
    // Some target was passed over for being at its `max_conns` (a 503 if none was tried).
    let mut full = false;
    // A hashed request fails over in score order, from below the target it started with (the
    // pinned one, else the first pick or the one that reset): where its key goes with that target
    // out, as on every gateway of a fleet (see `Rendezvous::next_below`). Others go round the list.
    let ranked = ups.hashing.as_ref().zip(key);
    let walk_at_once = after.is_some() && pinned.is_none();
    let from = if walk_at_once { after } else { Some(first) };
    // Ranked on the first step of the walk: a request whose first try connects pays nothing.
    let mut below = None;
    for k in 0..n {
        let t = match ranked {
            Some((hashing, key)) if k > 0 || walk_at_once => {
                let bound = below.or_else(|| from.and_then(|f| hashing.rank(key, f)));
                // Targets the checks below would pass over are passed over in the walk: one
                // scan per attempt, however many targets are out.
                let mut go = |t| {
                    if ups.capped && !balance::has_room(snap, svc.upstream, t) {
                        full = true;
                        return false;
                    }
                    usable(t)
                };
                match hashing.next_below(key, bound, &mut go) {
                    Some((t, rank)) => {
                        below = Some(rank);
                        t
                    }
                    None => break,
                }
            }
            _ => (first + k) % n.max(1),
        };
        if after == Some(t) {
            continue;
        }
        // A target at its limit is passed over, the first choice too (a limit never fails open),
        // and costs no attempt.
        if ups.capped && !balance::has_room(snap, svc.upstream, t) {
            full = true;
            continue;
        }
        // Failover skips targets health checking took out: with all of them out, only the first
        // choice is tried, so a request costs one connect timeout, not one per target.
        if (k > 0 || after.is_some()) && !usable(t) {
            continue;
        }
        if failover.budget == 0 {
            break;
        }
        // A retry's connect ends with the request's `retry_timeout`; past it, none starts (what
        // failed last is the answer). A first attempt gets its whole `connect_timeout`.
        let mut connect_timeout = svc.connect_timeout;
        if let Some(until) = failover.until.filter(|_| failover.retrying) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failover.out_of_time = true;
                break;
            }
            connect_timeout = connect_timeout.min(left);
        }
        failover.budget -= 1;
        let Some(tdef) = ups.targets.get(t) else {
            continue;
        };
        // Released when this attempt fails (dropped at the end of the iteration).
        let load = balance::hold(snap, svc.upstream, t);
        if pinned.is_none() {
            if let Some(stream) = snap
                .slot(svc.upstream, t)
                .and_then(|slot| shard.pool.checkout(slot))
            {
                return Ok((stream, t, true, load));
            }
        }
        let tls = ups.tls.as_ref().map(|tls| (tls, tls.names.get(t)));
        let flat = snap.flat_target(svc.upstream, t);
        failover.tried = Some(tdef.addr);
        failover.retrying = true;
        let attempt = monoio::time::timeout(connect_timeout, connect_one(tdef.addr, tls)).await;
        match &attempt {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => snap.metrics.upstream_connect_error(flat),
            Err(_) => snap.metrics.upstream_timeout(flat),
        }
        // A connect that `retry_timeout` cut short is not held against the target: it did not
        // get its whole `connect_timeout`.
        let cut_short = attempt.is_err() && connect_timeout < svc.connect_timeout;
        if !matches!(attempt, Ok(Ok(_))) && !cut_short {
            upstream_failed(shard, snap, svc.upstream, t);
        }
        match attempt {
            Ok(Ok(stream)) => return Ok((stream, t, false, load)),
            // A warning (rate-limited per worker): the ejection line that may follow names no
            // cause, and "connection refused" vs a timeout is what an operator needs to know.
            Ok(Err(ConnectError::Tcp(e))) => crate::warn_every!(
                LOG_EVERY,
                "upstream connect failed upstream={} target={} address={} error=\"{}\"",
                ups.name,
                tdef.name,
                tdef.addr,
                e
            ),
            Ok(Err(ConnectError::Tls(e))) => crate::warn_every!(
                LOG_EVERY,
                "upstream tls handshake failed upstream={} target={} address={} server_name={} error=\"{}\"",
                ups.name,
                tdef.name,
                tdef.addr,
                tls.and_then(|(_, n)| n)
                    .map_or_else(|| "-".to_owned(), |n| n.to_str().into_owned()),
                e.replace('"', "'")
            ),
            Err(_) => {
                crate::warn_every!(
                    LOG_EVERY,
                    "upstream connect timed out upstream={} target={} address={}",
                    ups.name,
                    tdef.name,
                    tdef.addr
                );
                timed_out = true;
            }
        }
    }
    Err(if timed_out {
        GatewayError::UpstreamTimeout
    } else if full && failover.tried.is_none() {
        GatewayError::UpstreamFull
    } else {
        GatewayError::UpstreamConnect
    })
}

/// Passive health: a request to target `t` of upstream `u` failed on the upstream's side. Off the
/// fast path (reads the clock; logs and counts an ejection).
fn upstream_failed(shard: &Shard, snap: &Snapshot, u: usize, t: usize) {
    let Some(ups) = snap.config.upstreams.get(u) else {
        return;
    };
    let Some(who) = who(shard, ups, t) else {
        return;
    };
    let slot = snap.health_slot(u, t);
    if let Some(ejection) = shard
        .health
        .failure(slot, &ups.health.passive, Instant::now(), who)
    {
        snap.metrics.upstream_ejected(snap.flat_target(u, t));
        if ejection.shared {
            shard.share_ejection(slot, ejection);
        }
    }
}

/// Passive health: target `t` of upstream `u` answered with `status`. When nothing is failing this
/// is a bitmap test and one compare (`HealthTable::success`).
#[inline]
fn upstream_answered(shard: &Shard, snap: &Snapshot, u: usize, t: usize, status: u16) {
    let Some(ups) = snap.config.upstreams.get(u) else {
        return;
    };
    if ups.health.passive.http_statuses.contains(status) {
        upstream_failed(shard, snap, u, t);
        return;
    }
    let Some(who) = who(shard, ups, t) else {
        return;
    };
    shard.health.success(snap.health_slot(u, t), who);
}

/// Target `t` of `ups`, named for health log lines.
fn who<'a>(shard: &Shard, ups: &'a crate::config::model::UpstreamDef, t: usize) -> Option<Who<'a>> {
    let target = ups.targets.get(t)?;
    Some(Who {
        upstream: &ups.name,
        target: &target.name,
        addr: target.addr,
        worker: shard.worker(),
    })
}

enum ConnectError {
    Tcp(std::io::Error),
    /// Handshake or certificate verification failed.
    Tls(String),
}

/// TCP connect (with TCP_NODELAY), then the TLS handshake for https upstreams (SNI and verification
/// against the target's configured name).
async fn connect_one(
    addr: SocketAddr,
    tls: Option<(
        &crate::config::model::UpstreamTls,
        Option<&rustls::pki_types::ServerName<'static>>,
    )>,
) -> Result<UpstreamConn, ConnectError> {
    let stream = TcpStream::connect_addr(addr)
        .await
        .map_err(ConnectError::Tcp)?;
    let _ = stream.set_nodelay(true);
    let Some((tls, name)) = tls else {
        return Ok(UpstreamConn::Plain(stream));
    };
    let name = name
        .cloned()
        .ok_or_else(|| ConnectError::Tls("no server name for this target".to_owned()))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let connector = TlsConnector::from(tls.config.clone());
    match connector.connect(name, stream).await {
        Ok(s) => Ok(UpstreamConn::tls(s, fd)),
        Err(e) => Err(ConnectError::Tls(crate::tls::handshake_error(&e))),
    }
}

/// The answer to a request head the parser refused (also the redirect listener's).
pub(crate) fn request_parse_error(e: ParseError) -> GatewayError {
    match e {
        ParseError::BadRequest(why) => GatewayError::BadRequest(why),
        ParseError::UriTooLong => GatewayError::UriTooLong,
        ParseError::HeadersTooLarge => GatewayError::HeadersTooLarge,
        ParseError::NotImplemented => GatewayError::NotImplemented,
        ParseError::VersionNotSupported => GatewayError::VersionNotSupported,
        ParseError::BadResponse(why) => GatewayError::BadRequest(why),
    }
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
/// How many bytes of complete empty lines (`\r\n` or `\n`) `buf` starts with; one pass.
fn leading_blank_lines(buf: &[u8]) -> usize {
    let mut at = 0;
    loop {
        match buf.get(at..).unwrap_or_default() {
            [b'\r', b'\n', ..] => at += 2,
            [b'\n', ..] => at += 1,
            _ => return at,
        }
    }
}

pub(crate) fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match memchr::memchr(b']', host) {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match memchr::memrchr(b':', host) {
        Some(i) if host[i + 1..].iter().all(u8::is_ascii_digit) => &host[..i],
        _ => host,
    }
}

/// A request's access log fields, from its parsed head (`buf` holds the head). The path is logged
/// without its query string, which can carry credentials (key-auth `key_names`, JWT `uri_param_names`);
/// no credential header is read. `trusted`: `[server] trusted_proxies`, for the client IP.
pub(crate) fn request_fields<'a>(
    head: &RequestHead,
    buf: &'a [u8],
    peer: SocketAddr,
    tls: bool,
    trusted: &[Cidr],
) -> log_format::Request<'a> {
    let mut user_agent = None;
    let mut request_id = None;
    for h in &head.headers {
        let name = h.name.get(buf);
        if user_agent.is_none() && eq_ignore_case(name, b"user-agent") {
            user_agent = Some(h.value.get(buf));
        } else if request_id.is_none() && eq_ignore_case(name, b"x-request-id") {
            request_id = Some(h.value.get(buf));
        }
    }
    let client_ip = client_ip::of_head(peer.ip(), trusted, head, buf);
    log_format::Request {
        client_ip,
        remote_addr: peer,
        method: Some(head.method.get(buf)),
        host: head.effective_host().map(|h| h.get(buf)),
        path: Some(head.path_bytes(buf)),
        protocol: head.version.map(|v| match v {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }),
        tls,
        user_agent,
        request_id,
    }
}

/// The end-of-request fields that come from the config and the timings; the caller fills in the
/// status and sizes. `route` and `consumer` are indices into `snap`'s generation (the request's).
fn outcome<'a>(
    cfg: &'a Config,
    t: &Timings,
    route: Option<usize>,
    consumer: Option<usize>,
    upstream: Option<SocketAddr>,
) -> Outcome<'a> {
    let route = route.and_then(|r| cfg.routes.get(r));
    let us = |ns: u64| ns / 1_000;
    Outcome {
        duration_us: Some(us(t.total_ns())),
        upstream_us: t.upstream_ns().map(us),
        gateway_us: t.added_ns().map(us),
        route: route.map(|r| r.name.as_str()),
        service: route
            .and_then(|r| cfg.services.get(r.service))
            .map(|s| s.name.as_str()),
        upstream,
        consumer: consumer
            .and_then(|c| cfg.consumers.get(c))
            .map(|c| c.username.as_str()),
        ..Outcome::default()
    }
}

/// `Router::find` with HEAD's rule: a route for GET takes HEAD (see `router::conds`), and where
/// it ties with a route that lists HEAD itself on everything but conditions and config order
/// (priority, path, host), the one listing HEAD wins. A more specific GET route still wins over
/// a catch-all that lists HEAD, or HEAD would run `/admin`'s GET handler past its plugins.
fn route_for(
    router: &crate::router::Router,
    routes: &[RouteDef],
    host: &[u8],
    method: &[u8],
    path: &[u8],
    query: &[u8],
    view: &HeadView<'_>,
) -> Option<crate::router::Match> {
    let best = router.find_ranked(host, method, path, query, view);
    if method != b"HEAD" {
        return best.map(|(_, m)| m);
    }
    let lists_head = |m: &crate::router::Match| {
        routes
            .get(m.route)
            .is_some_and(|r| r.methods.iter().any(|x| x == "HEAD"))
    };
    let (rank, m) = best?;
    if lists_head(&m) {
        return Some(m);
    }
    let strict = HeadView {
        head_as_get: false,
        ..*view
    };
    match router.find_ranked(host, method, path, query, &strict) {
        Some((r, explicit)) if lists_head(&explicit) && r.specificity() == rank.specificity() => {
            Some(explicit)
        }
        _ => Some(m),
    }
}

/// Warnings a request can trigger (an upstream's TLS handshake, forward-auth down) go out at most
/// this often per worker and call site (`crate::warn_every!`), with how many they stand for.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(5);

/// The method-override headers frameworks honour (`http::parse` flags their presence).
fn is_method_override(name: &[u8]) -> bool {
    eq_ignore_case(name, b"x-http-method-override")
        || eq_ignore_case(name, b"x-http-method")
        || eq_ignore_case(name, b"x-method-override")
}

/// Header lookups for the router, straight from the parsed spans.
#[derive(Clone, Copy)]
struct HeadView<'a> {
    head: &'a RequestHead,
    buf: &'a [u8],
    /// Which occurrence of a repeated header the router's conditions read: the first, or the last
    /// (one of `Router::ambiguous`'s readings).
    headers: Occurrence,
    /// The same for query parameters: any occurrence normally, or the first or the last.
    params: Occurrence,
    /// A route for GET takes HEAD (off for `route_for`'s look for a route listing HEAD itself).
    head_as_get: bool,
    /// Query conditions compare names as lenient frameworks read them (one of the readings).
    lenient_names: bool,
}

impl<'a> HeadView<'a> {
    fn new(head: &'a RequestHead, buf: &'a [u8]) -> HeadView<'a> {
        HeadView {
            head,
            buf,
            headers: Occurrence::First,
            params: Occurrence::Any,
            head_as_get: true,
            lenient_names: false,
        }
    }

    fn values(&self, name_lower: &'a [u8]) -> impl DoubleEndedIterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.head
            .headers
            .iter()
            .filter(move |h| eq_ignore_case(h.name.get(buf), name_lower))
            .map(move |h| h.value.get(buf))
    }
}

impl RequestView for HeadView<'_> {
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]> {
        let found = |h: &&crate::http::HeaderSpan| eq_ignore_case(h.name.get(self.buf), name_lower);
        let h = match self.headers {
            Occurrence::Last => self.head.headers.iter().rev().find(found),
            _ => self.head.headers.iter().find(found),
        };
        h.map(|h| h.value.get(self.buf))
    }

    fn header_varies(&self, name_lower: &[u8]) -> bool {
        let mut values = self.values(name_lower);
        let Some(first) = values.next() else {
            return false;
        };
        values.any(|v| v != first)
    }

    fn query_reading(&self) -> Occurrence {
        self.params
    }

    fn head_as_get(&self) -> bool {
        self.head_as_get
    }

    fn lenient_names(&self) -> bool {
        self.lenient_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_counted_whole() {
        assert_eq!(leading_blank_lines(b"\r\n\nGET"), 3);
        assert_eq!(
            leading_blank_lines(b"\r\n\r"),
            2,
            "a lone CR waits for its LF"
        );
        assert_eq!(leading_blank_lines(b"\rGET"), 0);
        assert_eq!(leading_blank_lines(b""), 0);
        assert_eq!(leading_blank_lines(&b"\r\n".repeat(10_000)), 20_000);
    }

    #[test]
    fn strips_ports() {
        assert_eq!(host_without_port(b"example.com:8080"), b"example.com");
        assert_eq!(host_without_port(b"example.com"), b"example.com");
        assert_eq!(host_without_port(b"[::1]:80"), b"[::1]");
        assert_eq!(host_without_port(b"[::1]"), b"[::1]");
        assert_eq!(host_without_port(b"a:b"), b"a:b");
        assert_eq!(host_without_port(b""), b"");
    }
}
