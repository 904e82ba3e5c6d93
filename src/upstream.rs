//! Upstream selection and connections, per worker: smooth weighted round-robin and least
//! connections (`balancer`), consistent hashing (`hashing`), a connection pool per target (`pool`),
//! target health (`health`: passive circuit breaking plus the verdicts of the active prober) and
//! least_conn's in-flight counts (`inflight`). Balancers, pools, health and in-flight tables are
//! `!Send` worker-local state; a consistent-hash table is immutable, built once per config
//! generation and read by every worker through the config. `probe` is the exception: the one
//! prober thread of the process, which talks to workers only through channels.

pub mod balancer;
pub mod conn;
pub mod hashing;
pub mod health;
pub mod inflight;
pub mod pool;
pub mod probe;
