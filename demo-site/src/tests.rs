//! The demo site's own tests: every link resolves, exact page counts, deterministic bytes.

use std::collections::{HashMap, VecDeque};

use jetcrawl_shared::canon::{canonicalize_str, QueryFilter};
use url::Url;

use super::*;

const HOST: &str = "127.0.0.1:8080";

/// The `href` of every `<a>` in `body`.
fn hrefs(body: &str) -> Vec<&str> {
    let hrefs = body.split("<a ").skip(1).filter_map(|tag| {
        let tag = &tag[..tag.find('>')?];
        let start = tag.find("href=\"")? + "href=\"".len();
        Some(&tag[start..start + tag[start..].find('"')?])
    });
    hrefs.collect()
}

/// Breadth-first from `/`, canonicalizing links as jetcrawl does and skipping `/cart/`
/// as robots.txt asks; every link must answer 200. Each page found, with its depth.
fn crawl(site: &DemoSite) -> HashMap<String, usize> {
    let filter = QueryFilter::utm();
    let root = Url::parse(&format!("http://{HOST}/")).unwrap();
    let mut depth = HashMap::from([(root.to_string(), 0)]);
    let mut queue = VecDeque::from([root]);
    while let Some(url) = queue.pop_front() {
        let (status, _, body) = site.respond(url.path(), HOST);
        assert_eq!(status, StatusCode::OK, "{url}");
        let d = depth[url.as_str()];
        for href in hrefs(&body) {
            let link = canonicalize_str(href, Some(&url), &filter).unwrap();
            assert_eq!(
                (link.authority(), link.query()),
                (HOST, None),
                "{href} on {url}"
            );
            if link.path().starts_with("/cart/") {
                assert_eq!(site.respond(link.path(), HOST).0, StatusCode::OK, "{href}");
            } else if !depth.contains_key(link.as_str()) {
                depth.insert(link.to_string(), d + 1);
                queue.push_back(link);
            }
        }
    }
    depth
}

#[test]
fn a_crawl_finds_every_page_within_a_few_hops_and_no_dead_link() {
    for pages in [0, 1, 21, 500, 2_500, 20_000] {
        let site = DemoSite::new(pages);
        let found = crawl(&site);
        assert_eq!(found.len(), site.crawlable_pages(), "pages = {pages}");
        let products = found.keys().filter(|u| u.contains("/product/"));
        assert_eq!(products.count(), site.products(), "pages = {pages}");
        let deepest = found.values().max().copied().unwrap_or(0);
        assert!(deepest <= 8, "pages = {pages}: {deepest} hops deep");
    }
}

#[test]
fn product_pages_are_15_to_25_kb_with_every_field() {
    let site = DemoSite::new(20_000);
    for id in (0..site.products()).step_by(7) {
        let (_, _, body) = site.respond(&format!("/product/{id}"), HOST);
        assert!(
            (15_000..=25_000).contains(&body.len()),
            "{id}: {}",
            body.len()
        );
        for field in [
            "<h1 class=\"product-title\">Product ",
            "<p class=\"price\">£",
            &format!("<span class=\"sku\">SKU-{id:06}</span>"),
            "<p class=\"availability\">",
            "<div class=\"description\">\n<p>",
            "<a class=\"breadcrumb-category\" href=\"/category/",
            "<ul class=\"related\">\n<li><a href=\"/product/",
        ] {
            assert!(body.contains(field), "{id}: no {field}");
        }
    }
}

/// A many-links site, like the shops crawler benchmarks use: every product page has
/// over 50 in-domain links, most of them the same navigation and footer links on every
/// page, some with a tracking parameter, some spelled several ways.
#[test]
fn product_pages_carry_over_50_in_domain_links_with_repeats_and_tracking_parameters() {
    let site = DemoSite::new(20_000);
    for id in (0..site.products()).step_by(997) {
        let (_, _, body) = site.respond(&format!("/product/{id}"), HOST);
        let links = hrefs(&body);
        let in_domain = links
            .iter()
            .filter(|h| {
                h.starts_with('/')
                    || h.starts_with("../")
                    || h.starts_with("#")
                    || h.starts_with(&format!("http://{HOST}/"))
            })
            .count();
        assert!(in_domain > 50, "{id}: {in_domain} in-domain links");
        assert!(links.iter().any(|h| h.contains("?utm_source=")), "{id}");
        let nav = links.iter().filter(|h| h.starts_with("/category/")).count();
        assert!(
            nav >= NAV_LINKS + FOOTER_LINKS - 1,
            "{id}: {nav} navigation links"
        );
    }
}

#[test]
fn same_url_same_bytes() {
    let (a, b) = (DemoSite::new(500), DemoSite::new(500));
    for path in ["/", "/category/0/page/25", "/product/123", "/robots.txt"] {
        assert_eq!(a.respond(path, HOST), b.respond(path, HOST), "{path}");
        assert_eq!(a.respond(path, HOST), a.respond(path, HOST), "{path}");
    }
    assert_eq!(
        a.respond("/product/7/", HOST),
        a.respond("/product/7", HOST)
    );
}

#[test]
fn anything_else_is_404() {
    let site = DemoSite::new(500);
    for path in [
        "/product/500",
        "/product/x",
        "/product/+1",
        "/category/0/page/0",
        "/category/0/page/26",
        "/category/1/page/1",
        "/cart/add/500",
        "/favicon.ico",
    ] {
        assert_eq!(site.respond(path, HOST).0, StatusCode::NOT_FOUND, "{path}");
    }
    let robots = site.respond("/robots.txt", HOST).2;
    assert!(robots.contains("Disallow: /cart/\nSitemap: http://127.0.0.1:8080/sitemap.xml"));
    assert_eq!(
        site.respond("/sitemap.xml", HOST)
            .2
            .matches("<loc>")
            .count(),
        500
    );
}

#[tokio::test]
async fn serves_http_with_links_spelt_by_the_host_header() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let addr = serve(DemoSite::new(50), 0).await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /product/3?utm_source=x HTTP/1.1\r\nHost: shop.test:81\r\n\
                   Connection: close\r\n\r\n";
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200 OK\r\n"),
        "{response:.200}"
    );
    assert!(response.contains("content-type: text/html; charset=utf-8\r\n"));
    assert!(response.contains("href=\"http://shop.test:81/product/"));
    assert!(response.ends_with("</html>\n"));
}

#[test]
fn hits_count_each_page_and_spelling_once_per_request() {
    let site = DemoSite::new(2500);
    let total = site.crawlable_pages() as u64;
    for path in [
        "/",
        "/product/7",
        "/product/7/",
        "/category/1/page/3",
        "/robots.txt",
    ] {
        site.respond(path, HOST);
    }
    site.respond("/no/such/page", HOST);
    let hits = site.hits();
    assert_eq!(
        hits,
        Hits {
            pages: 3,
            repeated: 1,
            requests: 4,
            other: 2
        }
    );
    let (status, _, body) = site.respond("/_bench/hits", HOST);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Hits::parse(&body), Some(hits));
    // Every listing page has its own counter: visiting them all counts each once.
    for c in 0..site.categories {
        for n in 1..=site.listing_pages(c) {
            site.respond(&format!("/category/{c}/page/{n}"), HOST);
        }
    }
    for id in 0..site.products() {
        site.respond(&format!("/product/{id}"), HOST);
    }
    let all = site.hits();
    assert_eq!(all.pages, total);
    assert_eq!(all.repeated, 2, "product 7 and listing 1/3 twice");
}
