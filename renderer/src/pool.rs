//! A renderer: the fetcher's path for the page itself (robots, politeness, HTTP,
//! redirects, charset), then a tab of one browser for its scripts. At most `tabs`
//! pages render at once, each in a fresh context. A browser that crashes or stops
//! answering is restarted, and the pages it had are rendered again on the new one.
//! Knows nothing of the transport: the JetStream service and the embedded mode share it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;

use jetcrawl_fetcher::lease::Lease;
use jetcrawl_fetcher::{FetchOutcome, Fetcher};
use jetcrawl_shared::message::{CrawlRequest, Page};
use jetcrawl_shared::render::Render;
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::CompiledSpider;

use crate::browser::Browser;
use crate::error::RenderError;
use crate::network::Network;
use crate::tab::{self, Job};

/// Browser failures one page may meet before it is sent back to be tried later.
const BROWSER_ATTEMPTS: u32 = 3;

/// How a renderer is set up besides the spider.
#[derive(Debug, Clone)]
pub struct RendererOptions {
    /// The browser executable (see [`crate::browser::locate`]).
    pub chromium: PathBuf,
    /// Pages rendering at once.
    pub tabs: usize,
}

/// Renders requests; cheap to clone.
#[derive(Clone)]
pub struct Renderer {
    inner: Arc<Inner>,
}

struct Inner {
    fetcher: Fetcher,
    network: Arc<Network>,
    render: Render,
    body_cap: usize,
    max_tries: u32,
    chromium: PathBuf,
    tabs: Semaphore,
    browser: Mutex<Option<Arc<Browser>>>,
    metrics: Metrics,
}

impl Renderer {
    /// A renderer for `spider` (which must have a `[render]` section), fetching with
    /// `fetcher` (whose politeness gate every request of the browser's passes too).
    pub fn new(
        fetcher: Fetcher,
        spider: &CompiledSpider,
        opts: RendererOptions,
        metrics: Metrics,
    ) -> Result<Self, RenderError> {
        let render = spider.spider.render.clone().ok_or_else(|| {
            RenderError::Browser(format!(
                "spider {} has no [render] section: nothing to render",
                spider.name()
            ))
        })?;
        let network = Network::new(fetcher.clone(), spider, metrics.clone())?;
        Ok(Renderer {
            inner: Arc::new(Inner {
                body_cap: fetcher.http().config().max_body_bytes,
                max_tries: spider.spider.http.max_tries,
                fetcher,
                network,
                render,
                chromium: opts.chromium,
                tabs: Semaphore::new(opts.tabs.max(1)),
                browser: Mutex::new(None),
                metrics,
            }),
        })
    }

    /// Start the browser now: a renderer that cannot run one says so at start.
    pub async fn start(&self) -> Result<(), RenderError> {
        self.browser().await.map(|_| ())
    }

    /// The fetcher half.
    pub fn fetcher(&self) -> &Fetcher {
        &self.inner.fetcher
    }

    /// The running browser's process id (tests kill it to see it restarted).
    pub async fn browser_pid(&self) -> Option<u32> {
        self.inner
            .browser
            .lock()
            .await
            .as_ref()
            .and_then(|b| b.pid())
    }

    async fn browser(&self) -> Result<Arc<Browser>, RenderError> {
        let mut slot = self.inner.browser.lock().await;
        if let Some(b) = slot.as_ref() {
            if !b.cdp.is_closed() {
                return Ok(b.clone());
            }
            // It went away between pages: start another.
            self.inner.metrics.browser_restarts.inc();
            tracing::warn!("browser exited; restarting it");
        }
        *slot = None;
        let browser = Arc::new(Browser::launch(&self.inner.chromium).await?);
        *slot = Some(browser.clone());
        Ok(browser)
    }

    /// Drop `failed` (if it is still the current browser) so the next page starts a
    /// new one; its process is killed once the last page using it lets go.
    async fn restart(&self, failed: &Arc<Browser>) {
        let mut slot = self.inner.browser.lock().await;
        if slot.as_ref().is_some_and(|b| Arc::ptr_eq(b, failed)) {
            *slot = None;
            failed.kill();
            self.inner.metrics.browser_restarts.inc();
            tracing::warn!("browser failed; restarting it");
        }
    }

    /// Fetch the page like a fetcher, then render it: the outcome carries the DOM
    /// after the page's scripts ran, or a record of why it could not be rendered.
    pub async fn render(&self, req: &CrawlRequest, lease: Option<&Lease>) -> FetchOutcome {
        let outcome = self.inner.fetcher.fetch(req, lease).await;
        let FetchOutcome::Page(mut page) = outcome else {
            return outcome;
        };
        if !page.is_parseable_html() {
            // An error record, a 404, a PDF: published as fetched.
            return FetchOutcome::Page(page);
        }
        let Ok(_tab) = self.inner.tabs.acquire().await else {
            return FetchOutcome::Later(Duration::from_secs(1));
        };
        let m = &self.inner.metrics;
        m.tabs_busy.inc();
        let started = Instant::now();
        let result = self.render_page(&page).await;
        m.tabs_busy.dec();
        let elapsed = started.elapsed();
        match result {
            Ok(html) => {
                m.pages_rendered.inc();
                m.render_seconds.observe(elapsed.as_secs_f64());
                let mut html = html;
                if html.len() > self.inner.body_cap {
                    let mut end = self.inner.body_cap;
                    while !html.is_char_boundary(end) {
                        end -= 1;
                    }
                    html.truncate(end);
                    page.truncated = true;
                }
                page.body = Bytes::from(html);
                page.content_type = Some("text/html; charset=utf-8".to_string());
                page.charset = Some("UTF-8".to_string());
            }
            Err(e) if e.is_browser_failure() && page.tries < self.inner.max_tries => {
                // The browser keeps failing on this page: let it come back later,
                // counted as a try, rather than lose it.
                let delay = Duration::from_secs(5);
                let mut request = req.clone();
                request.tries = page.tries;
                request.not_before_ms = Some(Utc::now().timestamp_millis() + 5_000);
                request.last_error = Some(e.to_string());
                return FetchOutcome::Retry { request, delay };
            }
            Err(e) => {
                m.pages_rendered.inc();
                if matches!(e, RenderError::Timeout(_)) {
                    m.render_timeouts.inc();
                }
                m.fetch_errors
                    .get_or_create(&vec![("kind".to_string(), e.kind().to_string())])
                    .inc();
                tracing::warn!(url = %page.url, error = %e, "page not rendered");
                page.error = Some(e.to_string());
                page.error_kind = Some(e.kind().to_string());
                page.body = Bytes::new();
            }
        }
        page.rendered = true;
        page.fetch_ms += elapsed.as_millis() as u64;
        FetchOutcome::Page(page)
    }

    async fn render_page(&self, page: &Page) -> Result<String, RenderError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let browser = match self.browser().await {
                Ok(b) => b,
                Err(e) if attempts < BROWSER_ATTEMPTS => {
                    tracing::warn!(error = %e, "browser not started; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let job = Job {
                url: &page.final_url,
                html: page.body.clone(),
                depth: page.depth,
                timeout: self.inner.render.timeout(),
                wait_for: self.inner.render.wait_for.as_deref(),
                network: self.inner.network.clone(),
            };
            let rendered = tab::render(&browser.cdp, job).await;
            if !rendered.browser_ok {
                self.restart(&browser).await;
            }
            match rendered.result {
                Err(e) if e.is_browser_failure() && attempts < BROWSER_ATTEMPTS => {
                    tracing::info!(url = %page.url, error = %e, "browser failed under a page; rendering it again");
                }
                other => return other,
            }
        }
    }
}
