//! ringgate: a thread-per-core HTTP/1.1 API gateway on io_uring.
//!
//! Request path, in the order a request meets it:
//! `worker` (accept, per-core state) -> `proxy` (per-connection loop) -> `http` (strict parsing and
//! framing) -> `router` (route match on a normalized path) -> `upstream` (balancer + pool) -> back out
//! through `http::write`. `config` turns the TOML file into the immutable snapshot every worker reads.

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod auth;
pub mod config;
pub mod dns;
pub mod errors;
pub mod http;
pub mod limit;
pub mod log;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod router;
pub mod server;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod worker;
