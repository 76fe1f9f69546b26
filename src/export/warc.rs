//! WARC 1.1 records for stored pages (`jetcrawl export --warc`): pure functions from a
//! [`Page`] to record bytes, each record its own gzip member.
//!
//! What a record holds, and why it is not always the bytes on the wire:
//! - `response`: the status line and the headers the page record kept
//!   ([`jetcrawl_shared::message::ResponseHead`]), then the body as PAGES stores it:
//!   decompressed, and transcoded to UTF-8 for textual types. The headers are made to
//!   match that payload: `Content-Encoding` is dropped, `Content-Length` is the payload's,
//!   a transcoded page's `Content-Type` says `charset=utf-8`; the values received are
//!   kept as `X-Jetcrawl-Original-<Name>`. A body cut at the size cap, or not kept at all
//!   (the fetcher keeps no bytes of non-textual types), has `WARC-Truncated: length`.
//! - `request`: rebuilt from what the fetcher sends (method, target, `Host`,
//!   `User-Agent`, `Accept`, `Accept-Encoding`); the fetcher does not record it.
//! - a fetch that failed without a response (DNS, connect, timeout, robots.txt) is a
//!   `metadata` record for its URL: `application/warc-fields` with the error, its
//!   kind and the tries made. No request or response is invented for it.
//!
//! Redirect hops are not recorded by the fetcher; the records are for the final URL.

use std::io::Write;

use chrono::{DateTime, Utc};
use flate2::write::GzEncoder;
use sha1::{Digest, Sha1};

use jetcrawl_shared::message::{Page, ResponseHead};

/// `Accept` as the fetcher sends it (fetcher/src/http/mod.rs).
const ACCEPT: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
/// `Accept-Encoding` as reqwest sends it with the gzip, brotli and deflate features.
const ACCEPT_ENCODING: &str = "gzip, br, deflate";

/// What every record of one export shares.
#[derive(Debug, Clone)]
pub struct Archive {
    /// The crawl's name (`isPartOf` in the warcinfo record).
    pub crawl: String,
    /// The spider's `User-Agent`, sent on every request.
    pub user_agent: String,
    /// Whether the crawl obeyed robots.txt.
    pub obey_robots: bool,
}

/// One WARC record before compression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `(name, value)` WARC headers besides `WARC/1.1` and `Content-Length`.
    pub headers: Vec<(&'static str, String)>,
    /// The record block.
    pub block: Vec<u8>,
}

impl Record {
    /// The record as written: version line, headers, `Content-Length`, the block and
    /// the two CRLFs that end a record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.block.len() + 512);
        out.extend_from_slice(b"WARC/1.1\r\n");
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.block.len()).as_bytes());
        out.extend_from_slice(&self.block);
        out.extend_from_slice(b"\r\n\r\n");
        out
    }

    /// The record as one gzip member (readers seek from member to member).
    pub fn to_gzip(&self) -> std::io::Result<Vec<u8>> {
        let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&self.to_bytes())?;
        gz.finish()
    }
}

impl Archive {
    /// The `warcinfo` record that opens the file.
    pub fn warcinfo(&self, filename: &str, now: DateTime<Utc>) -> Record {
        let fields = fields(&[
            ("software", concat!("jetcrawl/", env!("CARGO_PKG_VERSION"))),
            ("format", "WARC File Format 1.1"),
            (
                "conformsTo",
                "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
            ),
            ("isPartOf", &self.crawl),
            ("http-header-user-agent", &self.user_agent),
            ("robots", if self.obey_robots { "obey" } else { "ignore" }),
        ]);
        Record {
            headers: vec![
                ("WARC-Type", "warcinfo".into()),
                ("WARC-Record-ID", record_id()),
                ("WARC-Date", warc_date(now)),
                ("WARC-Filename", filename.to_string()),
                ("Content-Type", "application/warc-fields".into()),
            ],
            block: fields,
        }
    }

    /// The records for one page: request and response when a response arrived, one
    /// metadata record when the fetch failed without one.
    pub fn page_records(&self, page: &Page) -> Vec<Record> {
        let uri = page.final_url.to_string();
        let date = warc_date(page.fetched_at);
        let Some(status) = page.status else {
            return vec![self.failure(page, uri, date)];
        };
        let response_id = record_id();
        let (http_head, truncated) = response_head(page, status);
        let mut block = http_head;
        block.extend_from_slice(&page.body);
        let mut headers = vec![
            ("WARC-Type", "response".to_string()),
            ("WARC-Record-ID", response_id.clone()),
            ("WARC-Date", date.clone()),
            ("WARC-Target-URI", uri.clone()),
            ("WARC-Payload-Digest", sha1_base32(&page.body)),
            ("WARC-Block-Digest", sha1_base32(&block)),
            ("Content-Type", "application/http;msgtype=response".into()),
        ];
        if truncated {
            headers.push(("WARC-Truncated", "length".into()));
        }
        let response = Record { headers, block };
        let request_block = self.request_block(page);
        let request = Record {
            headers: vec![
                ("WARC-Type", "request".into()),
                ("WARC-Record-ID", record_id()),
                ("WARC-Date", date),
                ("WARC-Target-URI", uri),
                ("WARC-Concurrent-To", response_id),
                ("WARC-Block-Digest", sha1_base32(&request_block)),
                ("Content-Type", "application/http;msgtype=request".into()),
            ],
            block: request_block,
        };
        vec![request, response]
    }

    fn failure(&self, page: &Page, uri: String, date: String) -> Record {
        let tries = page.tries.to_string();
        let fetch_ms = page.fetch_ms.to_string();
        let block = fields(&[
            (
                "fetch-error",
                page.error.as_deref().unwrap_or("no response"),
            ),
            (
                "error-kind",
                page.error_kind.as_deref().unwrap_or("unknown"),
            ),
            ("tries", &tries),
            ("fetch-ms", &fetch_ms),
        ]);
        Record {
            headers: vec![
                ("WARC-Type", "metadata".into()),
                ("WARC-Record-ID", record_id()),
                ("WARC-Date", date),
                ("WARC-Target-URI", uri),
                ("WARC-Block-Digest", sha1_base32(&block)),
                ("Content-Type", "application/warc-fields".into()),
            ],
            block,
        }
    }

    fn request_block(&self, page: &Page) -> Vec<u8> {
        let url = &page.final_url;
        let mut target = url.path().to_string();
        if let Some(query) = url.query() {
            target.push('?');
            target.push_str(query);
        }
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => String::new(),
        };
        let version = match page.response.as_ref().map(|r| r.version.as_str()) {
            Some("HTTP/1.0") => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        format!(
            "GET {target} {version}\r\nHost: {host}\r\nUser-Agent: {}\r\nAccept: {ACCEPT}\r\n\
             Accept-Encoding: {ACCEPT_ENCODING}\r\n\r\n",
            clean(&self.user_agent)
        )
        .into_bytes()
    }
}

/// The response's status line and headers, made to describe the stored payload; and
/// whether that payload is shorter than what was received.
fn response_head(page: &Page, status: u16) -> (Vec<u8>, bool) {
    let synthesized;
    let head = match &page.response {
        Some(head) => head,
        None => {
            // A record from before heads were kept: what the page record says.
            synthesized = ResponseHead {
                version: "HTTP/1.1".into(),
                headers: page
                    .content_type
                    .iter()
                    .map(|ct| ("content-type".to_string(), ct.clone()))
                    .collect(),
            };
            &synthesized
        }
    };
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("{} {status} {reason}\r\n", clean(&head.version));
    // The fetcher keeps no bytes of a type it does not parse (a charset is set exactly
    // when it decoded the body as text).
    let body_dropped = page.charset.is_none() && page.body.is_empty();
    let transcoded = page
        .charset
        .as_deref()
        .is_some_and(|cs| !cs.eq_ignore_ascii_case("utf-8"));
    let mut originals = Vec::new();
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        let replaced = match lower.as_str() {
            "content-encoding" | "content-length" => true,
            "content-type" => transcoded,
            _ => false,
        };
        if replaced {
            originals.push((name, value));
            continue;
        }
        out.push_str(&format!("{}: {}\r\n", clean(name), clean(value)));
    }
    if transcoded {
        let essence = page
            .content_type
            .as_deref()
            .and_then(|ct| ct.split(';').next())
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .unwrap_or("text/html");
        out.push_str(&format!(
            "content-type: {}; charset=utf-8\r\n",
            clean(essence)
        ));
    }
    out.push_str(&format!("content-length: {}\r\n", page.body.len()));
    for (name, value) in originals {
        out.push_str(&format!(
            "x-jetcrawl-original-{}: {}\r\n",
            clean(name),
            clean(value)
        ));
    }
    out.push_str("\r\n");
    (out.into_bytes(), page.truncated || body_dropped)
}

/// `application/warc-fields`: `name: value` lines.
fn fields(pairs: &[(&str, &str)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(name, value)| format!("{name}: {}\r\n", clean(value)))
        .collect::<String>()
        .into_bytes()
}

/// A header value on one line (page records already hold no CR/LF; this is for
/// anything that reaches a record by another path).
fn clean(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `sha1:` and the digest in base32, as WARC writers customarily give it.
pub fn sha1_base32(data: &[u8]) -> String {
    format!("sha1:{}", data_encoding::BASE32.encode(&Sha1::digest(data)))
}

/// A random (version 4) UUID URN in angle brackets.
fn record_id() -> String {
    let mut b = rand::random::<[u8; 16]>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "<urn:uuid:{}-{}-{}-{}-{}>",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `2026-01-02T03:04:05Z`: WARC-Date at second precision, which every reader takes.
fn warc_date(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use url::Url;

    use super::*;

    fn archive() -> Archive {
        Archive {
            crawl: "books".into(),
            user_agent: "jetcrawl-test".into(),
            obey_robots: true,
        }
    }

    fn page(body: &'static [u8], charset: Option<&str>) -> Page {
        let url = Url::parse("http://a.example:8080/x/y?q=1").unwrap();
        Page {
            url: url.clone(),
            final_url: url,
            status: Some(200),
            content_type: Some("text/html; charset=windows-1252".into()),
            depth: 0,
            fingerprint: 1,
            fetched_at: DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z")
                .unwrap()
                .with_timezone(&Utc),
            fetch_ms: 3,
            tries: 1,
            charset: charset.map(str::to_string),
            truncated: false,
            error: None,
            error_kind: None,
            body: Bytes::from_static(body),
            lastmod: None,
            sitemaps: Vec::new(),
            etag: None,
            last_modified: None,
            rendered: false,
            response: Some(ResponseHead {
                version: "HTTP/1.1".into(),
                headers: vec![
                    (
                        "content-type".into(),
                        "text/html; charset=windows-1252".into(),
                    ),
                    ("content-encoding".into(), "gzip".into()),
                    ("content-length".into(), "77".into()),
                    ("etag".into(), "\"v1\"".into()),
                ],
            }),
        }
    }

    fn text(r: &Record) -> String {
        String::from_utf8_lossy(&r.to_bytes()).into_owned()
    }

    #[test]
    fn a_page_is_a_request_and_a_response() {
        let records = archive().page_records(&page(b"<p>caf\xc3\xa9</p>", Some("windows-1252")));
        assert_eq!(records.len(), 2);
        let (req, resp) = (text(&records[0]), text(&records[1]));
        assert!(req.contains("WARC-Type: request\r\n"), "{req}");
        assert!(
            req.contains("GET /x/y?q=1 HTTP/1.1\r\nHost: a.example:8080\r\n"),
            "{req}"
        );
        assert!(req.contains("User-Agent: jetcrawl-test\r\n"), "{req}");
        assert!(resp.contains("WARC-Target-URI: http://a.example:8080/x/y?q=1\r\n"));
        assert!(resp.contains("WARC-Date: 2026-01-02T03:04:05Z\r\n"));
        assert!(resp.contains("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.contains("etag: \"v1\"\r\n"));
        // The payload is UTF-8 and decompressed: the headers say so.
        assert!(
            resp.contains("content-type: text/html; charset=utf-8\r\n"),
            "{resp}"
        );
        assert!(resp.contains("content-length: 12\r\n"), "{resp}");
        assert!(resp.contains("x-jetcrawl-original-content-encoding: gzip\r\n"));
        assert!(!resp.contains("\r\ncontent-encoding:"), "{resp}");
        assert!(!resp.contains("WARC-Truncated"));
        let id = records[1]
            .headers
            .iter()
            .find(|(n, _)| *n == "WARC-Record-ID")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(req.contains(&format!("WARC-Concurrent-To: {id}\r\n")));
        assert!(resp.ends_with("<p>caf\u{e9}</p>\r\n\r\n"));
        assert!(resp.contains(&format!(
            "WARC-Payload-Digest: {}\r\n",
            sha1_base32("<p>caf\u{e9}</p>".as_bytes())
        )));
    }

    #[test]
    fn digests_are_base32_sha1() {
        // sha1("abc") = a9993e36...; its base32 is the customary form.
        assert_eq!(sha1_base32(b"abc"), "sha1:VGMT4NSHA2AWVOR6EVYXQUGCNSONBWE5");
    }

    #[test]
    fn bodies_not_kept_are_marked_truncated() {
        let mut p = page(b"", None);
        p.content_type = Some("image/png".into());
        let resp = text(&archive().page_records(&p)[1]);
        assert!(resp.contains("WARC-Truncated: length\r\n"), "{resp}");
        assert!(resp.contains("content-length: 0\r\n"), "{resp}");
    }

    #[test]
    fn failures_are_metadata_records() {
        let mut p = page(b"", None);
        p.status = None;
        p.response = None;
        p.error = Some("connect: refused".into());
        p.error_kind = Some("connect".into());
        p.tries = 3;
        let records = archive().page_records(&p);
        assert_eq!(records.len(), 1);
        let r = text(&records[0]);
        assert!(r.contains("WARC-Type: metadata\r\n"), "{r}");
        assert!(r.contains("fetch-error: connect: refused\r\nerror-kind: connect\r\ntries: 3\r\n"));
    }

    #[test]
    fn records_are_gzip_members() {
        let r = archive().warcinfo("x.warc.gz", Utc::now());
        let gz = r.to_gzip().unwrap();
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut back).unwrap();
        assert_eq!(back, r.to_bytes());
        assert!(String::from_utf8(back)
            .unwrap()
            .starts_with("WARC/1.1\r\nWARC-Type: warcinfo\r\n"));
    }
}
