//! Sitemaps (sitemaps.org): a page whose body is an XML `<urlset>` or
//! `<sitemapindex>`, plain or gzipped, yields its `<loc>`s (with their `<lastmod>`)
//! instead of links. Read as a stream, within the protocol's caps: the first
//! [`MAX_URLS`] entries and [`MAX_BYTES`] of XML (decompressed) of a file; what lies
//! beyond is left and counted (`jetcrawl_sitemaps_capped_total{cap}`).
//!
//! A body is taken for a sitemap only if it is gzip (magic bytes) or XML whose first
//! element is `urlset` or `sitemapindex`: the check on an HTML page is a glance at its
//! first bytes.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};

use quick_xml::events::Event;
use quick_xml::Reader;
use url::Url;

use jetcrawl_shared::canon;
use jetcrawl_shared::message::Page;
use jetcrawl_shared::telemetry::Metrics;

use crate::extract::{Extracted, Rules};

/// Entries read from one sitemap file at most (the protocol's limit).
pub const MAX_URLS: usize = 50_000;
/// Bytes of XML read from one sitemap file at most, decompressed (the protocol's limit).
pub const MAX_BYTES: u64 = 50 * 1024 * 1024;

/// What a sitemap lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SitemapKind {
    /// `<urlset>`: pages.
    Urls,
    /// `<sitemapindex>`: more sitemaps.
    Index,
}

/// One `<url>` or `<sitemap>` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `<loc>`, trimmed.
    pub loc: String,
    /// `<lastmod>`, trimmed, as written (W3C datetime).
    pub lastmod: Option<String>,
}

/// A parsed sitemap file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sitemap {
    /// Pages or sitemaps.
    pub kind: SitemapKind,
    /// Entries with a `<loc>`, in file order, at most [`MAX_URLS`].
    pub entries: Vec<Entry>,
    /// Which cap cut the file short: `"urls"` or `"bytes"`.
    pub capped: Option<&'static str>,
    /// Why reading stopped early (malformed XML, a truncated body or gzip stream):
    /// the entries before it are kept.
    pub error: Option<String>,
}

/// Whether the body may be a sitemap (gzip, or XML that is not obviously HTML): cheap.
pub fn may_be_sitemap(body: &[u8]) -> bool {
    if body.starts_with(&[0x1f, 0x8b]) {
        return true;
    }
    let start = body
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(body)
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map_or(&[][..], |i| &body[i..]);
    start.starts_with(b"<?xml")
        || start.starts_with(b"<urlset")
        || start.starts_with(b"<sitemapindex")
}

/// The sitemap in `body`, or `None` if it is not one.
pub fn parse(body: &[u8]) -> Option<Sitemap> {
    if !may_be_sitemap(body) {
        return None;
    }
    if body.starts_with(&[0x1f, 0x8b]) {
        let mut xml = flate2::read::GzDecoder::new(body).take(MAX_BYTES);
        let mut sitemap = parse_xml(BufReader::new(&mut xml))?;
        // Anything left past the cap?
        let mut rest = xml.into_inner();
        if sitemap.capped.is_none() && rest.read(&mut [0u8; 1]).is_ok_and(|n| n > 0) {
            sitemap.capped = Some("bytes");
        }
        Some(sitemap)
    } else {
        let cut = body.len() as u64 > MAX_BYTES;
        let mut sitemap = parse_xml(&body[..body.len().min(MAX_BYTES as usize)])?;
        if cut && sitemap.capped.is_none() {
            sitemap.capped = Some("bytes");
        }
        Some(sitemap)
    }
}

/// Which element's text is being read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    None,
    Loc,
    Lastmod,
}

fn parse_xml(source: impl BufRead) -> Option<Sitemap> {
    let mut reader = Reader::from_reader(source);
    let mut buf = Vec::new();
    let mut kind = None;
    let mut entries = Vec::new();
    let mut capped = None;
    let mut error = None;
    let mut field = Field::None;
    let mut entry: Option<Entry> = None;
    let mut text = String::new();
    loop {
        let event = match reader.read_event_into(&mut buf) {
            Ok(event) => event,
            Err(e) => {
                kind?;
                error = Some(e.to_string());
                break;
            }
        };
        match event {
            Event::Start(e) => {
                let name = e.local_name();
                match (kind, name.as_ref()) {
                    (None, b"urlset") => kind = Some(SitemapKind::Urls),
                    (None, b"sitemapindex") => kind = Some(SitemapKind::Index),
                    // The first element decides: anything else is not a sitemap.
                    (None, _) => return None,
                    (Some(_), b"url" | b"sitemap") => {
                        entry = Some(Entry {
                            loc: String::new(),
                            lastmod: None,
                        })
                    }
                    (Some(_), b"loc") if entry.is_some() => {
                        field = Field::Loc;
                        text.clear();
                    }
                    (Some(_), b"lastmod") if entry.is_some() => {
                        field = Field::Lastmod;
                        text.clear();
                    }
                    _ => {}
                }
            }
            Event::Empty(_) if kind.is_none() => return None,
            Event::Text(t) if field != Field::None => {
                if let Ok(t) = t.decode() {
                    text.push_str(&t);
                }
            }
            Event::CData(t) if field != Field::None => {
                if let Ok(t) = t.decode() {
                    text.push_str(&t);
                }
            }
            Event::GeneralRef(r) if field != Field::None => {
                if let Some(c) = resolve_ref(&r) {
                    text.push(c);
                }
            }
            Event::End(e) => match e.local_name().as_ref() {
                b"loc" if field == Field::Loc => {
                    if let Some(entry) = entry.as_mut() {
                        entry.loc = text.trim().to_string();
                    }
                    field = Field::None;
                }
                b"lastmod" if field == Field::Lastmod => {
                    if let Some(entry) = entry.as_mut() {
                        let value = text.trim();
                        entry.lastmod = (!value.is_empty()).then(|| value.to_string());
                    }
                    field = Field::None;
                }
                b"url" | b"sitemap" => {
                    if let Some(done) = entry.take().filter(|e| !e.loc.is_empty()) {
                        if entries.len() == MAX_URLS {
                            capped = Some("urls");
                            break;
                        }
                        entries.push(done);
                    }
                }
                _ => {}
            },
            Event::Eof => {
                kind?;
                break;
            }
            _ => {}
        }
        buf.clear();
    }
    Some(Sitemap {
        kind: kind?,
        entries,
        capped,
        error,
    })
}

/// `&amp;` and friends, and character references.
fn resolve_ref(r: &quick_xml::events::BytesRef<'_>) -> Option<char> {
    if let Ok(Some(c)) = r.resolve_char_ref() {
        return Some(c);
    }
    match r.decode().ok()?.as_ref() {
        "amp" => Some('&'),
        "lt" => Some('<'),
        "gt" => Some('>'),
        "quot" => Some('"'),
        "apos" => Some('\''),
        _ => None,
    }
}

/// What became of a page that was a sitemap, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Pages or sitemaps.
    pub kind: SitemapKind,
    /// Entries read (before scope and rules).
    pub entries: usize,
    /// The cap that cut it short, if one did.
    pub capped: Option<&'static str>,
    /// Why reading stopped early, if it did.
    pub error: Option<String>,
}

impl Rules {
    /// The robots.txt `Sitemap:` URLs a page record carries, in scope, at depth 0.
    pub(crate) fn robots_sitemaps(&self, page: &Page) -> Vec<(Url, u32)> {
        if !self.spider().spider.sitemaps {
            return Vec::new();
        }
        page.sitemaps
            .iter()
            .filter_map(|raw| self.sitemap_url(raw, page.url.host_str()))
            .map(|url| (url, 0))
            .collect()
    }

    /// A 2xx page whose body is a sitemap: its entries as links (a `<urlset>`, at
    /// depth + 1, with their `lastmod`, through scope, follow rules and trap
    /// heuristics) or as sitemaps (a `<sitemapindex>`, at the page's own depth).
    /// `None` for anything else, or with `sitemaps = false`.
    pub(crate) fn parse_sitemap(&self, page: &Page) -> Option<Extracted> {
        let spider = &self.spider().spider;
        if !spider.sitemaps
            || !matches!(page.status, Some(200..=299))
            || page.error.is_some()
            || !may_be_sitemap(&page.body)
        {
            return None;
        }
        let sitemap = parse(&page.body)?;
        let page_url = canon::canonicalize(&page.final_url, &self.spider().query_filter)
            .unwrap_or_else(|_| page.final_url.clone());
        let own_host = self.own_host(page, &page_url);
        let mut extracted = Extracted {
            sitemap: Some(Summary {
                kind: sitemap.kind,
                entries: sitemap.entries.len(),
                capped: sitemap.capped,
                error: sitemap.error.clone(),
            }),
            ..Extracted::default()
        };
        let mut seen = HashSet::new();
        match sitemap.kind {
            SitemapKind::Index => {
                for entry in &sitemap.entries {
                    if let Some(url) = self.sitemap_url(&entry.loc, own_host) {
                        if seen.insert(url.to_string()) {
                            extracted.sitemaps.push((url, page.depth));
                        }
                    }
                }
            }
            SitemapKind::Urls if page.depth < spider.max_depth => {
                for entry in sitemap.entries {
                    let Some(url) = self.follow(&entry.loc, Some(&page.final_url), own_host) else {
                        continue;
                    };
                    if !seen.insert(url.to_string()) {
                        continue;
                    }
                    match self.trap(&url) {
                        None => {
                            extracted.links.push(url);
                            extracted.lastmods.push(entry.lastmod);
                        }
                        Some(trap) => extracted.refused.push((url, trap)),
                    }
                }
            }
            SitemapKind::Urls => {}
        }
        Some(extracted)
    }
}

/// Count a parsed sitemap (`jetcrawl_sitemaps_parsed_total`, and
/// `jetcrawl_sitemaps_capped_total{cap}` when a cap cut it) and say so in the log.
pub fn report(metrics: &Metrics, url: &Url, extracted: &Extracted) {
    let Some(summary) = &extracted.sitemap else {
        return;
    };
    metrics.sitemaps_parsed.inc();
    if let Some(cap) = summary.capped {
        metrics
            .sitemaps_capped
            .get_or_create(&vec![("cap".to_string(), cap.to_string())])
            .inc();
        tracing::warn!(%url, cap, entries = summary.entries, "sitemap cut at the protocol's cap (50,000 URLs / 50 MB)");
    }
    if let Some(error) = &summary.error {
        tracing::warn!(%url, error, entries = summary.entries, "sitemap read only in part");
    }
    tracing::debug!(%url, kind = ?summary.kind, entries = summary.entries, links = extracted.links.len(), sitemaps = extracted.sitemaps.len(), "sitemap parsed");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    const URLSET: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
  <url><loc> http://a.test/x?a=1&amp;b=2 </loc><lastmod>2024-05-01</lastmod></url>
  <url><loc><![CDATA[http://a.test/y]]></loc></url>
  <url><lastmod>2024-01-01</lastmod></url>
</urlset>"#;

    #[test]
    fn urlset_entries_with_lastmod_plain_and_gzipped() {
        let expected = vec![
            Entry {
                loc: "http://a.test/x?a=1&b=2".into(),
                lastmod: Some("2024-05-01".into()),
            },
            Entry {
                loc: "http://a.test/y".into(),
                lastmod: None,
            },
        ];
        for body in [URLSET.as_bytes().to_vec(), gzip(URLSET.as_bytes())] {
            let s = parse(&body).expect("a sitemap");
            assert_eq!(s.kind, SitemapKind::Urls);
            assert_eq!(s.entries, expected);
            assert_eq!((s.capped, s.error), (None, None));
        }
    }

    #[test]
    fn an_index_lists_sitemaps() {
        let body = r#"<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
            <sitemap><loc>http://a.test/s1.xml.gz</loc><lastmod>2024-02-02T10:00:00Z</lastmod></sitemap>
        </sitemapindex>"#;
        let s = parse(body.as_bytes()).expect("a sitemap");
        assert_eq!(s.kind, SitemapKind::Index);
        assert_eq!(s.entries[0].loc, "http://a.test/s1.xml.gz");
    }

    #[test]
    fn html_xhtml_feeds_and_garbage_are_not_sitemaps() {
        for body in [
            &b"<!DOCTYPE html><html><body><urlset></urlset></body></html>"[..],
            b"<?xml version=\"1.0\"?><html xmlns=\"http://www.w3.org/1999/xhtml\"></html>",
            b"<?xml version=\"1.0\"?><rss><channel/></rss>",
            b"\x1f\x8b\x08garbage",
            b"",
        ] {
            assert_eq!(parse(body), None, "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn a_truncated_sitemap_keeps_its_complete_entries() {
        let cut = &URLSET[..URLSET.find("<url><lastmod>").unwrap() + 8];
        let s = parse(cut.as_bytes()).expect("a sitemap");
        assert_eq!(s.entries.len(), 2);
        let gz = gzip(URLSET.as_bytes());
        let s = parse(&gz[..gz.len() / 2 + 40]).expect("a sitemap");
        assert!(s.error.is_some() || s.entries.len() < 2);
    }

    #[test]
    fn the_url_cap_holds() {
        let mut xml = String::from("<urlset>");
        for i in 0..=MAX_URLS {
            xml.push_str(&format!("<url><loc>http://a.test/{i}</loc></url>"));
        }
        xml.push_str("</urlset>");
        let s = parse(&gzip(xml.as_bytes())).expect("a sitemap");
        assert_eq!(s.entries.len(), MAX_URLS);
        assert_eq!(
            s.entries.last().unwrap().loc,
            format!("http://a.test/{}", MAX_URLS - 1)
        );
        assert_eq!(s.capped, Some("urls"));
    }

    #[test]
    fn the_byte_cap_holds_for_a_gzip_bomb() {
        let mut xml = b"<urlset><url><loc>http://a.test/first</loc></url>".to_vec();
        xml.extend(std::iter::repeat_n(b' ', MAX_BYTES as usize));
        xml.extend(b"<url><loc>http://a.test/past-the-cap</loc></url></urlset>");
        let s = parse(&gzip(&xml)).expect("a sitemap");
        assert_eq!(s.entries.len(), 1, "{:?}", s.entries);
        assert_eq!(s.capped, Some("bytes"));
    }
}
