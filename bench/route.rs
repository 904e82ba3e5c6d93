//! Criterion benchmarks of `Router::find` (hit and miss at 10, 1,000 and 10,000 routes) and of
//! `normalize_path`. The route sets mimic a multi-tenant gateway: ten routes per `svcN.example.com`
//! host, versioned resource prefixes, some method/header conditions, a few wildcard and regex routes,
//! and host-less health/metrics routes. Lookup time should stay flat as the route count grows.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ringgate::config::model::{HeaderMatch, PathMatch, RouteDef, ValueMatch};
use ringgate::router::normalize::normalize_path;
use ringgate::router::{RequestView, Router};
use std::hint::black_box;

struct Req;

impl RequestView for Req {
    fn header(&self, name_lower: &[u8]) -> Option<&[u8]> {
        match name_lower {
            b"x-api-version" => Some(b"2"),
            b"user-agent" => Some(b"bench/1.0"),
            _ => None,
        }
    }

    fn header_varies(&self, _: &[u8]) -> bool {
        false
    }
}

fn route(name: String, hosts: Vec<String>, paths: Vec<PathMatch>) -> RouteDef {
    RouteDef {
        name,
        service: 0,
        hosts,
        paths,
        methods: vec![],
        headers: vec![],
        query: vec![],
        strip_path: true,
        preserve_host: false,
        priority: 0,
        max_body_bytes: None,
    }
}

fn routes(n: usize) -> Vec<RouteDef> {
    let mut out: Vec<RouteDef> = (0..n).map(service_route).collect();
    out.push(route(
        "health".into(),
        vec![],
        vec![PathMatch::Exact("/health".into())],
    ));
    out.push(route(
        "metrics".into(),
        vec![],
        vec![PathMatch::Prefix("/metrics".into())],
    ));
    out
}

fn service_route(i: usize) -> RouteDef {
    let svc = i / 10;
    let host = if i % 50 == 49 {
        format!("*.svc{svc}.example.com")
    } else {
        format!("svc{svc}.example.com")
    };
    let path = if i % 100 == 99 {
        PathMatch::Regex(
            regex::Regex::new(&format!(r"^/api/v\d+/report{i}/\d+"))
                .unwrap_or_else(|e| panic!("{e}")),
        )
    } else {
        PathMatch::Prefix(format!("/api/v{}/resource{i}", i % 3 + 1))
    };
    let mut r = route(format!("r{i}"), vec![host], vec![path]);
    if i % 4 == 0 {
        r.methods = vec!["GET".into(), "POST".into()];
    }
    if i % 7 == 0 {
        r.headers = vec![HeaderMatch {
            name: "x-api-version".into(),
            value: ValueMatch::Exact(vec!["2".into()]),
        }];
    }
    r
}

fn bench_find(c: &mut Criterion) {
    let mut group = c.benchmark_group("find");
    for n in [10usize, 1_000, 10_000] {
        let defs = routes(n);
        let router = Router::new(&defs);
        // A route in the middle of the set: host svc{i/10}, prefix /api/v{i%3+1}/resource{i}.
        let i = n / 2 + 1;
        let host = format!("svc{}.example.com", i / 10);
        let hit_path = format!("/api/v{}/resource{i}/12345/orders", i % 3 + 1);
        let miss_path = "/api/v1/unknown/12345".to_string();
        assert_eq!(
            router
                .find(host.as_bytes(), b"GET", hit_path.as_bytes(), b"", &Req)
                .map(|m| m.route),
            Some(i)
        );
        assert_eq!(
            router.find(host.as_bytes(), b"GET", miss_path.as_bytes(), b"", &Req),
            None
        );
        group.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| {
                router.find(
                    black_box(host.as_bytes()),
                    b"GET",
                    black_box(hit_path.as_bytes()),
                    b"",
                    &Req,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                router.find(
                    black_box(host.as_bytes()),
                    b"GET",
                    black_box(miss_path.as_bytes()),
                    b"",
                    &Req,
                )
            })
        });
        group.bench_with_input(BenchmarkId::new("miss_unknown_host", n), &n, |b, _| {
            b.iter(|| {
                router.find(
                    black_box(b"nowhere.example.org"),
                    b"GET",
                    black_box(hit_path.as_bytes()),
                    b"",
                    &Req,
                )
            })
        });
    }
    group.finish();
}

fn bench_normalize(c: &mut Criterion) {
    let mut out = Vec::with_capacity(256);
    let mut group = c.benchmark_group("normalize_path");
    for (name, raw) in [
        ("typical", &b"/api/v1/users/12345/orders"[..]),
        (
            "dots_escapes",
            &b"/api/v1//users/./12345/../%61bc/%2fx/orders"[..],
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| normalize_path(black_box(raw), &mut out))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_find, bench_normalize);
criterion_main!(benches);
