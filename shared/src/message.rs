//! What travels between stages: requests (frontier), pages (fetched bodies with
//! metadata in headers) and items (JSON).

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::Error;

/// Header names. Page metadata rides in headers so the body stays a plain payload.
pub mod header {
    /// Canonical URL that was requested.
    pub const URL: &str = "Jetcrawl-Url";
    /// URL after redirects.
    pub const FINAL_URL: &str = "Jetcrawl-Final-Url";
    /// HTTP status (absent when the fetch failed without a response).
    pub const STATUS: &str = "Jetcrawl-Status";
    /// Response Content-Type.
    pub const CONTENT_TYPE: &str = "Jetcrawl-Content-Type";
    /// Hops from a seed.
    pub const DEPTH: &str = "Jetcrawl-Depth";
    /// Request fingerprint, 16 hex digits.
    pub const FINGERPRINT: &str = "Jetcrawl-Fingerprint";
    /// When the response was received (RFC 3339).
    pub const FETCHED_AT: &str = "Jetcrawl-Fetched-At";
    /// Milliseconds the fetch took.
    pub const FETCH_MS: &str = "Jetcrawl-Fetch-Ms";
    /// Fetch attempts made.
    pub const TRIES: &str = "Jetcrawl-Tries";
    /// Encoding the body was decoded from (the payload is always UTF-8).
    pub const CHARSET: &str = "Jetcrawl-Charset";
    /// "true" when the body was cut at the size cap.
    pub const TRUNCATED: &str = "Jetcrawl-Truncated";
    /// The response's HTTP version and headers as received (JSON, see
    /// [`super::ResponseHead`]), for archives (`jetcrawl export --warc`).
    pub const RESPONSE: &str = "Jetcrawl-Response";
    /// Why a fetch failed, or why a message was dead-lettered.
    pub const ERROR: &str = "Jetcrawl-Error";
    /// Low-cardinality class of the error.
    pub const ERROR_KIND: &str = "Jetcrawl-Error-Kind";
    /// `true` on a page whose body is the DOM after its scripts ran (`jetcrawl renderer`).
    pub const RENDERED: &str = "Jetcrawl-Rendered";
    /// Dead letters: the stage that gave up.
    pub const STAGE: &str = "Jetcrawl-Stage";
    /// Dead letters: the subject the message came from.
    pub const SOURCE_SUBJECT: &str = "Jetcrawl-Source-Subject";
    /// Dead letters: the stream sequence it had there.
    pub const SOURCE_SEQ: &str = "Jetcrawl-Source-Seq";
    /// On a dead letter whose payload did not fit in a message: its size in bytes
    /// (the dead letter keeps its start).
    pub const ORIGINAL_BYTES: &str = "Jetcrawl-Original-Bytes";
    /// The `<lastmod>` a sitemap gave the page's URL, as written.
    pub const LASTMOD: &str = "Jetcrawl-Lastmod";
    /// A sitemap the host's robots.txt names (one header value each), on the first
    /// page record after the fetcher read that robots.txt.
    pub const SITEMAP: &str = "Jetcrawl-Sitemap";
    /// The page's `ETag` (a 304's: the one it confirmed).
    pub const ETAG: &str = "Jetcrawl-Etag";
    /// The page's `Last-Modified` (a 304's: the one it confirmed).
    pub const LAST_MODIFIED: &str = "Jetcrawl-Last-Modified";
}

/// robots.txt `Sitemap:` URLs carried on one page record at most.
pub const MAX_ROBOTS_SITEMAPS: usize = 32;

/// A request in the frontier: JSON payload of `jetcrawl.<crawl>.frontier.<p>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrawlRequest {
    /// Canonical URL.
    pub url: String,
    /// Hops from a seed.
    #[serde(default)]
    pub depth: u32,
    /// Fetch attempts already made (retries republish with this incremented).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tries: u32,
    /// Not to be fetched before this instant (unix milliseconds): retry backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<i64>,
    /// Message id for the page this request produces (default: the fingerprint).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_id: Option<String>,
    /// The last retryable error, kept for the final page record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The politeness key, when it is not derived from the URL alone (`per = "ip"`:
    /// the address the parser resolved, so partition and pacing agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The URL came from a sitemap index or a robots.txt `Sitemap:` line: its body is
    /// kept whatever its type (a gzipped sitemap is `application/gzip`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub sitemap: bool,
    /// The `<lastmod>` of the sitemap entry that listed the URL, as written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lastmod: Option<String>,
    /// A recrawl: the previous response's `ETag`, sent as `If-None-Match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// A recrawl: the previous response's `Last-Modified`, sent as `If-Modified-Since`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Message id of a planned request, and of the page it produces: fingerprint and depth.
/// A URL planned again at a shallower depth gets a new id, so the duplicate windows do
/// not swallow it; the same request published twice keeps one.
pub fn request_id(fp: u64, depth: u32) -> String {
    format!("{fp:016x}-d{depth}")
}

/// Message id of a request for a URL never scheduled before: the fingerprint alone, so
/// that every parser finding the URL at once, at whatever depth, publishes one id and
/// JetStream's duplicate window keeps one request ([`request_id`] is for a URL
/// scheduled again along a shorter path).
pub fn first_request_id(fp: u64) -> String {
    format!("{fp:016x}")
}

impl CrawlRequest {
    /// A first request for `url` at `depth`: no tries yet, nothing carried over.
    pub fn new(url: String, depth: u32) -> CrawlRequest {
        CrawlRequest {
            url,
            depth,
            tries: 0,
            not_before_ms: None,
            page_id: None,
            last_error: None,
            key: None,
            sitemap: false,
            lastmod: None,
            etag: None,
            last_modified: None,
        }
    }

    /// The message id of the page this request produces.
    pub fn page_msg_id(&self, fp: u64) -> String {
        self.page_id
            .clone()
            .unwrap_or_else(|| request_id(fp, self.depth))
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A seed given as JSON on `jetcrawl.<crawl>.seeds`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedRequest {
    /// The URL.
    pub url: String,
    /// Fetch even if the URL was seen before.
    #[serde(default)]
    pub force: bool,
}

/// One line of a seed message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeedLine {
    /// A seed to schedule.
    Seed(SeedRequest),
    /// A line that is neither a URL nor a JSON request; the text is the reason.
    Invalid {
        /// The line, truncated.
        line: String,
        /// Why it was rejected.
        reason: String,
    },
}

/// Parse a seed message body: a JSON request object, or one URL per line.
/// Blank lines and `#` comments are skipped.
pub fn parse_seeds(body: &[u8]) -> Vec<SeedLine> {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.starts_with('{') {
        return vec![match serde_json::from_str::<SeedRequest>(trimmed) {
            Ok(seed) => SeedLine::Seed(seed),
            Err(e) => SeedLine::Invalid {
                line: clip(trimmed),
                reason: format!("invalid json seed: {e}"),
            },
        }];
    }
    trimmed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            if l.starts_with('{') {
                match serde_json::from_str::<SeedRequest>(l) {
                    Ok(seed) => SeedLine::Seed(seed),
                    Err(e) => SeedLine::Invalid {
                        line: clip(l),
                        reason: format!("invalid json seed: {e}"),
                    },
                }
            } else {
                SeedLine::Seed(SeedRequest {
                    url: l.to_string(),
                    force: false,
                })
            }
        })
        .collect()
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(300);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A fetched page (or the final record of a failed fetch).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// Canonical requested URL.
    pub url: Url,
    /// URL after redirects.
    pub final_url: Url,
    /// HTTP status, if a response arrived.
    pub status: Option<u16>,
    /// Response Content-Type.
    pub content_type: Option<String>,
    /// Hops from a seed.
    pub depth: u32,
    /// Request fingerprint.
    pub fingerprint: u64,
    /// When the response (or final error) happened.
    pub fetched_at: DateTime<Utc>,
    /// Fetch duration.
    pub fetch_ms: u64,
    /// Attempts made.
    pub tries: u32,
    /// Source encoding of the body.
    pub charset: Option<String>,
    /// Body cut at the cap.
    pub truncated: bool,
    /// Why the fetch failed, for error records.
    pub error: Option<String>,
    /// Error class, for error records.
    pub error_kind: Option<String>,
    /// Went through a browser (`[render]`): the body is the DOM after the scripts ran
    /// (or the record says why it could not be rendered).
    pub rendered: bool,
    /// Body as UTF-8 (textual types) or raw bytes; empty for error records.
    pub body: Bytes,
    /// The request's sitemap `<lastmod>`, if a sitemap listed it.
    pub lastmod: Option<String>,
    /// robots.txt `Sitemap:` URLs of the page's host, on the first page record after
    /// the fetcher read that robots.txt (at most [`MAX_ROBOTS_SITEMAPS`]).
    pub sitemaps: Vec<String>,
    /// Validators for the next conditional fetch: `ETag`.
    pub etag: Option<String>,
    /// Validators for the next conditional fetch: `Last-Modified`.
    pub last_modified: Option<String>,
    /// The response's version and headers, when a response arrived (records of
    /// older versions and error records have none).
    pub response: Option<ResponseHead>,
}

/// What a page record keeps of the response head: the HTTP version and the headers as
/// received, in order, less those that are no-one's business in an archive
/// (`Set-Cookie`, hop-by-hop headers) and cut at [`ResponseHead::MAX_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResponseHead {
    /// `HTTP/1.1`, `HTTP/2`, ...
    pub version: String,
    /// Header names (lowercase, as the client reports them) and values.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Header bytes kept at most (name + value); later headers are dropped.
    pub const MAX_BYTES: usize = 8 * 1024;

    /// Keep `headers` (name, value) up to the size cap; cookies and hop-by-hop
    /// headers are left out.
    pub fn keep<'a>(version: &str, headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        const LEFT_OUT: [&str; 7] = [
            "set-cookie",
            "set-cookie2",
            "connection",
            "keep-alive",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-connection",
        ];
        let mut kept = Vec::new();
        let mut bytes = 0;
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            if LEFT_OUT.contains(&name.as_str()) {
                continue;
            }
            let value = sanitize_header(&String::from_utf8_lossy(value));
            bytes += name.len() + value.len();
            if bytes > Self::MAX_BYTES {
                break;
            }
            kept.push((name, value));
        }
        ResponseHead {
            version: version.to_string(),
            headers: kept,
        }
    }

    /// The first value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Page {
    /// A `200 text/html` page fetched now from `url` at `depth`, nothing else set: what
    /// `jetcrawl check`, tests and benchmarks hand the parser.
    pub fn html(url: Url, depth: u32, body: impl Into<Bytes>) -> Page {
        Page {
            final_url: url.clone(),
            fingerprint: crate::canon::url_fingerprint(&url),
            url,
            status: Some(200),
            content_type: Some("text/html; charset=utf-8".into()),
            depth,
            fetched_at: Utc::now(),
            fetch_ms: 0,
            tries: 1,
            charset: None,
            truncated: false,
            error: None,
            error_kind: None,
            rendered: false,
            body: body.into(),
            lastmod: None,
            sitemaps: Vec::new(),
            etag: None,
            last_modified: None,
            response: None,
        }
    }

    /// Whether items and links should be extracted: a 2xx HTML(ish) response.
    pub fn is_parseable_html(&self) -> bool {
        let ok = matches!(self.status, Some(200..=299));
        let html = match &self.content_type {
            None => true,
            Some(ct) => {
                let ct = ct.to_ascii_lowercase();
                ct.contains("html") || ct.contains("xml")
            }
        };
        ok && html && self.error.is_none()
    }

    /// Metadata as NATS headers.
    pub fn to_headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::URL, self.url.as_str());
        h.insert(header::FINAL_URL, self.final_url.as_str());
        if let Some(status) = self.status {
            h.insert(header::STATUS, status.to_string().as_str());
        }
        if let Some(ct) = &self.content_type {
            h.insert(header::CONTENT_TYPE, sanitize_header(ct).as_str());
        }
        h.insert(header::DEPTH, self.depth.to_string().as_str());
        h.insert(
            header::FINGERPRINT,
            crate::canon::fp_hex(self.fingerprint).as_str(),
        );
        h.insert(header::FETCHED_AT, self.fetched_at.to_rfc3339().as_str());
        h.insert(header::FETCH_MS, self.fetch_ms.to_string().as_str());
        h.insert(header::TRIES, self.tries.to_string().as_str());
        if let Some(cs) = &self.charset {
            h.insert(header::CHARSET, cs.as_str());
        }
        if self.truncated {
            h.insert(header::TRUNCATED, "true");
        }
        if let Some(e) = &self.error {
            h.insert(header::ERROR, sanitize_header(e).as_str());
        }
        if let Some(k) = &self.error_kind {
            h.insert(header::ERROR_KIND, k.as_str());
        }
        if let Some(lastmod) = &self.lastmod {
            h.insert(header::LASTMOD, sanitize_header(lastmod).as_str());
        }
        for sitemap in self.sitemaps.iter().take(MAX_ROBOTS_SITEMAPS) {
            h.append(header::SITEMAP, sanitize_header(sitemap).as_str());
        }
        if let Some(etag) = &self.etag {
            h.insert(header::ETAG, sanitize_header(etag).as_str());
        }
        if let Some(since) = &self.last_modified {
            h.insert(header::LAST_MODIFIED, sanitize_header(since).as_str());
        }
        if let Some(head) = &self.response {
            // JSON escapes control characters, so the value is one header line.
            if let Ok(json) = serde_json::to_string(head) {
                h.insert(header::RESPONSE, json.as_str());
            }
        }
        if self.rendered {
            h.insert(header::RENDERED, "true");
        }
        h
    }

    /// Rebuild a page from a PAGES message. Fails only for messages no parser can use.
    pub fn from_message(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Page, Error> {
        let h = headers.ok_or_else(|| Error::Malformed("page without headers".into()))?;
        let get = |name: &str| h.get(name).map(|v| v.as_str().to_string());
        let url_of = |name: &str| -> Result<Url, Error> {
            let raw = get(name).ok_or_else(|| Error::Malformed(format!("missing {name}")))?;
            Url::parse(&raw).map_err(|e| Error::Malformed(format!("{name}: {e}")))
        };
        let url = url_of(header::URL)?;
        let final_url = url_of(header::FINAL_URL).unwrap_or_else(|_| url.clone());
        let num = |name: &str| get(name).and_then(|v| v.parse::<u64>().ok());
        let fingerprint = get(header::FINGERPRINT)
            .and_then(|v| crate::canon::parse_fp_hex(&v))
            .ok_or_else(|| Error::Malformed(format!("missing {}", header::FINGERPRINT)))?;
        let fetched_at = get(header::FETCHED_AT)
            .and_then(|v| DateTime::parse_from_rfc3339(&v).ok())
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_else(Utc::now);
        Ok(Page {
            url,
            final_url,
            status: num(header::STATUS).and_then(|s| u16::try_from(s).ok()),
            content_type: get(header::CONTENT_TYPE),
            depth: num(header::DEPTH).unwrap_or(0) as u32,
            fingerprint,
            fetched_at,
            fetch_ms: num(header::FETCH_MS).unwrap_or(0),
            tries: num(header::TRIES).unwrap_or(1) as u32,
            charset: get(header::CHARSET),
            truncated: get(header::TRUNCATED).as_deref() == Some("true"),
            error: get(header::ERROR),
            error_kind: get(header::ERROR_KIND),
            rendered: get(header::RENDERED).as_deref() == Some("true"),
            body: payload,
            lastmod: get(header::LASTMOD),
            sitemaps: h
                .get_all(header::SITEMAP)
                .map(|v| v.as_str().to_string())
                .collect(),
            etag: get(header::ETAG),
            last_modified: get(header::LAST_MODIFIED),
            // An archive does without a head it cannot read; the page is still a page.
            response: get(header::RESPONSE).and_then(|v| serde_json::from_str(&v).ok()),
        })
    }
}

/// Header values must not carry CR/LF; long values are clipped.
pub fn sanitize_header(v: &str) -> String {
    let mut s: String = v
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if s.len() > 1024 {
        let mut end = 1024;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// An extracted item: JSON payload of `jetcrawl.<crawl>.items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Crawl name.
    pub crawl: String,
    /// Deterministic id (see [`item_id`]).
    pub item_id: String,
    /// The rule's type.
    pub item_type: String,
    /// Canonical URL of the page (after redirects).
    pub url: String,
    /// Field values.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// When the page was fetched.
    pub fetched_at: DateTime<Utc>,
}

/// Item id: 128-bit hash of the page's canonical URL, the item type and the key
/// field's value (if the rule names one), as 32 hex digits.
pub fn item_id(canonical_url: &str, item_type: &str, key: Option<&serde_json::Value>) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(canonical_url.as_bytes());
    h.update(b"\0");
    h.update(item_type.as_bytes());
    if let Some(key) = key {
        h.update(b"\0");
        h.update(key.to_string().as_bytes());
    }
    format!("{:032x}", h.digest128())
}

/// Message id of an item publish: the id plus a hash of the content, so a redelivered
/// page is absorbed by the duplicate window while a replay with new rules is not.
pub fn item_msg_id(item: &Item) -> String {
    let data = serde_json::to_vec(&item.data).unwrap_or_default();
    format!(
        "{}-{:016x}",
        item.item_id,
        xxhash_rust::xxh3::xxh3_64(&data)
    )
}

#[cfg(test)]
mod tests;
