//! Bounded mutation fuzzing of the HTTP/1.1 head parsers and the chunked decoder.
//!
//! Seeds are valid requests, responses and chunked bodies; each iteration applies a few random
//! mutations (bit flips, byte insert/delete, splices of framing-relevant bytes such as CRLF, ':',
//! SP and digits, truncation, duplication) and checks that nothing panics and that every result is
//! self-consistent: spans inside the buffer, a complete head's length independent of what follows
//! it, every prefix of a complete head reported as Partial, decoder ranges inside the buffer.
//!
//! Runs a fixed seed (reproducible) and one taken from the clock (new coverage every run); both
//! are printed so a failure can be replayed with `PARSER_FUZZ_SEED=<n>`.

mod common;

use common::mutate::{mutate, seeds};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ringgate::http::chunked::{Chunk, ChunkedDecoder};
use ringgate::http::parse::{parse_request, parse_response, Parsed, RequestHead, ResponseHead};
use ringgate::http::{Limits, Span};

const LIMITS: Limits = Limits {
    max_header_bytes: 1024,
    max_uri_bytes: 256,
    max_headers: 32,
};
const MAX_RESPONSE_HEAD: usize = 1024;

/// Iterations per seed (two seeds): 100k per seed, 200k in total.
const REQUEST_ITERS: usize = 50_000;
const RESPONSE_ITERS: usize = 30_000;
const CHUNKED_ITERS: usize = 20_000;

const REQUESTS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /api/v1/items?id=42&x=y HTTP/1.1\r\nHost: example.com:8080\r\nUser-Agent: Mozilla/5.0\r\n\
Accept: */*\r\nConnection: keep-alive, X-Private\r\nCookie: a=b; c=d\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n",
    b"GET /chat HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    b"GET http://example.com/a?b=c HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"HEAD /index.html HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE /r/1 HTTP/1.1\r\nHost: [::1]:80\r\nConnection: close\r\n\r\n",
    b"\r\nGET /after-crlf HTTP/1.1\r\nHost: h\r\nX-Obs: caf\xc3\xa9\t!\r\n\r\n",
    b"PATCH /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nX-Empty:\r\n\r\n",
];

const RESPONSES: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nbody until close",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"HTTP/1.1 404\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 500 Internal \xffError\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nno",
];

const CHUNKED: &[&[u8]] = &[
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;a=b\r\nhello\r\n1A ; q=\"x\\\"y\"\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\nX-Trailer: v\r\nY: \r\n\r\nNEXT",
    b"000a\r\n0123456789\r\n0;end\r\n\r\n",
    b"1\r\nx\r\n1\r\ny\r\n1\r\nz\r\n0\r\n\r\n",
];

fn span_ok(sp: Span, limit: usize) -> bool {
    sp.start <= sp.end && sp.end as usize <= limit
}

/// Outcome classes counted for the summary line: complete, partial, error.
type Tally = [usize; 3];

fn tally(t: &mut Tally, r: &Result<Parsed, impl Sized>) {
    t[match r {
        Ok(Parsed::Complete) => 0,
        Ok(Parsed::Partial) => 1,
        Err(_) => 2,
    }] += 1;
}

fn check_request(buf: &[u8], out: &mut RequestHead, deep: bool, t: &mut Tally) {
    let r = parse_request(buf, &LIMITS, out);
    tally(t, &r);
    let Ok(Parsed::Complete) = r else {
        return;
    };
    let n = out.head_len;
    assert!(
        n <= buf.len() && n <= LIMITS.max_header_bytes,
        "head_len {n}: {buf:?}"
    );
    let mut spans = vec![out.method, out.target, out.path];
    spans.extend([out.query, out.host, out.authority].into_iter().flatten());
    spans.extend(out.headers.iter().flat_map(|h| [h.name, h.value]));
    spans.extend(out.conn_tokens.iter().copied());
    for sp in spans {
        assert!(span_ok(sp, n), "span {sp:?} outside head of {n}: {buf:?}");
    }
    assert!(out.target.end - out.target.start <= LIMITS.max_uri_bytes as u32);
    assert!(out.body.is_some() && out.version.is_some());
    if !deep {
        return;
    }
    // The head does not depend on what follows it.
    let mut more = buf.to_vec();
    more.extend_from_slice(b"XYZ\r\n\r\n");
    let mut again = RequestHead::default();
    assert_eq!(
        parse_request(&more, &LIMITS, &mut again),
        Ok(Parsed::Complete),
        "{buf:?}"
    );
    assert_eq!(again.head_len, n, "{buf:?}");
    // Every strict prefix of the head is incomplete, not an error and not a shorter head.
    for end in 0..n {
        let r = parse_request(&buf[..end], &LIMITS, &mut again);
        assert_eq!(r, Ok(Parsed::Partial), "prefix {end} of {buf:?}");
    }
}

fn check_response(
    buf: &[u8],
    req_was_head: bool,
    out: &mut ResponseHead,
    deep: bool,
    t: &mut Tally,
) {
    let r = parse_response(buf, MAX_RESPONSE_HEAD, req_was_head, out);
    tally(t, &r);
    let Ok(Parsed::Complete) = r else {
        return;
    };
    let n = out.head_len;
    assert!(
        n <= buf.len() && n <= MAX_RESPONSE_HEAD,
        "head_len {n}: {buf:?}"
    );
    assert!((100..=999).contains(&out.status), "{buf:?}");
    assert!(span_ok(out.reason, n), "{buf:?}");
    for h in &out.headers {
        assert!(span_ok(h.name, n) && span_ok(h.value, n), "{buf:?}");
    }
    for t in &out.conn_tokens {
        assert!(span_ok(*t, n), "{buf:?}");
    }
    assert!(out.body.is_some() && out.version.is_some());
    if deep {
        let mut again = ResponseHead::default();
        for end in 0..n {
            let r = parse_response(&buf[..end], MAX_RESPONSE_HEAD, req_was_head, &mut again);
            assert_eq!(r, Ok(Parsed::Partial), "prefix {end} of {buf:?}");
        }
    }
}

/// Decode `buf` in pieces of `step` bytes; returns the data and the end offset, or None on error.
fn decode(buf: &[u8], step: usize) -> Option<(Vec<u8>, Option<usize>)> {
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut pos = 0;
    let mut avail = step.min(buf.len());
    // Every call either makes progress or asks for more, so this bound is never reached.
    for _ in 0..(buf.len() + 2) * 2 {
        let window = &buf[pos..avail];
        let (consumed, chunk) = d.decode(window).ok()?;
        assert!(consumed <= window.len());
        match chunk {
            Chunk::Data(r) => {
                assert!(r.start < r.end && r.end == consumed, "{r:?} {consumed}");
                data.extend_from_slice(&window[r]);
            }
            Chunk::NeedMore => {
                assert_eq!(consumed, window.len());
                if avail == buf.len() {
                    return Some((data, None));
                }
                avail = (avail + step).min(buf.len());
            }
            Chunk::Done => return Some((data, Some(pos + consumed))),
        }
        pos += consumed;
    }
    panic!("chunked decoder made no progress on {buf:?}");
}

fn check_chunked(buf: &[u8], rng: &mut StdRng, t: &mut Tally) {
    let whole = decode(buf, buf.len().max(1));
    t[match &whole {
        Some((_, Some(_))) => 0,
        Some((_, None)) => 1,
        None => 2,
    }] += 1;
    // Splitting the input must never change the outcome.
    let step = rng.gen_range(1..=7);
    let split = decode(buf, step);
    assert_eq!(whole.is_some(), split.is_some(), "step {step}: {buf:?}");
    if let (Some(a), Some(b)) = (&whole, &split) {
        // A split run can end earlier only by not having seen the error yet, which `is_some`
        // already ruled out; so data and end must match exactly.
        assert_eq!(a, b, "step {step}: {buf:?}");
    }
}

#[test]
fn valid_seeds_parse_complete_and_every_prefix_is_partial() {
    let mut out = RequestHead::default();
    for seed in REQUESTS {
        assert_eq!(
            parse_request(seed, &LIMITS, &mut out),
            Ok(Parsed::Complete),
            "{seed:?}"
        );
        check_request(seed, &mut out, true, &mut Tally::default());
    }
    let mut out = ResponseHead::default();
    for seed in RESPONSES {
        for head in [false, true] {
            assert_eq!(
                parse_response(seed, MAX_RESPONSE_HEAD, head, &mut out),
                Ok(Parsed::Complete),
                "{seed:?}"
            );
            check_response(seed, head, &mut out, true, &mut Tally::default());
        }
    }
}

#[test]
fn valid_chunked_seeds_decode_the_same_at_every_split() {
    for seed in CHUNKED {
        let (data, end) = decode(seed, seed.len()).expect("valid seed");
        assert!(end.is_some(), "{seed:?}");
        for step in 1..=seed.len() {
            assert_eq!(decode(seed, step), Some((data.clone(), end)), "step {step}");
        }
    }
}

#[test]
fn mutated_heads_and_bodies_never_panic() {
    let started = std::time::Instant::now();
    let mut stats = [Tally::default(); 3];
    for seed in seeds("PARSER_FUZZ_SEED") {
        println!("parser_fuzz seed: {seed} (replay with PARSER_FUZZ_SEED={seed})");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut req = RequestHead::default();
        for i in 0..REQUEST_ITERS {
            let input = mutate(&mut rng, REQUESTS);
            check_request(&input, &mut req, i % 64 == 0, &mut stats[0]);
        }
        let mut res = ResponseHead::default();
        for i in 0..RESPONSE_ITERS {
            let input = mutate(&mut rng, RESPONSES);
            let head = rng.gen_ratio(1, 4);
            check_response(&input, head, &mut res, i % 64 == 0, &mut stats[1]);
        }
        for _ in 0..CHUNKED_ITERS {
            let input = mutate(&mut rng, CHUNKED);
            check_chunked(&input, &mut rng, &mut stats[2]);
        }
    }
    // [complete, partial, error] per kind: shows the mutations reach all three outcomes.
    println!(
        "parser_fuzz in {:?}: requests {:?}, responses {:?}, chunked bodies {:?}",
        started.elapsed(),
        stats[0],
        stats[1],
        stats[2]
    );
    for t in stats {
        assert!(
            t.iter().all(|&n| n > 0),
            "an outcome was never reached: {t:?}"
        );
    }
}
