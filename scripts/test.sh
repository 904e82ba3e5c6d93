#!/usr/bin/env bash
# The whole suite, as CI runs it: build every target, all unit and integration tests, formatting, lints.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -f "$HOME/.cargo/env" ]; then . "$HOME/.cargo/env"; fi

echo "== cargo build --all-targets"
cargo build --all-targets
echo "== cargo test"
cargo test --no-fail-fast
echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --all-targets -- -D warnings
echo "== all green"
