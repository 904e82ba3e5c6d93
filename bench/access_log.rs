//! Criterion benchmarks of the access log's per-request work: formatting one JSON line for a
//! browser-like request (`format::push_request` when the head arrives + `format::push_line` when it
//! ends) into a reused buffer, and the whole `WorkerLog::append` a worker does per request, with the
//! writer thread writing the batches to /dev/null (so hand-offs and buffer recycling are included).
//! Criterion's "time" is ns per line.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::access_log::format::{push_line, push_request, Clock, Outcome, Request};
use ringgate::access_log::{AccessLog, WorkerLog};
use ringgate::config::model::{AccessLogDef, AccessLogTarget};

fn request() -> Request<'static> {
    Request {
        client_ip: [203, 0, 113, 7].into(),
        remote_addr: SocketAddr::from(([10, 0, 0, 2], 51234)),
        method: Some(b"GET"),
        host: Some(b"api.example.com"),
        path: Some(b"/api/v1/users/12345/orders"),
        protocol: Some("HTTP/1.1"),
        tls: true,
        user_agent: Some(b"Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"),
        request_id: Some(b"7d3c9a4e-2f1b-4c8d-9e6a-5b0f1d2c3e4a"),
    }
}

fn outcome() -> Outcome<'static> {
    Outcome {
        status: 200,
        bytes_sent: 1_687,
        request_bytes: 812,
        duration_us: Some(1_234),
        upstream_us: Some(1_101),
        gateway_us: Some(31),
        route: Some("users-orders"),
        service: Some("orders"),
        upstream: Some(SocketAddr::from(([10, 0, 1, 15], 8080))),
        consumer: Some("alice"),
        upstream_attempts: 1,
        detail: None,
    }
}

fn format_line(c: &mut Criterion) {
    let r = request();
    let o = outcome();
    let mut staged = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(64 << 10);
    let mut clock = Clock::default();
    c.bench_function("access_log/format_line", |b| {
        b.iter(|| {
            staged.clear();
            push_request(&mut staged, black_box(&r));
            if out.len() > 60 << 10 {
                out.clear();
            }
            push_line(
                &mut out,
                &mut clock,
                SystemTime::now(),
                0,
                &staged,
                black_box(&o),
            );
        })
    });
}

/// The two halves apart: the request part, and the line completed from a staged request part.
fn format_parts(c: &mut Criterion) {
    let r = request();
    let o = outcome();
    let mut staged = Vec::with_capacity(512);
    c.bench_function("access_log/format_request_part", |b| {
        b.iter(|| {
            staged.clear();
            push_request(&mut staged, black_box(&r));
        })
    });
    let mut out = Vec::with_capacity(64 << 10);
    let mut clock = Clock::default();
    c.bench_function("access_log/format_rest", |b| {
        b.iter(|| {
            if out.len() > 60 << 10 {
                out.clear();
            }
            push_line(
                &mut out,
                &mut clock,
                SystemTime::now(),
                0,
                &staged,
                black_box(&o),
            );
        })
    });
}

fn append(c: &mut Criterion) {
    let def = AccessLogDef {
        target: AccessLogTarget::File(PathBuf::from("/dev/null")),
        buffer_size: 64 << 10,
        flush_interval: Duration::from_secs(1),
    };
    let mut log = AccessLog::new(1);
    if let Err(e) = log.open(&def) {
        eprintln!("skipping access_log/append: {e}");
        return;
    }
    let worker = WorkerLog::new(log.link(), 0);
    worker.configure(Some(&def));
    let mut staged = Vec::with_capacity(512);
    push_request(&mut staged, &request());
    let o = outcome();
    c.bench_function("access_log/append", |b| {
        b.iter(|| worker.append(black_box(&staged), black_box(&o)))
    });
    worker.finish();
    log.stop(Duration::from_secs(5));
    let dropped = log
        .stats()
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    println!("access_log/append: {dropped} lines dropped (the writer fell behind /dev/null)");
}

criterion_group!(benches, format_line, format_parts, append);
criterion_main!(benches);
