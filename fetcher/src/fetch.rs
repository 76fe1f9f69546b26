//! Fetch one request: robots, politeness, HTTP, charset — to a page record or a retry.
//! Knows nothing of the transport, so the JetStream loop and the embedded mode share it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use url::Url;

use jetcrawl_shared::canon::{self, host_in_scope, url_fingerprint};
use jetcrawl_shared::hostkey::HostKeys;
use jetcrawl_shared::message::{CrawlRequest, Page};
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::CompiledSpider;

use crate::charset::{decode_bytes_for_url, is_textual};
use crate::error::FetchError;
use crate::http::{HttpClient, HttpConfig};
use crate::lease::Lease;
use crate::politeness::{Backlog, Politeness, PolitenessConfig};
use crate::robots::{RobotsCache, RobotsVerdict};

/// How long a host's robots.txt may answer 5xx/429 before its URLs stop waiting for it
/// (Google stops waiting after 12 hours; then each URL's tries decide).
const ROBOTS_PATIENCE: Duration = Duration::from_secs(6 * 3600);

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
    /// Not now, and no try counted: the host cannot take it soon, or its robots.txt
    /// is unreachable. Try again after this long.
    Later(Duration),
    /// This fetcher's lease on the request's partition ended before the request
    /// started: another fetcher owns the host now. Hand the request back.
    Revoked,
    /// The request can never be fetched (its URL does not parse): dead-letter it.
    Invalid(String),
}

/// How a fetcher process is set up besides the spider.
#[derive(Debug, Clone)]
pub struct FetcherOptions {
    /// Bounds bodies further (the transport's largest message, for instance).
    pub body_cap: usize,
    /// Requests in flight in this process, all hosts together.
    pub max_in_flight: usize,
    /// Requests that may wait for one host; more come back as [`FetchOutcome::Later`].
    pub max_waiting: Option<u32>,
    /// A request expected to wait longer for its host comes back as `Later`.
    pub max_wait: Option<Duration>,
    /// Source address for outgoing connections.
    pub local_address: Option<std::net::IpAddr>,
}

impl FetcherOptions {
    /// For a process whose caller bounds its own fetches (embedded mode, `check`): a
    /// host with a long queue hands requests back rather than hold the caller's slots.
    pub fn bounded_by_caller(body_cap: usize, concurrency_per_host: u32) -> Self {
        FetcherOptions {
            body_cap,
            max_in_flight: usize::MAX,
            max_waiting: Some((concurrency_per_host * 4).max(8)),
            max_wait: None,
            local_address: None,
        }
    }
}

/// Stage logic shared by every fetcher: owns the HTTP client, robots cache and
/// per-host gatekeeper.
#[derive(Clone)]
pub struct Fetcher {
    spider: Arc<CompiledSpider>,
    http: HttpClient,
    robots: Option<RobotsCache>,
    politeness: Politeness,
    keys: HostKeys,
    metrics: Metrics,
}

impl Fetcher {
    /// Build from the spider.
    pub fn new(
        spider: Arc<CompiledSpider>,
        opts: FetcherOptions,
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
            max_body_bytes: s.http.max_body_bytes.min(opts.body_cap),
            max_header_bytes: s.http.max_header_bytes,
            allow_private_networks: s.allow_private_networks,
            allowed_hosts,
            local_address: opts.local_address,
            proxies: s.http.proxies.clone(),
            metrics: Some(metrics.clone()),
        })?;
        let politeness = Politeness::new(PolitenessConfig {
            delay: Duration::from_millis(s.politeness.delay_ms),
            concurrency: s.politeness.concurrency_per_host,
            autothrottle: s.politeness.autothrottle,
            max_in_flight: opts.max_in_flight.max(1),
            max_waiting: opts.max_waiting,
            max_wait: opts.max_wait,
        });
        let robots = s.obey_robots.then(|| {
            RobotsCache::new(
                http.clone(),
                s.user_agent.clone(),
                10_000,
                Duration::from_secs(24 * 3600),
                Some(politeness.clone()),
            )
        });
        Ok(Fetcher {
            keys: HostKeys::new(s.politeness.per),
            spider,
            http,
            robots,
            politeness,
            metrics,
        })
    }

    /// The per-host gatekeeper (a fetcher handing a partition over asks it when the
    /// partition's hosts are quiet).
    pub fn politeness(&self) -> &Politeness {
        &self.politeness
    }

    /// The HTTP client (its limits and private-address guard).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// GET a resource a page asks for while a renderer runs its scripts: through its
    /// host's politeness gate, like every request of this process, with `http` (this
    /// fetcher's client, or a stricter one for hosts out of the crawl's scope).
    /// robots.txt is the page's business, not its resources'.
    pub async fn get_resource(
        &self,
        url: &Url,
        depth: u32,
        http: &HttpClient,
    ) -> Result<crate::http::HttpResponse, FetchError> {
        let key = self.keys.key(url).await;
        let mut permit = loop {
            match self.politeness.acquire(&key, None, depth).await {
                Ok(permit) => break permit,
                // The caller's deadline (the page's render timeout) bounds this wait.
                Err(Backlog { retry_after }) => tokio::time::sleep(retry_after).await,
            }
        };
        permit.start();
        let started = tokio::time::Instant::now();
        let result = http.get(url).await;
        if let Ok(resp) = &result {
            if matches!(resp.status, 429 | 503) {
                let pause = resp.retry_after.unwrap_or(Duration::from_secs(1));
                permit.back_off(pause);
            }
        }
        permit.finish(started.elapsed());
        result
    }

    /// The politeness key of a request: carried by it (`per = "ip"`), or derived.
    pub async fn key_of(&self, req: &CrawlRequest, url: &Url) -> String {
        match &req.key {
            Some(key) => key.clone(),
            None => self.keys.key(url).await,
        }
    }

    /// Fetch one request. With a `lease`, nothing is sent to the host unless the
    /// lease on its partition still holds at that moment. A page record carries the
    /// request's sitemap `lastmod`, and the host's robots.txt `Sitemap:` URLs the first
    /// time a record of that host is made after robots.txt was read.
    pub async fn fetch(&self, req: &CrawlRequest, lease: Option<&Lease>) -> FetchOutcome {
        let mut outcome = self.fetch_once(req, lease).await;
        if let FetchOutcome::Page(page) = &mut outcome {
            page.lastmod.clone_from(&req.lastmod);
            if self.spider.spider.sitemaps {
                if let Some(robots) = &self.robots {
                    page.sitemaps = robots.take_sitemaps(&page.url);
                }
            }
        }
        outcome
    }

    async fn fetch_once(&self, req: &CrawlRequest, lease: Option<&Lease>) -> FetchOutcome {
        let started = tokio::time::Instant::now();
        let url = match Url::parse(&req.url) {
            Ok(url) => url,
            Err(e) => {
                return FetchOutcome::Invalid(FetchError::InvalidUrl(e.to_string()).to_string())
            }
        };
        let key = self.key_of(req, &url).await;
        let holds = || lease.is_none_or(Lease::holds);
        // Waits (robots.txt, the host's turn) end when the lease does; a request
        // already sent is not abandoned.
        let revoked = async {
            match lease {
                Some(lease) => lease.revoked.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(revoked);
        let mut crawl_delay = None;
        if let Some(robots) = &self.robots {
            if !holds() {
                return FetchOutcome::Revoked;
            }
            let verdict = tokio::select! {
                v = robots.check(&url, &key) => v,
                _ = &mut revoked => return FetchOutcome::Revoked,
            };
            match verdict {
                RobotsVerdict::Allowed { crawl_delay: d } => crawl_delay = d,
                RobotsVerdict::Disallowed => {
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
                RobotsVerdict::Unavailable {
                    retry_in,
                    reason,
                    unreachable,
                    since,
                } => {
                    if unreachable {
                        // No answer at all: the page would get none either. A failed
                        // try of this request, retried, then its recorded outcome.
                        return self.prerequisite_failed(req, &url, retry_in, reason, started);
                    }
                    if since > ROBOTS_PATIENCE {
                        let reason = format!("{reason} (for {} min)", since.as_secs() / 60);
                        return self.prerequisite_failed(req, &url, retry_in, reason, started);
                    }
                    self.metrics.robots_deferred.inc();
                    tracing::debug!(
                        reason,
                        retry_in_ms = retry_in.as_millis() as u64,
                        "robots.txt unavailable; request deferred"
                    );
                    return FetchOutcome::Later(retry_in.max(Duration::from_millis(100)));
                }
            }
        }
        let acquired = tokio::select! {
            p = self.politeness.acquire(&key, crawl_delay, req.depth) => p,
            _ = &mut revoked => return FetchOutcome::Revoked,
        };
        let mut permit = match acquired {
            Ok(p) => p,
            Err(Backlog { retry_after }) => return FetchOutcome::Later(retry_after),
        };
        // The last moment before anything goes to the host.
        if !holds() {
            return FetchOutcome::Revoked;
        }
        permit.start();
        let fetch_started = tokio::time::Instant::now();
        let conditional = crate::http::Validators {
            etag: req.etag.clone(),
            last_modified: req.last_modified.clone(),
        };
        let result = self.http.get_keyed(&url, &key, &conditional).await;
        let tries = req.tries.saturating_add(1);
        let max_tries = self.spider.spider.http.max_tries;
        if let Ok(resp) = &result {
            // The host asked for less: slow down for all its URLs, not only this one.
            if matches!(resp.status, 429 | 503) {
                let pause = resp
                    .retry_after
                    .unwrap_or_else(|| self.spider.spider.http.backoff(tries));
                permit.back_off(pause);
            }
        }
        permit.finish(fetch_started.elapsed());
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
                    let (mut text, charset) = decode_bytes_for_url(
                        &resp.body,
                        resp.content_type.as_deref(),
                        &resp.final_url,
                    );
                    // Single-byte encodings grow up to 3x as UTF-8: the cap holds for
                    // what is published, not only for what was received.
                    let cap = self.http.config().max_body_bytes;
                    if text.len() > cap {
                        let mut end = cap;
                        // `text` is UTF-8: step back to the start of a character.
                        while end > 0 && (text[end] & 0xC0) == 0x80 {
                            end -= 1;
                        }
                        text.truncate(end);
                        truncated = true;
                    }
                    (text, Some(charset.to_string()))
                } else if self.spider.spider.sitemaps
                    && (req.sitemap || url.path().ends_with(".gz"))
                {
                    // A gzipped sitemap: the parser decompresses it (within its caps).
                    (resp.body, None)
                } else {
                    // Not something the parser reads: keep the record, not the bytes.
                    (Bytes::new(), None)
                };
                let final_url = canon::canonicalize(&resp.final_url, &self.spider.query_filter)
                    .unwrap_or(resp.final_url);
                // A 304 confirms the validators it was asked with (it may repeat them).
                let validators = if resp.status == 304 {
                    crate::http::Validators {
                        etag: resp.validators.etag.or(conditional.etag),
                        last_modified: resp.validators.last_modified.or(conditional.last_modified),
                    }
                } else {
                    resp.validators
                };
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
                    rendered: false,
                    body,
                    lastmod: None,
                    sitemaps: Vec::new(),
                    etag: validators.etag,
                    last_modified: validators.last_modified,
                    response: Some(resp.head),
                }))
            }
            Err(e) if e.is_retryable() && tries < max_tries => {
                let delay = self.spider.spider.http.backoff(tries);
                self.retry(req, tries, delay, e.to_string())
            }
            Err(e) => self.final_error(req, &url, &e, started.elapsed()),
        }
    }

    /// robots.txt could not be had: retry the request like a failed fetch while it
    /// has tries left, then record that as its outcome (never as "disallowed").
    fn prerequisite_failed(
        &self,
        req: &CrawlRequest,
        url: &Url,
        retry_in: Duration,
        reason: String,
        started: tokio::time::Instant,
    ) -> FetchOutcome {
        let tries = req.tries.saturating_add(1);
        if tries < self.spider.spider.http.max_tries {
            let delay = self.spider.spider.http.backoff(tries).max(retry_in);
            return self.retry(req, tries, delay, reason);
        }
        self.metrics
            .fetch_errors
            .get_or_create(&vec![(
                "kind".to_string(),
                "robots_unavailable".to_string(),
            )])
            .inc();
        FetchOutcome::Page(Box::new(self.record(
            req,
            url,
            RecordError {
                kind: "robots_unavailable",
                message: reason,
            },
            started.elapsed(),
        )))
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
            rendered: false,
            body: Bytes::new(),
            lastmod: None,
            sitemaps: Vec::new(),
            etag: None,
            last_modified: None,
            response: None,
        }
    }
}

struct RecordError {
    kind: &'static str,
    message: String,
}
