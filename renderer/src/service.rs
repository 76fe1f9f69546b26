//! The renderer service: render partitions owned like the fetcher's frontier
//! partitions (leases in the crawl's render bucket, fencing, hand-over), pages to
//! PAGES. The loop is the fetcher's own (`jetcrawl_fetcher::service::serve`): publish
//! the page, await its JetStream ack, then ack the request; a renderer killed at any
//! point leaves its requests unacked, to be redelivered.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use jetcrawl_fetcher::lease::Lease;
use jetcrawl_fetcher::politeness::Politeness;
use jetcrawl_fetcher::service::{open_bucket, serve, Service, Source};
use jetcrawl_fetcher::{FetchOutcome, Fetcher, FetcherOptions};
use jetcrawl_shared::message::CrawlRequest;
use jetcrawl_shared::render::render_bucket_name;
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::topology::{self, Role};
use jetcrawl_shared::{presence, CompiledSpider};

use crate::error::RenderError;
use crate::pool::{Renderer, RendererOptions};

/// Room left in a NATS message for headers, next to the body.
const HEADER_ROOM: usize = 64 * 1024;
/// A request that would wait longer for its host goes back to the frontier.
const HOLD_LIMIT: Duration = Duration::from_secs(30);

/// Everything a renderer process needs.
pub struct RendererConfig {
    /// The spider (with a `[render]` section).
    pub spider: CompiledSpider,
    /// A connected NATS client.
    pub nats: async_nats::Client,
    /// Metrics.
    pub metrics: Metrics,
    /// The browser: a path or a name on PATH; `None` looks for the usual names.
    pub chromium: Option<PathBuf>,
    /// Pages rendering at once (browser tabs).
    pub tabs: usize,
    /// Requests held per owned render partition.
    pub window: usize,
    /// Source address for the renderer's own HTTP connections.
    pub local_address: Option<IpAddr>,
}

struct RenderSource(Renderer);

impl Source for RenderSource {
    async fn fetch(&self, req: &CrawlRequest, lease: &Lease) -> FetchOutcome {
        self.0.render(req, Some(lease)).await
    }
    fn politeness(&self) -> &Politeness {
        self.0.fetcher().politeness()
    }
}

/// Run until `shutdown`. Fails at once when no browser can be found or started.
pub async fn run(cfg: RendererConfig, shutdown: CancellationToken) -> Result<(), RenderError> {
    let chromium = crate::browser::locate(cfg.chromium.as_deref())?;
    let js = jetstream::new(cfg.nats.clone());
    topology::ensure_streams(&js, &cfg.spider.spider).await?;
    let body_cap = cfg
        .nats
        .server_info()
        .max_payload
        .saturating_sub(HEADER_ROOM)
        .max(64 * 1024);
    let spider = Arc::new(cfg.spider);
    let tabs = cfg.tabs.max(1);
    let fetcher = Fetcher::new(
        spider.clone(),
        FetcherOptions {
            body_cap,
            // Documents and the requests of the pages in the tabs, all hosts together.
            max_in_flight: tabs * 8,
            max_waiting: None,
            max_wait: Some(HOLD_LIMIT),
            local_address: cfg.local_address,
        },
        cfg.metrics.clone(),
    )?;
    let renderer = Renderer::new(
        fetcher,
        &spider,
        RendererOptions { chromium, tabs },
        cfg.metrics.clone(),
    )?;
    renderer.start().await?;
    let bucket = || presence::bucket_named(&js, &spider.spider, render_bucket_name(spider.name()));
    let Some(store) = open_bucket(bucket, &shutdown).await else {
        return Ok(());
    };
    let service = Service {
        source: RenderSource(renderer),
        role: Role::Renderer,
        store,
        js: js.clone(),
        spider: spider.clone(),
        metrics: cfg.metrics,
        window: cfg.window,
    };
    serve(service, shutdown).await;
    Ok(())
}
