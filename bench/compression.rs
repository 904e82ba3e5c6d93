//! Criterion benchmarks of the `compression` plugin's gzip: one 16 KiB body (the load test's
//! text) compressed at level 1 with a pooled, reused state, the same with a fresh state per body
//! (what a pool miss costs), and a 16 KiB JSON array. The load test's `gzip` scenario compares
//! the gateway's whole cost with nginx's `gzip on`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringgate::plugins::compression::Gzip;

fn text(n: usize) -> Vec<u8> {
    let line = b"ringgate load test payload 0123456789abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ!\n";
    line.iter().copied().cycle().take(n).collect()
}

fn json(n: usize) -> Vec<u8> {
    let mut s = String::from("[");
    let mut i = 0;
    while s.len() < n {
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"user {i}\",\"email\":\"u{i}@example.com\",\"active\":{}}},",
            i % 3 == 0
        ));
        i += 1;
    }
    s.pop();
    s.push(']');
    s.into_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gzip_16k");
    for (label, body) in [("text", text(16_384)), ("json", json(16_384))] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        let mut gz = Gzip::new(1);
        g.bench_function(format!("{label}/reused"), |b| {
            b.iter(|| {
                gz.start();
                gz.write(black_box(&body), false).expect("write");
                gz.finish().expect("finish");
                black_box(gz.out.len())
            })
        });
        g.bench_function(format!("{label}/fresh_state"), |b| {
            b.iter(|| {
                let mut gz = Gzip::new(1);
                gz.start();
                gz.write(black_box(&body), false).expect("write");
                gz.finish().expect("finish");
                black_box(gz.out.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
