//! jetcrawl renderer stage: requests for JavaScript pages in, rendered pages out.
//!
//! Layout:
//! - `pool`: a renderer: the page fetched like a fetcher would, then a browser tab;
//!   tab pool, browser restarts, page records for what could not be rendered
//! - `tab`: one page in a fresh browser context: requests answered, settle, DOM read
//! - `network`: the browser's own requests under jetcrawl's rules (guard, scope, gate)
//! - `browser`: finding and starting Chromium, tied to this process
//! - `cdp`: a minimal DevTools-protocol client over one websocket
//! - `service`: the JetStream loop (the fetcher's, over render partitions)
//! - `error`: classified render errors

pub mod browser;
pub mod cdp;
pub mod error;
pub mod network;
pub mod pool;
pub mod service;
pub mod tab;

pub use error::RenderError;
pub use pool::{Renderer, RendererOptions};
pub use service::{run, RendererConfig};
