use super::*;

#[test]
fn seeds_plain_lines_json_and_garbage() {
    let got = parse_seeds(b"https://a.com/\n\n# comment\n  https://b.com/x  \n{\"url\":\"https://c.com/\",\"force\":true}\n{bad json\n");
    assert_eq!(got.len(), 4);
    assert_eq!(
        got[0],
        SeedLine::Seed(SeedRequest {
            url: "https://a.com/".into(),
            force: false
        })
    );
    assert_eq!(
        got[2],
        SeedLine::Seed(SeedRequest {
            url: "https://c.com/".into(),
            force: true
        })
    );
    assert!(matches!(got[3], SeedLine::Invalid { .. }));
    let json = parse_seeds(b" {\"url\": \"https://d.com/\"} ");
    assert_eq!(json.len(), 1);
    assert!(matches!(&json[0], SeedLine::Seed(s) if s.url == "https://d.com/"));
}

#[test]
fn page_headers_round_trip() {
    let page = Page {
        url: Url::parse("http://a.com/x").unwrap(),
        final_url: Url::parse("http://a.com/y").unwrap(),
        status: Some(200),
        content_type: Some("text/html; charset=utf-8".into()),
        depth: 3,
        fingerprint: 0xdead_beef,
        fetched_at: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc),
        fetch_ms: 12,
        tries: 2,
        charset: Some("windows-1252".into()),
        truncated: true,
        error: None,
        error_kind: None,
        rendered: true,
        body: Bytes::from_static(b"<html></html>"),
        lastmod: Some("2024-05-01".into()),
        sitemaps: vec![
            "http://a.com/s1.xml".into(),
            "http://a.com/s2.xml.gz".into(),
        ],
        etag: Some("\"v1\"".into()),
        last_modified: Some("Tue, 01 Dec 2026 10:00:00 GMT".into()),
        response: Some(ResponseHead::keep(
            "HTTP/1.1",
            [
                ("Content-Type", &b"text/html"[..]),
                ("Set-Cookie", b"session=secret"),
                ("ETag", b"\"a\r\nb\""),
            ],
        )),
    };
    let head = page.response.as_ref().unwrap();
    assert_eq!(head.get("etag"), Some("\"a  b\""));
    assert_eq!(head.get("set-cookie"), None, "cookies are not kept");
    let back = Page::from_message(Some(&page.to_headers()), page.body.clone()).unwrap();
    assert_eq!(back, page);
}

#[test]
fn malformed_pages_are_classified() {
    let err = Page::from_message(None, Bytes::new()).unwrap_err();
    assert!(!err.is_retryable());
    let mut h = HeaderMap::new();
    h.insert(header::URL, "::not a url");
    assert!(!Page::from_message(Some(&h), Bytes::new())
        .unwrap_err()
        .is_retryable());
}

#[test]
fn item_ids_are_deterministic_and_keyed() {
    let a = item_id("http://a.com/x", "book", None);
    assert_eq!(a, item_id("http://a.com/x", "book", None));
    assert_eq!(a.len(), 32);
    assert_ne!(a, item_id("http://a.com/x", "author", None));
    let k1 = serde_json::json!("1");
    let k2 = serde_json::json!("2");
    assert_ne!(
        item_id("http://a.com/x", "book", Some(&k1)),
        item_id("http://a.com/x", "book", Some(&k2))
    );
}

#[test]
fn response_heads_are_capped() {
    let big = vec![b'x'; 1000];
    let head = ResponseHead::keep("HTTP/1.1", (0..20).map(|_| ("x-big", big.as_slice())));
    assert_eq!(head.headers.len(), 8, "8 KB of headers, no more");
}

#[test]
fn header_values_lose_newlines() {
    assert_eq!(sanitize_header("a\r\nb"), "a  b");
}
