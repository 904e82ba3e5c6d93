//! Upstream selection and connections, per worker: smooth weighted round-robin (`balancer`) and a
//! connection pool per target (`pool`). Both are `!Send` worker-local state; nothing here is shared
//! between cores.

pub mod balancer;
pub mod conn;
pub mod pool;
