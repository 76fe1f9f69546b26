//! jetcrawl fetcher stage: requests in, pages out.
//!
//! Layout:
//! - `fetch`: one request to a page record or a retry (robots, politeness, HTTP)
//! - `http`: GET with timeouts, redirect cap, size caps, private-address guard
//! - `charset`: body bytes to UTF-8 text (BOM, header, meta, sniffing)
//! - `robots`: robots.txt cache per origin
//! - `politeness`: per-host delay, concurrency, Crawl-delay, autothrottle
//! - `service`: the JetStream loop
//! - `error`: classified fetch errors

pub mod charset;
pub mod error;
pub mod fetch;
pub mod http;
pub mod politeness;
pub mod robots;
pub mod service;

pub use error::FetchError;
pub use fetch::{FetchOutcome, Fetcher};
pub use service::{run, FetcherConfig};
