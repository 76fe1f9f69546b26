//! jetcrawl benchmarks, run as release binaries (`cargo run --release -p jetcrawl-bench
//! --bin <name>`), each starting the servers it needs.
//!
//! Layout: `redis_server` (a throwaway `redis-server` on a free loopback port) ·
//! `bin/dupefilter` (bytes per URL and check+add throughput of the Redis dupefilter).

pub mod redis_server;
