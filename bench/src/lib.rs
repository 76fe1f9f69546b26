//! jetcrawl benchmarks and the servers the tests share, run as release binaries
//! (`scripts/bench.sh`, or `cargo run --release -p jetcrawl-bench --bin <name>`).
//!
//! Layout: `crawl_state` (is a crawl finished: FRONTIER empty, nothing pending or
//! unacked) · `servers` (throwaway nats-server and redis-server on free loopback ports;
//! and a 3-master Redis Cluster; the integration tests use them too) · `cluster` (a throwaway NATS cluster whose nodes
//! can be killed and restarted, and that names its leaders) · `demo_site` (the
//! deterministic e-commerce site crawled by the benchmarks, crate `jetcrawl-demo-site`;
//! `bin/demo-site` serves it) · `procs` (CPU time and memory of processes, from /proc) ·
//! `stack` (one benchmark run: servers, a fresh PostgreSQL database, the `jetcrawl`
//! processes) · `bin/bench` (the crawl, sink, backpressure and memory scenarios) ·
//! `bin/dupefilter` (bytes per URL and check+add throughput of the Redis dupefilter).

pub mod cluster;
pub mod crawl_state;
pub mod procs;
pub mod servers;
pub mod stack;

pub use jetcrawl_demo_site as demo_site;

/// The PostgreSQL server benchmarks create their databases on.
pub const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
