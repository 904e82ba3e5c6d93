//! Criterion benchmarks of the head parsers on the shapes the gateway sees most: a ~400-byte
//! browser-like request and a small upstream response. `out` is reused across iterations, as the
//! proxy loop does, so the numbers are for the steady, allocation-free state.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ringgate::http::parse::{parse_request, parse_response, Parsed, RequestHead, ResponseHead};
use ringgate::http::Limits;

const REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=20&offset=40 HTTP/1.1\r\n\
Host: api.example.com\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n\
Accept: application/json, text/plain, */*\r\n\
Accept-Language: en-US,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Referer: https://app.example.com/dashboard\r\n\
Cookie: session=3f2a9c1e7b6d4a58; theme=dark\r\n\
Connection: keep-alive\r\n\
\r\n";

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Content-Type: application/json\r\n\
Content-Length: 27\r\n\
Date: Sun, 22 Nov 2026 10:00:00 GMT\r\n\
Connection: keep-alive\r\n\
\r\n\
{\"ok\":true,\"items\":[1,2,3]}";

const LIMITS: Limits = Limits {
    max_header_bytes: 16 * 1024,
    max_uri_bytes: 8 * 1024,
    max_headers: 100,
};

fn bench_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_request");
    g.throughput(Throughput::Bytes(REQUEST.len() as u64));
    let mut out = RequestHead::default();
    g.bench_function("browser_get", |b| {
        b.iter(|| {
            let r = parse_request(black_box(REQUEST), &LIMITS, &mut out);
            assert_eq!(r, Ok(Parsed::Complete));
            black_box(out.head_len)
        })
    });
    // Baseline: httparse alone on the same bytes, to show what the strict checks add on top.
    g.bench_function("httparse_only_baseline", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            let r = req.parse(black_box(REQUEST));
            assert!(matches!(r, Ok(httparse::Status::Complete(_))));
            black_box(req.headers.len())
        })
    });
    g.finish();
}

fn bench_response(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_response");
    g.throughput(Throughput::Bytes(RESPONSE.len() as u64));
    let mut out = ResponseHead::default();
    g.bench_function("small_json", |b| {
        b.iter(|| {
            let r = parse_response(black_box(RESPONSE), 16 * 1024, false, &mut out);
            assert_eq!(r, Ok(Parsed::Complete));
            black_box(out.head_len)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_request, bench_response);
criterion_main!(benches);
