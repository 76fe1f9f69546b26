#!/usr/bin/env bash
# Runs the whole jetcrawl test suite on a fresh machine: installs what is missing
# (redis-server, PostgreSQL, a current nats-server), starts PostgreSQL if it is down,
# checks formatting and lints, then runs every test against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh
ensure_deps

# --- Rust ----------------------------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "tests"
cargo nextest run --workspace --all-targets --locked --no-fail-fast "$@"
