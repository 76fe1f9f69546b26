#!/usr/bin/env bash
# Every benchmark figure in docs/BENCHMARKS.md, from a fresh machine:
#   ./scripts/bench.sh            # all scenarios, 3 runs each (~15 min)
#   ./scripts/bench.sh distributed --runs 5 --pages 20000
# Installs what is missing (as scripts/test.sh does), builds release binaries (and the
# peer crawler, bench/peer-spider), then runs the crawl benchmarks (target/release/bench)
# and the dupefilter benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh
ensure_deps

cargo build --release --locked -p jetcrawl -p jetcrawl-bench --bins
# The peer crawler `bench versus` measures jetcrawl against (spider, from crates.io): its
# own workspace, so the test command never builds it.
cargo build --release --locked --manifest-path bench/peer-spider/Cargo.toml \
    --target-dir target/peer-spider
if [ $# -gt 0 ]; then
    exec target/release/bench "$@"
fi
target/release/bench all --runs 3
target/release/dupefilter --sizes 1000000,10000000
