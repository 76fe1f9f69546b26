//! The spider file: one TOML file that describes a crawl, shared by every stage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::canon::QueryFilter;
use crate::error::ConfigError;

mod discovery;
mod recrawl;
pub use discovery::{Budget, Traps};
pub use recrawl::{parse_interval, Recrawl, RecrawlRule};
mod proxy;
pub use proxy::ProxyUrl;

/// A parsed and validated spider file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spider {
    /// Crawl name: letters, digits, '-', '_'. Names the subjects, streams and rows.
    pub name: String,
    /// URLs published as seeds by `jetcrawl seed` (with no URL arguments) and `jetcrawl crawl`.
    #[serde(default)]
    pub start_urls: Vec<String>,
    /// Hosts in scope (a host matches itself and its subdomains); empty = the seeds' hosts.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    /// Links deeper than this many hops from a seed are not followed.
    #[serde(default = "default_max_depth")]
    pub max_depth: u32,
    /// Pages the whole crawl may have (requests scheduled, each one page record);
    /// none if absent.
    #[serde(default)]
    pub max_pages: Option<u64>,
    /// Pages one host name may have; none if absent.
    #[serde(default)]
    pub max_pages_per_host: Option<u64>,
    /// The User-Agent header, also matched against robots.txt groups.
    #[serde(default = "default_user_agent")]
    pub user_agent: String,
    /// Obey robots.txt (Disallow and Crawl-delay).
    #[serde(default = "default_true")]
    pub obey_robots: bool,
    /// Follow sitemaps: robots.txt `Sitemap:` lines (read when `obey_robots`), and
    /// pages that are XML sitemaps or sitemap indexes (plain or gzipped).
    #[serde(default = "default_true")]
    pub sitemaps: bool,
    /// Query parameters dropped before fingerprinting (glob patterns).
    #[serde(default = "default_strip_query_params")]
    pub strip_query_params: Vec<String>,
    /// May fetch loopback/private/link-local addresses (tests, intranets).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// Per-host politeness.
    #[serde(default)]
    pub politeness: Politeness,
    /// HTTP limits and retries.
    #[serde(default)]
    pub http: Http,
    /// Link-following rules.
    #[serde(default)]
    pub follow: Follow,
    /// Link-trap heuristics.
    #[serde(default)]
    pub traps: Traps,
    /// Fetch pages again after an interval (conditional GET); none if absent.
    #[serde(default)]
    pub recrawl: Option<Recrawl>,
    /// Stream sizes and retention.
    #[serde(default)]
    pub streams: Streams,
    /// Sink batching.
    #[serde(default)]
    pub sink: Sink,
    /// Pages rendered in headless Chromium (`jetcrawl renderer`); none without it.
    #[serde(default)]
    pub render: Option<crate::render::Render>,
    /// Extraction rules, tried in order; every matching rule yields one item per page
    /// (or one per element matching its `each`).
    #[serde(default)]
    pub items: Vec<ItemRule>,
}

/// Per-host politeness settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Politeness {
    /// Minimum delay between two request starts to one host.
    #[serde(default = "default_delay_ms")]
    pub delay_ms: u64,
    /// Requests in flight to one host at once.
    #[serde(default = "default_concurrency_per_host")]
    pub concurrency_per_host: u32,
    /// Raise the delay for hosts that answer slowly (delay follows observed latency).
    #[serde(default = "default_true")]
    pub autothrottle: bool,
    /// What shares one budget (and one frontier partition): the host name, its
    /// registrable domain, or the address it resolves to.
    #[serde(default)]
    pub per: PolitenessPer,
}

/// What one politeness budget covers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolitenessPer {
    /// Each host name (`a.example.com` and `b.example.com` are two).
    #[default]
    Host,
    /// The registrable domain, by the public suffix list: every subdomain of
    /// `example.co.uk` shares one budget.
    Domain,
    /// The IP address the host resolves to: virtual hosts on one server share one.
    Ip,
}

/// HTTP limits and retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Whole request, body included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// TCP and TLS connect.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest silence while reading the body.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Redirect hops followed before giving up.
    #[serde(default = "default_max_redirects")]
    pub max_redirects: usize,
    /// Decompressed body bytes kept; longer bodies are truncated (and flagged).
    /// Also capped by the NATS server's max_payload.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Response header bytes accepted.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Fetch attempts for retryable failures (timeouts, 5xx, 408, 429) before the
    /// error is recorded as the page's final outcome.
    #[serde(default = "default_max_tries")]
    pub max_tries: u32,
    /// Base of the exponential retry backoff.
    #[serde(default = "default_retry_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// Outgoing proxies (`http://user:pass@host:port`, `socks5://host:port`): requests
    /// are spread over them, sticky per politeness key; empty = direct.
    #[serde(default)]
    pub proxies: Vec<ProxyUrl>,
}

/// Which discovered links are followed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Follow {
    /// Regexes on the canonical URL; a link must match one (empty = all in scope).
    #[serde(default)]
    pub allow: Vec<String>,
    /// Regexes on the canonical URL; a link matching any is not followed.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Links followed from one page at most (in page order); the rest are counted
    /// (`jetcrawl_links_capped_total`) and dropped. Bounds a link trap's page and the
    /// dupefilter round trip it costs.
    #[serde(default = "default_max_links_per_page")]
    pub max_links_per_page: usize,
}

impl Default for Follow {
    fn default() -> Self {
        Follow {
            allow: Vec::new(),
            deny: Vec::new(),
            max_links_per_page: default_max_links_per_page(),
        }
    }
}

/// JetStream stream sizes and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streams {
    /// Frontier partitions (`frontier.<p>`); all URLs of one host share one.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Requests the frontier holds before publishers are pushed back.
    #[serde(default = "default_frontier_max_msgs")]
    pub frontier_max_msgs: i64,
    /// Bytes of fetched pages kept for replay; when full, fetchers wait.
    /// -1: no limit of its own (the server's JetStream limits apply, `max_age` ages
    /// pages out). A limit is reserved on the server when the stream is created.
    #[serde(default = "default_unlimited")]
    pub pages_max_bytes: i64,
    /// Age after which pages are dropped.
    #[serde(default = "default_max_age_hours")]
    pub pages_max_age_hours: u64,
    /// Bytes of items kept; when full, parsers wait. -1: no limit of its own.
    #[serde(default = "default_unlimited")]
    pub items_max_bytes: i64,
    /// Age after which items are dropped from the stream (never from the database).
    #[serde(default = "default_max_age_hours")]
    pub items_max_age_hours: u64,
    /// Bytes of dead letters kept; when full, the oldest are dropped.
    #[serde(default = "default_dead_max_bytes")]
    pub dead_max_bytes: i64,
    /// Age after which dead letters are dropped.
    #[serde(default = "default_dead_max_age_hours")]
    pub dead_max_age_hours: u64,
    /// How long the server remembers message ids for deduplication.
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// A message a worker took and neither acked nor extended for this long (the worker
    /// died) is redelivered to another. Long work extends it with progress acks.
    #[serde(default = "default_ack_wait_secs")]
    pub ack_wait_secs: u64,
    /// JetStream replicas of every stream of the crawl (and of its live-instances
    /// bucket; consumers follow their stream): 1 on a single server, 3 on a 3-node
    /// cluster, so a crawl rides out the loss of any one node.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

/// Sink batching.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    /// Items written per transaction at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A partial batch is written after this long.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
}

/// One extraction rule: pages whose URL matches `match` yield one item of `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRule {
    /// The item type, stored in `item_type`.
    #[serde(rename = "type")]
    pub item_type: String,
    /// Regex on the page's canonical URL.
    #[serde(rename = "match")]
    pub url_match: String,
    /// Field whose value joins the item id, for pages with several items of a type.
    #[serde(default)]
    pub key: Option<String>,
    /// CSS selector: one item per matching element (not one per page), its fields
    /// selected inside that element. Ids take `key`'s value, or else the element's
    /// position on the page.
    #[serde(default)]
    pub each: Option<String>,
    /// Field name -> selector.
    pub fields: BTreeMap<String, FieldRule>,
}

/// A field selector: a CSS selector string (text of the first match) or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FieldRule {
    /// Text of the first match.
    Css(String),
    /// Full form.
    Full(FieldSpec),
}

/// The table form of a field selector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// CSS selector.
    pub css: String,
    /// Take this attribute instead of the text.
    #[serde(default)]
    pub attr: Option<String>,
    /// Resolve the value as a URL against the page URL.
    #[serde(default)]
    pub absolute: bool,
    /// Every match, as an array.
    #[serde(default)]
    pub all: bool,
}

impl FieldRule {
    /// The full form of this rule.
    pub fn spec(&self) -> FieldSpec {
        match self {
            FieldRule::Css(css) => FieldSpec {
                css: css.clone(),
                attr: None,
                absolute: false,
                all: false,
            },
            FieldRule::Full(spec) => spec.clone(),
        }
    }
}

fn default_max_depth() -> u32 {
    8
}
fn default_user_agent() -> String {
    concat!("jetcrawl/", env!("CARGO_PKG_VERSION")).to_string()
}
fn default_true() -> bool {
    true
}
fn default_strip_query_params() -> Vec<String> {
    vec!["utm_*".to_string()]
}
fn default_delay_ms() -> u64 {
    250
}
fn default_concurrency_per_host() -> u32 {
    2
}
fn default_timeout_ms() -> u64 {
    30_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_read_timeout_ms() -> u64 {
    15_000
}
fn default_max_redirects() -> usize {
    5
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_max_tries() -> u32 {
    3
}
fn default_retry_backoff_ms() -> u64 {
    2_000
}
fn default_partitions() -> u32 {
    16
}
fn default_frontier_max_msgs() -> i64 {
    50_000_000
}
fn default_unlimited() -> i64 {
    -1
}
fn default_ack_wait_secs() -> u64 {
    30
}
fn default_replicas() -> usize {
    1
}
fn default_max_age_hours() -> u64 {
    7 * 24
}
fn default_max_links_per_page() -> usize {
    10_000
}
fn default_dead_max_bytes() -> i64 {
    1 << 30
}
fn default_dead_max_age_hours() -> u64 {
    30 * 24
}
fn default_duplicate_window_secs() -> u64 {
    300
}
fn default_batch_size() -> usize {
    500
}
fn default_batch_timeout_ms() -> u64 {
    200
}

impl Default for Politeness {
    fn default() -> Self {
        Politeness {
            delay_ms: default_delay_ms(),
            concurrency_per_host: default_concurrency_per_host(),
            autothrottle: true,
            per: PolitenessPer::Host,
        }
    }
}

impl Default for Http {
    fn default() -> Self {
        Http {
            timeout_ms: default_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            read_timeout_ms: default_read_timeout_ms(),
            max_redirects: default_max_redirects(),
            max_body_bytes: default_max_body_bytes(),
            max_header_bytes: default_max_header_bytes(),
            max_tries: default_max_tries(),
            retry_backoff_ms: default_retry_backoff_ms(),
            proxies: Vec::new(),
        }
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            partitions: default_partitions(),
            frontier_max_msgs: default_frontier_max_msgs(),
            pages_max_bytes: default_unlimited(),
            pages_max_age_hours: default_max_age_hours(),
            items_max_bytes: default_unlimited(),
            items_max_age_hours: default_max_age_hours(),
            dead_max_bytes: default_dead_max_bytes(),
            dead_max_age_hours: default_dead_max_age_hours(),
            duplicate_window_secs: default_duplicate_window_secs(),
            ack_wait_secs: default_ack_wait_secs(),
            replicas: default_replicas(),
        }
    }
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            batch_size: default_batch_size(),
            batch_timeout_ms: default_batch_timeout_ms(),
        }
    }
}

impl Spider {
    /// `max_pages` and `max_pages_per_host`.
    pub fn budget(&self) -> Budget {
        Budget {
            max_pages: self.max_pages,
            max_pages_per_host: self.max_pages_per_host,
        }
    }
}

impl Streams {
    /// How long an unacked message stays with its worker.
    pub fn ack_wait(&self) -> Duration {
        Duration::from_secs(self.ack_wait_secs)
    }
}

impl Http {
    /// Backoff before try number `tries + 1`: base * 2^(tries-1), at most 10 minutes.
    pub fn backoff(&self, tries: u32) -> Duration {
        let exp = tries.saturating_sub(1).min(16);
        let ms = self.retry_backoff_ms.saturating_mul(1u64 << exp);
        Duration::from_millis(ms.min(600_000))
    }
}

/// A spider with its regexes compiled, ready for the stages.
#[derive(Debug, Clone)]
pub struct CompiledSpider {
    /// The spider as written.
    pub spider: Spider,
    /// Where it was read from.
    pub path: PathBuf,
    /// `follow.allow`, compiled.
    pub follow_allow: Vec<Regex>,
    /// `follow.deny`, compiled.
    pub follow_deny: Vec<Regex>,
    /// `items[].match`, compiled, in rule order.
    pub item_matches: Vec<Regex>,
    /// `strip_query_params`, compiled.
    pub query_filter: QueryFilter,
    /// `[recrawl] rules`, compiled, in order.
    pub recrawl_rules: Vec<(Regex, Duration)>,
}

impl CompiledSpider {
    /// Read, parse and validate a spider file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parse and validate spider TOML; `path` names it in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let spider: Spider = toml::from_str(text).map_err(|e| {
            let start = e.span().map(|span| span.start.min(text.len()));
            let line = start.map(|start| text[..start].matches('\n').count() + 1);
            // A bad value: name the key it belongs to (`key = value` on that line).
            let key = start.and_then(|start| {
                let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
                let (key, _) = text[line_start..start].split_once('=')?;
                Some(key.trim().to_string()).filter(|k| !k.is_empty())
            });
            let message = match key {
                Some(key) => format!("key `{key}`: {}", e.message()),
                None => e.message().to_string(),
            };
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                message,
            }
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            line: find_key_line(text, key),
            key: key.to_string(),
            message,
        };
        if spider.name.is_empty()
            || !spider
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "name",
                format!(
                    "expected letters, digits, '-' or '_', found {:?}",
                    spider.name
                ),
            ));
        }
        for url in &spider.start_urls {
            if let Err(e) = url::Url::parse(url) {
                return Err(invalid("start_urls", format!("{url:?} is not a URL: {e}")));
            }
        }
        if spider.streams.partitions == 0 || spider.streams.partitions > 1024 {
            return Err(invalid(
                "partitions",
                "expected a number from 1 to 1024".to_string(),
            ));
        }
        if spider.politeness.concurrency_per_host == 0 {
            return Err(invalid(
                "concurrency_per_host",
                "expected at least 1".to_string(),
            ));
        }
        if spider.http.max_tries == 0 {
            return Err(invalid("max_tries", "expected at least 1".to_string()));
        }
        if !(1..=5).contains(&spider.streams.replicas) {
            return Err(invalid(
                "replicas",
                "expected a number from 1 to 5 (JetStream keeps at most 5 replicas)".to_string(),
            ));
        }
        if spider.streams.ack_wait_secs < 2 {
            return Err(invalid("ack_wait_secs", "expected at least 2".to_string()));
        }
        // A message redelivered after a crash is handled again up to `ack_wait` later,
        // after waiting up to 30 s for its host and a fetch: its repeats (the same
        // message ids) must still fall in the window that makes them duplicates.
        let held = 2 * spider.streams.ack_wait_secs + spider.http.timeout_ms.div_ceil(1000) + 30;
        if spider.streams.duplicate_window_secs < held {
            return Err(invalid(
                "duplicate_window_secs",
                format!(
                    "{} s is shorter than a message can be held and redone ({held} s: twice \
                     ack_wait_secs, [http] timeout_ms and 30 s waiting for a host); \
                     repeats after a crash would be published twice",
                    spider.streams.duplicate_window_secs
                ),
            ));
        }
        if spider.follow.max_links_per_page == 0 {
            return Err(invalid(
                "max_links_per_page",
                "expected at least 1".to_string(),
            ));
        }
        discovery::validate(&spider.traps, &spider.budget())
            .map_err(|(key, message)| invalid(key, message))?;
        let mut recrawl_rules = Vec::new();
        if let Some(recrawl) = &spider.recrawl {
            parse_interval(&recrawl.interval).map_err(|e| invalid("interval", e))?;
            for rule in &recrawl.rules {
                let interval =
                    parse_interval(&rule.interval).map_err(|e| invalid("interval", e))?;
                let regex = Regex::new(&rule.url_match).map_err(|e| {
                    invalid("match", format!("bad regex {:?}: {e}", rule.url_match))
                })?;
                recrawl_rules.push((regex, interval));
            }
        }
        if spider.sink.batch_size == 0 {
            return Err(invalid("batch_size", "expected at least 1".to_string()));
        }
        let compile = |key: &str, patterns: &[String]| -> Result<Vec<Regex>, ConfigError> {
            patterns
                .iter()
                .map(|p| Regex::new(p).map_err(|e| invalid(key, format!("bad regex {p:?}: {e}"))))
                .collect()
        };
        let follow_allow = compile("allow", &spider.follow.allow)?;
        let follow_deny = compile("deny", &spider.follow.deny)?;
        let item_matches = compile(
            "match",
            &spider
                .items
                .iter()
                .map(|r| r.url_match.clone())
                .collect::<Vec<_>>(),
        )?;
        for rule in &spider.items {
            if rule.fields.is_empty() {
                return Err(invalid(
                    "fields",
                    format!("item type {:?} has no fields", rule.item_type),
                ));
            }
            for (name, field) in &rule.fields {
                let css = field.spec().css;
                if scraper_like_selector_is_empty(&css) {
                    return Err(invalid(name, "expected a CSS selector".to_string()));
                }
            }
            if rule
                .each
                .as_deref()
                .is_some_and(scraper_like_selector_is_empty)
            {
                return Err(invalid("each", "expected a CSS selector".to_string()));
            }
            if let Some(key) = &rule.key {
                if !rule.fields.contains_key(key) {
                    return Err(invalid(
                        "key",
                        format!("{key:?} is not a field of item type {:?}", rule.item_type),
                    ));
                }
            }
        }
        if let Some(render) = &spider.render {
            crate::render::RenderMatch::new(&spider)
                .map_err(|e| invalid("match", format!("bad [render] regex: {e}")))?;
            if render.timeout_ms == 0 {
                return Err(invalid("timeout_ms", "expected at least 1".to_string()));
            }
            if render
                .wait_for
                .as_deref()
                .is_some_and(scraper_like_selector_is_empty)
            {
                return Err(invalid("wait_for", "expected a CSS selector".to_string()));
            }
        }
        let query_filter = QueryFilter::new(&spider.strip_query_params)
            .map_err(|e| invalid("strip_query_params", e))?;
        Ok(CompiledSpider {
            spider,
            path: path.to_path_buf(),
            follow_allow,
            follow_deny,
            item_matches,
            query_filter,
            recrawl_rules,
        })
    }

    /// When a page fetched now is due again (`None` without `[recrawl]`).
    pub fn recrawl_interval(&self, url: &str) -> Option<Duration> {
        let recrawl = self.spider.recrawl.as_ref()?;
        self.recrawl_rules
            .iter()
            .find(|(regex, _)| regex.is_match(url))
            .map(|(_, interval)| *interval)
            .or_else(|| parse_interval(&recrawl.interval).ok())
    }

    /// The crawl name.
    pub fn name(&self) -> &str {
        &self.spider.name
    }

    /// Hosts in scope: `allowed_domains`, or else the hosts of `start_urls`.
    pub fn scope_hosts(&self) -> Vec<String> {
        if !self.spider.allowed_domains.is_empty() {
            return self
                .spider
                .allowed_domains
                .iter()
                .map(|d| d.trim().trim_start_matches('.').to_ascii_lowercase())
                .collect();
        }
        self.spider
            .start_urls
            .iter()
            .filter_map(|u| url::Url::parse(u).ok())
            .filter_map(|u| u.host_str().map(str::to_ascii_lowercase))
            .collect()
    }
}

fn scraper_like_selector_is_empty(css: &str) -> bool {
    css.trim().is_empty()
}

/// The 1-based line of the first `key =` (or `[key]`) in the text, for error messages.
fn find_key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
                || line.trim_end() == format!("[{key}]")
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "books"
start_urls = ["https://books.toscrape.com/"]
allowed_domains = ["books.toscrape.com"]
max_depth = 8
user_agent = "jetcrawl (+https://example.org/bot)"
obey_robots = true
strip_query_params = ["utm_*", "ref"]
allow_private_networks = false

[politeness]
delay_ms = 250
concurrency_per_host = 2
autothrottle = true

[follow]
allow = ['/catalogue/']
deny  = ['/private/']

[[items]]
type = "book"
match = '/catalogue/[^/]+/index\.html$'
[items.fields]
title = "h1"
price = "p.price_color"
image = { css = "div.item img", attr = "src", absolute = true }
tags  = { css = "ul.breadcrumb li a", all = true }
"#;

    fn load(text: &str) -> Result<CompiledSpider, ConfigError> {
        CompiledSpider::from_toml(text, Path::new("spider.toml"))
    }

    #[test]
    fn design_example_parses() {
        let s = load(EXAMPLE).unwrap();
        assert_eq!(s.name(), "books");
        assert_eq!(s.spider.items[0].fields.len(), 4);
        let image = s.spider.items[0].fields["image"].spec();
        assert_eq!(image.attr.as_deref(), Some("src"));
        assert!(image.absolute);
        assert!(s.spider.items[0].fields["tags"].spec().all);
        assert_eq!(s.scope_hosts(), vec!["books.toscrape.com"]);
    }

    #[test]
    fn a_duplicate_window_shorter_than_a_message_can_be_held_is_refused() {
        let base = "name = \"t\"\nstart_urls = [\"http://a.test/\"]\n";
        // Held and redone: 2 × ack_wait (60) + [http] timeout (30) + 30 = 120 s.
        let err = load(&format!("{base}[streams]\nduplicate_window_secs = 119\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("duplicate_window_secs") && err.contains("120 s"),
            "{err}"
        );
        assert!(load(&format!("{base}[streams]\nduplicate_window_secs = 120\n")).is_ok());
        // A longer ack_wait needs a longer window.
        let err = load(&format!(
            "{base}[streams]\nack_wait_secs = 200\nduplicate_window_secs = 300\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("460 s"), "{err}");
    }

    #[test]
    fn unknown_key_names_key_file_and_line() {
        let text = EXAMPLE.replace("delay_ms = 250", "delay_msec = 250");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains("spider.toml"), "{err}");
        assert!(err.contains("delay_msec"), "{err}");
        assert!(err.contains("spider.toml:12:"), "{err}");
    }

    #[test]
    fn bad_name_and_regex_are_rejected_with_key() {
        let err = load(&EXAMPLE.replace("\"books\"", "\"bo oks\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("name") && err.contains("spider.toml:2:"),
            "{err}"
        );
        let err = load(&EXAMPLE.replace("'/private/'", "'/priv(ate/'"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("deny") && err.contains("bad regex"), "{err}");
    }

    #[test]
    fn wrong_type_is_reported() {
        let err = load(&EXAMPLE.replace("max_depth = 8", "max_depth = \"deep\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spider.toml:5: key `max_depth`: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn each_is_optional_and_must_be_a_selector() {
        let s = load(EXAMPLE).unwrap();
        assert_eq!(s.spider.items[0].each, None);
        let text = EXAMPLE.replace(
            "match = '/catalogue/[^/]+/index\\.html$'",
            "match = '/catalogue/[^/]+/index\\.html$'\neach = \"div.quote\"",
        );
        assert_eq!(
            load(&text).unwrap().spider.items[0].each.as_deref(),
            Some("div.quote")
        );
        let err = load(&text.replace("\"div.quote\"", "\" \""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("each") && err.contains("spider.toml:23:"),
            "{err}"
        );
    }

    #[test]
    fn replicas_default_to_one_and_are_checked() {
        assert_eq!(load(EXAMPLE).unwrap().spider.streams.replicas, 1);
        let with = |n: &str| format!("{EXAMPLE}\n[streams]\nreplicas = {n}\n");
        assert_eq!(load(&with("3")).unwrap().spider.streams.replicas, 3);
        for bad in ["0", "6"] {
            let text = with(bad);
            let err = load(&text).unwrap_err().to_string();
            let line = text
                .lines()
                .position(|l| l.starts_with("replicas"))
                .unwrap()
                + 1;
            assert!(
                err.contains("replicas") && err.contains(&format!("spider.toml:{line}:")),
                "{err}"
            );
        }
        let err = load(&with("-1")).unwrap_err().to_string();
        assert!(err.contains("replicas"), "{err}");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let http = Http {
            retry_backoff_ms: 1000,
            ..Http::default()
        };
        assert_eq!(http.backoff(1), Duration::from_secs(1));
        assert_eq!(http.backoff(3), Duration::from_secs(4));
        assert_eq!(http.backoff(40), Duration::from_secs(600));
    }
}
