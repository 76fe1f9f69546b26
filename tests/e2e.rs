//! Every integration test, in one test binary: each `tests/<area>.rs` is a module here.
//! One binary instead of sixteen compiles and links the shared harness (`common`) once,
//! which took about a minute and a half off a clean `./scripts/test.sh` on 2 cores.
//! nextest still runs each test in a process of its own; pick an area with a filter:
//! `cargo nextest run --test e2e -E 'test(/^politeness::/)'`.

mod common;

mod cluster;
mod consume;
mod demo;
mod deploy;
mod discovery;
mod dupefilter;
mod embedded;
mod export;
mod failpoints;
mod ops;
mod pipeline;
mod politeness;
mod proxies;
mod render;
mod robustness;
mod store;
