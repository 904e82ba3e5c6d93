//! Password-hash checks (bcrypt) on dedicated threads, awaited by workers without blocking.
//!
//! A bcrypt check costs milliseconds to tens of milliseconds (by design), which on a worker would
//! stall every connection of that core. So a worker sends the job over a bounded crossbeam channel
//! to a small pool of verifier threads and awaits one byte on its end of a Unix socket pair; the
//! verifier writes the verdict there. Workers stay non-blocking.
//!
//! The pool checks a few passwords per second at bcrypt's costs, so a flood of wrong passwords
//! must not take that capacity from everyone else. Three limits, each answered 503 at once:
//! - a client address (an IPv6 /64) has at most `PER_CLIENT` checks outstanding (`take_slot`,
//!   across all workers), so one sprayer cannot queue work ahead of other clients;
//! - a check that would wait longer than `BACKLOG_BUDGET` behind the queue (judged from the
//!   measured cost of recent checks) is refused instead of timing out after `WAIT`;
//! - a queued job whose worker stopped waiting (it timed out, or its connection ended) is dropped
//!   unchecked.
//!
//! Only cache misses come here: verified credentials are remembered per worker (`cache`).
//! `ringgate_password_checks_total` counts the checks by result, so an operator can see the cache
//! work (and a reload keep it: see `worker::Snapshot`'s caches). Its counters are atomics written by
//! the verifier threads; a worker writes one only when the queue refuses a job (overload).

use std::io::Write as _;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use monoio::io::AsyncReadRent;

/// Jobs waiting beyond this are refused (the client gets 503).
const QUEUE: usize = 256;
/// A verdict that takes longer than this is treated as a failure (the pool is overloaded).
const WAIT: Duration = Duration::from_secs(10);
/// A check expected to wait longer than this behind the queue is refused at once.
const BACKLOG_BUDGET: Duration = Duration::from_secs(2);
/// Checks one client address may have outstanding at once.
pub const PER_CLIENT: u32 = 2;
/// Verifier threads running, and the recent cost of one check (µs, a moving average): what the
/// backlog budget is judged from.
static THREADS: AtomicU64 = AtomicU64::new(0);
static COST_US: AtomicU64 = AtomicU64::new(0);

struct Job {
    /// `None`: an unknown user, checked against a dummy hash of cost `dummy_cost` and never
    /// matching.
    hash: Option<Arc<str>>,
    dummy_cost: u32,
    password: Vec<u8>,
    reply: StdUnixStream,
}

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Match,
    NoMatch,
    /// The pool is saturated or unavailable: answer 503, do not count as a failed login.
    Busy,
}

/// Checks, by result: matched, did not match (unknown users included), refused (see the module
/// docs), abandoned (dropped unchecked: its worker had stopped waiting).
static CHECKS: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];
const MATCHED: usize = 0;
const MISMATCHED: usize = 1;
const REFUSED: usize = 2;
const ABANDONED: usize = 3;

fn count(result: usize) {
    if let Some(c) = CHECKS.get(result) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// `ringgate_password_checks_total{result}` for `/metrics`.
pub fn family() -> crate::metrics::Family {
    use crate::metrics::{Family, FamilyKind};
    let n = |i: usize| CHECKS.get(i).map_or(0, |c| c.load(Ordering::Relaxed)) as f64;
    Family::new(
        "ringgate_password_checks_total",
        "bcrypt checks of basic-auth passwords (credential cache misses), by result; refused: \
         answered 503 at once (the client had too many checks outstanding, or the queue would \
         take too long); abandoned: dropped unchecked, nobody was waiting any more.",
        FamilyKind::Counter,
    )
    .sample(&[("result", "match")], n(MATCHED))
    .sample(&[("result", "mismatch")], n(MISMATCHED))
    .sample(&[("result", "refused")], n(REFUSED))
    .sample(&[("result", "abandoned")], n(ABANDONED))
}

/// Checks outstanding per client address, process-wide (a client's connections land on every
/// worker): counters in a fixed table indexed by a seeded hash of the address, so taking a slot is
/// one atomic add, with no lock and no allocation. Two addresses sharing a counter share a limit
/// (one pair in `SLOT_TABLE`, and the seed is random, so nobody can aim for another's counter).
const SLOT_TABLE: usize = 4096;
static OUTSTANDING: [AtomicU64; SLOT_TABLE] = [const { AtomicU64::new(0) }; SLOT_TABLE];

/// A slot for a check on behalf of `ip`, held until the verdict is in; `None` (counted as refused)
/// when that address has `PER_CLIENT` outstanding already.
pub fn take_slot(ip: IpAddr) -> Option<ClientSlot> {
    use std::hash::BuildHasher;
    static SEED: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let hash = SEED.get_or_init(Default::default).hash_one(client_key(ip));
    let bucket = (hash % SLOT_TABLE as u64) as usize;
    let counter = OUTSTANDING.get(bucket)?;
    if counter.fetch_add(1, Ordering::AcqRel) >= u64::from(PER_CLIENT) {
        counter.fetch_sub(1, Ordering::AcqRel);
        count(REFUSED);
        return None;
    }
    Some(ClientSlot { bucket })
}

/// One outstanding check; gives its slot back when dropped (the verdict came, or the request's
/// task ended).
pub struct ClientSlot {
    bucket: usize,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some(c) = OUTSTANDING.get(self.bucket) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// IPv4 addresses as they are (IPv4-mapped IPv6 ones too: a dual-stack listener sees every IPv4
/// client as `::ffff:a.b.c.d`); IPv6 by /64, which one client usually holds whole.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Whether the worker that queued a job stopped waiting for it (its end of the pair is closed).
fn waiter_gone(reply: &StdUnixStream) -> bool {
    let mut p = libc::pollfd {
        fd: reply.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll on one valid, owned fd with a zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Folds one check's duration into `COST_US` (an average over roughly the last 8 checks).
fn note_cost(took: Duration) {
    let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let old = COST_US.load(Ordering::Relaxed);
    let new = if old == 0 { us } else { (old * 7 + us) / 8 };
    COST_US.store(new, Ordering::Relaxed);
}

/// Whether a check queued behind `queued` others would wait past `BACKLOG_BUDGET` before a thread
/// took it (full rounds of the pool ahead of it, at the recent cost per check). With nothing queued
/// it is always taken: however slow checks are, they go on being made (and measured).
fn over_budget(queued: usize) -> bool {
    let threads = THREADS.load(Ordering::Relaxed).max(1);
    let cost = COST_US.load(Ordering::Relaxed);
    let rounds = (queued as u64) / threads;
    Duration::from_micros(rounds.saturating_mul(cost)) > BACKLOG_BUDGET
}

/// Starts the pool now, from the calling thread. Call it from the main thread at startup: threads
/// inherit their creator's CPU affinity, and a pool first used from a worker would be pinned to
/// that worker's core, one thread checking at a time, on the core whose requests it stalls.
pub fn start() {
    let _ = pool();
}

fn pool() -> Option<&'static Sender<Job>> {
    static POOL: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(QUEUE);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ringgate-verify-{i}"))
                .spawn(move || {
                    for mut job in rx {
                        if waiter_gone(&job.reply) {
                            job.password.fill(0);
                            count(ABANDONED);
                            continue;
                        }
                        let started = Instant::now();
                        let ok = match &job.hash {
                            Some(h) => bcrypt::verify(&job.password, h).unwrap_or(false),
                            None => {
                                let _ = bcrypt::verify(&job.password, &dummy_hash(job.dummy_cost));
                                false
                            }
                        };
                        note_cost(started.elapsed());
                        job.password.fill(0);
                        count(if ok { MATCHED } else { MISMATCHED });
                        // The worker may have given up (timeout); nothing to do then.
                        let _ = job.reply.write_all(&[u8::from(ok)]);
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        THREADS.store(started, Ordering::Relaxed);
        (started > 0).then_some(tx)
    })
    .as_ref()
}

/// A hash of `cost` (the cost of the configured credentials), computed once per verifier thread
/// and cost, so checking an unknown user takes as long as checking a known one (timing does not
/// reveal which usernames exist).
fn dummy_hash(cost: u32) -> String {
    thread_local! {
        static DUMMIES: std::cell::RefCell<std::collections::HashMap<u32, String>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    DUMMIES.with(|d| {
        d.borrow_mut()
            .entry(cost)
            .or_insert_with(|| bcrypt::hash(b"ringgate-dummy", cost).unwrap_or_default())
            .clone()
    })
}

/// The worker's (non-blocking, on the ring) and the verifier's ends of a verdict channel.
fn reply_pair() -> Option<(monoio::net::UnixStream, StdUnixStream)> {
    let (ours, theirs) = StdUnixStream::pair().ok()?;
    ours.set_nonblocking(true).ok()?;
    Some((monoio::net::UnixStream::from_std(ours).ok()?, theirs))
}

/// Checks `password` against `hash` off the worker thread (`None`: against a dummy hash of
/// `dummy_cost`, never matching).
pub async fn verify(hash: Option<Arc<str>>, dummy_cost: u32, mut password: Vec<u8>) -> Verdict {
    let pair = pool()
        .filter(|tx| !over_budget(tx.len()))
        .and_then(|tx| Some((tx, reply_pair()?)));
    let Some((tx, (mut ours, theirs))) = pair else {
        password.fill(0);
        count(REFUSED);
        return Verdict::Busy;
    };
    let job = Job {
        hash,
        dummy_cost,
        password,
        reply: theirs,
    };
    match tx.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(mut job) | TrySendError::Disconnected(mut job)) => {
            job.password.fill(0);
            count(REFUSED);
            return Verdict::Busy;
        }
    }
    let read = monoio::time::timeout(WAIT, ours.read(vec![0u8; 1])).await;
    match read {
        Ok((Ok(1), buf)) if buf.first() == Some(&1) => Verdict::Match,
        Ok((Ok(1), _)) => Verdict::NoMatch,
        _ => Verdict::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_holds_at_most_per_client_slots_and_ipv6_counts_by_64() {
        // Addresses of their own (the table is process-wide; other tests use loopback).
        let a: IpAddr = "2001:db8:7::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:7::ffff:2".parse().expect("ip");
        let other: IpAddr = "2001:db8:8::1".parse().expect("ip");
        let first = take_slot(a).expect("first");
        let second = take_slot(b).expect("second: same /64");
        assert!(take_slot(a).is_none(), "third for the /64");
        assert!(take_slot(other).is_some(), "another /64");
        drop(first);
        assert!(take_slot(b).is_some(), "a slot came back");
        drop(second);
        // IPv4 seen on a dual-stack listener is the same client as plain IPv4.
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(client_key(mapped), v4);
        let _one = take_slot(v4).expect("one");
        let _two = take_slot(mapped).expect("two");
        assert!(take_slot(v4).is_none(), "mapped and plain share the limit");
        assert!(
            take_slot("192.0.2.8".parse().expect("ip")).is_some(),
            "other IPv4 clients don't"
        );
    }

    #[test]
    fn nothing_queued_is_never_over_budget() {
        COST_US.store(5_000_000, Ordering::Relaxed);
        assert!(
            !over_budget(0),
            "a 5 s check is still taken when nothing waits"
        );
        COST_US.store(0, Ordering::Relaxed);
    }

    #[test]
    fn verifies_off_thread() {
        let hash: Arc<str> = Arc::from(bcrypt::hash("s3cret", 4).expect("hash").as_str());
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let h = Some(hash.clone());
            assert_eq!(
                verify(h.clone(), 4, b"s3cret".to_vec()).await,
                Verdict::Match
            );
            assert_eq!(verify(h, 4, b"wrong".to_vec()).await, Verdict::NoMatch);
            assert_eq!(verify(None, 4, b"s3cret".to_vec()).await, Verdict::NoMatch);
        });
    }
}
