//! robots.txt: one fetch per origin, shared by every concurrent caller, kept in a
//! bounded cache with a TTL, applied as RFC 9309 and Google describe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use texting_robots::Robot;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::http::HttpClient;

/// Only this much of a robots.txt is parsed (Google's limit); the rest is ignored.
const MAX_ROBOTS_BYTES: usize = 500 * 1024;
/// After a 5xx or a network error everything is disallowed; try again after this.
const UNREACHABLE_RETRY: Duration = Duration::from_secs(60);
/// Crawl-delay values beyond this are treated as this.
const MAX_CRAWL_DELAY: Duration = Duration::from_secs(3600);

/// What robots.txt says about one URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RobotsVerdict {
    pub allowed: bool,
    pub crawl_delay: Option<Duration>,
}

/// Per-origin robots.txt rules. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct RobotsCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpClient,
    agent: String,
    capacity: usize,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// Filled once by whichever caller fetches first; the others wait on it.
    rules: Arc<OnceCell<Fetched>>,
    last_used: Instant,
}

struct Fetched {
    rules: Rules,
    expires_at: Instant,
}

enum Rules {
    AllowAll,
    DisallowAll,
    Parsed(Robot),
}

impl RobotsCache {
    /// `user_agent_token` is matched against `User-agent:` lines; a full User-Agent
    /// string is accepted too and reduced to its product token ("jetcrawl/1.0 (+url)"
    /// matches "jetcrawl").
    pub fn new(
        client: HttpClient,
        user_agent_token: String,
        capacity: usize,
        ttl: Duration,
    ) -> Self {
        RobotsCache {
            inner: Arc::new(Inner {
                client,
                agent: product_token(&user_agent_token).to_string(),
                capacity: capacity.max(1),
                ttl,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `url` may be fetched, and the host's Crawl-delay if any. The first call
    /// for an origin fetches its /robots.txt; concurrent callers share that one fetch.
    pub async fn check(&self, url: &url::Url) -> RobotsVerdict {
        let Some(origin) = origin_of(url) else {
            // Not http(s): robots.txt does not apply; the HTTP client refuses it anyway.
            return RobotsVerdict {
                allowed: true,
                crawl_delay: None,
            };
        };
        let cell = self.inner.cell_for(&origin);
        let fetched = cell.get_or_init(|| self.inner.fetch(&origin)).await;
        fetched.rules.verdict(url)
    }
}

impl Inner {
    /// The cell for `origin`, replacing an expired one and evicting to stay in capacity.
    fn cell_for(&self, origin: &str) -> Arc<OnceCell<Fetched>> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = entries.get_mut(origin) {
            let fresh = entry.rules.get().is_none_or(|f| f.expires_at > now);
            if fresh {
                entry.last_used = now;
                return Arc::clone(&entry.rules);
            }
        }
        if !entries.contains_key(origin) && entries.len() >= self.capacity {
            entries.retain(|_, e| e.rules.get().is_none_or(|f| f.expires_at > now));
            if entries.len() >= self.capacity {
                // Least recently used; a linear scan is cheap next to the fetch that follows.
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        let rules = Arc::new(OnceCell::new());
        entries.insert(
            origin.to_string(),
            Entry {
                rules: Arc::clone(&rules),
                last_used: now,
            },
        );
        rules
    }

    async fn fetch(&self, origin: &str) -> Fetched {
        let rules = match url::Url::parse(&format!("{origin}/robots.txt")) {
            Ok(robots_url) => self.rules_from(self.client.get(&robots_url).await),
            Err(_) => Rules::AllowAll,
        };
        let lifetime = match rules {
            Rules::DisallowAll => UNREACHABLE_RETRY.min(self.ttl),
            _ => self.ttl,
        };
        tracing::debug!(origin, rules = rules.label(), "robots.txt fetched");
        Fetched {
            rules,
            expires_at: Instant::now() + lifetime,
        }
    }

    fn rules_from(
        &self,
        result: Result<crate::http::HttpResponse, crate::error::FetchError>,
    ) -> Rules {
        let response = match result {
            Ok(response) => response,
            // Timeouts, refused connections, DNS trouble: the site may be down or
            // overloaded, so crawl nothing until robots.txt can be read.
            Err(err) if err.is_retryable() => return Rules::DisallowAll,
            // Redirected away, too many redirects, refused address...: there is no
            // robots.txt to read, as with a 404; the page fetch reports its own error.
            Err(_) => return Rules::AllowAll,
        };
        match response.status {
            200..=299 => {
                let body = truncate_at_line(&response.body, MAX_ROBOTS_BYTES);
                // texting_robots rarely fails; an unparseable file restricts nothing.
                Robot::new(&self.agent, body).map_or(Rules::AllowAll, Rules::Parsed)
            }
            // Google treats 429 like a server error.
            429 | 500..=599 => Rules::DisallowAll,
            // 4xx (including 404): "unavailable", everything is allowed. A final 3xx
            // without a usable Location lands here as well.
            _ => Rules::AllowAll,
        }
    }
}

impl Rules {
    fn verdict(&self, url: &url::Url) -> RobotsVerdict {
        match self {
            Rules::AllowAll => RobotsVerdict {
                allowed: true,
                crawl_delay: None,
            },
            Rules::DisallowAll => RobotsVerdict {
                allowed: false,
                crawl_delay: None,
            },
            Rules::Parsed(robot) => RobotsVerdict {
                allowed: robot.allowed(url.as_str()),
                crawl_delay: robot
                    .delay
                    .and_then(|d| Duration::try_from_secs_f32(d).ok())
                    .map(|d| d.min(MAX_CRAWL_DELAY)),
            },
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Rules::AllowAll => "allow_all",
            Rules::DisallowAll => "disallow_all",
            Rules::Parsed(_) => "parsed",
        }
    }
}

/// The product token of a User-Agent: its first word, up to '/' or whitespace.
pub fn product_token(user_agent: &str) -> &str {
    user_agent
        .trim()
        .split(|c: char| c == '/' || c.is_whitespace())
        .next()
        .unwrap_or("")
}

/// `scheme://host:port`, with the port always spelled out; `None` unless http(s).
fn origin_of(url: &url::Url) -> Option<String> {
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        host.to_ascii_lowercase(),
        port
    ))
}

/// At most `limit` bytes, cut after the last complete line so no rule is half-read.
fn truncate_at_line(body: &[u8], limit: usize) -> &[u8] {
    if body.len() <= limit {
        return body;
    }
    let head = &body[..limit];
    match head.iter().rposition(|&b| b == b'\n') {
        Some(newline) => &head[..=newline],
        None => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::tests::{local_config, serve};
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Router;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A site whose /robots.txt answers `status` with `body`, counting requests.
    async fn site(status: StatusCode, body: &'static str) -> (url::Url, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/robots.txt",
                get(move |State(hits): State<Arc<AtomicUsize>>| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    // Slow enough that concurrent checks really overlap.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    (status, body).into_response()
                }),
            )
            .with_state(Arc::clone(&hits));
        let addr = serve(router).await;
        (url::Url::parse(&format!("http://{addr}/")).unwrap(), hits)
    }

    fn cache(ttl: Duration) -> RobotsCache {
        let client = HttpClient::new(local_config()).unwrap();
        RobotsCache::new(
            client,
            "jetcrawl/0.1 (+https://example.org/bot)".into(),
            100,
            ttl,
        )
    }

    const DAY: Duration = Duration::from_secs(86400);

    #[tokio::test]
    async fn disallowed_path() {
        let robots = "User-agent: *\nDisallow: /private/\n\nUser-agent: jetcrawl\nDisallow: /secret\nAllow: /secret/ok\n";
        let (base, _) = site(StatusCode::OK, robots).await;
        let cache = cache(DAY);
        let check = |path: &str| {
            let cache = cache.clone();
            let url = base.join(path).unwrap();
            async move { cache.check(&url).await.allowed }
        };
        assert!(!check("/secret/x").await);
        assert!(check("/secret/ok/1").await);
        // Our own group applies, not the '*' one.
        assert!(check("/private/x").await);
        assert!(check("/").await);
    }

    #[tokio::test]
    async fn not_found_allows_everything() {
        let (base, _) = site(StatusCode::NOT_FOUND, "nope").await;
        let verdict = cache(DAY).check(&base.join("/anything").unwrap()).await;
        assert_eq!(
            verdict,
            RobotsVerdict {
                allowed: true,
                crawl_delay: None
            }
        );
    }

    #[tokio::test]
    async fn server_error_disallows_everything_for_a_while() {
        let (base, hits) = site(StatusCode::INTERNAL_SERVER_ERROR, "oops").await;
        let cache = cache(DAY);
        let url = base.join("/page").unwrap();
        assert!(!cache.check(&url).await.allowed);
        assert!(!cache.check(&url).await.allowed);
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "cached until the retry time"
        );
    }

    #[tokio::test]
    async fn unreachable_host_disallows() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let url = url::Url::parse(&format!("http://{addr}/page")).unwrap();
        assert!(!cache(DAY).check(&url).await.allowed);
    }

    #[tokio::test]
    async fn crawl_delay_is_reported() {
        let (base, _) = site(
            StatusCode::OK,
            "User-agent: *\nCrawl-delay: 2.5\nDisallow: /x\n",
        )
        .await;
        let verdict = cache(DAY).check(&base.join("/page").unwrap()).await;
        assert_eq!(verdict.crawl_delay, Some(Duration::from_millis(2500)));
        assert!(verdict.allowed);
    }

    #[tokio::test]
    async fn concurrent_checks_share_one_fetch() {
        let (base, hits) = site(StatusCode::OK, "User-agent: *\nDisallow: /no\n").await;
        let cache = cache(DAY);
        let checks = (0..20).map(|i| {
            let cache = cache.clone();
            let url = base.join(&format!("/page/{i}")).unwrap();
            tokio::spawn(async move { cache.check(&url).await })
        });
        for verdict in futures::future::join_all(checks).await {
            assert!(verdict.unwrap().allowed);
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn entries_expire_after_ttl() {
        let (base, hits) = site(StatusCode::OK, "User-agent: *\nDisallow: /no\n").await;
        let cache = cache(Duration::from_millis(200));
        let url = base.join("/page").unwrap();
        cache.check(&url).await;
        cache.check(&url).await;
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(250)).await;
        cache.check(&url).await;
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn capacity_is_bounded() {
        let (base, _) = site(StatusCode::NOT_FOUND, "").await;
        let client = HttpClient::new(local_config()).unwrap();
        let cache = RobotsCache::new(client, "jetcrawl".into(), 2, DAY);
        let port = base.port().unwrap();
        for host in ["127.0.0.1", "localhost", "127.0.0.1"] {
            let url = url::Url::parse(&format!("http://{host}:{port}/")).unwrap();
            cache.check(&url).await;
        }
        // Different ports are different origins.
        cache
            .check(&url::Url::parse("http://127.0.0.1:1/").unwrap())
            .await;
        let entries = cache.inner.entries.lock().unwrap();
        assert_eq!(entries.len(), 2);
        assert!(entries.contains_key(&format!("http://127.0.0.1:{port}")));
    }

    #[test]
    fn helpers() {
        assert_eq!(product_token("jetcrawl/0.1 (+https://x)"), "jetcrawl");
        assert_eq!(product_token("jetcrawl (+https://x)"), "jetcrawl");
        assert_eq!(product_token("Bot"), "Bot");
        let url = url::Url::parse("https://Example.COM/a?b").unwrap();
        assert_eq!(origin_of(&url).as_deref(), Some("https://example.com:443"));
        assert_eq!(origin_of(&url::Url::parse("ftp://x/").unwrap()), None);
        assert_eq!(truncate_at_line(b"a\nbb\nccc", 6), b"a\nbb\n");
        assert_eq!(truncate_at_line(b"abc", 6), b"abc");
    }

    #[test]
    fn oversized_robots_is_cut() {
        let mut body = b"User-agent: *\nDisallow: /early\n".to_vec();
        body.extend(std::iter::repeat_n(b'#', MAX_ROBOTS_BYTES));
        body.extend_from_slice(b"\nDisallow: /late\n");
        let robot = Robot::new("jetcrawl", truncate_at_line(&body, MAX_ROBOTS_BYTES)).unwrap();
        assert!(!robot.allowed("/early"));
        assert!(robot.allowed("/late"));
    }
}
