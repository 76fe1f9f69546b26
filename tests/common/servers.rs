//! The servers live in the bench crate, shared with the benchmarks.

pub use jetcrawl_bench::servers::*;
