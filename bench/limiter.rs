//! `LimiterSet::check` on a warm key (the per-request cost of rate limiting), for a fixed window
//! with two periods, a sliding window and a token bucket, plus the key builder.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::config::load_str;
use ringgate::limit::{self, LimiterSet, RequestInfo};

fn set(cfg: &str) -> (limit::ReconcilerHandle, LimiterSet) {
    let text = format!(
        "[[upstreams]]\nname = \"u\"\ntargets = [{{ target = \"127.0.0.1:9001\" }}]\n[[services]]\nname = \"s\"\nupstream = \"u\"\n[[routes]]\nname = \"r\"\nservice = \"s\"\npaths = [\"/\"]\n[[plugins]]\nname = \"rate-limiting\"\nconfig = {{ {cfg} }}\n"
    );
    let c = load_str(&text, "bench.toml").expect("bench config");
    let (h, mut links) = limit::start(&c, 1);
    (h, LimiterSet::new(links.remove(0)))
}

struct Req;

impl RequestInfo for Req {
    fn client_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))
    }
    fn header(&self, _: &[u8]) -> Option<&[u8]> {
        Some(b"key-0123456789")
    }
    fn path(&self) -> &[u8] {
        b"/users/42"
    }
    fn route(&self) -> &[u8] {
        b"users"
    }
    fn service(&self) -> &[u8] {
        b"users"
    }
    fn consumer(&self) -> Option<&[u8]> {
        None
    }
    fn credential(&self) -> Option<&[u8]> {
        None
    }
}

fn bench(c: &mut Criterion) {
    let now = limit::now_ms();
    for (name, cfg) in [
        (
            "check_fixed_2_periods",
            "second = 1000000000, minute = 1000000000, limit_by = \"ip\"",
        ),
        (
            "check_sliding",
            "algorithm = \"sliding_window\", minute = 1000000000",
        ),
        (
            "check_token_bucket",
            "algorithm = \"token_bucket\", rate_limit = 1000000000, burst_limit = 1000000000",
        ),
        (
            "check_hidden_headers",
            "minute = 1000000000, hide_client_headers = true",
        ),
    ] {
        let (_h, set) = set(cfg);
        let mut hdr = Vec::with_capacity(512);
        let key = b"i\xc0\x00\x02\x0a";
        c.bench_function(name, |b| {
            b.iter(|| {
                hdr.clear();
                black_box(set.check(0, black_box(key), now, &mut hdr));
            })
        });
        set.sync(now);
    }
    let mut out = Vec::with_capacity(128);
    let by = ringgate::config::model::LimitBy::Header("x-api-key".into());
    c.bench_function("build_key_header", |b| {
        b.iter(|| limit::build_key(black_box(&by), &Req, &mut out))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
