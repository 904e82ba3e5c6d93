//! Authentication and authorization: consumers, credentials and the auth plugins' request steps.
//!
//! Split by what each file does:
//! - `set`: the immutable per-generation tables (key digests, basic-auth users, ACL bitmaps,
//!   consumer header blocks), built once on the main thread and shared read-only by workers;
//! - `steps`: one function per auth plugin, run by the plugin chain on a worker; each returns
//!   what the chain does next and records the identity in the request's `Identity`;
//! - `client_ip`: the client address, through `[server] trusted_proxies`;
//! - `verifier`: bcrypt checks on their own threads (they cost milliseconds, too long for a worker);
//! - `cache`: a bounded per-worker cache of verified basic-auth credentials;
//! - `jwt`: JWT verification (all algorithms on `ring`), key stores and the per-worker token
//!   cache;
//! - `forward`: the forward-auth client (an external HTTP auth service, over pooled connections).
//!
//! Secrets never reach logs or error bodies; stored secrets are compared through SHA-256 digests
//! and constant-time equality.

pub mod cache;
pub mod client_ip;
pub mod forward;
pub mod jwt;
pub mod set;
pub mod steps;
pub mod verifier;

pub use set::AuthSet;
pub use steps::Identity;
