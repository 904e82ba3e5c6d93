//! The `ringgate` binary: CLI. TODO
fn main() {}
