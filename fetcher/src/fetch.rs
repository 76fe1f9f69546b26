//! Fetch one request: robots, politeness, HTTP, charset — to a page record or a retry.
//! Knows nothing of the transport, so the JetStream loop and the embedded mode share it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use url::Url;

use jetcrawl_shared::canon::{self, host_in_scope, url_fingerprint};
use jetcrawl_shared::message::{CrawlRequest, Page};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::CompiledSpider;

use crate::charset::{decode_body_for_url, is_textual};
use crate::error::FetchError;
use crate::http::{HttpClient, HttpConfig};
use crate::politeness::{Backlog, Politeness, PolitenessConfig};
use crate::robots::RobotsCache;

/// What became of one request.
#[derive(Debug)]
pub enum FetchOutcome {
    /// The final record: a response, or the error after the last try. Publish it.
    Page(Box<Page>),
    /// A retryable failure with tries left: schedule this request again.
    Retry {
        /// The request with `tries`, `not_before_ms` and `last_error` updated.
        request: CrawlRequest,
        /// The backoff chosen.
        delay: Duration,
    },
    /// The host has too many requests waiting in this process; hand it back.
    Busy(Duration),
    /// The request can never be fetched (its URL does not parse): dead-letter it.
    Invalid(String),
}

/// Stage logic shared by every fetcher: owns the HTTP client, robots cache and
/// per-host gatekeeper.
#[derive(Clone)]
pub struct Fetcher {
    spider: Arc<CompiledSpider>,
    http: HttpClient,
    robots: Option<RobotsCache>,
    politeness: Politeness,
    metrics: Metrics,
}

impl Fetcher {
    /// Build from the spider. `body_cap` bounds bodies further (the transport's
    /// largest message, for instance).
    pub fn new(
        spider: Arc<CompiledSpider>,
        body_cap: usize,
        metrics: Metrics,
    ) -> Result<Self, FetchError> {
        let s = &spider.spider;
        let scope = spider.scope_hosts();
        let allowed_hosts: Option<crate::http::ScopeCheck> = if s.allowed_domains.is_empty() {
            None
        } else {
            Some(Arc::new(move |url: &Url| {
                url.host_str()
                    .is_some_and(|h| host_in_scope(&h.to_ascii_lowercase(), &scope))
            }))
        };
        let http = HttpClient::new(HttpConfig {
            user_agent: s.user_agent.clone(),
            connect_timeout: Duration::from_millis(s.http.connect_timeout_ms),
            read_timeout: Duration::from_millis(s.http.read_timeout_ms),
            total_timeout: Duration::from_millis(s.http.timeout_ms),
            max_redirects: s.http.max_redirects,
            max_body_bytes: s.http.max_body_bytes.min(body_cap),
            max_header_bytes: s.http.max_header_bytes,
            allow_private_networks: s.allow_private_networks,
            allowed_hosts,
        })?;
        let robots = s.obey_robots.then(|| {
            RobotsCache::new(
                http.clone(),
                s.user_agent.clone(),
                10_000,
                Duration::from_secs(24 * 3600),
            )
        });
        let concurrency = s.politeness.concurrency_per_host;
        let politeness = Politeness::new(PolitenessConfig {
            delay: Duration::from_millis(s.politeness.delay_ms),
            concurrency,
            autothrottle: s.politeness.autothrottle,
            max_waiting: (concurrency * 4).max(8),
        });
        Ok(Fetcher {
            spider,
            http,
            robots,
            politeness,
            metrics,
        })
    }

    /// Fetch one request.
    pub async fn fetch(&self, req: &CrawlRequest) -> FetchOutcome {
        let started = tokio::time::Instant::now();
        let url = match Url::parse(&req.url) {
            Ok(url) => url,
            Err(e) => {
                return FetchOutcome::Invalid(FetchError::InvalidUrl(e.to_string()).to_string())
            }
        };
        let mut crawl_delay = None;
        if let Some(robots) = &self.robots {
            let verdict = robots.check(&url).await;
            if !verdict.allowed {
                self.metrics.robots_denied.inc();
                return FetchOutcome::Page(Box::new(self.record(
                    req,
                    &url,
                    RecordError {
                        kind: "robots",
                        message: "disallowed by robots.txt".into(),
                    },
                    started.elapsed(),
                )));
            }
            crawl_delay = verdict.crawl_delay;
        }
        let host = url.host_str().unwrap_or_default().to_string();
        let permit = match self.politeness.acquire(&host, crawl_delay).await {
            Ok(p) => p,
            Err(Backlog { retry_after }) => return FetchOutcome::Busy(retry_after),
        };
        let fetch_started = tokio::time::Instant::now();
        let result = self.http.get(&url).await;
        permit.finish(fetch_started.elapsed());
        let tries = req.tries.saturating_add(1);
        let max_tries = self.spider.spider.http.max_tries;
        match result {
            Ok(resp) => {
                let retryable = matches!(resp.status, 408 | 429 | 500..=599);
                if retryable && tries < max_tries {
                    let delay = self
                        .spider
                        .spider
                        .http
                        .backoff(tries)
                        .max(resp.retry_after.unwrap_or_default());
                    return self.retry(req, tries, delay, format!("http status {}", resp.status));
                }
                self.metrics.fetched_bytes.inc_by(resp.body.len() as u64);
                self.metrics
                    .fetch_seconds
                    .observe(resp.elapsed.as_secs_f64());
                self.metrics
                    .pages_fetched
                    .get_or_create(&Metrics::status_class(Some(resp.status)))
                    .inc();
                let textual = is_textual(resp.content_type.as_deref());
                let mut truncated = resp.truncated;
                let (body, charset) = if textual {
                    let (mut text, charset) = decode_body_for_url(
                        &resp.body,
                        resp.content_type.as_deref(),
                        &resp.final_url,
                    );
                    // Single-byte encodings grow up to 3x as UTF-8: the cap holds for
                    // what is published, not only for what was received.
                    let cap = self.http.config().max_body_bytes;
                    if text.len() > cap {
                        let mut end = cap;
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        text.truncate(end);
                        truncated = true;
                    }
                    (Bytes::from(text), Some(charset.to_string()))
                } else {
                    // Not something the parser reads: keep the record, not the bytes.
                    (Bytes::new(), None)
                };
                let final_url = canon::canonicalize(&resp.final_url, &self.spider.query_filter)
                    .unwrap_or(resp.final_url);
                FetchOutcome::Page(Box::new(Page {
                    fingerprint: url_fingerprint(&url),
                    url,
                    final_url,
                    status: Some(resp.status),
                    content_type: resp.content_type,
                    depth: req.depth,
                    fetched_at: Utc::now(),
                    fetch_ms: started.elapsed().as_millis() as u64,
                    tries,
                    charset,
                    truncated,
                    error: None,
                    error_kind: None,
                    body,
                }))
            }
            Err(e) if e.is_retryable() && tries < max_tries => {
                let delay = self.spider.spider.http.backoff(tries);
                self.retry(req, tries, delay, e.to_string())
            }
            Err(e) => self.final_error(req, &url, &e, started.elapsed()),
        }
    }

    fn retry(
        &self,
        req: &CrawlRequest,
        tries: u32,
        delay: Duration,
        error: String,
    ) -> FetchOutcome {
        self.metrics.retries.inc();
        let mut request = req.clone();
        request.tries = tries;
        request.not_before_ms = Some(Utc::now().timestamp_millis() + delay.as_millis() as i64);
        request.last_error = Some(error);
        FetchOutcome::Retry { request, delay }
    }

    fn final_error(
        &self,
        req: &CrawlRequest,
        url: &Url,
        e: &FetchError,
        elapsed: Duration,
    ) -> FetchOutcome {
        self.metrics
            .fetch_errors
            .get_or_create(&vec![("kind".to_string(), e.kind().to_string())])
            .inc();
        FetchOutcome::Page(Box::new(self.record(
            req,
            url,
            RecordError {
                kind: e.kind(),
                message: e.to_string(),
            },
            elapsed,
        )))
    }

    fn record(&self, req: &CrawlRequest, url: &Url, err: RecordError, elapsed: Duration) -> Page {
        self.metrics
            .pages_fetched
            .get_or_create(&Metrics::status_class(None))
            .inc();
        Page {
            url: url.clone(),
            final_url: url.clone(),
            status: None,
            content_type: None,
            depth: req.depth,
            fingerprint: url_fingerprint(url),
            fetched_at: Utc::now(),
            fetch_ms: elapsed.as_millis() as u64,
            tries: req.tries.saturating_add(1),
            charset: None,
            truncated: false,
            error: Some(err.message),
            error_kind: Some(err.kind.to_string()),
            body: Bytes::new(),
        }
    }
}

struct RecordError {
    kind: &'static str,
    message: String,
}
