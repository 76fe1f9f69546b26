//! robots.txt: one fetch per origin, shared by every concurrent caller, kept in a
//! bounded cache with a TTL, applied as RFC 9309 and Google describe.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use texting_robots::Robot;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::http::HttpClient;
use crate::politeness::Politeness;

/// Only this much of a robots.txt is parsed (Google's limit); the rest is ignored.
const MAX_ROBOTS_BYTES: usize = 500 * 1024;
/// After a 5xx, a 429 or a network error the host's URLs wait; the file is tried
/// again after this, doubling with each failure up to [`UNREACHABLE_MAX_RETRY`].
const UNREACHABLE_RETRY: Duration = Duration::from_secs(1);
const UNREACHABLE_MAX_RETRY: Duration = Duration::from_secs(600);
/// Crawl-delay values beyond this are treated as this.
const MAX_CRAWL_DELAY: Duration = Duration::from_secs(3600);

/// What robots.txt says about one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RobotsVerdict {
    /// Fetch it, at most this often if the host asked.
    Allowed {
        /// The host's Crawl-delay.
        crawl_delay: Option<Duration>,
    },
    /// The rules forbid it.
    Disallowed,
    /// robots.txt could not be read just now (RFC 9309: assume disallow while it is
    /// unreachable): ask again after `retry_in`, do not drop the URL.
    Unavailable {
        /// When the file will be tried again.
        retry_in: Duration,
        /// Why it could not be read.
        reason: String,
        /// The host did not answer at all (connection, DNS, timeout), rather than
        /// answering 5xx or 429: its pages will not answer either.
        unreachable: bool,
        /// How long it has been unavailable without a break.
        since: Duration,
    },
}

impl RobotsVerdict {
    /// Whether the URL may be fetched now.
    pub fn allowed(&self) -> bool {
        matches!(self, RobotsVerdict::Allowed { .. })
    }
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
    /// The robots.txt fetch waits its turn at the host like any request.
    gate: Option<Politeness>,
    entries: Mutex<HashMap<String, Entry>>,
}

struct Entry {
    /// Filled once by whichever caller fetches first; the others wait on it.
    rules: Arc<OnceCell<Fetched>>,
    last_used: Instant,
    /// Failed fetches in a row, for the back-off.
    failures: u32,
    /// When the first of those failures happened.
    failing_since: Option<Instant>,
}

struct Fetched {
    rules: Rules,
    expires_at: Instant,
    /// Its `Sitemap:` URLs, until one page record carries them ([`RobotsCache::take_sitemaps`]).
    sitemaps: Mutex<Vec<String>>,
}

enum Rules {
    AllowAll,
    Parsed(Robot),
    Unavailable { reason: String, unreachable: bool },
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
        gate: Option<Politeness>,
    ) -> Self {
        RobotsCache {
            inner: Arc::new(Inner {
                client,
                agent: product_token(&user_agent_token).to_string(),
                capacity: capacity.max(1),
                ttl,
                gate,
                entries: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `url` may be fetched, and the host's Crawl-delay if any. The first call
    /// for an origin fetches its /robots.txt (through the gate of `key`, the URL's
    /// politeness key); concurrent callers share that one fetch.
    pub async fn check(&self, url: &url::Url, key: &str) -> RobotsVerdict {
        let Some(origin) = origin_of(url) else {
            // Not http(s): robots.txt does not apply; the HTTP client refuses it anyway.
            return RobotsVerdict::Allowed { crawl_delay: None };
        };
        let (cell, failures, failing_since) = self.inner.cell_for(&origin);
        let fetched = cell
            .get_or_init(|| self.inner.fetch(&origin, key, failures))
            .await;
        let now = Instant::now();
        let since = failing_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        fetched.rules.verdict(
            url,
            fetched.expires_at.saturating_duration_since(now),
            since,
        )
    }
}

impl RobotsCache {
    /// The `Sitemap:` URLs of `url`'s robots.txt, the first time they are asked for
    /// after it was read (empty after that, and before it is read). A fetcher hands
    /// them over on a page record, so that the parser schedules them; one that dies
    /// first loses its cache too, and reads robots.txt (and hands them over) again.
    pub fn take_sitemaps(&self, url: &url::Url) -> Vec<String> {
        let Some(origin) = origin_of(url) else {
            return Vec::new();
        };
        let entries = self
            .inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&origin)
            .and_then(|e| e.rules.get())
            .map(|f| {
                std::mem::take(&mut *f.sitemaps.lock().unwrap_or_else(PoisonError::into_inner))
            })
            .unwrap_or_default()
    }
}

impl Inner {
    /// The cell for `origin`, replacing an expired one and evicting to stay in
    /// capacity; with the failures in a row before it, and since when.
    fn cell_for(&self, origin: &str) -> (Arc<OnceCell<Fetched>>, u32, Option<Instant>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut failures, mut failing_since) = (0, None);
        if let Some(entry) = entries.get_mut(origin) {
            let fresh = entry.rules.get().is_none_or(|f| f.expires_at > now);
            if fresh {
                entry.last_used = now;
                let since = match entry.rules.get().map(|f| &f.rules) {
                    Some(Rules::Unavailable { .. }) => entry.failing_since.or(Some(now)),
                    _ => None,
                };
                return (Arc::clone(&entry.rules), entry.failures, since);
            }
            if let Some(Rules::Unavailable { .. }) = entry.rules.get().map(|f| &f.rules) {
                failures = entry.failures.saturating_add(1);
                failing_since = entry.failing_since.or(Some(now));
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
                failures,
                failing_since: failing_since.or(Some(now)),
            },
        );
        (rules, failures, failing_since)
    }

    async fn fetch(&self, origin: &str, key: &str, failures: u32) -> Fetched {
        let Ok(robots_url) = url::Url::parse(&format!("{origin}/robots.txt")) else {
            return Fetched {
                rules: Rules::AllowAll,
                expires_at: Instant::now() + self.ttl,
                sitemaps: Mutex::default(),
            };
        };
        // Through the host's gate, ahead of its pages (priority 0).
        let permit = match &self.gate {
            Some(gate) => match gate.acquire(key, None, 0).await {
                Ok(permit) => Some(permit),
                Err(backlog) => {
                    return Fetched {
                        rules: Rules::Unavailable {
                            reason: "the host is busy".into(),
                            unreachable: false,
                        },
                        expires_at: Instant::now() + backlog.retry_after,
                        sitemaps: Mutex::default(),
                    }
                }
            },
            None => None,
        };
        let mut permit = permit;
        if let Some(p) = permit.as_mut() {
            p.start();
        }
        let started = Instant::now();
        let response = self
            .client
            .get_keyed(&robots_url, key, &crate::http::Validators::default())
            .await;
        let back_off = match &response {
            Ok(r) if matches!(r.status, 429 | 503) => r.retry_after,
            _ => None,
        };
        let rules = self.rules_from(response);
        if let Some(mut permit) = permit {
            if let Some(after) = back_off {
                permit.back_off(after);
            }
            if let Some(delay) = rules.crawl_delay() {
                permit.set_crawl_delay(delay);
            }
            permit.finish(started.elapsed());
        }
        let lifetime = match rules {
            Rules::Unavailable { .. } => (UNREACHABLE_RETRY
                * 2u32.saturating_pow(failures.min(16)))
            .min(UNREACHABLE_MAX_RETRY)
            .min(self.ttl),
            _ => self.ttl,
        };
        tracing::debug!(origin, rules = rules.label(), "robots.txt fetched");
        let sitemaps = match &rules {
            Rules::Parsed(robot) => robot
                .sitemaps
                .iter()
                .take(jetcrawl_shared::message::MAX_ROBOTS_SITEMAPS)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Fetched {
            rules,
            expires_at: Instant::now() + lifetime,
            sitemaps: Mutex::new(sitemaps),
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
            Err(err) if err.is_retryable() => {
                return Rules::Unavailable {
                    reason: err.to_string(),
                    unreachable: true,
                }
            }
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
            429 | 500..=599 => Rules::Unavailable {
                reason: format!("http status {}", response.status),
                unreachable: false,
            },
            // 4xx (including 404): "unavailable", everything is allowed. A final 3xx
            // without a usable Location lands here as well.
            _ => Rules::AllowAll,
        }
    }
}

impl Rules {
    fn crawl_delay(&self) -> Option<Duration> {
        match self {
            Rules::Parsed(robot) => robot
                .delay
                .and_then(|d| Duration::try_from_secs_f32(d).ok())
                .map(|d| d.min(MAX_CRAWL_DELAY)),
            _ => None,
        }
    }

    fn verdict(&self, url: &url::Url, expires_in: Duration, since: Duration) -> RobotsVerdict {
        match self {
            Rules::AllowAll => RobotsVerdict::Allowed { crawl_delay: None },
            Rules::Parsed(robot) if !robot.allowed(url.as_str()) => RobotsVerdict::Disallowed,
            Rules::Parsed(_) => RobotsVerdict::Allowed {
                crawl_delay: self.crawl_delay(),
            },
            Rules::Unavailable {
                reason,
                unreachable,
            } => RobotsVerdict::Unavailable {
                retry_in: expires_in,
                reason: format!("robots.txt unavailable: {reason}"),
                unreachable: *unreachable,
                since,
            },
        }
    }

    fn label(&self) -> &'static str {
        match self {
            Rules::AllowAll => "allow_all",
            Rules::Parsed(_) => "parsed",
            Rules::Unavailable { .. } => "unavailable",
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
mod tests;
