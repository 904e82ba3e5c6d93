//! Authentication plugins' I/O and verdict logic, kept apart from the plugin enum that schedules
//! them: `forward` asks an external HTTP service (Traefik's forwardAuth semantics).
//!
//! Invariant shared by every module here: no credential or header value ever reaches a log line or
//! an error string; failures are described by static text only.

pub mod forward;
