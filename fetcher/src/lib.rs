//! jetcrawl fetcher stage: requests in, pages out.
//!
//! Layout:
//! - `fetch`: one request to a page record or a retry (robots, politeness, HTTP)
//! - `http`: GET with timeouts, redirect cap, size caps, private-address guard, `[http] proxies`
//! - `charset`: body bytes to UTF-8 text (BOM, header, meta, sniffing)
//! - `robots`: robots.txt cache per origin
//! - `politeness`: per-host queues and pacing: delay, concurrency, Crawl-delay, back-off, autothrottle
//! - `lease`: partition ownership (KV leases, rendezvous hashing, fencing)
//! - `service`: the JetStream loop
//! - `error`: classified fetch errors

pub mod charset;
pub mod error;
pub mod fetch;
pub mod http;
pub mod lease;
pub mod politeness;
pub mod robots;
pub mod service;

pub use error::FetchError;
pub use fetch::{FetchOutcome, Fetcher, FetcherOptions};
pub use service::{run, FetcherConfig};
