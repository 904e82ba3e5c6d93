//! Authentication building blocks for the auth plugins: pure verification libraries with no I/O
//! and no knowledge of requests (the plugin layer extracts credentials and maps owners to
//! consumers).

pub mod jwt;
