//! Logging, Prometheus metrics, and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Label set: a few low-cardinality pairs.
pub type Labels = Vec<(String, String)>;

/// Set up `tracing` from `RUST_LOG` (default `info`); `JETCRAWL_LOG_FORMAT=json` for JSON.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if std::env::var("JETCRAWL_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Every metric jetcrawl exports; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    /// Pages fetched, by status class (2xx, 3xx, 4xx, 5xx, error).
    pub pages_fetched: Family<Labels, Counter>,
    /// Fetch failures, by error kind.
    pub fetch_errors: Family<Labels, Counter>,
    /// Body bytes received.
    pub fetched_bytes: Counter,
    /// Fetch latency.
    pub fetch_seconds: Histogram,
    /// Retries scheduled.
    pub retries: Counter,
    /// Requests refused by robots.txt.
    pub robots_denied: Counter,
    /// Pages parsed.
    pub pages_parsed: Counter,
    /// Links found on pages (in scope, after depth/deny rules).
    pub links_found: Counter,
    /// Links that were new to the dupefilter and scheduled.
    pub links_new: Counter,
    /// Of those, URLs scheduled before at a deeper depth (fetched again).
    pub links_replanned: Counter,
    /// Items extracted.
    pub items_extracted: Counter,
    /// Items committed to the database.
    pub items_stored: Counter,
    /// Sink transaction latency.
    pub batch_seconds: Histogram,
    /// Redelivered messages seen, by stage.
    pub redeliveries: Family<Labels, Counter>,
    /// Messages dead-lettered, by stage.
    pub dead_letters: Family<Labels, Counter>,
    /// Pull requests replaced because the server no longer served them (no heartbeat
    /// for two intervals, or a reconnect), by stage.
    pub pulls_renewed: Family<Labels, Counter>,
    /// Links a page had beyond `[follow] max_links_per_page`, not followed.
    pub links_capped: Counter,
    /// Items or requests too large for the server's `max_payload`, dead-lettered.
    pub oversized: Counter,
    /// Messages being handled now.
    pub in_flight: Gauge,
    /// Consumer lag: messages not yet delivered, by stage (from the server).
    pub consumer_pending: Family<Labels, Gauge>,
    /// Delivered but not yet acknowledged, by stage (from the server).
    pub consumer_ack_pending: Family<Labels, Gauge>,
    /// The consumer's ack floor, by stage (from the server): it stands still while the
    /// stage makes no progress.
    pub consumer_ack_floor: Family<Labels, Gauge>,
    /// 1 while the stage's consumer is paused (`jetcrawl pause`), by stage.
    pub consumer_paused: Family<Labels, Gauge>,
    /// Always 1, labelled with the version: one series per live process.
    pub build_info: Family<Labels, Gauge>,
    /// Resident memory of this process, read at each scrape.
    pub resident_memory: Gauge,
    /// Requests put off because their host's robots.txt could not be read.
    pub robots_deferred: Counter,
    /// Requests put back in the frontier because their wait would be long.
    pub handed_back: Counter,
    /// Frontier partitions this fetcher owns.
    pub partitions_owned: Gauge,
    /// Partition leases taken, handed over and lost, by `change`.
    pub lease_changes: Family<Labels, Counter>,
    /// Live fetchers, as this one sees them.
    pub live_fetchers: Gauge,
    /// Hosts with requests waiting in this fetcher.
    pub hosts_queued: Gauge,
    /// Requests waiting for their host in this fetcher.
    pub requests_queued: Gauge,
    /// Links not followed: a trap heuristic or a page budget, by reason.
    pub links_refused: Family<Labels, Counter>,
    /// Pages that were sitemaps or sitemap indexes.
    pub sitemaps_parsed: Counter,
    /// Sitemaps cut at the protocol's caps, by cap (`urls`, `bytes`).
    pub sitemaps_capped: Family<Labels, Counter>,
    /// Page records of a `304 Not Modified` (recrawls): nothing parsed.
    pub pages_not_modified: Counter,
    /// Next fetches scheduled (`[recrawl]`).
    pub recrawls_scheduled: Counter,
    /// Requests sent through each `[http] proxies` entry, by proxy index and outcome.
    pub proxy_requests: Family<Labels, Counter>,
    /// Times a proxy was set aside (failing), by proxy index.
    pub proxies_set_aside: Family<Labels, Counter>,
    /// Renderer: pages rendered in the browser (settled or not).
    pub pages_rendered: Counter,
    /// Renderer: time from navigation to a settled page.
    pub render_seconds: Histogram,
    /// Renderer: pages not settled within `[render] timeout_ms`.
    pub render_timeouts: Counter,
    /// Renderer: browsers restarted after a crash or a hang.
    pub browser_restarts: Counter,
    /// Renderer: tabs rendering a page now.
    pub tabs_busy: Gauge,
    /// Renderer: requests of the browser's own refused, by `reason`.
    pub browser_requests_refused: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("jetcrawl");
        let mut m = Metrics {
            registry: Arc::new(Registry::default()),
            ready: Arc::new(AtomicBool::new(false)),
            pages_fetched: Family::default(),
            fetch_errors: Family::default(),
            fetched_bytes: Counter::default(),
            fetch_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            retries: Counter::default(),
            robots_denied: Counter::default(),
            pages_parsed: Counter::default(),
            links_found: Counter::default(),
            links_new: Counter::default(),
            links_replanned: Counter::default(),
            items_extracted: Counter::default(),
            items_stored: Counter::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            redeliveries: Family::default(),
            dead_letters: Family::default(),
            pulls_renewed: Family::default(),
            links_capped: Counter::default(),
            pages_rendered: Counter::default(),
            render_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 14)),
            render_timeouts: Counter::default(),
            browser_restarts: Counter::default(),
            tabs_busy: Gauge::default(),
            browser_requests_refused: Family::default(),
            oversized: Counter::default(),
            in_flight: Gauge::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            consumer_ack_floor: Family::default(),
            consumer_paused: Family::default(),
            build_info: Family::default(),
            resident_memory: Gauge::default(),
            robots_deferred: Counter::default(),
            handed_back: Counter::default(),
            partitions_owned: Gauge::default(),
            lease_changes: Family::default(),
            live_fetchers: Gauge::default(),
            hosts_queued: Gauge::default(),
            requests_queued: Gauge::default(),
            links_refused: Family::default(),
            sitemaps_parsed: Counter::default(),
            sitemaps_capped: Family::default(),
            pages_not_modified: Counter::default(),
            recrawls_scheduled: Counter::default(),
            proxy_requests: Family::default(),
            proxies_set_aside: Family::default(),
        };
        r.register(
            "pages_not_modified",
            "Page records of a 304 Not Modified (recrawls): its items are left as they are",
            m.pages_not_modified.clone(),
        );
        r.register(
            "recrawls_scheduled",
            "Next fetches scheduled by [recrawl]",
            m.recrawls_scheduled.clone(),
        );
        r.register(
            "sitemaps_parsed",
            "Pages that were XML sitemaps or sitemap indexes",
            m.sitemaps_parsed.clone(),
        );
        r.register(
            "sitemaps_capped",
            "Sitemaps cut at the protocol's caps (50,000 URLs, 50 MB decompressed), by cap",
            m.sitemaps_capped.clone(),
        );
        r.register(
            "links_refused",
            "Links not followed, by reason: path_repeat, url_length, query_values (trap \
             heuristics), max_pages, max_pages_per_host (budgets)",
            m.links_refused.clone(),
        );
        r.register(
            "pages_fetched",
            "Pages fetched, by status class",
            m.pages_fetched.clone(),
        );
        r.register(
            "fetch_errors",
            "Fetch failures, by kind",
            m.fetch_errors.clone(),
        );
        r.register(
            "fetched_bytes",
            "Body bytes received",
            m.fetched_bytes.clone(),
        );
        r.register(
            "fetch_duration_seconds",
            "Fetch latency",
            m.fetch_seconds.clone(),
        );
        r.register("retries", "Fetch retries scheduled", m.retries.clone());
        r.register(
            "robots_denied",
            "Requests refused by robots.txt",
            m.robots_denied.clone(),
        );
        r.register("pages_parsed", "Pages parsed", m.pages_parsed.clone());
        r.register("links_found", "In-scope links found", m.links_found.clone());
        r.register(
            "links_new",
            "Links new to the dupefilter",
            m.links_new.clone(),
        );
        r.register(
            "links_replanned",
            "URLs found again along a shorter path and scheduled again at that depth",
            m.links_replanned.clone(),
        );
        r.register(
            "items_extracted",
            "Items extracted",
            m.items_extracted.clone(),
        );
        r.register(
            "items_stored",
            "Items committed to the database",
            m.items_stored.clone(),
        );
        r.register(
            "sink_batch_duration_seconds",
            "Sink transaction latency",
            m.batch_seconds.clone(),
        );
        r.register(
            "redeliveries",
            "Redelivered messages, by stage",
            m.redeliveries.clone(),
        );
        r.register(
            "dead_letters",
            "Dead-lettered messages, by stage",
            m.dead_letters.clone(),
        );
        r.register(
            "pulls_renewed",
            "Pull requests replaced after the server stopped serving them (missed heartbeats, reconnect), by stage",
            m.pulls_renewed.clone(),
        );
        r.register(
            "links_capped",
            "Links not followed because a page had more than [follow] max_links_per_page",
            m.links_capped.clone(),
        );
        r.register(
            "oversized_messages",
            "Items or requests larger than the server's max_payload, dead-lettered",
            m.oversized.clone(),
        );
        r.register(
            "in_flight_messages",
            "Messages being handled",
            m.in_flight.clone(),
        );
        r.register(
            "consumer_pending_messages",
            "Messages not yet delivered to the stage's consumer",
            m.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending_messages",
            "Messages delivered to the stage's consumer and not yet acknowledged",
            m.consumer_ack_pending.clone(),
        );
        r.register(
            "consumer_ack_floor_messages",
            "The stage's consumer ack floor (consumer sequence): flat while no progress",
            m.consumer_ack_floor.clone(),
        );
        r.register(
            "consumer_paused",
            "1 while the stage's consumer is paused",
            m.consumer_paused.clone(),
        );
        r.register(
            "build_info",
            "Always 1, labelled with the jetcrawl version: one series per live process",
            m.build_info.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory of this process",
            m.resident_memory.clone(),
        );
        m.build_info
            .get_or_create(&vec![(
                "version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )])
            .set(1);
        r.register(
            "robots_deferred",
            "Requests put off while their host's robots.txt could not be read",
            m.robots_deferred.clone(),
        );
        r.register(
            "requests_handed_back",
            "Requests put back in the frontier because their host could not take them soon",
            m.handed_back.clone(),
        );
        r.register(
            "partitions_owned",
            "Frontier partitions this fetcher owns",
            m.partitions_owned.clone(),
        );
        r.register(
            "lease_changes",
            "Partition leases acquired, released and lost",
            m.lease_changes.clone(),
        );
        r.register(
            "live_fetchers",
            "Live fetchers of the crawl, as this fetcher sees them",
            m.live_fetchers.clone(),
        );
        r.register(
            "hosts_queued",
            "Hosts with requests waiting in this fetcher",
            m.hosts_queued.clone(),
        );
        r.register(
            "requests_queued",
            "Requests waiting for their host in this fetcher",
            m.requests_queued.clone(),
        );
        r.register(
            "proxy_requests",
            "Requests through each [http] proxies entry, by proxy index and outcome (ok, error, proxy_failed)",
            m.proxy_requests.clone(),
        );
        r.register(
            "proxies_set_aside",
            "Times a proxy was set aside as failing, by proxy index",
            m.proxies_set_aside.clone(),
        );
        r.register(
            "pages_rendered",
            "Pages rendered in headless Chromium",
            m.pages_rendered.clone(),
        );
        r.register(
            "render_seconds",
            "Time from navigation to a settled page",
            m.render_seconds.clone(),
        );
        r.register(
            "render_timeouts",
            "Pages not settled within [render] timeout_ms",
            m.render_timeouts.clone(),
        );
        r.register(
            "browser_restarts",
            "Browsers restarted after a crash or a hang",
            m.browser_restarts.clone(),
        );
        r.register(
            "render_tabs_busy",
            "Browser tabs rendering a page now",
            m.tabs_busy.clone(),
        );
        r.register(
            "browser_requests_refused",
            "Requests of the browser's own refused (private address, method, scheme, ...)",
            m.browser_requests_refused.clone(),
        );
        m.registry = Arc::new(r);
        m
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory
                .set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Mark the stage ready (consuming) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the stage is consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The counter of links refused for `reason` (`jetcrawl_links_refused_total`).
    pub fn refused(&self, reason: &str) -> Counter {
        self.links_refused
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .clone()
    }

    /// `2xx`, `3xx`, `4xx`, `5xx` or `error`.
    pub fn status_class(status: Option<u16>) -> Labels {
        let class = match status {
            Some(s) => format!("{}xx", s / 100),
            None => "error".to_string(),
        };
        vec![("status".to_string(), class)]
    }
}

/// This process's resident set size, from `/proc/self/status` (Linux; `None` elsewhere).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` until shutdown. Returns the
/// bound address (useful with port 0).
pub async fn serve_metrics(
    addr: SocketAddr,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::{http::StatusCode, routing::get, Router};
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let m1 = metrics.clone();
    let m2 = metrics;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m1.clone();
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let m = m2.clone();
                async move {
                    if m.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    tracing::info!(addr = %bound, "metrics listening");
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_prefix() {
        let m = Metrics::new();
        m.items_stored.inc_by(3);
        m.pages_fetched
            .get_or_create(&Metrics::status_class(Some(404)))
            .inc();
        let text = m.render();
        assert!(text.contains("jetcrawl_items_stored_total 3"), "{text}");
        assert!(
            text.contains("jetcrawl_pages_fetched_total{status=\"4xx\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn every_process_reports_its_version_and_memory() {
        let text = Metrics::new().render();
        let version = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("jetcrawl_build_info{{version=\"{version}\"}} 1")),
            "{text}"
        );
        let rss: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("jetcrawl_process_resident_memory_bytes "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no resident memory in {text}"));
        // A test process holds at least a megabyte and far less than the machine.
        assert!((1 << 20..1 << 36).contains(&rss), "rss {rss}");
    }
}
