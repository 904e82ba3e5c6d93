//! Criterion benchmarks of the head writers (`proxy::head`): the request head sent upstream and the
//! response head sent to the client, on realistic shapes: a small curl-like request, a browser-like
//! request with 15 headers (one of them hop-by-hop, one X-Forwarded-For to append to), and a response
//! with 8 headers. Heads are parsed once up front, as the proxy does before writing; `out` is cleared
//! and reused across iterations, as on a keep-alive connection, so the numbers are the steady,
//! allocation-free cost per head (Criterion's "time" is ns per head). A baseline shows the share of
//! formatting the client address (twice per request head) through `fmt`.

use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringgate::http::parse::{parse_request, parse_response, Parsed, RequestHead, ResponseHead};
use ringgate::http::{BodyKind, Limits};
use ringgate::proxy::head::{write_request_head, write_response_head, ClientFraming, Forwarded};

/// What `curl http://api.example.com/status` sends.
const CURL: &[u8] = b"GET /status HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: */*\r\n\
\r\n";

/// A browser XHR through a CDN: 15 headers, ~800 bytes.
const BROWSER: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://app.example.com/dashboard\r\n\
Origin: https://app.example.com\r\n\
Cookie: session=3f2a9c1e7b6d4a58; theme=dark; _ga=GA1.2.1234567890.1700000000\r\n\
Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlLWJ5dGVz\r\n\
X-Request-ID: 7d3c9a4e-2f1b-4c8d-9e6a-5b0f1d2c3e4a\r\n\
X-Forwarded-For: 203.0.113.7\r\n\
Sec-Fetch-Dest: empty\r\n\
Sec-Fetch-Mode: cors\r\n\
Sec-Fetch-Site: same-site\r\n\
Connection: keep-alive\r\n\
\r\n";

/// An upstream JSON response: 8 headers (one hop-by-hop), body not included in the head.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx\r\n\
Date: Sun, 22 Nov 2026 10:00:00 GMT\r\n\
Content-Type: application/json; charset=utf-8\r\n\
Content-Length: 1432\r\n\
Connection: keep-alive\r\n\
Cache-Control: private, max-age=0, no-cache\r\n\
ETag: \"5f2b-1a2b3c4d\"\r\n\
Vary: Accept-Encoding, Origin\r\n\
\r\n";

/// Rate-limit headers a plugin adds to the response (`extra`), as in the rate-limited scenario.
const RL_EXTRA: &[u8] = b"X-RateLimit-Limit-Minute: 100000000\r\n\
X-RateLimit-Remaining-Minute: 99999999\r\n\
RateLimit-Limit: 100000000\r\n\
RateLimit-Remaining: 99999999\r\n\
RateLimit-Reset: 42\r\n";

const LIMITS: Limits = Limits {
    max_header_bytes: 32 * 1024,
    max_uri_bytes: 8 * 1024,
    max_headers: 100,
};

fn parsed_request(buf: &[u8]) -> RequestHead {
    let mut head = RequestHead::default();
    assert_eq!(parse_request(buf, &LIMITS, &mut head), Ok(Parsed::Complete));
    head
}

fn bench_request_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_request_head");
    g.throughput(Throughput::Elements(1));
    let client_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    for (name, buf) in [("curl_3_headers", CURL), ("browser_15_headers", BROWSER)] {
        let head = parsed_request(buf);
        let path_and_query = head.target.get(buf);
        let client_host = head.host.map(|h| h.get(buf)).unwrap_or_default();
        let fwd = Forwarded {
            client_ip,
            real_ip: client_ip,
            listen_port: 8080,
            client_host,
            prefix: b"",
            proto: b"http",
            close: false,
        };
        let mut out = Vec::with_capacity(4096);
        let edits = ringgate::auth::steps::Edits::default();
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                write_request_head(
                    &mut out,
                    black_box(buf),
                    black_box(&head),
                    path_and_query,
                    b"10.0.0.5:9000",
                    &fwd,
                    BodyKind::None,
                    &edits,
                    None,
                );
                black_box(out.len())
            })
        });
    }
    // Baseline: the two `write!(out, "{}", client_ip)` (X-Forwarded-For, X-Real-IP) alone, to show
    // what formatting the peer address through `fmt` costs inside every request head.
    let mut out = Vec::with_capacity(64);
    g.bench_function("client_ip_fmt_x2_baseline", |b| {
        b.iter(|| {
            out.clear();
            let _ = write!(out, "{}", black_box(client_ip));
            let _ = write!(out, "{}", black_box(client_ip));
            black_box(out.len())
        })
    });
    g.finish();
}

fn bench_response_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("write_response_head");
    g.throughput(Throughput::Elements(1));
    let mut resp = ResponseHead::default();
    assert_eq!(
        parse_response(RESPONSE, 32 * 1024, false, &mut resp),
        Ok(Parsed::Complete)
    );
    let mut out = Vec::with_capacity(4096);
    for (name, extra) in [
        ("json_8_headers", &b""[..]),
        ("json_8_headers_plus_ratelimit", RL_EXTRA),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                write_response_head(
                    &mut out,
                    black_box(RESPONSE),
                    black_box(&resp),
                    ClientFraming::Length(1432),
                    false,
                    false,
                    &ringgate::proxy::head::ResponseEdits {
                        extra,
                        ..Default::default()
                    },
                );
                black_box(out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_request_head, bench_response_head);
criterion_main!(benches);
