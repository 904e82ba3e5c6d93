//! Password-hash checks (bcrypt) on dedicated threads, awaited by workers without blocking.
//!
//! A bcrypt check costs milliseconds to tens of milliseconds (by design), which on a worker would
//! stall every connection of that core. So a worker sends the job over a bounded crossbeam channel
//! to a small pool of verifier threads and awaits one byte on its end of a Unix socket pair; the
//! verifier writes the verdict there. Workers stay non-blocking, and the pool's bounded queue
//! makes a password-spraying client cost the gateway at most the pool's threads, never the
//! workers (a full queue is answered 503 at once).
//!
//! Only cache misses come here: verified credentials are remembered per worker (`cache`).
//! `ringgate_password_checks_total` counts the checks by result, so an operator can see the cache
//! work (and a reload keep it: see `worker::Snapshot`'s caches). Its counters are atomics written by
//! the verifier threads; a worker writes one only when the queue refuses a job (overload).

use std::io::Write as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use monoio::io::AsyncReadRent;

/// Jobs waiting beyond this are refused (the client gets 503).
const QUEUE: usize = 256;
/// A verdict that takes longer than this is treated as a failure (the pool is overloaded).
const WAIT: Duration = Duration::from_secs(10);

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

/// Checks run, by result: matched, did not match (unknown users included), refused (queue full or
/// no pool).
static CHECKS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const MATCHED: usize = 0;
const MISMATCHED: usize = 1;
const REFUSED: usize = 2;

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
        "bcrypt checks of basic-auth passwords (credential cache misses), by result; refused: the \
         verifier queue was full and the client got 503.",
        FamilyKind::Counter,
    )
    .sample(&[("result", "match")], n(MATCHED))
    .sample(&[("result", "mismatch")], n(MISMATCHED))
    .sample(&[("result", "refused")], n(REFUSED))
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
                        let ok = match &job.hash {
                            Some(h) => bcrypt::verify(&job.password, h).unwrap_or(false),
                            None => {
                                let _ = bcrypt::verify(&job.password, &dummy_hash(job.dummy_cost));
                                false
                            }
                        };
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

/// Checks `password` against `hash` off the worker thread (`None`: against a dummy hash of
/// `dummy_cost`, never matching).
pub async fn verify(hash: Option<Arc<str>>, dummy_cost: u32, password: Vec<u8>) -> Verdict {
    let Some(tx) = pool() else {
        count(REFUSED);
        return Verdict::Busy;
    };
    let Ok((ours, theirs)) = StdUnixStream::pair() else {
        return Verdict::Busy;
    };
    if ours.set_nonblocking(true).is_err() {
        return Verdict::Busy;
    }
    let Ok(mut ours) = monoio::net::UnixStream::from_std(ours) else {
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
