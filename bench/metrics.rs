//! Criterion benchmarks of the metrics path: a worker's `request_done` (the per-request cost), a
//! flush of 1,000 active routes, merging it, and rendering `/metrics` for 1,000 routes x 4 status codes
//! with 16 upstream targets (the scrape budget is a few milliseconds).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ringgate::metrics::{Aggregate, Layout, MetricsSink, Timings, WorkerMetrics};

const ROUTES: usize = 1000;

fn timings(i: u64) -> Timings {
    let t0 = Instant::now();
    let mut t = Timings::new(t0);
    t.upstream_head_out = Some(t0 + Duration::from_micros(15 + i % 7));
    t.upstream_head_in = Some(t0 + Duration::from_micros(800 + i % 900));
    t.client_head_out = Some(t0 + Duration::from_micros(820 + i % 900));
    t.end = t0 + Duration::from_micros(900 + (i * 37) % 20_000);
    t
}

/// An aggregate fed by `workers` workers, each having served every route with 4 status codes.
fn populated(workers: usize) -> Aggregate {
    let layout = Layout::synthetic(ROUTES, 50, 16);
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout.clone());
    agg.set_workers(workers);
    for w in 0..workers {
        let m = WorkerMetrics::new(w, layout.clone(), MetricsSink::test().0);
        let g = m.current();
        for r in 0..ROUTES {
            for (k, code) in [200u16, 201, 404, 503].iter().enumerate() {
                g.request_done(r, *code, 100, 1000, &timings((r * 4 + k) as u64));
            }
        }
        if let Some(f) = m.take(&[3; 16], false) {
            agg.apply(f);
        }
    }
    agg
}

fn bench(c: &mut Criterion) {
    let layout = Layout::synthetic(ROUTES, 50, 16);
    let m = WorkerMetrics::new(0, layout, MetricsSink::test().0);
    // What a request records through (its snapshot's generation).
    let g = m.current();
    let t = timings(3);
    g.request_done(7, 200, 1, 1, &t); // allocate route 7's histograms
    let mut i = 0u16;
    c.bench_function("metrics/request_done", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            g.request_done(black_box(7), 200 + (i % 4), 120, 900, black_box(&t))
        })
    });

    let agg = populated(4);
    let mut out = String::with_capacity(4 << 20);
    agg.render_metrics(&mut out);
    println!(
        "metrics/render_1k_routes: {} bytes, {} lines",
        out.len(),
        out.lines().count()
    );
    c.bench_function("metrics/render_1k_routes", |b| {
        b.iter(|| {
            out.clear();
            agg.render_metrics(&mut out);
            black_box(out.len())
        })
    });

    let layout = Layout::synthetic(ROUTES, 50, 16);
    let w = WorkerMetrics::new(0, layout.clone(), MetricsSink::test().0);
    let g = w.current();
    let mut agg = Aggregate::new(Duration::from_secs(1));
    agg.set_layout(layout);
    // The worker's share of a flush (steady state: histograms come back recycled); merging happens
    // on the metrics thread and is not timed here.
    let mut side = Aggregate::new(Duration::from_secs(1));
    side.set_layout(Layout::synthetic(ROUTES, 50, 16));
    c.bench_function("metrics/worker_flush_1k_active_routes", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for r in 0..ROUTES {
                    g.request_done(r, 200, 1, 1, &t);
                }
                let t0 = Instant::now();
                let f = w.take(&[0; 16], false);
                spent += t0.elapsed();
                if let Some(f) = f {
                    side.apply(f);
                }
            }
            spent
        })
    });
    c.bench_function("metrics/flush_and_merge_1k_active_routes", |b| {
        b.iter(|| {
            for r in 0..ROUTES {
                g.request_done(r, 200, 1, 1, &t);
            }
            if let Some(f) = w.take(&[0; 16], false) {
                agg.apply(f);
            }
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
