//! `[http] proxies`: one client per proxy. A request's proxy is chosen by rendezvous
//! hashing of its politeness key over the proxies not set aside, so a site sees one
//! address for as long as that proxy works, and losing a proxy moves only its own keys.
//! A proxy that fails is set aside with a doubling back-off (5 s up to 5 min) and the
//! request goes through the next proxy in its order, within the request's deadline.
//!
//! Whose fault a failure is: a refused proxy login (407, or the tunnel's own errors) is
//! the proxy's. A connect error or a timeout may be either's: the proxy is probed with a
//! plain TCP connect; if that fails, or the proxy has failed this way three times in a
//! row (a proxy that accepts connections and then hangs), or once since it came back
//! from being set aside, it is set aside (again). Otherwise
//! the target is presumed at fault and the error goes back to the fetcher's retries,
//! so one dead site does not take the proxies out of service.
//!
//! Credentials never leave this module: proxies are named `scheme://host:port`, and
//! every error from a proxied request has the proxy's user name and password scrubbed.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use jetcrawl_shared::config::ProxyUrl;
use jetcrawl_shared::telemetry::Metrics;

use crate::error::FetchError;

/// Failures of the "maybe" kind in a row that set a reachable proxy aside.
const STRIKES: u32 = 3;
/// First back-off of a set-aside proxy; it doubles with each set-aside in a row.
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Longest wait for the TCP probe of a suspect proxy.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Who a failed proxied request points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Suspicion {
    /// The proxy: it refused the login or broke the tunnel.
    Proxy,
    /// Either: no connection or no answer in time.
    Either,
    /// The target (or nothing to do with the proxy).
    Target,
}

/// Classifies a reqwest error from a proxied request. hyper-util does not export its
/// tunnel and SOCKS error types, so their (fixed) messages are what can be read.
pub(crate) fn suspicion(err: &reqwest::Error) -> Suspicion {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if let Some(what) = text.strip_prefix("tunnel error: ") {
            // "unsuccessful": the proxy answered CONNECT with a non-2xx, most often
            // because it could not reach the target.
            return match what {
                "unsuccessful" => Suspicion::Either,
                _ => Suspicion::Proxy,
            };
        }
        if let Some(what) = text.strip_prefix("SOCKS error: ") {
            const PROXY_FAULTS: [&str; 6] = [
                "failed to create underlying connection",
                "io error during SOCKS handshake",
                "failed parsing server response",
                "server does not support user/pass authentication",
                "server implements authentication incorrectly",
                "credentials not accepted",
            ];
            return match PROXY_FAULTS.contains(&what) {
                true => Suspicion::Proxy,
                // The proxy's report on the target (refused, unreachable, ...).
                false => Suspicion::Either,
            };
        }
        source = cause.source();
    }
    if err.is_connect() || err.is_timeout() {
        Suspicion::Either
    } else {
        Suspicion::Target
    }
}

#[derive(Debug, Default)]
struct Health {
    /// Set aside until then.
    aside_until: Option<Instant>,
    /// "Either" failures in a row.
    strikes: u32,
    /// Set-asides in a row (no success between): the back-off's exponent.
    set_asides: u32,
}

/// One configured proxy and its client.
pub(crate) struct Proxy {
    /// Its place in `[http] proxies` (the metrics label).
    pub index: usize,
    /// `scheme://host:port`.
    pub name: String,
    pub client: reqwest::Client,
    host: String,
    port: u16,
    secrets: Vec<String>,
    health: Mutex<Health>,
}

/// Every proxy, and the choice among them.
pub(crate) struct ProxyPool {
    proxies: Vec<Proxy>,
    metrics: Option<Metrics>,
}

impl ProxyPool {
    /// One client per proxy, built by `build` from the `reqwest::Proxy`.
    pub fn new(
        urls: &[ProxyUrl],
        metrics: Option<Metrics>,
        build: impl Fn(reqwest::Proxy) -> Result<reqwest::Client, FetchError>,
    ) -> Result<ProxyPool, FetchError> {
        let mut proxies = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let name = url.redacted();
            // reqwest takes the login from the URL (Basic for HTTP, RFC 1929 for SOCKS5).
            let proxy = reqwest::Proxy::all(url.url().as_str())
                .map_err(|_| FetchError::InvalidUrl(format!("proxy {name}")))?;
            proxies.push(Proxy {
                index,
                client: build(proxy)?,
                host: url.url().host_str().unwrap_or_default().to_string(),
                port: url.url().port_or_known_default().unwrap_or(1080),
                secrets: url.secrets(),
                name,
                health: Mutex::new(Health::default()),
            });
        }
        Ok(ProxyPool { proxies, metrics })
    }

    /// Host names of the proxies (their own resolution is not filtered: a proxy on a
    /// private network is the operator's choice).
    pub fn hosts(urls: &[ProxyUrl]) -> Vec<String> {
        urls.iter()
            .filter_map(|u| u.url().host_str())
            .map(|h| h.trim_matches(['[', ']']).to_ascii_lowercase())
            .collect()
    }

    /// The proxies to try for `key`, best first: those not set aside, in rendezvous
    /// order of the key. Empty when every proxy is set aside.
    pub fn route(&self, key: &str) -> Vec<&Proxy> {
        let now = Instant::now();
        let mut usable: Vec<(u64, &Proxy)> = self
            .proxies
            .iter()
            .filter(|p| p.available(now))
            .map(|p| (score(key, p.index), p))
            .collect();
        usable.sort_by_key(|(score, _)| std::cmp::Reverse(*score));
        usable.into_iter().map(|(_, p)| p).collect()
    }

    /// The request through `proxy` got a response.
    pub fn succeeded(&self, proxy: &Proxy) {
        if let Ok(mut h) = proxy.health.lock() {
            *h = Health::default();
        }
        self.count(proxy, "ok");
    }

    /// The request through `proxy` failed with `suspicion`; returns whether the proxy
    /// was at fault (it is then set aside, and the request may go through another).
    pub async fn failed(&self, proxy: &Proxy, suspicion: Suspicion) -> bool {
        let at_fault = match suspicion {
            Suspicion::Proxy => true,
            Suspicion::Target => false,
            Suspicion::Either => {
                let out = proxy
                    .health
                    .lock()
                    .map(|mut h| {
                        h.strikes += 1;
                        // Back from a set-aside and failing again: out at once.
                        h.strikes >= STRIKES || h.set_asides > 0
                    })
                    .unwrap_or(false);
                out || !proxy.answers().await
            }
        };
        if at_fault {
            self.count(proxy, "proxy_failed");
            self.set_aside(proxy);
        } else {
            self.count(proxy, "error");
        }
        at_fault
    }

    /// The proxy refused the login (`407` to a forwarded request).
    pub fn refused(&self, proxy: &Proxy) {
        self.count(proxy, "proxy_failed");
        self.set_aside(proxy);
    }

    fn set_aside(&self, proxy: &Proxy) {
        let Ok(mut h) = proxy.health.lock() else {
            return;
        };
        let backoff = BACKOFF_BASE
            .saturating_mul(1 << h.set_asides.min(10))
            .min(BACKOFF_MAX);
        h.set_asides += 1;
        h.strikes = 0;
        h.aside_until = Some(Instant::now() + backoff);
        drop(h);
        tracing::warn!(
            proxy = %proxy.name,
            index = proxy.index,
            backoff_secs = backoff.as_secs(),
            "proxy set aside"
        );
        if let Some(m) = &self.metrics {
            m.proxies_set_aside
                .get_or_create(&vec![("proxy".to_string(), proxy.index.to_string())])
                .inc();
        }
    }

    fn count(&self, proxy: &Proxy, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.proxy_requests
                .get_or_create(&vec![
                    ("proxy".to_string(), proxy.index.to_string()),
                    ("outcome".to_string(), outcome.to_string()),
                ])
                .inc();
        }
    }
}

impl Proxy {
    fn available(&self, now: Instant) -> bool {
        self.health
            .lock()
            .map(|h| h.aside_until.is_none_or(|t| t <= now))
            .unwrap_or(true)
    }

    /// Whether the proxy accepts a TCP connection at all.
    async fn answers(&self) -> bool {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, connect).await,
            Ok(Ok(_))
        )
    }

    /// `err` with the proxy's user name and password replaced by `***`.
    pub fn scrub(&self, err: FetchError) -> FetchError {
        let clean = |s: String| {
            self.secrets
                .iter()
                .fold(s, |s, secret| s.replace(secret.as_str(), "***"))
        };
        match err {
            FetchError::Connect(s) => FetchError::Connect(clean(s)),
            FetchError::Dns(s) => FetchError::Dns(clean(s)),
            FetchError::PrivateAddress(s) => FetchError::PrivateAddress(clean(s)),
            FetchError::RedirectOutOfScope(s) => FetchError::RedirectOutOfScope(clean(s)),
            FetchError::Http(s) => FetchError::Http(clean(s)),
            FetchError::InvalidUrl(s) => FetchError::InvalidUrl(clean(s)),
            FetchError::UnsupportedScheme(s) => FetchError::UnsupportedScheme(clean(s)),
            other => other,
        }
    }
}

/// The order in which `n` proxies are tried for `key` while none is set aside (the
/// first is the one the key sticks to).
pub fn proxy_order(key: &str, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(score(key, i)));
    order
}

/// Rendezvous score of proxy `index` for `key`.
fn score(key: &str, index: usize) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(key.as_bytes());
    h.update(&(index as u64).to_le_bytes());
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> ProxyPool {
        let urls: Vec<ProxyUrl> = (0..n)
            .map(|i| {
                ProxyUrl::try_from(format!("http://alice:s3cret@127.0.0.1:{}", 1 + i))
                    .expect("proxy url")
            })
            .collect();
        ProxyPool::new(&urls, None, |p| {
            reqwest::Client::builder()
                .proxy(p)
                .build()
                .map_err(|e| FetchError::Http(e.to_string()))
        })
        .expect("pool")
    }

    #[tokio::test(start_paused = true)]
    async fn keys_stick_and_move_only_when_their_proxy_is_set_aside() {
        let pool = pool(3);
        let keys: Vec<String> = (0..300).map(|i| format!("host-{i}.example")).collect();
        let first: Vec<usize> = keys.iter().map(|k| pool.route(k)[0].index).collect();
        let mut per = [0; 3];
        first.iter().for_each(|&i| per[i] += 1);
        assert!(per.iter().all(|&n| n > 60), "spread: {per:?}");
        // Asking again gives the same proxy.
        for (k, &i) in keys.iter().zip(&first) {
            assert_eq!(pool.route(k)[0].index, i);
        }
        pool.refused(&pool.proxies[1]);
        for (k, &i) in keys.iter().zip(&first) {
            let now = pool.route(k)[0].index;
            assert_ne!(now, 1);
            if i != 1 {
                assert_eq!(now, i, "a key of a working proxy moved");
            }
        }
        // Back after the back-off; set aside again, twice as long.
        tokio::time::advance(BACKOFF_BASE + Duration::from_millis(1)).await;
        assert_eq!(pool.route("x").len(), 3);
        pool.refused(&pool.proxies[1]);
        tokio::time::advance(BACKOFF_BASE + Duration::from_millis(1)).await;
        assert_eq!(pool.route("x").len(), 2, "the second back-off is longer");
        tokio::time::advance(BACKOFF_BASE).await;
        assert_eq!(pool.route("x").len(), 3);
    }

    #[tokio::test]
    async fn a_reachable_proxy_is_set_aside_after_three_failures_in_a_row() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let urls = vec![ProxyUrl::try_from(format!("http://127.0.0.1:{port}")).unwrap()];
        let pool = ProxyPool::new(&urls, None, |p| {
            reqwest::Client::builder()
                .proxy(p)
                .build()
                .map_err(|e| FetchError::Http(e.to_string()))
        })
        .unwrap();
        let p = &pool.proxies[0];
        assert!(!pool.failed(p, Suspicion::Either).await);
        assert!(!pool.failed(p, Suspicion::Either).await);
        pool.succeeded(p);
        assert!(!pool.failed(p, Suspicion::Either).await, "a success resets");
        assert!(!pool.failed(p, Suspicion::Target).await);
        assert!(!pool.failed(p, Suspicion::Either).await);
        assert!(pool.failed(p, Suspicion::Either).await);
        assert!(pool.route("k").is_empty());
        // Back after its back-off, one more failure sets it aside again.
        p.health.lock().unwrap().aside_until = None;
        assert_eq!(pool.route("k").len(), 1);
        assert!(pool.failed(p, Suspicion::Either).await, "on probation");
        drop(listener);
    }

    #[tokio::test]
    async fn an_unreachable_proxy_is_set_aside_at_once() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let urls = vec![ProxyUrl::try_from(format!("socks5://127.0.0.1:{port}")).unwrap()];
        let pool = ProxyPool::new(&urls, None, |p| {
            reqwest::Client::builder()
                .proxy(p)
                .build()
                .map_err(|e| FetchError::Http(e.to_string()))
        })
        .unwrap();
        assert!(pool.failed(&pool.proxies[0], Suspicion::Either).await);
    }

    #[test]
    fn errors_lose_the_login() {
        let pool = pool(1);
        let err = pool.proxies[0].scrub(FetchError::Connect("login alice:s3cret refused".into()));
        assert_eq!(err.to_string(), "connect error: login ***:*** refused");
    }
}
