//! The browser's own requests, answered by the renderer under jetcrawl's rules: the
//! browser reaches no address itself (see `browser`); each request it makes is paused
//! (DevTools Fetch domain) and decided here.
//!
//! - only GET and HEAD, over http(s); images, media, fonts and other decoration are
//!   not fetched at all (they change no DOM and would spend the host's budget);
//! - a frame navigation must stay in the crawl's scope (`allowed_domains`);
//! - every request passes its host's politeness gate (`Fetcher::get_resource`);
//! - the private-address guard: a host in scope is fetched with the spider's own
//!   client (`allow_private_networks` applies); a host out of scope is fetched with a
//!   client that refuses every loopback, private, link-local and metadata address,
//!   whatever the spider allows. `allow_private_networks` lets a crawl reach its own
//!   intranet hosts; it does not let a page's script use the browser to reach others.

use std::sync::Arc;

use bytes::Bytes;
use url::Url;

use jetcrawl_fetcher::http::{HttpClient, HttpConfig};
use jetcrawl_fetcher::{FetchError, Fetcher};
use jetcrawl_shared::canon::host_in_scope;
use jetcrawl_shared::telemetry::Metrics;
use jetcrawl_shared::CompiledSpider;

/// Resource types a crawl has no use for.
const SKIPPED_TYPES: &[&str] = &[
    "Image",
    "Media",
    "Font",
    "TextTrack",
    "Prefetch",
    "Ping",
    "CSPViolationReport",
    "Manifest",
    "SignedExchange",
];

/// One request the browser paused.
#[derive(Debug, Clone)]
pub struct Paused {
    /// The URL asked for.
    pub url: String,
    /// GET, POST, ...
    pub method: String,
    /// DevTools resource type: Document, Script, XHR, Fetch, Image, ...
    pub resource_type: String,
    /// The request's `Origin` header, if it had one (cross-origin requests).
    pub origin: Option<String>,
}

/// What to tell the browser.
#[derive(Debug)]
pub enum Answer {
    /// Fulfil the request with this response.
    Respond {
        /// HTTP status.
        status: u16,
        /// Content-Type, if known.
        content_type: Option<String>,
        /// The body.
        body: Bytes,
        /// Echoed as Access-Control-Allow-Origin (the response's own headers are not
        /// kept, so a cross-origin API call would otherwise fail CORS).
        allow_origin: Option<String>,
    },
    /// Fail it; `reason` is the DevTools `errorReason`, `refused` the metric label
    /// when jetcrawl's rules (not the network) said no.
    Fail {
        /// `BlockedByClient`, `AccessDenied`, `Failed`, ...
        reason: &'static str,
        /// Why it was refused, if it was.
        refused: Option<&'static str>,
    },
}

/// Answers a page's requests; shared by every tab of a renderer.
pub struct Network {
    fetcher: Fetcher,
    /// For hosts out of scope: private addresses refused, whatever the spider says.
    strict: HttpClient,
    scope: Vec<String>,
    metrics: Metrics,
}

impl Network {
    /// Rules for `spider`, gated by `fetcher` (its politeness, its client).
    pub fn new(
        fetcher: Fetcher,
        spider: &CompiledSpider,
        metrics: Metrics,
    ) -> Result<Arc<Self>, FetchError> {
        let strict = HttpClient::new(HttpConfig {
            allow_private_networks: false,
            allowed_hosts: None,
            ..fetcher.http().config().clone()
        })?;
        Ok(Arc::new(Network {
            fetcher,
            strict,
            scope: spider.scope_hosts(),
            metrics,
        }))
    }

    fn in_scope(&self, url: &Url) -> bool {
        url.host_str()
            .is_some_and(|h| host_in_scope(&h.to_ascii_lowercase(), &self.scope))
    }

    /// Decide and, if allowed, fetch one paused request of a page at `depth`.
    pub async fn answer(&self, req: &Paused, depth: u32) -> Answer {
        let answer = self.decide(req, depth).await;
        if let Answer::Fail {
            refused: Some(why), ..
        } = &answer
        {
            tracing::debug!(url = %req.url, reason = why, "browser request refused");
            self.metrics
                .browser_requests_refused
                .get_or_create(&vec![("reason".to_string(), why.to_string())])
                .inc();
        }
        answer
    }

    async fn decide(&self, req: &Paused, depth: u32) -> Answer {
        let refuse = |reason, why| Answer::Fail {
            reason,
            refused: Some(why),
        };
        // The browser asks every page's host for a favicon on its own.
        let favicon = req.resource_type == "Other" && req.url.ends_with("/favicon.ico");
        if favicon || SKIPPED_TYPES.contains(&req.resource_type.as_str()) {
            return Answer::Fail {
                reason: "BlockedByClient",
                refused: None,
            };
        }
        if !matches!(req.method.as_str(), "GET" | "HEAD") {
            return refuse("BlockedByClient", "method");
        }
        let Ok(url) = Url::parse(&req.url) else {
            return refuse("BlockedByClient", "url");
        };
        if !matches!(url.scheme(), "http" | "https") {
            return refuse("BlockedByClient", "scheme");
        }
        let in_scope = self.in_scope(&url);
        if req.resource_type == "Document" && !in_scope {
            return refuse("BlockedByClient", "scope");
        }
        let http = if in_scope {
            self.fetcher.http()
        } else {
            &self.strict
        };
        match self.fetcher.get_resource(&url, depth, http).await {
            Ok(resp) => Answer::Respond {
                status: resp.status,
                content_type: resp.content_type,
                body: resp.body,
                allow_origin: req.origin.clone(),
            },
            Err(FetchError::PrivateAddress(_)) => refuse("AccessDenied", "private_address"),
            Err(FetchError::RedirectOutOfScope(_)) => refuse("AccessDenied", "scope"),
            Err(FetchError::Timeout) => Answer::Fail {
                reason: "TimedOut",
                refused: None,
            },
            Err(_) => Answer::Fail {
                reason: "Failed",
                refused: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jetcrawl_fetcher::FetcherOptions;

    use super::*;

    fn network() -> (Arc<Network>, Metrics) {
        let spider = CompiledSpider::from_toml(
            "name = \"n\"\nallowed_domains = [\"127.0.0.2\"]\nallow_private_networks = true\n\
             [render]\nmatch = ['/app/']\n",
            Path::new("n.toml"),
        )
        .unwrap();
        let metrics = Metrics::new();
        let fetcher = Fetcher::new(
            Arc::new(spider.clone()),
            FetcherOptions::bounded_by_caller(1 << 20, 2),
            metrics.clone(),
        )
        .unwrap();
        (
            Network::new(fetcher, &spider, metrics.clone()).unwrap(),
            metrics,
        )
    }

    fn paused(url: &str, method: &str, resource_type: &str) -> Paused {
        Paused {
            url: url.into(),
            method: method.into(),
            resource_type: resource_type.into(),
            origin: None,
        }
    }

    async fn refused(net: &Network, req: Paused) -> Option<&'static str> {
        match net.answer(&req, 0).await {
            Answer::Fail { refused, .. } => refused,
            Answer::Respond { status, .. } => panic!("{req:?} answered {status}"),
        }
    }

    #[tokio::test]
    async fn a_script_cannot_reach_a_private_address_out_of_scope() {
        let (net, metrics) = network();
        // The spider allows private networks, for its own host (127.0.0.2) only.
        for url in [
            "http://127.0.0.3:9/secret",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:9/",
            "http://10.0.0.1/",
        ] {
            let req = paused(url, "GET", "XHR");
            assert_eq!(refused(&net, req).await, Some("private_address"), "{url}");
        }
        let text = metrics.render();
        assert!(
            text.contains("jetcrawl_browser_requests_refused_total{reason=\"private_address\"} 4"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn what_a_crawl_does_not_fetch_for_a_page() {
        let (net, _) = network();
        let cases = [
            (
                paused("http://127.0.0.2/api", "POST", "XHR"),
                Some("method"),
            ),
            (paused("ftp://127.0.0.2/x", "GET", "Fetch"), Some("scheme")),
            (paused("not a url", "GET", "Script"), Some("url")),
            // A frame navigating out of the crawl's scope.
            (
                paused("http://other.test/", "GET", "Document"),
                Some("scope"),
            ),
            // Decoration: never fetched, not counted as refused.
            (paused("http://127.0.0.2/a.png", "GET", "Image"), None),
            (paused("http://127.0.0.2/f.woff2", "GET", "Font"), None),
            (paused("http://127.0.0.2/favicon.ico", "GET", "Other"), None),
        ];
        for (req, want) in cases {
            let label = format!("{req:?}");
            assert_eq!(refused(&net, req).await, want, "{label}");
        }
    }
}
