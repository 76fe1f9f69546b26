//! Shared pieces of jetcrawl's stages.
//!
//! Layout:
//! - `config`: the spider file (TOML), parsed and validated (budgets and `[traps]` in
//!   `config/discovery.rs`, `[recrawl]` in `config/recrawl.rs`)
//! - `canon`: canonical URLs, fingerprints, scope and partitions
//! - `message`: requests, pages (headers + body) and items on the wire
//! - `hostkey`: what one politeness budget covers (host, domain or address)
//! - `dupefilter`: seen-fingerprint sets in Redis (compact buckets; one server or a
//!   Redis Cluster, `dupefilter/cluster.rs`) or in memory; page budgets beside them
//!   (`dupefilter/budget.rs`)
//! - `nats`: `NATS_URL` (one server or a cluster's list) and connecting with it
//! - `topology`: subjects, streams, consumers, dead letters (RECRAWL, `[recrawl]`'s
//!   message schedules: `topology/recrawl.rs`)
//! - `consume`: the pull loop every JetStream stage runs, and every message's disposition
//! - `failpoint`: named crash points for the crash tests (off unless `JETCRAWL_FAIL_AT`)
//! - `telemetry`: tracing, Prometheus metrics, health endpoints
//! - `presence`: live instances and partition leases (a KV bucket per crawl)
//! - `shutdown`: signals to a cancellation token
//! - `render`: the `[render]` section, which URLs go to renderers, their subjects and consumers
//! - `status`: stream depths and consumer lag for `jetcrawl status`
//! - `error`: classified errors

pub mod canon;
pub mod config;
pub mod consume;
pub mod dupefilter;
pub mod error;
pub mod failpoint;
pub mod hostkey;
pub mod message;
pub mod nats;
pub mod presence;
pub mod render;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod topology;

pub use config::{CompiledSpider, Spider};
pub use error::{ConfigError, Error, UrlError};
