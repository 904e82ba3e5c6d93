//! Streaming `Transfer-Encoding: chunked` decoder (RFC 9112 §7.1).
//!
//! A byte-at-a-time state machine over the framing: it never buffers, so a body may arrive split at
//! any byte and the caller's buffer is the only storage. Data bytes are not copied or walked: each
//! call returns the range of `buf` holding the next run of chunk data, and the caller forwards it.
//!
//! Strictness (every deviation is an error, because two hops that frame a body differently can be
//! made to disagree on where the next request starts):
//! * chunk-size is 1..=16 hex digits; no sign, prefix or whitespace before it;
//! * chunk extensions `;name[=token|quoted-string]` with BWS (SP/HTAB) only before ';' and '=' and
//!   after them, as the grammar allows; names and values are validated; no CTLs;
//! * every line ends in CRLF exactly (no bare CR, no bare LF), chunk data is followed by CRLF;
//! * trailer fields after the last chunk are validated like header fields (token name, ':' with
//!   no space before it, value without CTLs; no obs-fold) up to the final empty line;
//! * a chunk-size line is capped at `MAX_SIZE_LINE` bytes and the trailer section at
//!   `MAX_TRAILER_BYTES`, so framing alone cannot keep a connection busy forever.

use std::ops::Range;

use super::headers::{is_ows, is_tchar};
use super::num::hex_digit;

/// Longest chunk-size line (size + extensions, without the CRLF).
pub const MAX_SIZE_LINE: usize = 4 * 1024;
/// Largest trailer section (all trailer lines and the final CRLF).
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Longest chunk-size in hex digits: 16 always fits in a u64.
const MAX_SIZE_DIGITS: u8 = 16;

/// What one `decode` call produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// Chunk data at this range of the buffer passed in; the range ends at `consumed`.
    Data(Range<usize>),
    /// All of the buffer was framing; read more.
    NeedMore,
    /// The body ended (after the trailer section's final CRLF).
    Done,
}

/// The body's framing is malformed; the connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// Where in the chunked grammar the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// chunk-size digits (`digits` read so far).
    Size,
    /// BWS after the size or after an extension value: only more BWS or ';' may follow.
    WsBeforeSemi,
    /// After ';': BWS, then an extension name.
    ExtNameStart,
    ExtName,
    /// BWS after an extension name: '=' or ';' must follow.
    WsAfterName,
    /// After '=': BWS, then a token or a quoted-string.
    ExtValStart,
    ExtToken,
    ExtQuoted,
    /// After a backslash inside a quoted-string.
    ExtQuotedEscape,
    /// After the closing quote of a quoted-string.
    AfterQuoted,
    /// CR of the chunk-size line seen.
    SizeLf,
    /// Inside chunk data (`remaining` > 0).
    Data,
    /// After chunk data: CR, then LF.
    DataCr,
    DataLf,
    /// Start of a trailer line (or of the final empty line).
    TrailerLineStart,
    TrailerName,
    TrailerValue,
    /// CR of a trailer field line seen.
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
    /// An error was returned; the decoder stays unusable.
    Failed,
}

/// Streaming chunked-body decoder; one per message.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    /// Chunk size being read, then the data bytes left in the current chunk.
    remaining: u64,
    digits: u8,
    /// Bytes of the current chunk-size line so far.
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line_len: 0,
            trailer_len: 0,
        }
    }

    /// The final CRLF of the body has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes the current chunk still announces (its size line has been read, its data not
    /// all yet): lets a body limit refuse a chunk by its size, before its data comes.
    pub fn chunk_left(&self) -> u64 {
        if self.state == State::Data {
            self.remaining
        } else {
            0
        }
    }

    /// Consume framing from `buf` up to and including the next run of data bytes.
    ///
    /// Returns `(consumed, Data(r))` with `r.end == consumed`, `(consumed, NeedMore)` when all of
    /// `buf` was framing, or `(consumed, Done)` right after the final CRLF of the trailer section
    /// (bytes after `consumed` belong to the next message). `consumed <= buf.len()` always.
    pub fn decode(&mut self, buf: &[u8]) -> Result<(usize, Chunk), ChunkError> {
        let mut pos = 0;
        loop {
            match self.state {
                State::Done => return Ok((pos, Chunk::Done)),
                State::Failed => return Err(ChunkError("chunked decoder already failed")),
                State::Data => return Ok(self.data(buf, pos)),
                _ => {}
            }
            let Some(&b) = buf.get(pos) else {
                return Ok((pos, Chunk::NeedMore));
            };
            pos += 1;
            match self.step(b) {
                Ok(next) => self.state = next,
                Err(e) => {
                    self.state = State::Failed;
                    return Err(ChunkError(e));
                }
            }
        }
    }

    /// Hand out the data bytes available from `pos` (state is `Data`, `remaining` > 0).
    fn data(&mut self, buf: &[u8], pos: usize) -> (usize, Chunk) {
        let avail = buf.len().saturating_sub(pos);
        if avail == 0 {
            return (pos, Chunk::NeedMore);
        }
        let n = usize::try_from(self.remaining).map_or(avail, |r| r.min(avail));
        // n <= avail <= usize::MAX and n <= remaining, so neither line can wrap.
        self.remaining -= n as u64;
        if self.remaining == 0 {
            self.state = State::DataCr;
        }
        (pos + n, Chunk::Data(pos..pos + n))
    }

    /// Advance over one framing byte.
    fn step(&mut self, b: u8) -> Result<State, &'static str> {
        use State::*;
        if self.in_size_line() && b != b'\r' {
            self.line_len += 1;
            if self.line_len > MAX_SIZE_LINE {
                return Err("chunk-size line too long");
            }
        }
        if self.in_trailer() {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILER_BYTES {
                return Err("trailer section too large");
            }
        }
        match self.state {
            Size => self.size_digit(b),
            WsBeforeSemi => match b {
                b';' => Ok(ExtNameStart),
                _ if is_ows(b) => Ok(WsBeforeSemi),
                _ => Err("invalid byte after chunk-size or extension"),
            },
            ExtNameStart => match b {
                _ if is_ows(b) => Ok(ExtNameStart),
                _ if is_tchar(b) => Ok(ExtName),
                _ => Err("invalid chunk extension name"),
            },
            ExtName => match b {
                b'=' => Ok(ExtValStart),
                _ => self.after_ext_item(b, ExtName, WsAfterName),
            },
            WsAfterName => match b {
                b'=' => Ok(ExtValStart),
                b';' => Ok(ExtNameStart),
                _ if is_ows(b) => Ok(WsAfterName),
                _ => Err("invalid byte after chunk extension name"),
            },
            ExtValStart => match b {
                b'"' => Ok(ExtQuoted),
                _ if is_ows(b) => Ok(ExtValStart),
                _ if is_tchar(b) => Ok(ExtToken),
                _ => Err("invalid chunk extension value"),
            },
            ExtToken => self.after_ext_item(b, ExtToken, WsBeforeSemi),
            ExtQuoted => match b {
                b'"' => Ok(AfterQuoted),
                b'\\' => Ok(ExtQuotedEscape),
                b'\t' | b' '..=0x7e | 0x80..=0xff => Ok(ExtQuoted),
                _ => Err("invalid byte in chunk extension quoted-string"),
            },
            ExtQuotedEscape => match b {
                b'\t' | b' '..=0x7e | 0x80..=0xff => Ok(ExtQuoted),
                _ => Err("invalid quoted-pair in chunk extension"),
            },
            AfterQuoted => match b {
                b';' => Ok(ExtNameStart),
                b'\r' => Ok(SizeLf),
                _ if is_ows(b) => Ok(WsBeforeSemi),
                _ => Err("invalid byte after chunk extension value"),
            },
            SizeLf => self.size_line_end(b),
            DataCr => expect(b, b'\r', DataLf, "chunk data not followed by CRLF"),
            DataLf => {
                let next = expect(b, b'\n', Size, "chunk data not followed by CRLF")?;
                self.digits = 0;
                self.line_len = 0;
                Ok(next)
            }
            TrailerLineStart => match b {
                b'\r' => Ok(EndLf),
                _ if is_tchar(b) => Ok(TrailerName),
                _ => Err("invalid trailer field line"),
            },
            TrailerName => match b {
                b':' => Ok(TrailerValue),
                _ if is_tchar(b) => Ok(TrailerName),
                _ => Err("invalid trailer field name"),
            },
            TrailerValue => match b {
                b'\r' => Ok(TrailerLf),
                b'\t' | b' '..=0x7e | 0x80..=0xff => Ok(TrailerValue),
                _ => Err("invalid byte in trailer field value"),
            },
            TrailerLf => expect(b, b'\n', TrailerLineStart, "trailer line not ended by CRLF"),
            EndLf => expect(b, b'\n', Done, "chunked body not ended by CRLF"),
            // `decode` handles these before stepping.
            Data | Done | Failed => Err("chunked decoder in a non-framing state"),
        }
    }

    fn in_size_line(&self) -> bool {
        use State::*;
        matches!(
            self.state,
            Size | WsBeforeSemi
                | ExtNameStart
                | ExtName
                | WsAfterName
                | ExtValStart
                | ExtToken
                | ExtQuoted
                | ExtQuotedEscape
                | AfterQuoted
        )
    }

    fn in_trailer(&self) -> bool {
        use State::*;
        matches!(
            self.state,
            TrailerLineStart | TrailerName | TrailerValue | TrailerLf | EndLf
        )
    }

    /// A byte while reading chunk-size digits.
    fn size_digit(&mut self, b: u8) -> Result<State, &'static str> {
        if let Some(d) = hex_digit(b) {
            if self.digits == MAX_SIZE_DIGITS {
                return Err("chunk-size has more than 16 hex digits");
            }
            self.digits += 1;
            self.remaining = self
                .remaining
                .checked_mul(16)
                .and_then(|r| r.checked_add(d))
                .ok_or("chunk-size overflow")?;
            return Ok(State::Size);
        }
        if self.digits == 0 {
            return Err("missing chunk-size");
        }
        match b {
            b'\r' => Ok(State::SizeLf),
            b';' => Ok(State::ExtNameStart),
            _ if is_ows(b) => Ok(State::WsBeforeSemi),
            _ => Err("invalid byte in chunk-size"),
        }
    }

    /// A byte that ends an extension name or token value, or continues it (`same`).
    fn after_ext_item(&self, b: u8, same: State, ws: State) -> Result<State, &'static str> {
        match b {
            b';' => Ok(State::ExtNameStart),
            b'\r' => Ok(State::SizeLf),
            _ if is_ows(b) => Ok(ws),
            _ if is_tchar(b) => Ok(same),
            _ => Err("invalid byte in chunk extension"),
        }
    }

    /// The LF ending a chunk-size line: data follows, or the trailer section for the last chunk.
    fn size_line_end(&mut self, b: u8) -> Result<State, &'static str> {
        if b != b'\n' {
            return Err("chunk-size line not ended by CRLF");
        }
        Ok(if self.remaining == 0 {
            State::TrailerLineStart
        } else {
            State::Data
        })
    }
}

fn expect(b: u8, want: u8, next: State, err: &'static str) -> Result<State, &'static str> {
    if b == want {
        Ok(next)
    } else {
        Err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` in pieces of at most `step` bytes (a fresh slice of the unread rest each
    /// call, as a caller with a growing buffer would), returning the data and the end offset.
    fn decode_stepwise(input: &[u8], step: usize) -> Result<(Vec<u8>, Option<usize>), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut pos = 0;
        let mut avail_end = step.min(input.len());
        loop {
            let window = &input[pos..avail_end];
            let (consumed, chunk) = d.decode(window)?;
            assert!(consumed <= window.len());
            match chunk {
                Chunk::Data(r) => {
                    assert_eq!(r.end, consumed);
                    assert!(r.start < r.end);
                    data.extend_from_slice(&window[r]);
                }
                Chunk::NeedMore => {
                    assert_eq!(consumed, window.len());
                    if avail_end == input.len() {
                        return Ok((data, None));
                    }
                    avail_end = (avail_end + step).min(input.len());
                }
                Chunk::Done => {
                    assert!(d.is_done());
                    return Ok((data, Some(pos + consumed)));
                }
            }
            pos += consumed;
        }
    }

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Option<usize>), ChunkError> {
        decode_stepwise(input, input.len().max(1))
    }

    const VALID: &[u8] =
        b"5\r\nhello\r\n1a;ext=1 ; name=\"q \\\" v\";x\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        0003\r\n123\r\nA\t;\tk\t=\tv\r\n0123456789\r\n0\r\nTrailer-One: a b\r\nX-Y:\r\n\r\nNEXT";

    fn valid_data() -> Vec<u8> {
        b"helloabcdefghijklmnopqrstuvwxyz1230123456789".to_vec()
    }

    #[test]
    fn decodes_all_at_once() {
        let (data, end) = decode_all(VALID).unwrap();
        assert_eq!(data, valid_data());
        assert_eq!(
            end,
            Some(VALID.len() - 4),
            "stops right before the next message"
        );
    }

    #[test]
    fn decodes_one_byte_at_a_time() {
        let (data, end) = decode_stepwise(VALID, 1).unwrap();
        assert_eq!(data, valid_data());
        assert_eq!(end, Some(VALID.len() - 4));
    }

    #[test]
    fn decodes_with_a_split_at_every_position() {
        for split in 0..=VALID.len() {
            let mut d = ChunkedDecoder::new();
            let mut data = Vec::new();
            let mut done_at = None;
            // First piece: VALID[..split], then the rest, as two separate buffers.
            let mut pieces = vec![&VALID[..split], &VALID[split..]];
            let mut base = 0;
            'outer: for piece in pieces.drain(..) {
                let mut pos = 0;
                loop {
                    let (consumed, chunk) = d.decode(&piece[pos..]).unwrap();
                    match chunk {
                        Chunk::Data(r) => data.extend_from_slice(&piece[pos..][r]),
                        Chunk::NeedMore => break,
                        Chunk::Done => {
                            done_at = Some(base + pos + consumed);
                            break 'outer;
                        }
                    }
                    pos += consumed;
                }
                base += piece.len();
            }
            assert_eq!(data, valid_data(), "split at {split}");
            assert_eq!(done_at, Some(VALID.len() - 4), "split at {split}");
        }
    }

    #[test]
    fn minimal_bodies() {
        assert_eq!(decode_all(b"0\r\n\r\n").unwrap(), (vec![], Some(5)));
        assert_eq!(decode_all(b"000\r\n\r\n").unwrap(), (vec![], Some(7)));
        assert_eq!(
            decode_all(b"1\r\nx\r\n0\r\n\r\n").unwrap(),
            (b"x".to_vec(), Some(11))
        );
        // Incomplete: no Done.
        assert_eq!(
            decode_all(b"1\r\nx\r\n0\r\n").unwrap(),
            (b"x".to_vec(), None)
        );
        assert_eq!(decode_all(b"").unwrap(), (vec![], None));
    }

    #[test]
    fn done_is_sticky_and_consumes_nothing() {
        let mut d = ChunkedDecoder::new();
        assert_eq!(d.decode(b"0\r\n\r\nGET").unwrap(), (5, Chunk::Done));
        assert_eq!(d.decode(b"GET").unwrap(), (0, Chunk::Done));
        assert!(d.is_done());
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = ChunkedDecoder::new();
        assert!(d.decode(b"x").is_err());
        assert!(d.decode(b"0\r\n\r\n").is_err());
    }

    #[test]
    fn large_chunk_sizes_do_not_overflow() {
        let mut d = ChunkedDecoder::new();
        let (consumed, chunk) = d.decode(b"ffffffffffffffff\r\nab").unwrap();
        assert_eq!((consumed, chunk), (20, Chunk::Data(18..20)));
        assert_eq!(d.remaining, u64::MAX - 2);
    }

    #[test]
    fn rejects_malformed_framing() {
        let cases: &[(&str, &[u8])] = &[
            ("empty size", b"\r\n"),
            ("sign", b"+5\r\nhello\r\n0\r\n\r\n"),
            ("minus", b"-5\r\nhello\r\n0\r\n\r\n"),
            ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
            ("leading space", b" 5\r\nhello\r\n0\r\n\r\n"),
            ("trailing space", b"5 \r\nhello\r\n0\r\n\r\n"),
            ("17 digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n"),
            ("VT after size", b"5\x0b\r\nhello\r\n0\r\n\r\n"),
            ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
            ("bare CR after size", b"5\rhello\r\n0\r\n\r\n"),
            ("data too long", b"5\r\nhello!\r\n0\r\n\r\n"),
            ("data bare LF", b"5\r\nhello\n0\r\n\r\n"),
            ("data no CRLF", b"5\r\nhello0\r\n\r\n"),
            ("data CR CR", b"5\r\nhello\r\r\n0\r\n\r\n"),
            ("empty ext name", b"5;\r\nhello\r\n0\r\n\r\n"),
            ("ext name bad", b"5;a@b\r\nhello\r\n0\r\n\r\n"),
            ("ext empty value", b"5;a=\r\nhello\r\n0\r\n\r\n"),
            ("ext ws before CR", b"5;a \r\nhello\r\n0\r\n\r\n"),
            ("ext value ws before CR", b"5;a=b \r\nhello\r\n0\r\n\r\n"),
            ("ext ctl in name", b"5;a\x01\r\nhello\r\n0\r\n\r\n"),
            ("ext NUL in quoted", b"5;a=\"\x00\"\r\nhello\r\n0\r\n\r\n"),
            ("ext CR in quoted", b"5;a=\"\r\"\r\nhello\r\n0\r\n\r\n"),
            ("ext LF in quoted", b"5;a=\"\n\"\r\nhello\r\n0\r\n\r\n"),
            ("ext unterminated quote", b"5;a=\"x\r\nhello\r\n0\r\n\r\n"),
            ("ext text after quote", b"5;a=\"x\"y\r\nhello\r\n0\r\n\r\n"),
            ("ext bad escape", b"5;a=\"\\\x01\"\r\nhello\r\n0\r\n\r\n"),
            ("ext bare LF", b"5;a=b\nhello\r\n0\r\n\r\n"),
            ("ext DEL", b"5;a=b\x7f\r\nhello\r\n0\r\n\r\n"),
            ("last chunk bare LF", b"0\n\r\n"),
            ("final bare LF", b"0\r\n\n"),
            ("final bare CR", b"0\r\n\rX"),
            ("trailer obs-fold", b"0\r\nA: b\r\n c\r\n\r\n"),
            ("trailer leading space", b"0\r\n A: b\r\n\r\n"),
            ("trailer space before colon", b"0\r\nA : b\r\n\r\n"),
            ("trailer no colon", b"0\r\nAb\r\n\r\n"),
            ("trailer empty name", b"0\r\n: b\r\n\r\n"),
            ("trailer NUL", b"0\r\nA: b\x00c\r\n\r\n"),
            ("trailer DEL", b"0\r\nA: b\x7f\r\n\r\n"),
            ("trailer bare CR", b"0\r\nA: b\rc\r\n\r\n"),
            ("trailer bare LF", b"0\r\nA: b\n\r\n"),
            ("trailer CTL", b"0\r\nA: \x1b\r\n\r\n"),
        ];
        for (what, input) in cases {
            assert!(decode_all(input).is_err(), "{what}: whole");
            assert!(decode_stepwise(input, 1).is_err(), "{what}: bytewise");
        }
    }

    #[test]
    fn accepts_valid_extensions_and_trailers() {
        let ok: &[&[u8]] = &[
            b"5;a\r\nhello\r\n0\r\n\r\n",
            b"5 ;a\r\nhello\r\n0\r\n\r\n",
            b"5\t; a ;b\r\nhello\r\n0\r\n\r\n",
            b"5;a = b;c=\"\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=\"\\\"\xff\t\"\r\nhello\r\n0\r\n\r\n",
            b"5;a=b\r\nhello\r\n0;last=1\r\nX: y\r\nZ: \xfe\tq\r\n\r\n",
        ];
        for input in ok {
            let (data, end) = decode_all(input).unwrap();
            assert_eq!(data, b"hello");
            assert_eq!(end, Some(input.len()));
        }
    }

    #[test]
    fn caps_the_size_line() {
        let mut body = b"5;".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE - 2));
        body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert!(decode_all(&body).is_ok(), "exactly at the cap");
        let mut body = b"5;".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_SIZE_LINE - 1));
        body.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            decode_all(&body),
            Err(ChunkError("chunk-size line too long"))
        );
    }

    #[test]
    fn caps_the_trailers() {
        let trailer = |value_len: usize| {
            let mut body = b"0\r\nX: ".to_vec();
            body.extend(std::iter::repeat_n(b'v', value_len));
            body.extend_from_slice(b"\r\n\r\n");
            body
        };
        // Trailer section = "X: " + value + CRLF + CRLF = value + 7 bytes.
        assert!(decode_all(&trailer(MAX_TRAILER_BYTES - 7)).is_ok());
        assert_eq!(
            decode_all(&trailer(MAX_TRAILER_BYTES - 6)),
            Err(ChunkError("trailer section too large"))
        );
    }
}
