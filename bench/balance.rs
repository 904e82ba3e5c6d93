//! Criterion benchmarks of choosing a target: round-robin, least connections and consistent hashing
//! (key hash + one rendezvous score per target, equal and unequal weights) at 3 and 64 targets: the
//! per-request cost of each `algorithm`.

use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::config::model::TargetDef;
use ringgate::upstream::balancer::Swrr;
use ringgate::upstream::hashing::{self, Rendezvous};

fn targets(n: usize, weighted: bool) -> Vec<TargetDef> {
    (0..n)
        .map(|i| TargetDef {
            name: format!("t{i}"),
            addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080)),
            weight: if weighted { 50 + i as u32 } else { 100 },
            max_conns: None,
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
        let keys: Vec<String> = (0..1024).map(|i| format!("user-{i:08}")).collect();
        for (label, weighted) in [("equal", false), ("weighted", true)] {
            let table = Rendezvous::new(&targets(n, weighted));
            let mut i = 0usize;
            c.bench_function(&format!("consistent_hash_{label}/{n}"), |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    black_box(table.pick(hashing::hash(keys[i].as_bytes()), |_| true))
                })
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
