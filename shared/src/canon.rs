//! Canonical URLs and request fingerprints.
//!
//! Two spellings of one page (host case, default port, fragment, dot-segments,
//! percent-encoding case, query order, tracking parameters) canonicalize to one string
//! and so to one fingerprint; two URLs that differ in a query value stay different.

use std::fmt::Write as _;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use url::Url;

use crate::error::UrlError;

/// Query parameter names dropped before fingerprinting (glob patterns, case-insensitive).
#[derive(Debug, Clone)]
pub struct QueryFilter {
    globs: GlobSet,
}

impl QueryFilter {
    /// Compile glob patterns such as `utm_*`.
    pub fn new(patterns: &[String]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            let glob = GlobBuilder::new(p)
                .case_insensitive(true)
                .build()
                .map_err(|e| format!("bad glob {p:?}: {e}"))?;
            builder.add(glob);
        }
        let globs = builder.build().map_err(|e| e.to_string())?;
        Ok(QueryFilter { globs })
    }

    /// The default filter: `utm_*`.
    pub fn utm() -> Self {
        QueryFilter::new(&["utm_*".to_string()]).unwrap_or_else(|_| QueryFilter {
            globs: GlobSet::empty(),
        })
    }

    fn strips(&self, name: &str) -> bool {
        self.globs.is_match(name)
    }
}

/// Parse `raw` (absolute, or relative to `base`) and canonicalize it.
pub fn canonicalize_str(
    raw: &str,
    base: Option<&Url>,
    filter: &QueryFilter,
) -> Result<Url, UrlError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(UrlError::Empty);
    }
    let parsed = match base {
        Some(base) => base.join(raw),
        None => Url::parse(raw),
    }
    .map_err(|e| UrlError::Invalid {
        url: truncate(raw),
        reason: e.to_string(),
    })?;
    match canonical_form(&parsed, filter)? {
        // Most links are canonical as written: keep the parse, skip a second one.
        Canonical::AsIs => Ok(parsed),
        Canonical::Rewritten(out) => reparse(&out, &parsed),
    }
}

/// Canonicalize a parsed URL: http(s) only, lowercase scheme and host, no default
/// port, no fragment, dot-segments resolved, percent-encoding normalised (unreserved
/// characters decoded, hex upper-cased), query parameters filtered and sorted.
pub fn canonicalize(url: &Url, filter: &QueryFilter) -> Result<Url, UrlError> {
    match canonical_form(url, filter)? {
        Canonical::AsIs => Ok(url.clone()),
        Canonical::Rewritten(out) => reparse(&out, url),
    }
}

/// What canonicalizing a URL gives: the URL itself, or another spelling to parse.
enum Canonical {
    AsIs,
    Rewritten(String),
}

fn reparse(out: &str, from: &Url) -> Result<Url, UrlError> {
    Url::parse(out).map_err(|e| UrlError::Invalid {
        url: truncate(from.as_str()),
        reason: e.to_string(),
    })
}

/// The canonical spelling of `url` ([`canonicalize`]), or `AsIs` when that is how the
/// URL already reads (a parsed URL's serialization parses back to the same URL).
fn canonical_form(url: &Url, filter: &QueryFilter) -> Result<Canonical, UrlError> {
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(UrlError::Scheme(other.to_string())),
    }
    let host = url
        .host_str()
        .ok_or_else(|| UrlError::Invalid {
            url: truncate(url.as_str()),
            reason: "no host".to_string(),
        })?
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if host.is_empty() {
        return Err(UrlError::Invalid {
            url: truncate(url.as_str()),
            reason: "empty host".to_string(),
        });
    }
    let mut out = String::with_capacity(url.as_str().len());
    out.push_str(url.scheme());
    out.push_str("://");
    // Credentials never reach a fingerprint, a log or a stream.
    out.push_str(&host);
    if let Some(port) = url.port() {
        let _ = write!(out, ":{port}");
    }
    let path = url.path();
    if path.is_empty() {
        out.push('/');
    } else {
        normalize_percent(path, &mut out);
    }
    if let Some(query) = url.query() {
        let mut params: Vec<String> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let mut s = String::with_capacity(p.len());
                normalize_percent(p, &mut s);
                s
            })
            .filter(|p| {
                let name = p.split('=').next().unwrap_or_default();
                !filter.strips(&percent_decode_lossy(name))
            })
            .collect();
        if !params.is_empty() {
            params.sort();
            out.push('?');
            out.push_str(&params.join("&"));
        }
    }
    Ok(if out == url.as_str() {
        Canonical::AsIs
    } else {
        Canonical::Rewritten(out)
    })
}

/// 64-bit fingerprint of a canonical request.
pub fn fingerprint(method: &str, canonical: &Url) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(method.as_bytes());
    h.update(b" ");
    h.update(canonical.as_str().as_bytes());
    h.digest()
}

/// Fingerprint of a GET of a canonical URL.
pub fn url_fingerprint(canonical: &Url) -> u64 {
    fingerprint("GET", canonical)
}

/// A fingerprint as 16 lowercase hex digits (message ids, headers).
pub fn fp_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

/// Parse 16 hex digits back to a fingerprint.
pub fn parse_fp_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s, 16).ok()
}

/// The frontier partition of a host.
pub fn partition(host: &str, partitions: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(host.as_bytes()) % u64::from(partitions.max(1))) as u32
}

/// Whether `host` is one of `domains` or a subdomain of one.
pub fn host_in_scope(host: &str, domains: &[String]) -> bool {
    domains.iter().any(|d| {
        host == d
            || (host.len() > d.len()
                && host.ends_with(d.as_str())
                && host.as_bytes()[host.len() - d.len() - 1] == b'.')
    })
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode `%XX` of unreserved characters and upper-case the hex of the others.
fn normalize_percent(s: &str, out: &mut String) {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex_val(bytes[i + 1]), hex_val(bytes[i + 2])) {
                let v = h * 16 + l;
                if is_unreserved(v) {
                    out.push(v as char);
                } else {
                    let _ = write!(out, "%{v:02X}");
                }
                i += 3;
                continue;
            }
        }
        // Multi-byte characters pass through whole: `url` has already encoded them.
        let ch_len = utf8_len(b);
        let end = (i + ch_len).min(bytes.len());
        out.push_str(&s[i..end]);
        i = end;
    }
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

fn percent_decode_lossy(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn truncate(s: &str) -> String {
    const MAX: usize = 200;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(raw: &str) -> String {
        canonicalize_str(raw, None, &QueryFilter::utm())
            .unwrap()
            .to_string()
    }

    #[test]
    fn spellings_collapse() {
        let want = "http://example.com/a/b.html?x=1&y=2";
        for raw in [
            "http://example.com/a/b.html?x=1&y=2",
            "HTTP://EXAMPLE.COM/a/b.html?x=1&y=2",
            "http://example.com:80/a/b.html?y=2&x=1",
            "http://example.com/a/./b.html?x=1&y=2#frag",
            "http://example.com/a/c/../b.html?x=1&y=2",
            "http://example.com./a/b.html?x=1&y=2",
            "http://example.com/%61/b.html?x=1&y=2",
            "http://example.com/a/b.html?x=1&utm_source=news&y=2&utm_medium=mail",
            "http://example.com/a/b.html?&x=1&&y=2",
        ] {
            assert_eq!(canon(raw), want, "{raw}");
        }
        assert_eq!(canon("https://example.com:443"), "https://example.com/");
        assert_eq!(
            canon("http://example.com/~u"),
            canon("http://example.com/%7Eu")
        );
        assert_eq!(
            canon("http://example.com/%7eu"),
            canon("http://example.com/%7Eu")
        );
        assert_eq!(
            canon("http://example.com/a%2fb"),
            "http://example.com/a%2Fb"
        );
    }

    #[test]
    fn relative_links_resolve_against_base() {
        let base = Url::parse("http://example.com/catalogue/page-2.html").unwrap();
        let f = QueryFilter::utm();
        let got = |raw: &str| canonicalize_str(raw, Some(&base), &f).unwrap().to_string();
        assert_eq!(
            got("./x/index.html"),
            "http://example.com/catalogue/x/index.html"
        );
        assert_eq!(
            got("../catalogue/x/index.html"),
            "http://example.com/catalogue/x/index.html"
        );
        assert_eq!(got("//EXAMPLE.com/y"), "http://example.com/y");
        assert_eq!(got("#top"), "http://example.com/catalogue/page-2.html");
    }

    #[test]
    fn different_values_stay_different() {
        assert_ne!(canon("http://e.com/?page=1"), canon("http://e.com/?page=2"));
        assert_ne!(canon("http://e.com/A"), canon("http://e.com/a"));
        assert_ne!(
            canon("http://e.com/?a=1&b=2"),
            canon("http://e.com/?a=2&b=1")
        );
    }

    #[test]
    fn bad_urls_are_errors_not_panics() {
        let f = QueryFilter::utm();
        for raw in [
            "",
            "not a url",
            "mailto:a@b.c",
            "javascript:void(0)",
            "ftp://x.com/",
            "http://",
        ] {
            assert!(canonicalize_str(raw, None, &f).is_err(), "{raw}");
        }
    }

    #[test]
    fn credentials_are_dropped() {
        assert_eq!(
            canon("http://user:pw@example.com/x"),
            "http://example.com/x"
        );
    }

    #[test]
    fn custom_strip_globs() {
        let f = QueryFilter::new(&["utm_*".to_string(), "ref".to_string()]).unwrap();
        let got = canonicalize_str("http://e.com/?ref=a&refx=b&UTM_x=1", None, &f).unwrap();
        assert_eq!(got.as_str(), "http://e.com/?refx=b");
    }

    #[test]
    fn scope_matches_subdomains_only() {
        let d = vec!["example.com".to_string()];
        assert!(host_in_scope("example.com", &d));
        assert!(host_in_scope("www.example.com", &d));
        assert!(!host_in_scope("badexample.com", &d));
        assert!(!host_in_scope("example.com.evil.org", &d));
    }

    #[test]
    fn fingerprint_is_stable_and_hex_round_trips() {
        let u = Url::parse("http://example.com/").unwrap();
        let fp = url_fingerprint(&u);
        assert_eq!(fp, url_fingerprint(&u));
        assert_ne!(fp, fingerprint("POST", &u));
        assert_eq!(parse_fp_hex(&fp_hex(fp)), Some(fp));
        assert_eq!(fp_hex(fp).len(), 16);
    }

    fn url_strategy() -> impl Strategy<Value = String> {
        let host = prop::sample::select(vec!["example.com", "EXAMPLE.com", "b.org", "x.y.z.net"]);
        let port = prop::sample::select(vec!["", ":80", ":8080"]);
        let seg = "[a-zA-Z0-9._~%-]{0,6}";
        let path = prop::collection::vec(
            prop_oneof![
                Just("..".to_string()),
                Just(".".to_string()),
                seg.prop_map(|s| s)
            ],
            0..5,
        );
        let query = prop::collection::vec(("[a-z_]{1,6}", "[a-zA-Z0-9%+]{0,5}"), 0..4);
        let frag = prop::option::of("[a-z]{0,4}");
        (host, port, path, query, frag).prop_map(|(h, p, path, q, f)| {
            let mut s = format!("http://{h}{p}/{}", path.join("/"));
            if !q.is_empty() {
                s.push('?');
                s.push_str(
                    &q.iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join("&"),
                );
            }
            if let Some(f) = f {
                s.push('#');
                s.push_str(&f);
            }
            s
        })
    }

    proptest! {
        /// A URL already canonical is kept as parsed, not parsed again: that must be
        /// the URL a second parse would give.
        #[test]
        fn a_url_kept_as_parsed_is_what_parsing_it_again_gives(
            raw in url_strategy(),
            href in "(\\.\\./|/|)[a-zA-Z0-9%._~-]{0,6}(/[a-zA-Z0-9._~-]{0,4}){0,3}(\\?[a-z]{1,3}=[a-z0-9]{0,3})?(#[a-z]{0,3})?",
        ) {
            let f = QueryFilter::utm();
            if let Ok(url) = canonicalize_str(&raw, None, &f) {
                prop_assert_eq!(&Url::parse(url.as_str()).unwrap(), &url);
                if let Ok(joined) = canonicalize_str(&href, Some(&url), &f) {
                    prop_assert_eq!(&Url::parse(joined.as_str()).unwrap(), &joined);
                    let again = canonicalize(&joined, &f).unwrap();
                    prop_assert_eq!(again, joined);
                }
            }
        }

        #[test]
        fn canonicalize_is_idempotent(raw in url_strategy()) {
            let f = QueryFilter::utm();
            if let Ok(once) = canonicalize_str(&raw, None, &f) {
                let twice = canonicalize(&once, &f).unwrap();
                prop_assert_eq!(once.as_str(), twice.as_str());
                prop_assert_eq!(url_fingerprint(&once), url_fingerprint(&twice));
            }
        }

        #[test]
        fn query_order_and_fragments_do_not_matter(
            params in prop::collection::btree_map("[a-z]{1,5}", "[a-z0-9]{0,4}", 1..5),
            frag in "[a-z]{0,5}",
        ) {
            let f = QueryFilter::utm();
            let fwd: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let mut rev = fwd.clone();
            rev.reverse();
            let a = canonicalize_str(&format!("http://e.com/p?{}", fwd.join("&")), None, &f).unwrap();
            let b = canonicalize_str(&format!("HTTP://E.COM:80/q/../p?{}#{frag}", rev.join("&")), None, &f).unwrap();
            prop_assert_eq!(url_fingerprint(&a), url_fingerprint(&b));
        }

        #[test]
        fn distinct_query_values_give_distinct_fingerprints(a in "[a-z0-9]{1,8}", b in "[a-z0-9]{1,8}") {
            prop_assume!(a != b);
            let f = QueryFilter::utm();
            let ua = canonicalize_str(&format!("http://e.com/p?id={a}"), None, &f).unwrap();
            let ub = canonicalize_str(&format!("http://e.com/p?id={b}"), None, &f).unwrap();
            prop_assert_ne!(url_fingerprint(&ua), url_fingerprint(&ub));
        }

        #[test]
        fn arbitrary_input_never_panics(raw in ".{0,80}") {
            let _ = canonicalize_str(&raw, None, &QueryFilter::utm());
            let base = Url::parse("http://e.com/a/b").unwrap();
            let _ = canonicalize_str(&raw, Some(&base), &QueryFilter::utm());
        }
    }
}
