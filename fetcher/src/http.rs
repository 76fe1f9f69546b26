//! HTTP GET with the crawler's safety limits: redirects followed one hop at a time
//! (each hop checked for scheme, scope and private addresses), private networks refused
//! after DNS resolution, time, header size and decompressed body size all capped.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use tokio::time::{timeout_at, Instant};

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
    /// Decompressed bytes, at most `max_body_bytes`.
    pub body: Bytes,
    /// Whether the body was cut at `max_body_bytes`.
    pub truncated: bool,
    pub redirects: usize,
    pub elapsed: Duration,
}

/// A GET-only client; cheap to clone (shares one connection pool).
#[derive(Clone, Debug)]
pub struct HttpClient {
    client: reqwest::Client,
    cfg: Arc<HttpConfig>,
}

impl HttpClient {
    pub fn new(cfg: HttpConfig) -> Result<Self, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(ACCEPT_VALUE));
        let resolver = GuardedResolver {
            allow_private: cfg.allow_private_networks,
        };
        let client = reqwest::Client::builder()
            .user_agent(cfg.user_agent.as_str())
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve names itself, out of reach of the private-address guard.
            .no_proxy()
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .http2_max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .dns_resolver(Arc::new(resolver))
            .build()
            .map_err(|e| FetchError::Http(describe(&e)))?;
        Ok(HttpClient {
            client,
            cfg: Arc::new(cfg),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.cfg
    }

    /// GET `url`, following up to `max_redirects` redirects; every hop is checked for
    /// scheme (http/https), scope and private addresses. A loop fails at once.
    pub async fn get(&self, url: &url::Url) -> Result<HttpResponse, FetchError> {
        let started = Instant::now();
        let deadline = started + self.cfg.total_timeout;
        let mut current = url.clone();
        let mut visited = HashSet::new();
        let mut redirects = 0;
        loop {
            self.check_target(&current)?;
            visited.insert(current.clone());
            let response = timeout_at(deadline, self.client.get(current.clone()).send())
                .await
                .map_err(|_| FetchError::Timeout)?
                .map_err(map_reqwest_error)?;
            let header_bytes = header_bytes(response.headers());
            if header_bytes > self.cfg.max_header_bytes {
                return Err(FetchError::HeadersTooLarge(self.cfg.max_header_bytes));
            }
            if let Some(next) = redirect_target(&current, &response)? {
                if visited.contains(&next) {
                    return Err(FetchError::TooManyRedirects(redirects + 1));
                }
                if redirects >= self.cfg.max_redirects {
                    return Err(FetchError::TooManyRedirects(redirects));
                }
                if let Some(in_scope) = &self.cfg.allowed_hosts {
                    if !in_scope(&next) {
                        return Err(FetchError::RedirectOutOfScope(redact_url(&next)));
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
            let (body, truncated) = self.read_body(response, deadline).await?;
            return Ok(HttpResponse {
                final_url: current,
                status,
                content_type,
                retry_after,
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

/// Whether a crawler must not connect to `ip` unless private networks are allowed:
/// loopback, RFC 1918, link-local (cloud metadata), CGNAT, unique-local, multicast,
/// broadcast, documentation, benchmarking, reserved, and IPv6 forms embedding those.
pub fn is_refused_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_refused_v4(v4),
        IpAddr::V6(v6) => is_refused_v6(v6),
    }
}

fn is_refused_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // "this network", including 0.0.0.0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || a >= 240 // reserved
}

fn is_refused_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let low_v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(mapped) = ip.to_ipv4_mapped() {
        return is_refused_v4(mapped);
    }
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
        || (s[..6] == [0; 6] && is_refused_v4(low_v4)) // IPv4-compatible ::a.b.c.d
        || (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] && is_refused_v4(low_v4)) // NAT64
        || (s[0] == 0x2002 // 6to4 embeds the IPv4 address in bits 16..48
            && is_refused_v4(Ipv4Addr::new(
                (s[1] >> 8) as u8,
                s[1] as u8,
                (s[2] >> 8) as u8,
                s[2] as u8,
            )))
}

/// What the resolver reports; found again in reqwest's error chain by [`map_reqwest_error`].
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("lookup of {host} failed: {message}")]
    Lookup { host: String, message: String },
    #[error("{0} has no addresses")]
    NoAddresses(String),
    #[error("{0} resolves only to refused addresses")]
    Refused(String),
}

/// Resolves with the system resolver, then drops refused addresses, so a name that
/// points at 127.0.0.1 or 169.254.169.254 is never connected to (no rebinding window:
/// reqwest connects to exactly the addresses returned here).
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| ResolveError::Lookup {
                    host: host.clone(),
                    message: lowercase_first(&e.to_string()),
                })?
                .collect();
            if found.is_empty() {
                return Err(ResolveError::NoAddresses(host).into());
            }
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| allow_private || !is_refused_address(addr.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(ResolveError::Refused(host).into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

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
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::extract::Path;
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;
    use futures::StreamExt;

    /// Serves `router` on 127.0.0.1 on a free port for the rest of the test.
    pub(crate) async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        addr
    }

    pub(crate) fn local_config() -> HttpConfig {
        HttpConfig {
            allow_private_networks: true,
            ..HttpConfig::default()
        }
    }

    fn redirect(to: &str) -> Response {
        (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
    }

    fn gzipped(body: impl IntoResponse) -> Response {
        ([(header::CONTENT_ENCODING, "gzip")], body).into_response()
    }

    fn streamed<S>(stream: S) -> Response
    where
        S: futures::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        Body::from_stream(stream).into_response()
    }

    /// Sends a first chunk, then nothing, forever.
    fn stalling() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::once(async { Ok(Bytes::from_static(b"start")) })
            .chain(futures::stream::pending())
    }

    /// Sends one byte every 50 ms, forever.
    fn trickling() -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
        futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((Ok(Bytes::from_static(b"x")), ()))
        })
    }

    /// 51 MB of zeros gzipped, built once (its CRC is slow in a debug build).
    fn bomb() -> Bytes {
        static BOMB: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
        BOMB.get_or_init(|| Bytes::from(gzip_zeros(200_000)))
            .clone()
    }

    fn site() -> Router {
        let html = [(header::CONTENT_TYPE, "text/html")];
        let chain = |Path(n): Path<u32>| async move {
            match n {
                0 => "end".into_response(),
                n => redirect(&format!("/chain/{}", n - 1)),
            }
        };
        let fat_headers = || async {
            let mut response = "x".into_response();
            for i in 0..16 {
                let name = header::HeaderName::try_from(format!("x-filler-{i}")).unwrap();
                let value = HeaderValue::try_from("v".repeat(1000)).unwrap();
                response.headers_mut().insert(name, value);
            }
            response
        };
        Router::new()
            .route("/ok", get(move || async move { (html, "hello") }))
            .route("/redirect", get(|| async { redirect("/ok") }))
            .route("/loop", get(|| async { redirect("/loop") }))
            .route("/ftp", get(|| async { redirect("ftp://example.com/x") }))
            .route("/out", get(|| async { redirect("/forbidden/x") }))
            .route("/chain/{n}", get(chain))
            .route("/big", get(|| async { vec![b'a'; 5 * 1024 * 1024] }))
            .route("/small-gzip", get(|| async { gzipped(gzip_zeros(4)) }))
            .route("/bomb", get(|| async { gzipped(bomb()) }))
            .route("/stall", get(|| async { streamed(stalling()) }))
            .route("/trickle", get(|| async { streamed(trickling()) }))
            .route("/headers", get(fat_headers))
            .route(
                "/busy",
                get(|| async {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "120")],
                    )
                }),
            )
    }

    /// Starts the test site, then GETs each of `paths` with a client built from `cfg`.
    async fn fetch(cfg: HttpConfig, paths: &[&str]) -> Vec<Result<HttpResponse, FetchError>> {
        let base = format!("http://{}", serve(site()).await);
        let client = HttpClient::new(cfg).unwrap();
        let mut results = Vec::new();
        for path in paths {
            let target = url::Url::parse(&path.replace("{base}", &base)).unwrap();
            results.push(client.get(&target).await);
        }
        results
    }

    async fn fetch_one(cfg: HttpConfig, path: &str) -> Result<HttpResponse, FetchError> {
        let mut results = fetch(cfg, &[&format!("{{base}}{path}")]).await;
        results.remove(0)
    }

    #[tokio::test]
    async fn plain_get() {
        let response = fetch_one(local_config(), "/ok").await.unwrap();
        assert_eq!((response.status, &response.body[..]), (200, &b"hello"[..]));
        assert_eq!(response.content_type.as_deref(), Some("text/html"));
        assert!(!response.truncated);
        assert_eq!(response.redirects, 0);
    }

    #[tokio::test]
    async fn redirect_is_followed() {
        let response = fetch_one(local_config(), "/redirect").await.unwrap();
        assert_eq!(response.final_url.path(), "/ok");
        assert_eq!((response.status, response.redirects), (200, 1));
        let response = fetch_one(local_config(), "/chain/3").await.unwrap();
        assert_eq!((&response.body[..], response.redirects), (&b"end"[..], 3));
        assert_eq!(response.final_url.path(), "/chain/0");
    }

    #[tokio::test]
    async fn redirect_loop_fails_fast() {
        let err = fetch_one(local_config(), "/loop").await.unwrap_err();
        assert!(matches!(err, FetchError::TooManyRedirects(_)), "{err}");
    }

    #[tokio::test]
    async fn redirect_cap() {
        let cfg = HttpConfig {
            max_redirects: 3,
            ..local_config()
        };
        let results = fetch(cfg, &["{base}/chain/4", "{base}/chain/3"]).await;
        assert!(matches!(results[0], Err(FetchError::TooManyRedirects(3))));
        assert!(results[1].is_ok());
    }

    #[tokio::test]
    async fn redirect_scheme_and_scope_are_checked() {
        let in_scope = |u: &url::Url| !u.path().starts_with("/forbidden");
        let cfg = HttpConfig {
            allowed_hosts: Some(Arc::new(in_scope)),
            ..local_config()
        };
        let results = fetch(cfg, &["{base}/ftp", "{base}/out"]).await;
        assert!(matches!(&results[0], Err(FetchError::UnsupportedScheme(s)) if s == "ftp"));
        assert!(
            matches!(&results[1], Err(FetchError::RedirectOutOfScope(u)) if u.ends_with("/forbidden/x"))
        );
    }

    #[tokio::test]
    async fn private_addresses_refused_by_default() {
        let paths = [
            "{base}/ok",
            "http://localhost:{port}/ok",
            "http://[::ffff:169.254.169.254]/",
        ];
        let base = format!("http://{}", serve(site()).await);
        let port = url::Url::parse(&base).unwrap().port().unwrap().to_string();
        let paths = paths.map(|p| p.replace("{base}", &base).replace("{port}", &port));
        let results = fetch(HttpConfig::default(), &paths.each_ref().map(String::as_str)).await;
        assert!(matches!(&results[0], Err(FetchError::PrivateAddress(ip)) if ip == "127.0.0.1"));
        // A name is checked after resolution, by the resolver.
        assert!(matches!(&results[1], Err(FetchError::PrivateAddress(h)) if h == "localhost"));
        assert!(matches!(&results[2], Err(FetchError::PrivateAddress(_))));
    }

    #[tokio::test]
    async fn private_addresses_allowed_when_configured() {
        let base = format!("http://{}", serve(site()).await);
        let by_name = base.replace("127.0.0.1", "localhost") + "/ok";
        let results = fetch(local_config(), &[&format!("{base}/ok"), &by_name]).await;
        assert!(results
            .iter()
            .all(|r| r.as_ref().is_ok_and(|r| r.status == 200)));
    }

    #[test]
    fn refused_ranges() {
        let refused = "127.0.0.1 10.1.2.3 172.16.0.1 192.168.1.1 169.254.169.254 0.0.0.0 \
            100.64.0.1 224.0.0.1 255.255.255.255 192.0.2.1 198.51.100.1 203.0.113.1 240.0.0.1 \
            ::1 :: fc00::1 fd12::1 fe80::1 ff02::1 2001:db8::1 ::ffff:10.0.0.1 \
            ::ffff:127.0.0.1 64:ff9b::a9fe:a9fe 2002:c0a8:0101::1";
        for ip in refused.split_whitespace() {
            assert!(
                is_refused_address(ip.parse().unwrap()),
                "{ip} should be refused"
            );
        }
        let allowed = "93.184.216.34 8.8.8.8 100.128.0.1 2606:4700::1111 ::ffff:8.8.8.8";
        for ip in allowed.split_whitespace() {
            assert!(
                !is_refused_address(ip.parse().unwrap()),
                "{ip} should be allowed"
            );
        }
    }

    #[tokio::test]
    async fn connection_refused_is_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = format!("http://{}/", listener.local_addr().unwrap());
        drop(listener);
        let err = fetch(local_config(), &[&target])
            .await
            .remove(0)
            .unwrap_err();
        assert_eq!(err.kind(), "connect", "{err}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn huge_body_is_truncated() {
        let cfg = HttpConfig {
            max_body_bytes: 64 * 1024,
            ..local_config()
        };
        let response = fetch_one(cfg, "/big").await.unwrap();
        assert_eq!(response.body.len(), 64 * 1024);
        assert!(response.truncated);
    }

    #[tokio::test]
    async fn gzip_is_decoded() {
        let response = fetch_one(local_config(), "/small-gzip").await.unwrap();
        assert_eq!(response.body.len(), 1 + 258 * 4);
        assert!(response.body.iter().all(|&b| b == 0));
        assert!(!response.truncated);
    }

    #[tokio::test]
    async fn gzip_bomb_stops_at_cap() {
        let cfg = HttpConfig {
            max_body_bytes: 1024 * 1024,
            ..local_config()
        };
        bomb(); // build it before the measured fetch
                // ~325 KB on the wire, 51 MB inflated; we inflate and keep exactly the cap.
        let response = fetch_one(cfg, "/bomb").await.unwrap();
        assert_eq!(response.body.len(), 1024 * 1024);
        assert!(response.truncated);
        assert!(
            response.elapsed < Duration::from_secs(2),
            "{:?}",
            response.elapsed
        );
    }

    #[tokio::test]
    async fn stalled_body_times_out() {
        let cfg = HttpConfig {
            read_timeout: Duration::from_millis(300),
            ..local_config()
        };
        let started = std::time::Instant::now();
        let err = fetch_one(cfg, "/stall").await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn trickling_body_hits_total_timeout() {
        let cfg = HttpConfig {
            read_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_millis(500),
            ..local_config()
        };
        let started = std::time::Instant::now();
        let err = fetch_one(cfg, "/trickle").await.unwrap_err();
        assert!(matches!(err, FetchError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn oversized_headers_fail() {
        let cfg = HttpConfig {
            max_header_bytes: 4096,
            ..local_config()
        };
        let results = fetch(cfg, &["{base}/headers", "{base}/ok"]).await;
        assert!(matches!(results[0], Err(FetchError::HeadersTooLarge(4096))));
        assert!(results[1].is_ok());
    }

    #[tokio::test]
    async fn retry_after_is_reported() {
        let response = fetch_one(local_config(), "/busy").await.unwrap();
        assert_eq!(response.status, 429);
        assert_eq!(response.retry_after, Some(Duration::from_secs(120)));
    }

    #[test]
    fn retry_after_parsing() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:28:00Z")
            .unwrap()
            .to_utc();
        let cases = [
            ("120", Some(120)),
            (" 0 ", Some(0)),
            ("86400", Some(3600)),
            ("Wed, 21 Oct 2015 07:29:00 GMT", Some(60)),
            ("Wednesday, 21-Oct-15 07:30:00 GMT", Some(120)),
            ("Wed Oct 21 07:28:30 2015", Some(30)),
            ("Tue, 20 Oct 2015 07:28:00 GMT", Some(0)),
            ("Fri, 21 Oct 2016 07:28:00 GMT", Some(3600)),
            ("soon", None),
            ("-5", None),
        ];
        for (value, seconds) in cases {
            let expected = seconds.map(Duration::from_secs);
            assert_eq!(parse_retry_after(value, now), expected, "{value}");
        }
    }

    /// A gzip stream of `1 + 258 * runs` zero bytes: one literal, then back-references
    /// of length 258 at distance 1, in one fixed-Huffman deflate block (~1600:1).
    fn gzip_zeros(runs: usize) -> Vec<u8> {
        let mut bits = BitWriter::default();
        bits.put(0b011, 3); // BFINAL = 1, BTYPE = 01 (fixed Huffman)
        bits.code(0x30, 8); // literal 0
        for _ in 0..runs {
            bits.code(0xc5, 8); // length code 285: 258 bytes
            bits.code(0, 5); // distance code 0: distance 1
        }
        bits.code(0, 7); // end of block
        let len = 1 + 258 * runs;
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        out.extend(bits.out);
        out.extend(
            bits.acc
                .to_le_bytes()
                .into_iter()
                .take(bits.len.div_ceil(8) as usize),
        );
        // Trailer: CRC-32 of the zeros (table-driven, reflected), then their length.
        let table: Vec<u32> = (0..256u32)
            .map(|n| (0..8).fold(n, |c, _| (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg())))
            .collect();
        let crc = (0..len).fold(!0u32, |crc, _| table[(crc & 0xff) as usize] ^ (crc >> 8));
        out.extend((!crc).to_le_bytes());
        out.extend((len as u32).to_le_bytes());
        out
    }

    #[derive(Default)]
    struct BitWriter {
        out: Vec<u8>,
        acc: u64,
        len: u32,
    }

    impl BitWriter {
        /// Appends `count` bits of `value`, least significant first (deflate's bit order).
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= u64::from(value) << self.len;
            self.len += count;
            while self.len >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.len -= 8;
            }
        }

        /// Appends a Huffman code, which deflate stores most significant bit first.
        fn code(&mut self, code: u32, count: u32) {
            self.put(code.reverse_bits() >> (32 - count), count);
        }
    }
}
