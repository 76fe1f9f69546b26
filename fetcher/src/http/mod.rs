//! HTTP GET with the crawler's safety limits: redirects followed one hop at a time
//! (each hop checked for scheme, scope and private addresses), private networks refused
//! after DNS resolution, time, header size and decompressed body size all capped.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use tokio::time::{timeout_at, Instant};

use jetcrawl_shared::config::ProxyUrl;
use jetcrawl_shared::message::ResponseHead;
use jetcrawl_shared::telemetry::Metrics;

use crate::error::{redact_url, FetchError};

const ACCEPT_VALUE: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
/// A Retry-After further out than this is treated as this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Never pre-allocate more than this for a body, whatever Content-Length claims.
const MAX_INITIAL_BUFFER: usize = 256 * 1024;

/// Decides whether a URL is inside the crawl's scope.
pub type ScopeCheck = Arc<dyn Fn(&url::Url) -> bool + Send + Sync>;

/// Limits and identity for [`HttpClient`].
#[derive(Clone)]
pub struct HttpConfig {
    /// Sent as `User-Agent` on every request.
    pub user_agent: String,
    /// TCP + TLS connect.
    pub connect_timeout: Duration,
    /// Longest silence allowed between body chunks (slow-loris protection).
    pub read_timeout: Duration,
    /// Whole request, redirects and body included.
    pub total_timeout: Duration,
    /// Redirect hops followed before giving up.
    pub max_redirects: usize,
    /// Decompressed body bytes kept; beyond it the body is truncated.
    pub max_body_bytes: usize,
    /// Responses whose header block is larger than this fail.
    pub max_header_bytes: usize,
    /// Whether loopback, private, link-local, ... addresses may be fetched.
    pub allow_private_networks: bool,
    /// Scope check applied to every redirect target; `None` allows any.
    pub allowed_hosts: Option<ScopeCheck>,
    /// Source address for outgoing connections (a multi-homed fetcher host).
    pub local_address: Option<std::net::IpAddr>,
    /// `[http] proxies`: requests go through these, sticky per key; empty = direct.
    pub proxies: Vec<ProxyUrl>,
    /// Where proxy outcomes are counted.
    pub metrics: Option<Metrics>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            user_agent: concat!("jetcrawl/", env!("CARGO_PKG_VERSION")).to_string(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(60),
            max_redirects: 10,
            max_body_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            allow_private_networks: false,
            allowed_hosts: None,
            local_address: None,
            proxies: Vec::new(),
            metrics: None,
        }
    }
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("user_agent", &self.user_agent)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("max_redirects", &self.max_redirects)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_header_bytes", &self.max_header_bytes)
            .field("allow_private_networks", &self.allow_private_networks)
            .field(
                "allowed_hosts",
                &self.allowed_hosts.as_ref().map(|_| "<fn>"),
            )
            .field("proxies", &self.proxies)
            .finish()
    }
}

/// The final response of a GET, after redirects.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub final_url: url::Url,
    pub status: u16,
    /// The raw Content-Type header value.
    pub content_type: Option<String>,
    /// Parsed Retry-After (delta-seconds or HTTP-date), at most one hour.
    pub retry_after: Option<Duration>,
    /// The HTTP version and the headers worth keeping (for archives).
    pub head: ResponseHead,
    /// Decompressed bytes, at most `max_body_bytes`.
    pub body: Bytes,
    /// Whether the body was cut at `max_body_bytes`.
    pub truncated: bool,
    pub redirects: usize,
    pub elapsed: Duration,
    /// The `ETag` and `Last-Modified` headers: validators for the next conditional GET.
    pub validators: Validators,
}

/// What makes a GET conditional: the previous response's `ETag` (sent as
/// `If-None-Match`) and `Last-Modified` (sent as `If-Modified-Since`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A GET-only client; cheap to clone (shares one connection pool per way out).
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    /// Set when `[http] proxies` lists any: requests go through them, not `client`.
    proxies: Option<Arc<ProxyPool>>,
    cfg: Arc<HttpConfig>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// A failed attempt, and whom it points at when it went through a proxy.
struct Failure {
    error: FetchError,
    suspicion: Suspicion,
}

impl From<FetchError> for Failure {
    fn from(error: FetchError) -> Self {
        Failure {
            error,
            suspicion: Suspicion::Target,
        }
    }
}

impl HttpClient {
    pub fn new(cfg: HttpConfig) -> Result<Self, FetchError> {
        // Without proxies, the system's proxy settings are ignored too: a proxy would
        // resolve names itself, out of reach of the resolver's private-address filter.
        let client = Self::builder(&cfg, Vec::new())
            .no_proxy()
            .build()
            .map_err(|e| FetchError::Http(describe(&e)))?;
        let proxies = if cfg.proxies.is_empty() {
            None
        } else {
            let exempt = ProxyPool::hosts(&cfg.proxies);
            let pool = ProxyPool::new(&cfg.proxies, cfg.metrics.clone(), |proxy| {
                Self::builder(&cfg, exempt.clone())
                    .proxy(proxy)
                    .build()
                    .map_err(|e| FetchError::Http(describe(&e)))
            })?;
            Some(Arc::new(pool))
        };
        Ok(HttpClient {
            client,
            proxies,
            cfg: Arc::new(cfg),
        })
    }

    /// Everything but the way out. `exempt`: host names resolved without the
    /// private-address filter (the proxies' own).
    fn builder(cfg: &HttpConfig, exempt: Vec<String>) -> reqwest::ClientBuilder {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_VALUE));
        let resolver = GuardedResolver {
            allow_private: cfg.allow_private_networks,
            exempt,
        };
        reqwest::Client::builder()
            .user_agent(cfg.user_agent.as_str())
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .http2_max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .dns_resolver(Arc::new(resolver))
            .local_address(cfg.local_address)
    }

    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// GET `url`, following up to `max_redirects` redirects; every hop is checked for
    /// scheme (http/https), scope and private addresses. A loop fails at once. Through
    /// proxies, the URL's host picks the proxy ([`HttpClient::get_keyed`]).
    pub async fn get(&self, url: &url::Url) -> Result<HttpResponse, FetchError> {
        let key = url.host_str().unwrap_or_default().to_ascii_lowercase();
        self.get_keyed(url, &key, &Validators::default()).await
    }

    /// [`HttpClient::get`]; through proxies, `key` (the politeness key) picks the
    /// proxy, so every request of one site leaves by the same one while it works. A
    /// proxy at fault is set aside and the request goes through the next. Conditional
    /// on `validators` (a `304 Not Modified` is returned as such, with no body).
    pub async fn get_keyed(
        &self,
        url: &url::Url,
        key: &str,
        validators: &Validators,
    ) -> Result<HttpResponse, FetchError> {
        let started = Instant::now();
        let deadline = started + self.cfg.total_timeout;
        let Some(pool) = &self.proxies else {
            return self
                .get_via(&self.client, url, validators, started, deadline)
                .await
                .map_err(|f| f.error);
        };
        let mut last = None;
        for proxy in pool.route(key) {
            if Instant::now() >= deadline {
                break;
            }
            match self
                .get_via(&proxy.client, url, validators, started, deadline)
                .await
            {
                Ok(response) if response.status == 407 => {
                    pool.refused(proxy);
                    last = Some(FetchError::Connect(format!(
                        "proxy {} refused the login (407)",
                        proxy.name
                    )));
                }
                Ok(response) => {
                    pool.succeeded(proxy);
                    return Ok(response);
                }
                Err(failure) => {
                    let error = proxy.scrub(failure.error);
                    if !pool.failed(proxy, failure.suspicion).await {
                        return Err(error);
                    }
                    tracing::debug!(proxy = %proxy.name, error = %error, "proxy failed; trying the next");
                    last = Some(error);
                }
            }
        }
        Err(last.unwrap_or_else(|| FetchError::Connect("every proxy is set aside".into())))
    }

    /// One GET through `client` (direct, or one proxy's), redirects followed.
    async fn get_via(
        &self,
        client: &reqwest::Client,
        url: &url::Url,
        validators: &Validators,
        started: Instant,
        deadline: Instant,
    ) -> Result<HttpResponse, Failure> {
        let mut current = url.clone();
        let mut visited = HashSet::new();
        let mut redirects = 0;
        loop {
            self.check_target(&current)?;
            if self.proxies.is_some() && !self.cfg.allow_private_networks {
                // A proxy resolves the name itself: resolve and check it here first.
                timeout_at(deadline, guard::check_name(&current))
                    .await
                    .map_err(|_| FetchError::Timeout)??;
            }
            visited.insert(current.clone());
            let mut request = client.get(current.clone());
            if let Some(etag) = &validators.etag {
                request = request.header(reqwest::header::IF_NONE_MATCH, etag.as_str());
            }
            if let Some(since) = &validators.last_modified {
                request = request.header(reqwest::header::IF_MODIFIED_SINCE, since.as_str());
            }
            let response = timeout_at(deadline, request.send())
                .await
                .map_err(|_| Failure {
                    error: FetchError::Timeout,
                    suspicion: Suspicion::Either,
                })?
                .map_err(|e| Failure {
                    suspicion: proxy::suspicion(&e),
                    error: map_reqwest_error(e),
                })?;
            let header_bytes = header_bytes(response.headers());
            if header_bytes > self.cfg.max_header_bytes {
                return Err(Failure::from(FetchError::HeadersTooLarge(
                    self.cfg.max_header_bytes,
                )));
            }
            if let Some(next) = redirect_target(&current, &response)? {
                if visited.contains(&next) {
                    return Err(Failure::from(FetchError::TooManyRedirects(redirects + 1)));
                }
                if redirects >= self.cfg.max_redirects {
                    return Err(Failure::from(FetchError::TooManyRedirects(redirects)));
                }
                if let Some(in_scope) = &self.cfg.allowed_hosts {
                    if !in_scope(&next) {
                        return Err(Failure::from(FetchError::RedirectOutOfScope(redact_url(
                            &next,
                        ))));
                    }
                }
                redirects += 1;
                current = next;
                continue;
            }
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, Utc::now()));
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &HeaderValue| v.to_str().ok())
                    .map(str::to_string)
            };
            let validators = Validators {
                etag: header(reqwest::header::ETAG),
                last_modified: header(reqwest::header::LAST_MODIFIED),
            };
            let head = ResponseHead::keep(
                version_name(response.version()),
                response
                    .headers()
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.as_bytes())),
            );
            let (body, truncated) = self.read_body(response, deadline).await?;
            return Ok(HttpResponse {
                validators,
                final_url: current,
                status,
                content_type,
                retry_after,
                head,
                body,
                truncated,
                redirects,
                elapsed: started.elapsed(),
            });
        }
    }

    /// Refuses what must never be requested: other schemes, and IP-literal hosts in
    /// refused ranges (names are checked after resolution, in [`GuardedResolver`]).
    fn check_target(&self, url: &url::Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::UnsupportedScheme(url.scheme().to_string()));
        }
        let ip = match url.host() {
            None => return Err(FetchError::InvalidUrl(redact_url(url))),
            Some(url::Host::Domain(_)) => return Ok(()),
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        if !self.cfg.allow_private_networks && is_refused_address(ip) {
            return Err(FetchError::PrivateAddress(ip.to_string()));
        }
        Ok(())
    }

    /// Reads at most `max_body_bytes` decompressed bytes, so a decompression bomb costs
    /// no more memory than an honest page; the rest of the stream is dropped unread.
    async fn read_body(
        &self,
        mut response: reqwest::Response,
        deadline: Instant,
    ) -> Result<(Bytes, bool), FetchError> {
        let cap = self.cfg.max_body_bytes;
        let hint = response
            .content_length()
            .map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
            .min(cap)
            .min(MAX_INITIAL_BUFFER);
        let mut body = BytesMut::with_capacity(hint);
        loop {
            let chunk_deadline = (Instant::now() + self.cfg.read_timeout).min(deadline);
            let chunk = timeout_at(chunk_deadline, response.chunk()).await;
            if body.len() == cap {
                // Full: whether anything (or an error) follows only decides `truncated`.
                let ended = matches!(chunk, Ok(Ok(None)));
                return Ok((body.freeze(), !ended));
            }
            let Some(chunk) = chunk
                .map_err(|_| FetchError::Timeout)?
                .map_err(map_reqwest_error)?
            else {
                return Ok((body.freeze(), false));
            };
            let room = cap - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                return Ok((body.freeze(), true));
            }
            body.extend_from_slice(&chunk);
        }
    }
}

/// The next URL if `response` is a redirect with a usable Location; we only GET, so
/// 301/302/303/307/308 are all followed with GET.
fn redirect_target(
    current: &url::Url,
    response: &reqwest::Response,
) -> Result<Option<url::Url>, FetchError> {
    if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    let Some(location) = response.headers().get(LOCATION) else {
        return Ok(None);
    };
    let location = String::from_utf8_lossy(location.as_bytes());
    let mut next = current
        .join(location.trim())
        .map_err(|e| FetchError::InvalidUrl(format!("redirect location: {e}")))?;
    // A fragment is the client's business; keeping the original one is what browsers do.
    if next.fragment().is_none() {
        next.set_fragment(current.fragment());
    }
    Ok(Some(next))
}

/// `HTTP/1.1`, as on a status line.
fn version_name(version: reqwest::Version) -> &'static str {
    match version {
        reqwest::Version::HTTP_09 => "HTTP/0.9",
        reqwest::Version::HTTP_10 => "HTTP/1.0",
        reqwest::Version::HTTP_2 => "HTTP/2",
        reqwest::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    // name + ": " + value + CRLF, as on the wire.
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// Parses a Retry-After value: delta-seconds or an HTTP-date (IMF-fixdate, RFC 850 or
/// asctime). Dates in the past mean zero; anything over an hour is capped.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let when = DateTime::parse_from_rfc2822(value)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            ["%A, %d-%b-%y %H:%M:%S GMT", "%a %b %e %H:%M:%S %Y"]
                .iter()
                .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
                .map(|naive| naive.and_utc())
        })?;
    let delay = (when - now).to_std().unwrap_or(Duration::ZERO);
    Some(delay.min(MAX_RETRY_AFTER))
}

mod guard;
mod proxy;

pub use guard::is_refused_address;
use guard::{GuardedResolver, ResolveError};
pub use proxy::proxy_order;
use proxy::{ProxyPool, Suspicion};

fn map_reqwest_error(err: reqwest::Error) -> FetchError {
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(resolve) = cause.downcast_ref::<ResolveError>() {
            return match resolve {
                ResolveError::Refused(host) => FetchError::PrivateAddress(host.clone()),
                other => FetchError::Dns(other.to_string()),
            };
        }
        source = cause.source();
    }
    if err.is_timeout() {
        FetchError::Timeout
    } else if err.is_connect() {
        FetchError::Connect(describe(&err))
    } else if err.is_builder() {
        FetchError::InvalidUrl(describe(&err))
    } else {
        FetchError::Http(describe(&err))
    }
}

/// The error's causes joined, lowercase; reqwest's own message is skipped because it
/// embeds the request URL, which may carry credentials.
fn describe(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = lowercase_first(&cause.to_string());
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    if parts.is_empty() {
        let what = if err.is_body() {
            "body error"
        } else if err.is_decode() {
            "decode error"
        } else {
            "request error"
        };
        parts.push(what.to_string());
    }
    parts.join(": ")
}

fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
