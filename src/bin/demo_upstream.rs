//! Demo upstream. TODO
fn main() {}
