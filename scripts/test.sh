#!/usr/bin/env bash
# Runs the whole jetcrawl test suite on a fresh machine: installs what is missing
# (redis-server, PostgreSQL, a current nats-server, the deploy/ validators), starts
# PostgreSQL if it is down, validates deploy/, checks formatting and lints, then runs
# every test against real servers.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh
ensure_deps

# --- deploy/: compose, Dockerfile, nats/redis conf, alerts, dashboard, k8s ----------
./scripts/check-deploy.sh

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
# Every page the parser streams is also parsed into a DOM and the two compared: the
# whole suite doubles as a differential test of the fast path (parser/src/stream.rs).
export JETCRAWL_CHECK_FAST_PATH=1
cargo nextest run --workspace --all-targets --locked --no-fail-fast "$@"
