#!/usr/bin/env bash
# Every benchmark figure in docs/BENCHMARKS.md, from a fresh machine:
#   ./scripts/bench.sh            # all scenarios, 3 runs each (~15 min)
#   ./scripts/bench.sh distributed --runs 5 --pages 20000
# Installs what is missing (as scripts/test.sh does), builds release binaries, then
# runs the crawl benchmarks (target/release/bench) and the dupefilter benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/deps.sh
ensure_deps

cargo build --release --locked -p jetcrawl -p jetcrawl-bench --bins
if [ $# -gt 0 ]; then
    exec target/release/bench "$@"
fi
target/release/bench all --runs 3
target/release/dupefilter --sizes 1000000,10000000
