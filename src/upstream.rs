//! Upstream selection and connections, per worker: smooth weighted round-robin (`balancer`), a
//! connection pool per target (`pool`) and target health (`health`: passive circuit breaking plus
//! the verdicts of the active prober). All three are `!Send` worker-local state; nothing here is
//! shared between cores. `probe` is the exception: the one prober thread of the process, which
//! talks to workers only through channels.

pub mod balancer;
pub mod conn;
pub mod health;
pub mod pool;
pub mod probe;
