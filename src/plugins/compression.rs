//! `compression`: gzip for responses the client accepts it for (nginx's `gzip`, Envoy's compressor,
//! Traefik's `compress`), chosen per response from its head.
//!
//! A response is compressed when the route's instance ran, the client's `Accept-Encoding` takes
//! gzip, and the response (`eligible`): has a body (not HEAD, 1xx, 204, 304), is not a part (206,
//! `Content-Range`), has no content coding yet, does not say `Cache-Control: no-transform` (RFC
//! 9111 §5.2.2.6), is one of the configured media types, and is at least `min_length` bytes when
//! its length is known. It then goes out with `Content-Encoding: gzip`, without `Accept-Ranges`,
//! and with a strong `ETag` made weak (the bytes differ from the upstream's; nginx does the same):
//! compressed whole with its new `Content-Length` when its body fits the upstream buffer (read
//! whole first), else streamed chunked as it arrives. Every eligible response says
//! `Vary: Accept-Encoding`, compressed or not, so a shared cache keeps the two apart.
//!
//! Invariants: the deflate state (a few hundred KiB) is never per connection: each worker keeps a
//! few in a pool (`Pool`), taken for one response and given back, so 10,000 idle connections hold
//! none. A whole body holds one only while it is compressed, with no await in between
//! (`take_sync`); a streamed one holds it until sent, at most `MAX_IN_FLIGHT` at once (past it a
//! response goes uncompressed). A
//! chunked or close-delimited body is flushed after each read from the upstream (a sync flush), so
//! a slow stream's bytes are not held back; the output buffer is the pooled state's own. HTTP/1.0
//! clients are not compressed (nginx's `gzip_http_version 1.1`).

use std::cell::{Cell, RefCell};

use flate2::{Compress, Compression, Crc, FlushCompress, Status};

use crate::config::model::CompressionDef;
use crate::http::headers::eq_ignore_case;

/// Whether `Accept-Encoding` (every field, in order) takes gzip: `gzip` or `x-gzip` with a
/// q-value above 0, or `*` above 0 when gzip is not named (RFC 9110 §12.5.3). No header: no.
pub fn accepts_gzip<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut star = false;
    // Named as `gzip` or `x-gzip` (either above 0 takes it), which outranks `*`.
    let mut named: Option<bool> = None;
    for v in values {
        for item in v.split(|&b| b == b',') {
            let mut parts = item.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii();
            let q_zero = parts.any(|p| {
                let p = p.trim_ascii();
                p.len() >= 2
                    && p[..2].eq_ignore_ascii_case(b"q=")
                    && p[2..].iter().all(|&b| b == b'0' || b == b'.')
            });
            if eq_ignore_case(coding, b"gzip") || eq_ignore_case(coding, b"x-gzip") {
                named = Some(named.unwrap_or(false) || !q_zero);
            } else if coding == b"*" {
                star = !q_zero;
            }
        }
    }
    named.unwrap_or(star)
}

/// Whether a response may be compressed (see the module doc); `length` is its body's length when
/// known (`None`: chunked or delimited by the close).
pub fn eligible<'a>(
    def: &CompressionDef,
    status: u16,
    length: Option<u64>,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> bool {
    if status < 200 || matches!(status, 204 | 206 | 304) {
        return false;
    }
    if length.is_some_and(|n| n == 0 || n < def.min_length) {
        return false;
    }
    let mut typed = false;
    for (name, value) in headers {
        if eq_ignore_case(name, b"content-encoding") {
            if !eq_ignore_case(value.trim_ascii(), b"identity") {
                return false;
            }
        } else if eq_ignore_case(name, b"content-range") {
            return false;
        } else if eq_ignore_case(name, b"cache-control") {
            if value
                .split(|&b| b == b',')
                .any(|d| eq_ignore_case(d.trim_ascii(), b"no-transform"))
            {
                return false;
            }
        } else if eq_ignore_case(name, b"content-type") {
            typed = listed(def, value);
        }
    }
    typed
}

/// Whether a `Content-Type` value's media type (parameters dropped) is in `def`'s list.
fn listed(def: &CompressionDef, value: &[u8]) -> bool {
    let media = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    def.content_types.iter().any(|t| {
        let t = t.as_bytes();
        match t.strip_suffix(b"*") {
            // `type/*`: `t` without the star ends in '/'.
            Some(prefix) => {
                media.len() > prefix.len() && eq_ignore_case(&media[..prefix.len()], prefix)
            }
            None => eq_ignore_case(media, t),
        }
    })
}

/// The gzip member header: deflate, no name or time, unknown OS (RFC 1952 §2.3).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A gzip stream's state and its output buffer, reused response after response.
pub struct Gzip {
    deflate: Compress,
    crc: Crc,
    level: u32,
    /// Compressed bytes not yet framed for the client; the caller drains it.
    pub out: Vec<u8>,
}

/// The compressor failed (it does not for any input; handled as a cut-short body).
#[derive(Debug)]
pub struct Failed;

impl Gzip {
    pub fn new(level: u32) -> Gzip {
        Gzip {
            deflate: Compress::new(Compression::new(level), false),
            crc: Crc::new(),
            level,
            out: Vec::new(),
        }
    }

    /// Starts a new stream: its header goes to `out`.
    pub fn start(&mut self) {
        self.deflate.reset();
        self.crc.reset();
        self.out.clear();
        self.out.extend_from_slice(&HEADER);
    }

    /// Compresses `data` into `out`; with `flush`, everything so far comes out (a sync flush).
    pub fn write(&mut self, data: &[u8], flush: bool) -> Result<(), Failed> {
        self.crc.update(data);
        let mode = if flush {
            FlushCompress::Sync
        } else {
            FlushCompress::None
        };
        self.run(data, mode)
    }

    /// Ends the stream: the rest of the deflate data and the trailer (CRC-32, length mod 2^32).
    pub fn finish(&mut self) -> Result<(), Failed> {
        self.run(&[], FlushCompress::Finish)?;
        self.out.extend_from_slice(&self.crc.sum().to_le_bytes());
        self.out.extend_from_slice(&self.crc.amount().to_le_bytes());
        Ok(())
    }

    fn run(&mut self, mut input: &[u8], mode: FlushCompress) -> Result<(), Failed> {
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(8192.max(input.len() / 2));
            }
            let (was_in, was_out) = (self.deflate.total_in(), self.out.len());
            let status = self
                .deflate
                .compress_vec(input, &mut self.out, mode)
                .map_err(|_| Failed)?;
            let used = usize::try_from(self.deflate.total_in() - was_in).map_err(|_| Failed)?;
            input = input.get(used..).unwrap_or_default();
            let room_left = self.out.len() < self.out.capacity();
            match mode {
                FlushCompress::Finish if status == Status::StreamEnd => return Ok(()),
                FlushCompress::Finish => {}
                _ if input.is_empty() && room_left => return Ok(()),
                _ => {}
            }
            // No progress with room to spare: stop rather than spin. Input left over would be
            // lost (the CRC counted it): a failure, never a quietly corrupt stream.
            if used == 0 && self.out.len() == was_out && room_left {
                return match mode {
                    FlushCompress::Finish => Err(Failed),
                    _ if input.is_empty() => Ok(()),
                    _ => Err(Failed),
                };
            }
        }
    }
}

/// Most compressors a worker keeps between responses; more at once are made and dropped.
const POOL_MAX: usize = 8;
/// Most compressed responses a worker has in flight at once: each holds its deflate state (a few
/// hundred KiB) for as long as its client takes to read, so slow clients could otherwise pile up
/// memory. Past it, a response goes out uncompressed (still with `Vary`).
pub const MAX_IN_FLIGHT: usize = 64;
/// An output buffer grown past this by a large response is not kept.
const KEEP_OUT: usize = 256 * 1024;

/// A worker's compressors: the idle ones (LIFO), the fewest idle since the last trim, and how many
/// are out.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<Vec<Gzip>>,
    low: Cell<usize>,
    out: Cell<usize>,
}

impl Pool {
    /// A compressor at `level`, from the pool when one is there; `None` with `MAX_IN_FLIGHT` out.
    /// The borrow ends here: nothing is held across an await.
    pub fn take(&self, level: u32) -> Option<Gzip> {
        if self.out.get() >= MAX_IN_FLIGHT {
            return None;
        }
        Some(self.take_sync(level))
    }

    /// A compressor for work done before the next await (a whole body): not held by a waiting
    /// response, so not limited by `MAX_IN_FLIGHT`. Given back with `give` as any other.
    pub fn take_sync(&self, level: u32) -> Gzip {
        self.out.set(self.out.get() + 1);
        let mut idle = self.idle.borrow_mut();
        let g = match idle.iter().rposition(|g| g.level == level) {
            Some(i) => {
                // Entries above `i` shift down into the slots `trim` counts as unused.
                self.low.set(self.low.get().min(i));
                idle.remove(i)
            }
            None => Gzip::new(level),
        };
        g
    }

    pub fn give(&self, mut g: Gzip) {
        self.out.set(self.out.get().saturating_sub(1));
        if g.out.capacity() > KEEP_OUT {
            g.out = Vec::new();
        }
        g.out.clear();
        let mut idle = self.idle.borrow_mut();
        if idle.len() < POOL_MAX {
            idle.push(g);
        }
    }

    /// Drops the compressors no response took since the last trim (the worker's periodic pool
    /// trim): a burst's compressors are not kept for ever. Returns how many were dropped.
    pub fn trim(&self) -> usize {
        let Ok(mut idle) = self.idle.try_borrow_mut() else {
            return 0;
        };
        let unused = self.low.get().min(idle.len());
        idle.drain(..unused);
        self.low.set(idle.len());
        unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn def() -> CompressionDef {
        CompressionDef {
            min_length: 100,
            level: 1,
            content_types: vec!["application/json".into(), "text/*".into()],
        }
    }

    #[test]
    fn accept_encoding() {
        let yes = |v: &[&str]| accepts_gzip(v.iter().map(|s| s.as_bytes()));
        assert!(yes(&["gzip"]));
        assert!(yes(&["br, GZip;q=0.5"]));
        assert!(yes(&["deflate", "x-gzip"]));
        assert!(yes(&["*"]));
        assert!(!yes(&[]));
        assert!(!yes(&["br"]));
        assert!(!yes(&["gzip;q=0"]));
        assert!(!yes(&["gzip; q=0.000"]));
        assert!(!yes(&["*, gzip;q=0"]));
        assert!(!yes(&["*;q=0"]));
        assert!(yes(&["gzip;q=0.001"]));
        assert!(yes(&["x-gzip;q=0, gzip"]));
        assert!(yes(&["gzip;q=0", "*;q=0", "x-gzip"]));
    }

    #[test]
    fn eligibility() {
        let d = def();
        let ok = |status, len, h: &[(&str, &str)]| {
            eligible(
                &d,
                status,
                len,
                h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())),
            )
        };
        let json = ("Content-Type", "application/json; charset=utf-8");
        assert!(ok(200, Some(100), &[json]));
        assert!(ok(404, None, &[json]));
        assert!(ok(200, None, &[("content-type", "TEXT/html")]));
        assert!(!ok(200, Some(99), &[json]));
        assert!(!ok(200, None, &[("content-type", "text/")]));
        assert!(!ok(200, None, &[("content-type", "image/png")]));
        assert!(!ok(200, None, &[]));
        assert!(!ok(206, None, &[json]));
        assert!(!ok(204, None, &[json]));
        assert!(!ok(304, None, &[json]));
        assert!(!ok(200, None, &[json, ("Content-Encoding", "br")]));
        assert!(ok(200, None, &[json, ("Content-Encoding", "identity")]));
        assert!(!ok(200, None, &[json, ("Content-Range", "bytes 0-9/10")]));
        assert!(!ok(
            200,
            None,
            &[json, ("Cache-Control", "public, No-Transform")]
        ));
        assert!(ok(200, None, &[json, ("Cache-Control", "no-store")]));
    }

    /// Streamed in pieces with flushes, reused for a second stream: each decodes to its input.
    #[test]
    fn streams_decode_and_the_state_is_reused() {
        let pool = Pool::default();
        for round in 0..2 {
            let mut g = pool.take(1).expect("room");
            g.start();
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for i in 0..50 {
                let piece =
                    format!("{{\"round\":{round},\"item\":{i},\"name\":\"n{i}\"}},").repeat(40);
                want.extend_from_slice(piece.as_bytes());
                g.write(piece.as_bytes(), i % 7 == 0).expect("write");
                wire.extend_from_slice(&g.out);
                g.out.clear();
            }
            g.finish().expect("finish");
            wire.extend_from_slice(&g.out);
            pool.give(g);
            let mut got = Vec::new();
            flate2::read::GzDecoder::new(&wire[..])
                .read_to_end(&mut got)
                .expect("valid gzip");
            assert_eq!(got, want);
            assert!(
                wire.len() * 5 < want.len(),
                "{} of {}",
                wire.len(),
                want.len()
            );
        }
        assert_eq!(pool.idle.borrow().len(), 1);
        // Unused since the last trim: dropped by the next one.
        assert_eq!(pool.trim(), 0);
        assert_eq!(pool.trim(), 1);
        // At most MAX_IN_FLIGHT out at once.
        let out: Vec<Gzip> = (0..MAX_IN_FLIGHT).filter_map(|_| pool.take(1)).collect();
        assert_eq!(out.len(), MAX_IN_FLIGHT);
        assert!(pool.take(1).is_none());
        for g in out {
            pool.give(g);
        }
        assert!(pool.take(1).is_some());
    }

    /// Incompressible input larger than the output buffer, flushed: the "output full" path.
    #[test]
    fn incompressible_input_round_trips() {
        use rand::RngCore;
        let mut data = vec![0u8; 256 * 1024];
        rand::thread_rng().fill_bytes(&mut data);
        let mut g = Gzip::new(1);
        g.start();
        g.write(&data, true).expect("write");
        g.write(&data[..1000], false).expect("write");
        g.finish().expect("finish");
        let mut got = Vec::new();
        flate2::read::GzDecoder::new(&g.out[..])
            .read_to_end(&mut got)
            .expect("valid gzip");
        assert_eq!(got.len(), data.len() + 1000);
        assert!(got[..data.len()] == data[..] && got[data.len()..] == data[..1000]);
    }
}
