//! The worker side: plain counters in one `RefCell` per config generation ([`GenMetrics`]), per-route
//! slots preallocated for that generation's layout, HDR histograms allocated on a route's first
//! request. `flush` sends what changed since the last flush.
//!
//! Every method borrows a cell for a few instructions and never across an `.await` (they are all
//! synchronous). A failed borrow (impossible by construction) drops the sample rather than panic.
//!
//! Reloads: a request records by route and target *index*, and an index means something only in the
//! generation the request started under. So each generation has its own [`GenMetrics`], shared (`Rc`)
//! by the worker's `Snapshot` of that generation and by every request holding that snapshot. A reload
//! retires the current one: requests still running keep recording into it (their counters land on
//! their own route, their `active` gauge goes back down on the slot it went up on), every flush sends
//! it under its own layout, and the flush after its last holder let go sends its final deltas and
//! drops it, so its gauges stop being reported.
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;

use super::hub::{MetricsSink, Msg};
use super::{bucket_index, code_index, Layout, Timings, HDR_MAX_NS, HDR_SIGFIG, NBUCKETS, NCODES};

/// A worker-side HDR histogram. Boxes travel to the aggregator in a flush and come back emptied
/// through `WorkerFlush::recycle`, so in steady state a flush only swaps pointers.
pub type Hdr = Box<Histogram<u32>>;

/// A fixed-bucket latency histogram (Prometheus side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Buckets {
    /// Per bucket (not cumulative); the last is `+Inf`.
    pub counts: [u64; NBUCKETS],
    pub sum_ns: u64,
}

impl Buckets {
    #[inline]
    fn record(&mut self, ns: u64) {
        if let Some(c) = self.counts.get_mut(bucket_index(ns)) {
            *c += 1;
        }
        self.sum_ns = self.sum_ns.saturating_add(ns);
    }

    pub fn add(&mut self, other: &Buckets) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.sum_ns = self.sum_ns.saturating_add(other.sum_ns);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0u64, |a, b| a.saturating_add(*b))
    }
}

/// Per-route counters (deltas on a worker, totals in the aggregator).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Indexed by `code_index`.
    pub codes: [u64; NCODES],
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// head in -> end.
    pub request: Buckets,
    /// Upstream head out -> upstream head in.
    pub upstream: Buckets,
}

impl Default for Counts {
    fn default() -> Counts {
        Counts {
            codes: [0; NCODES],
            bytes_in: 0,
            bytes_out: 0,
            request: Buckets::default(),
            upstream: Buckets::default(),
        }
    }
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        for (a, b) in self.codes.iter_mut().zip(o.codes.iter()) {
            *a = a.saturating_add(*b);
        }
        self.bytes_in = self.bytes_in.saturating_add(o.bytes_in);
        self.bytes_out = self.bytes_out.saturating_add(o.bytes_out);
        self.request.add(&o.request);
        self.upstream.add(&o.upstream);
    }
}

struct RouteSlot {
    counts: Counts,
    added: Option<Hdr>,
    total: Option<Hdr>,
    dirty: bool,
}

impl RouteSlot {
    fn new() -> RouteSlot {
        RouteSlot {
            counts: Counts::default(),
            added: None,
            total: None,
            dirty: false,
        }
    }
}

#[derive(Clone, Copy, Default)]
struct TargetSlot {
    connect_errors: u64,
    timeouts: u64,
    active: u64,
    ejections: u64,
}

/// What changed on one route since the last flush. `route` is a layout index, or `None` for requests
/// that matched no route.
#[derive(Debug, Clone)]
pub struct RouteDelta {
    pub route: Option<u32>,
    pub counts: Counts,
    pub added: Option<Hdr>,
    pub total: Option<Hdr>,
}

/// One target: counter deltas and gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct TargetDelta {
    pub connect_errors: u64,
    pub timeouts: u64,
    pub idle: u64,
    pub active: u64,
    /// Passive-health ejections (delta).
    pub ejections: u64,
    /// Gauge: this worker skips the target (ejected or failing its active check). Only reported for
    /// the current generation; a retired one says `false`.
    pub skipped: bool,
}

/// One generation's part of a flush: deltas and gauges by that generation's indices.
#[derive(Debug, Clone)]
pub struct GenFlush {
    pub layout: Arc<Layout>,
    /// Only routes that saw requests since the previous flush.
    pub routes: Vec<RouteDelta>,
    /// Every target of `layout` (gauges), index = flat target index.
    pub targets: Vec<TargetDelta>,
}

impl GenFlush {
    /// Nothing counted and nothing in use: sending it would change nothing.
    fn is_idle(&self) -> bool {
        self.routes.is_empty()
            && self.targets.iter().all(|t| {
                t.connect_errors == 0 && t.timeouts == 0 && t.active == 0 && t.ejections == 0
            })
    }
}

/// One worker's flush.
#[derive(Debug, Clone)]
pub struct WorkerFlush {
    pub worker: usize,
    /// The current generation's layout.
    pub layout: Arc<Layout>,
    pub at: Instant,
    /// The worker is stopping: this is its last flush.
    pub last: bool,
    /// Only routes that saw requests since the previous flush (current generation).
    pub routes: Vec<RouteDelta>,
    /// Every target of `layout` (gauges), index = flat target index.
    pub targets: Vec<TargetDelta>,
    /// Earlier generations that requests started before a reload still record into, each under its
    /// own layout (their `idle` is 0: the pool is shared, `targets` reports it). Left out when they
    /// have nothing to report.
    pub retired: Vec<GenFlush>,
    /// Gauge: open client connections.
    pub conns_open: u64,
    /// Delta: client connections accepted.
    pub conns_accepted: u64,
    /// Where the aggregator returns the histograms of this flush once merged and reset.
    pub recycle: Sender<Hdr>,
}

struct Slots {
    /// `routes.len() == layout.routes.len() + 1`; the last slot is "no route".
    routes: Vec<RouteSlot>,
    targets: Vec<TargetSlot>,
}

/// The slots of one config generation on one worker. Requests record into the one of the snapshot
/// they started under (see the module docs); `!Send`, like the rest of the shard.
pub struct GenMetrics {
    layout: Arc<Layout>,
    slots: RefCell<Slots>,
    _local: std::marker::PhantomData<*const ()>,
}

impl GenMetrics {
    fn new(layout: Arc<Layout>) -> GenMetrics {
        GenMetrics {
            slots: RefCell::new(Slots {
                routes: (0..=layout.routes.len())
                    .map(|_| RouteSlot::new())
                    .collect(),
                targets: vec![TargetSlot::default(); layout.targets.len()],
            }),
            layout,
            _local: std::marker::PhantomData,
        }
    }

    /// The generation whose indices this records.
    pub fn layout(&self) -> &Arc<Layout> {
        &self.layout
    }

    /// One finished request on `route` (a layout index; out of range counts as no route).
    /// `bytes_in`/`bytes_out`: request bytes read from and response bytes written to the client
    /// (heads included). Records latencies for the phases `t` has.
    #[inline]
    pub fn request_done(
        &self,
        route: usize,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        t: &Timings,
    ) {
        let Ok(mut slots) = self.slots.try_borrow_mut() else {
            return;
        };
        let last = slots.routes.len().saturating_sub(1);
        let Some(slot) = slots.routes.get_mut(route.min(last)) else {
            return;
        };
        slot.dirty = true;
        let c = &mut slot.counts;
        if let Some(n) = c.codes.get_mut(code_index(status)) {
            *n += 1;
        }
        c.bytes_in = c.bytes_in.saturating_add(bytes_in);
        c.bytes_out = c.bytes_out.saturating_add(bytes_out);
        let total = t.total_ns();
        c.request.record(total);
        if let Some(up) = t.upstream_ns() {
            c.upstream.record(up);
        }
        record_hdr(&mut slot.total, total);
        if let Some(added) = t.added_ns() {
            record_hdr(&mut slot.added, added);
        }
    }

    /// A response the gateway generated without timings worth recording (parse errors, 404 no route,
    /// 408...). `route`: `None` when no route matched (yet).
    #[inline]
    pub fn gateway_error(&self, route: Option<usize>, status: u16, bytes_in: u64, bytes_out: u64) {
        let Ok(mut slots) = self.slots.try_borrow_mut() else {
            return;
        };
        let last = slots.routes.len().saturating_sub(1);
        let Some(slot) = slots.routes.get_mut(route.unwrap_or(last).min(last)) else {
            return;
        };
        slot.dirty = true;
        if let Some(n) = slot.counts.codes.get_mut(code_index(status)) {
            *n += 1;
        }
        slot.counts.bytes_in = slot.counts.bytes_in.saturating_add(bytes_in);
        slot.counts.bytes_out = slot.counts.bytes_out.saturating_add(bytes_out);
    }

    /// A connect to flat target `target` failed (refused, unreachable...).
    #[inline]
    pub fn upstream_connect_error(&self, target: usize) {
        self.with_target(target, |t| t.connect_errors += 1);
    }

    /// A connect to, or a read from / write to, flat target `target` timed out.
    #[inline]
    pub fn upstream_timeout(&self, target: usize) {
        self.with_target(target, |t| t.timeouts += 1);
    }

    /// Passive health ejected flat target `target` (on this worker).
    pub fn upstream_ejected(&self, target: usize) {
        self.with_target(target, |t| t.ejections += 1);
    }

    /// A connection to `target` is in use by a request (pooled or fresh).
    #[inline]
    pub fn upstream_acquired(&self, target: usize) {
        self.with_target(target, |t| t.active += 1);
    }

    /// The connection taken with `upstream_acquired` (on this same generation) was pooled or closed.
    #[inline]
    pub fn upstream_released(&self, target: usize) {
        self.with_target(target, |t| t.active = t.active.saturating_sub(1));
    }

    #[inline]
    fn with_target(&self, target: usize, f: impl FnOnce(&mut TargetSlot)) {
        if let Ok(mut slots) = self.slots.try_borrow_mut() {
            if let Some(t) = slots.targets.get_mut(target) {
                f(t);
            }
        }
    }

    /// The deltas since the last take (reset) and the gauges. `spare`: empty histograms to swap in
    /// (the current generation); `None` for a retired one, whose histograms are taken without a
    /// replacement, so its memory goes back as soon as it stops recording.
    fn take(
        &self,
        pool_idle: &[usize],
        skipped: &[bool],
        mut spare: Option<&mut Vec<Hdr>>,
    ) -> Option<GenFlush> {
        let mut slots = self.slots.try_borrow_mut().ok()?;
        let slots = &mut *slots;
        let none = slots.routes.len().saturating_sub(1);
        let mut routes = Vec::new();
        for (i, slot) in slots.routes.iter_mut().enumerate() {
            if !slot.dirty {
                continue;
            }
            slot.dirty = false;
            routes.push(RouteDelta {
                route: if i == none {
                    None
                } else {
                    u32::try_from(i).ok()
                },
                counts: std::mem::take(&mut slot.counts),
                added: take_hdr(&mut slot.added, spare.as_deref_mut()),
                total: take_hdr(&mut slot.total, spare.as_deref_mut()),
            });
        }
        let targets = slots
            .targets
            .iter_mut()
            .enumerate()
            .map(|(i, t)| {
                let d = TargetDelta {
                    connect_errors: t.connect_errors,
                    timeouts: t.timeouts,
                    idle: pool_idle.get(i).map_or(0, |&n| n as u64),
                    active: t.active,
                    ejections: t.ejections,
                    skipped: skipped.get(i).copied().unwrap_or(false),
                };
                t.connect_errors = 0;
                t.timeouts = 0;
                t.ejections = 0;
                d
            })
            .collect();
        Some(GenFlush {
            layout: self.layout.clone(),
            routes,
            targets,
        })
    }
}

/// One worker's metrics. `!Send`: lives in the worker's `Shard`.
pub struct WorkerMetrics {
    worker: usize,
    sink: MetricsSink,
    /// The generation new requests record into (via their snapshot).
    current: RefCell<Rc<GenMetrics>>,
    /// Earlier generations, kept (and flushed under their own layouts) while requests hold them.
    retired: RefCell<Vec<Rc<GenMetrics>>>,
    conns_open: Cell<u64>,
    conns_accepted: Cell<u64>,
    /// Emptied histograms coming back from the aggregator, and the ones ready for reuse.
    recycle_tx: Sender<Hdr>,
    recycle_rx: Receiver<Hdr>,
    spare: RefCell<Vec<Hdr>>,
    /// Per target of the current layout: skipped by health checking (set before each flush).
    skipped: RefCell<Vec<bool>>,
    /// Not `Send`/`Sync`, like the rest of the shard.
    _local: std::marker::PhantomData<*const ()>,
}

impl WorkerMetrics {
    pub fn new(worker: usize, layout: Arc<Layout>, sink: MetricsSink) -> WorkerMetrics {
        let (recycle_tx, recycle_rx) = crossbeam_channel::unbounded();
        WorkerMetrics {
            recycle_tx,
            recycle_rx,
            spare: RefCell::new(Vec::new()),
            skipped: RefCell::new(Vec::new()),
            worker,
            sink,
            current: RefCell::new(Rc::new(GenMetrics::new(layout))),
            retired: RefCell::new(Vec::new()),
            conns_open: Cell::new(0),
            conns_accepted: Cell::new(0),
            _local: std::marker::PhantomData,
        }
    }

    /// Which targets of the current layout health checking skips, for the next flush's gauges.
    pub fn set_skipped(&self, skipped: Vec<bool>) {
        if let Ok(mut s) = self.skipped.try_borrow_mut() {
            *s = skipped;
        }
    }

    /// The current generation's slots: a snapshot takes this `Rc` when it is built, and requests
    /// record through their snapshot's.
    pub fn current(&self) -> Rc<GenMetrics> {
        self.current.borrow().clone()
    }

    #[inline]
    pub fn conn_opened(&self) {
        self.conns_open.set(self.conns_open.get() + 1);
        self.conns_accepted.set(self.conns_accepted.get() + 1);
    }

    #[inline]
    pub fn conn_closed(&self) {
        self.conns_open.set(self.conns_open.get().saturating_sub(1));
    }

    /// Sends the deltas since the last flush. `pool_idle`: idle connections per target of the current
    /// layout (`Shard::idle_by_target`). Called from the control loop every `flush_interval`; also
    /// proves liveness to `/health`. Allocates (off the request path).
    pub fn flush(&self, pool_idle: &[usize]) {
        self.flush_inner(pool_idle, false);
    }

    /// The final flush when the worker stops.
    pub fn flush_last(&self, pool_idle: &[usize]) {
        self.flush_inner(pool_idle, true);
    }

    /// A new config generation: new requests record into fresh slots for `layout`; the old slots are
    /// retired, not dropped, so the requests still running under them count where they started.
    pub fn reconfigure(&self, layout: Arc<Layout>) {
        let fresh = Rc::new(GenMetrics::new(layout));
        if let (Ok(mut current), Ok(mut retired)) =
            (self.current.try_borrow_mut(), self.retired.try_borrow_mut())
        {
            retired.push(std::mem::replace(&mut *current, fresh));
        }
    }

    /// Retired generations still held by requests (for tests).
    pub fn retired_count(&self) -> usize {
        self.retired.try_borrow().map_or(0, |r| r.len())
    }

    fn flush_inner(&self, pool_idle: &[usize], last: bool) {
        let Some(flush) = self.take(pool_idle, last) else {
            return;
        };
        self.sink.send(Msg::Flush(Box::new(flush)));
    }

    /// Builds a flush and resets the deltas (exposed for tests and benches). Retired generations no
    /// request holds any more are taken one last time and dropped.
    pub fn take(&self, pool_idle: &[usize], last: bool) -> Option<WorkerFlush> {
        let current = self.current.try_borrow().ok()?.clone();
        let mut spare = self.spare.try_borrow_mut().ok()?;
        let mut retired = self.retired.try_borrow_mut().ok()?;
        // Two histograms per route at most are ever needed as spares.
        let max_spare = 2 * (current.layout.routes.len() + 1);
        for h in self.recycle_rx.try_iter() {
            if spare.len() < max_spare {
                spare.push(h);
            }
        }
        let skipped = self.skipped.try_borrow().ok()?;
        let now = current.take(pool_idle, &skipped, Some(&mut spare))?;
        let mut older = Vec::new();
        retired.retain(|g| {
            // Only this list holds it: no request can record into it any more, so this take is
            // its last (nothing runs between the check and the take: both are synchronous).
            let finished = Rc::strong_count(g) == 1;
            if let Some(f) = g.take(&[], &[], None).filter(|f| !f.is_idle()) {
                older.push(f);
            }
            !finished
        });
        Some(WorkerFlush {
            worker: self.worker,
            layout: now.layout,
            at: Instant::now(),
            last,
            routes: now.routes,
            targets: now.targets,
            retired: older,
            conns_open: self.conns_open.get(),
            conns_accepted: self.conns_accepted.replace(0),
            recycle: self.recycle_tx.clone(),
        })
    }
}

/// A histogram on the worker: u32 counts (a flush interval never holds 4 billion samples).
pub fn new_worker_hdr() -> Option<Histogram<u32>> {
    Histogram::new_with_bounds(1, HDR_MAX_NS, HDR_SIGFIG).ok()
}

#[inline]
fn record_hdr(slot: &mut Option<Hdr>, ns: u64) {
    if slot.is_none() {
        // Once per route per worker: the first request of a route allocates its histogram.
        *slot = new_worker_hdr().map(Box::new);
    }
    if let Some(h) = slot {
        h.saturating_record(ns.max(1));
    }
}

/// The histogram's samples, swapped for an empty one (a recycled one when available, else a fresh
/// allocation here, off the request path); with no `spare` pool, for none (retired generations).
fn take_hdr(slot: &mut Option<Hdr>, spare: Option<&mut Vec<Hdr>>) -> Option<Hdr> {
    if slot.as_ref().is_none_or(|h| h.is_empty()) {
        return None;
    }
    let empty = spare.and_then(|s| s.pop().or_else(|| new_worker_hdr().map(Box::new)));
    std::mem::replace(slot, empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timings(total_ms: u64) -> Timings {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        Timings {
            head_in: t0,
            upstream_head_out: Some(t0 + ms(1)),
            upstream_head_in: Some(t0 + ms(total_ms - 1)),
            client_head_out: Some(t0 + ms(total_ms)),
            end: t0 + ms(total_ms),
            connect: Duration::ZERO,
        }
    }

    #[test]
    fn counts_and_resets() {
        let (sink, _rx) = MetricsSink::test();
        let w = WorkerMetrics::new(3, Layout::synthetic(2, 1, 2), sink);
        w.current().request_done(0, 200, 10, 20, &timings(3));
        w.current().request_done(0, 404, 1, 2, &timings(3));
        w.current().request_done(99, 200, 0, 0, &timings(3)); // out of range -> no route
        w.current().gateway_error(None, 400, 5, 6);
        w.current().upstream_connect_error(1);
        w.current().upstream_timeout(1);
        w.current().upstream_timeout(7); // out of range: ignored
        w.current().upstream_acquired(0);
        w.conn_opened();
        w.conn_opened();
        w.conn_closed();
        let f = w.take(&[4, 5], false).unwrap_or_else(|| panic!("no flush"));
        assert_eq!(f.worker, 3);
        assert_eq!(f.routes.len(), 2);
        let r0 = &f.routes[0];
        assert_eq!(r0.route, Some(0));
        assert_eq!(r0.counts.codes[code_index(200)], 1);
        assert_eq!(r0.counts.codes[code_index(404)], 1);
        assert_eq!(r0.counts.bytes_in, 11);
        assert_eq!(r0.counts.request.count(), 2);
        assert_eq!(r0.counts.upstream.count(), 2);
        assert_eq!(r0.total.as_ref().map(|h| h.len()), Some(2));
        assert_eq!(r0.added.as_ref().map(|h| h.len()), Some(2));
        let none = &f.routes[1];
        assert_eq!(none.route, None);
        assert_eq!(none.counts.codes[code_index(400)], 1);
        assert_eq!(none.counts.codes[code_index(200)], 1);
        assert_eq!(f.targets[1].connect_errors, 1);
        assert_eq!(f.targets[1].timeouts, 1);
        assert_eq!(f.targets[0].active, 1);
        assert_eq!((f.targets[0].idle, f.targets[1].idle), (4, 5));
        assert_eq!((f.conns_open, f.conns_accepted), (1, 2));

        // Deltas reset, gauges persist.
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert!(f.routes.is_empty());
        assert_eq!(f.targets[1].connect_errors, 0);
        assert_eq!(f.targets[0].active, 1);
        assert_eq!((f.conns_open, f.conns_accepted), (1, 0));
    }

    #[test]
    fn reconfigure_resizes() {
        let (sink, _rx) = MetricsSink::test();
        let w = WorkerMetrics::new(0, Layout::synthetic(1, 1, 1), sink);
        w.current().request_done(0, 200, 0, 0, &timings(2));
        w.reconfigure(Layout::synthetic(5, 1, 3));
        w.current().request_done(4, 200, 0, 0, &timings(2));
        w.current().upstream_timeout(2);
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert_eq!(f.routes[0].route, Some(4));
        assert_eq!(f.targets.len(), 3);
        assert_eq!(f.targets[2].timeouts, 1);
        // What the old layout counted before the switch goes out under the old layout, once.
        assert_eq!(f.retired.len(), 1);
        assert_eq!(f.retired[0].layout.routes.len(), 1);
        assert_eq!(f.retired[0].routes[0].route, Some(0));
        assert_eq!(w.retired_count(), 0, "nothing holds it: dropped");
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert!(f.retired.is_empty());
    }

    #[test]
    fn requests_in_flight_across_a_reload_record_into_their_generation() {
        let (sink, _rx) = MetricsSink::test();
        let old = Layout::synthetic(2, 1, 2);
        let new = Layout::synthetic(3, 1, 2);
        let w = WorkerMetrics::new(0, old.clone(), sink);
        // A request starts under the old generation (its snapshot holds these slots) and takes a
        // connection to target 1.
        let held = w.current();
        held.upstream_acquired(1);
        w.reconfigure(new.clone());
        // A new request on the new generation uses target 1 too.
        let fresh = w.current();
        assert!(Arc::ptr_eq(fresh.layout(), &new));
        fresh.upstream_acquired(1);

        let f = w.take(&[0, 7], false).unwrap_or_else(|| panic!("no flush"));
        assert!(Arc::ptr_eq(&f.layout, &new));
        assert_eq!((f.targets[1].active, f.targets[1].idle), (1, 7));
        assert_eq!(f.retired.len(), 1, "held: reported under its own layout");
        let r = &f.retired[0];
        assert!(Arc::ptr_eq(&r.layout, &old));
        assert_eq!((r.targets[1].active, r.targets[1].idle), (1, 0));
        assert!(r.routes.is_empty());

        // The old request ends: released and counted on its own generation's slots.
        held.upstream_released(1);
        held.request_done(1, 200, 3, 4, &timings(3));
        drop(held);
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert_eq!(
            f.targets[1].active, 1,
            "the new request's connection is untouched"
        );
        assert!(f.routes.is_empty(), "nothing counted on the new layout");
        let r = &f.retired[0];
        assert!(Arc::ptr_eq(&r.layout, &old));
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].route, Some(1));
        assert_eq!(r.routes[0].counts.codes[code_index(200)], 1);
        assert_eq!(r.targets[1].active, 0);
        assert_eq!(r.routes[0].total.as_ref().map(|h| h.len()), Some(1));
        // That was its final flush: no one holds it any more.
        assert_eq!(w.retired_count(), 0);
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert!(f.retired.is_empty());
        fresh.upstream_released(1);
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert_eq!(f.targets[1].active, 0);
    }

    #[test]
    fn idle_retired_generations_are_not_sent() {
        let (sink, _rx) = MetricsSink::test();
        let w = WorkerMetrics::new(0, Layout::synthetic(1, 1, 1), sink);
        // An idle keep-alive connection still holds the old snapshot: nothing to report for it.
        let held = w.current();
        w.reconfigure(Layout::synthetic(1, 1, 1));
        let f = w.take(&[], false).unwrap_or_else(|| panic!("no flush"));
        assert!(f.retired.is_empty());
        assert_eq!(w.retired_count(), 1);
        drop(held);
        let _ = w.take(&[], false);
        assert_eq!(w.retired_count(), 0);
    }

    #[test]
    fn hdr_memory_is_bounded() {
        let h = new_worker_hdr().unwrap_or_else(|| panic!("bounds"));
        // Keep the per-route footprint in check (documented in the README).
        assert!(
            h.distinct_values() * 4 < 24 * 1024,
            "{}",
            h.distinct_values()
        );
    }
}
