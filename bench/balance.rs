//! Criterion benchmarks of choosing a target: round-robin, least connections and a consistent-hash
//! lookup (key hash + ring search) at 3 and 64 targets, the per-request cost of each `algorithm`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::config::model::TargetDef;
use ringgate::upstream::balancer::Swrr;
use ringgate::upstream::ring::{self, Ring};

fn targets(n: usize) -> Vec<TargetDef> {
    (0..n)
        .map(|i| TargetDef {
            name: format!("t{i}"),
            addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)),
            weight: 100,
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for n in [3usize, 64] {
        let mut rr = Swrr::new(std::iter::repeat_n(100, n));
        c.bench_function(&format!("round_robin/{n}"), |b| {
            b.iter(|| black_box(rr.pick()))
        });
        let mut lc = Swrr::new(std::iter::repeat_n(100, n));
        let loads: Vec<u64> = (0..n as u64).map(|i| (i * 7) % 5).collect();
        c.bench_function(&format!("least_conn/{n}"), |b| {
            b.iter(|| black_box(lc.pick_least(|t| loads[t], |_| true)))
        });
        let ring = Ring::new(&targets(n));
        let keys: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
        let mut i = 0usize;
        c.bench_function(&format!("consistent_hash/{n}"), |b| {
            b.iter(|| {
                i = (i + 1) % keys.len();
                black_box(ring.pick(ring::hash(keys[i].as_bytes()), |_| true))
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
