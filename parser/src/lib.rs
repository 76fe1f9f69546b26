//! jetcrawl parser stage: pages in, items and new requests out; also the scheduler
//! for seeds.
//!
//! Layout:
//! - `extract`: extraction rules and link discovery over one page (pure)
//! - `stream`: the streaming fast path `extract` takes when the page and selectors allow
//! - `charref`: character references decoded as html5ever does (for `stream`)
//! - `sitemap`: XML sitemaps and sitemap indexes (plain or gzipped) as a page's links,
//!   within the protocol's caps
//! - `traps`: link-trap heuristics (`[traps]`: URL length, repeated path segments,
//!   exploding query values)
//! - `schedule`: dupefilter check, publish, await acks, dupefilter add (`Dedup`, the
//!   dupefilter half, is shared with the embedded mode)
//! - `recrawl`: the next fetch of a page (`[recrawl]`), a JetStream message schedule
//! - `service`: the JetStream loops over pages and seeds
//! - `error`: classified errors

mod charref;
pub mod error;
pub mod extract;
pub mod offload;
pub mod recrawl;
pub mod schedule;
pub mod service;
pub mod sitemap;
mod stream;
pub mod traps;

pub use error::ParseError;
pub use extract::{Extracted, Rules};
pub use service::{replay, run, ParserConfig};
