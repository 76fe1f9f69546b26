//! Discovery tests: sitemaps (see `tests/discovery.rs` for the helpers).

use super::*;

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn urlset(entries: &[(String, Option<&str>)]) -> String {
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<urlset xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n",
    );
    for (loc, lastmod) in entries {
        xml.push_str(&format!("<url><loc>{loc}</loc>"));
        if let Some(lastmod) = lastmod {
            xml.push_str(&format!("<lastmod>{lastmod}</lastmod>"));
        }
        xml.push_str("</url>\n");
    }
    xml.push_str("</urlset>\n");
    xml
}

/// Pages reachable only from sitemaps, and the lastmod each sitemap gives them.
const HIDDEN: &[(&str, Option<&str>)] = &[
    ("/hidden/a1", Some("2024-01-01")),
    ("/hidden/a2", None),
    ("/hidden/b1", None),
    ("/hidden/b2", Some("2024-02-02T10:00:00+00:00")),
];

/// Host 0: a home page with no links; robots.txt names a gzipped sitemap index (of a
/// plain and a gzipped sitemap, and one out of scope), a sitemap past the URL cap and
/// one past the byte cap (each with a page listed after the cap). Host 1: a sitemap
/// given as a seed. Every listed page exists only in the sitemaps.
fn sitemap_site(site: &DiscoverySite) -> Vec<String> {
    use site::File;
    let (a, b) = (site.base(0), site.base(1));
    site.put(0, "/", File::new("text/html", site::page("home", &[])));
    site.put(
        0,
        "/robots.txt",
        File::new(
            "text/plain",
            format!(
                "User-agent: *\nAllow: /\nSitemap: {a}/sitemap-index.xml.gz\nSitemap: {a}/big.xml.gz\nSitemap: {a}/bomb.xml.gz\n"
            ),
        ),
    );
    let index = format!(
        "<?xml version=\"1.0\"?>\n<sitemapindex xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\n\
         <sitemap><loc>{a}/sitemap-a.xml</loc><lastmod>2024-03-03</lastmod></sitemap>\n\
         <sitemap><loc>{a}/sitemap-b.xml.gz</loc></sitemap>\n\
         <sitemap><loc>http://127.0.0.99:9/elsewhere.xml</loc></sitemap>\n</sitemapindex>\n"
    );
    site.put(
        0,
        "/sitemap-index.xml.gz",
        File::new("application/gzip", gzip(index.as_bytes())),
    );
    let listed = |range: std::ops::Range<usize>| -> Vec<(String, Option<&str>)> {
        HIDDEN[range]
            .iter()
            .map(|(p, l)| (format!("{a}{p}"), *l))
            .collect()
    };
    let mut sitemap_a = listed(0..2);
    sitemap_a.push((format!("{a}/private/secret"), None));
    sitemap_a.push(("http://127.0.0.99:9/offsite".to_string(), None));
    site.put(
        0,
        "/sitemap-a.xml",
        File::new("application/xml", urlset(&sitemap_a)),
    );
    site.put(
        0,
        "/sitemap-b.xml.gz",
        File::new("application/x-gzip", gzip(urlset(&listed(2..4)).as_bytes())),
    );
    // 50,000 entries (denied by `follow.deny`, so not fetched), then one more.
    let mut big: Vec<(String, Option<&str>)> = (0..50_000)
        .map(|n| (format!("{a}/private/{n}"), None))
        .collect();
    big.push((format!("{a}/hidden/past-the-url-cap"), None));
    site.put(
        0,
        "/big.xml.gz",
        File::new("application/gzip", gzip(urlset(&big).as_bytes())),
    );
    // One entry, 50 MB of blanks, one more entry: 50 KB gzipped.
    let mut bomb = urlset(&[(format!("{a}/hidden/bomb-first"), None)]).into_bytes();
    bomb.truncate(bomb.len() - "</urlset>\n".len());
    bomb.extend(std::iter::repeat_n(b' ', 50 * 1024 * 1024));
    bomb.extend(urlset(&[(format!("{a}/hidden/past-the-byte-cap"), None)]).as_bytes());
    site.put(
        0,
        "/bomb.xml.gz",
        File::new("application/gzip", gzip(&bomb)),
    );
    for (path, _) in HIDDEN.iter().chain(&[("/hidden/bomb-first", None)]) {
        site.put(
            0,
            path,
            File::new("text/html", site::page(&format!("hidden {path}"), &[])),
        );
    }
    site.put(
        1,
        "/seed-sitemap.xml",
        File::new("text/xml", urlset(&[(format!("{b}/hidden/s1"), None)])),
    );
    site.put(
        1,
        "/hidden/s1",
        File::new("text/html", site::page("hidden s1", &[])),
    );
    vec![format!("{a}/"), format!("{b}/seed-sitemap.xml")]
}

fn sitemap_spider(crawl: &str, site: &DiscoverySite, seeds: &[String]) -> String {
    let seeds = seeds
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    spider(
        crawl,
        site,
        2,
        "max_depth = 3",
        "[follow]\ndeny = ['/private/']\n",
    )
    .replacen(
        &format!("start_urls = [\"{}/\"]", site.base(0)),
        &format!("start_urls = [{seeds}]"),
        1,
    )
}

/// Every page listed within the caps fetched once; nothing past a cap, denied or out
/// of scope; each sitemap fetched once.
fn assert_sitemaps_followed(site: &DiscoverySite) {
    let mut fetched = site.pages_of(0);
    fetched.sort();
    let mut expected: Vec<String> = [
        "/",
        "/big.xml.gz",
        "/bomb.xml.gz",
        "/hidden/bomb-first",
        "/sitemap-a.xml",
        "/sitemap-b.xml.gz",
        "/sitemap-index.xml.gz",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(HIDDEN.iter().map(|(p, _)| p.to_string()))
    .collect();
    expected.sort();
    assert_eq!(fetched, expected, "host 0: pages and sitemaps fetched");
    let mut seeded = site.pages_of(1);
    seeded.sort();
    assert_eq!(
        seeded,
        ["/hidden/s1", "/seed-sitemap.xml"],
        "host 1: a seed that is a sitemap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sitemaps_from_robots_and_seeds_in_the_embedded_mode() {
    let site = DiscoverySite::start(2).await;
    let seeds = sitemap_site(&site);
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = crawl_embedded(dir.path(), &sitemap_spider("sitemaps", &site, &seeds)).await;
    assert_sitemaps_followed(&site);
    for cap in ["cap=\"urls\"", "cap=\"bytes\""] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("sitemap cut at the protocol's cap") && l.contains(cap)),
            "the {cap} cut is logged"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sitemaps_from_robots_and_seeds_in_the_distributed_mode() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(2).await;
    let seeds = sitemap_site(&site);
    h.write_spider(&sitemap_spider(&h.crawl, &site, &seeds));
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&seeds.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    h.wait_idle(CRAWL).await;
    assert_sitemaps_followed(&site);
    // lastmod rides with the request to the page record.
    let js = common::jetstream::connect(&h.nats.url()).await;
    let records = common::jetstream::page_records(&js, &h.crawl).await;
    for (path, lastmod) in HIDDEN {
        let url = format!("{}{path}", site.base(0));
        let record = records
            .iter()
            .find(|r| r.header("Jetcrawl-Url") == Some(url.as_str()))
            .unwrap_or_else(|| panic!("a page record for {url}"));
        assert_eq!(record.header("Jetcrawl-Lastmod"), *lastmod, "{url}");
    }
    let (_, metrics) = parser.http_get("/metrics").await;
    for line in [
        "jetcrawl_sitemaps_parsed_total 6",
        "jetcrawl_sitemaps_capped_total{cap=\"urls\"} 1",
        "jetcrawl_sitemaps_capped_total{cap=\"bytes\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}
