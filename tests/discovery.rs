//! Discovery: page budgets and link-trap heuristics (and, in later sections, sitemaps
//! and recrawls), each in the distributed mode (real NATS, Redis, PostgreSQL, several
//! stage processes) and the embedded mode (`jetcrawl crawl`), against
//! [`site::DiscoverySite`].

mod common;
#[path = "discovery/site.rs"]
mod site;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{Harness, HarnessOptions, Role};
use site::DiscoverySite;

const STARTUP: Duration = Duration::from_secs(60);
const CRAWL: Duration = Duration::from_secs(120);

/// A spider for `site`: `top` are top-level keys, `tables` whole tables.
fn spider(crawl: &str, site: &DiscoverySite, hosts: usize, top: &str, tables: &str) -> String {
    let domains: Vec<String> = (0..hosts)
        .map(|h| format!("\"127.0.0.{}\"", 2 + h))
        .collect();
    format!(
        r#"name = "{crawl}"
start_urls = ["{start}/"]
allowed_domains = [{domains}]
user_agent = "jetcrawl-test"
allow_private_networks = true
{top}

[politeness]
delay_ms = 0
concurrency_per_host = 4
autothrottle = false

[streams]
ack_wait_secs = 4

[[items]]
type = "page"
match = '/p/\d+$'
[items.fields]
title = "h1"

{tables}
"#,
        start = site.base(0),
        domains = domains.join(", "),
    )
}

fn bin() -> String {
    std::env::var("JETCRAWL_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string())
}

/// `jetcrawl crawl` to its end (JSON Lines out, debug logs of the parser); returns
/// stderr. Panics unless it exits 0.
async fn crawl_embedded(dir: &Path, toml: &str) -> String {
    let spider: PathBuf = dir.join("spider.toml");
    std::fs::write(&spider, toml).expect("write spider");
    let out = dir.join("items.jsonl");
    let run = tokio::process::Command::new(bin())
        .args([
            "crawl",
            spider.to_str().expect("utf-8 path"),
            "--out",
            out.to_str().expect("utf-8 path"),
        ])
        .env("RUST_LOG", "info,jetcrawl_parser=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(CRAWL, run)
        .await
        .expect("the embedded crawl ends")
        .expect("run jetcrawl crawl");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "jetcrawl crawl exited with {}:\n{}",
        out.status,
        stderr.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
    stderr
}

/// The value of `jetcrawl_links_refused_total{reason}` in a /metrics text.
fn refused(metrics: &str, reason: &str) -> u64 {
    let prefix = format!("jetcrawl_links_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ------------------------------------------------------------------------------------
// budgets

const BUDGET: &str = "max_depth = 100\nmax_pages = 12\nmax_pages_per_host = 7";

/// Host 0's home lists 40 of its pages, then host 1's home. Host 0 takes its 7 (home
/// and /p/1..6), host 1's home is the 8th page, and its first 4 pages the last: 7 + 5.
fn assert_budget_held(site: &DiscoverySite) {
    let (a, b) = (site.pages_of(0), site.pages_of(1));
    let expected_a: Vec<String> = std::iter::once("/".to_string())
        .chain((1..=6).map(|n| format!("/p/{n}")))
        .collect();
    let expected_b: Vec<String> = std::iter::once("/".to_string())
        .chain((1..=4).map(|n| format!("/p/{n}")))
        .collect();
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        (sorted(a), sorted(b)),
        (sorted(expected_a), sorted(expected_b)),
        "max_pages = 12, max_pages_per_host = 7: host 0 gets 7 pages, host 1 the other 5, each once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_exactly_in_the_embedded_mode() {
    let site = DiscoverySite::start(2).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = crawl_embedded(dir.path(), &spider("budget", &site, 2, BUDGET, "")).await;
    assert_budget_held(&site);
    for reason in ["max_pages", "max_pages_per_host"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains("link refused") && l.contains(reason)),
            "a refusal for {reason} is logged with its URL"
        );
    }
}

/// Two fetchers and two parsers share the budgets. Before they start, a parser
/// crashes after publishing the seed's request but before marking it seen: the seed
/// comes back (to another parser), which asks for the same slot again. It must not be
/// counted twice (if it were, the crawl would end a page short).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_exactly_across_parsers_and_a_redelivered_seed() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(2).await;
    h.write_spider(&spider(&h.crawl, &site, 2, BUDGET, ""));
    let mut services = vec![h.spawn(Role::Sink)];
    let mut armed = h.spawn_with(
        Role::Parser,
        &[],
        &[(
            "JETCRAWL_FAIL_AT".to_string(),
            "parser.after-publish:1".to_string(),
        )],
    );
    h.wait_topology(STARTUP).await;
    h.seed(&[&format!("{}/", site.base(0))]).await;
    armed.wait_crash(CRAWL).await;
    services.push(h.spawn(Role::Parser));
    services.push(h.spawn(Role::Parser));
    // No fetcher yet: the redelivered seed is handled before any page exists.
    let js = common::jetstream::connect(&h.nats.url()).await;
    let frontier = common::jetstream::stream_name(&h.crawl, "FRONTIER");
    h.wait_until(CRAWL, "the seed is handled again and acked", || {
        let js = js.clone();
        let frontier = frontier.clone();
        async move {
            let Ok(stream) = js.get_stream(&frontier).await else {
                return false;
            };
            stream.consumer_info("seeds").await.is_ok_and(|info| {
                // Delivered twice (to the crashed parser, then again), acked.
                info.num_pending == 0
                    && info.num_ack_pending == 0
                    && info.ack_floor.consumer_sequence >= 2
            })
        }
    })
    .await;
    services.push(h.spawn(Role::Fetcher));
    services.push(h.spawn(Role::Fetcher));
    h.wait_idle(CRAWL).await;
    assert_budget_held(&site);
    let mut counted = (0, 0);
    for s in services.iter().filter(|s| s.name().starts_with("parser")) {
        let (_, metrics) = s.http_get("/metrics").await;
        counted.0 += refused(&metrics, "max_pages");
        counted.1 += refused(&metrics, "max_pages_per_host");
    }
    assert!(
        counted.0 > 0 && counted.1 > 0,
        "refusals counted by reason: {counted:?}"
    );
    let mut all: Vec<&mut common::Service> = services.iter_mut().collect();
    h.stop_all(&mut all).await;
}

/// The budget script on a 3-master Redis Cluster: its two keys share a hash tag, so
/// one master answers for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_hold_exactly_on_a_redis_cluster() {
    let h = Harness::start_on_redis_cluster(HarnessOptions::default()).await;
    let site = DiscoverySite::start(2).await;
    h.write_spider(&spider(&h.crawl, &site, 2, BUDGET, ""));
    let mut services = [
        h.spawn(Role::Fetcher),
        h.spawn(Role::Parser),
        h.spawn(Role::Parser),
        h.spawn(Role::Sink),
    ];
    h.wait_topology(STARTUP).await;
    h.seed(&[&format!("{}/", site.base(0))]).await;
    h.wait_idle(CRAWL).await;
    assert_budget_held(&site);
    let mut all: Vec<&mut common::Service> = services.iter_mut().collect();
    h.stop_all(&mut all).await;
}

// ------------------------------------------------------------------------------------
// traps

const TRAPS: &str = "[traps]\nmax_url_length = 120\nmax_path_repeats = 3\nmax_query_values = 20";

/// Seeds: a calendar, a stacking relative link, a growing query; each endless.
fn trap_seeds(site: &DiscoverySite) -> Vec<String> {
    ["/cal?d=0", "/loop/", "/grow/a"]
        .iter()
        .map(|p| format!("{}{p}", site.base(0)))
        .collect()
}

/// What the heuristics let through: `d=0` (the seed) and 20 more values; `/loop/` and
/// three `sub/`s; `/grow/a…` up to the length that keeps the URL within 120 characters.
fn assert_traps_stopped(site: &DiscoverySite) {
    let longest = 120 - format!("{}/grow/", site.base(0)).len();
    let counts = (
        site.requests_under(0, "/cal").len(),
        site.requests_under(0, "/loop/").len(),
        site.requests_under(0, "/grow").len(),
    );
    assert_eq!(
        counts,
        (21, 4, longest),
        "(calendar, loop, grow) pages fetched before the heuristics stopped each"
    );
    assert!(
        site.requests_under(0, "/loop/sub/sub/sub/sub/").is_empty(),
        "a fourth repeat of `sub` is refused"
    );
}

fn trap_spider(crawl: &str, site: &DiscoverySite) -> String {
    let seeds = trap_seeds(site)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    spider(crawl, site, 1, "max_depth = 500", TRAPS).replacen(
        &format!("start_urls = [\"{}/\"]", site.base(0)),
        &format!("start_urls = [{seeds}]"),
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_heuristics_stop_endless_links_in_the_embedded_mode() {
    let site = DiscoverySite::start(1).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = crawl_embedded(dir.path(), &trap_spider("traps", &site)).await;
    assert_traps_stopped(&site);
    for reason in ["query_values", "path_repeat", "url_length"] {
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("link refused") && l.contains(reason))
            .collect();
        assert_eq!(lines.len(), 1, "one refusal logged for {reason}: {lines:?}");
    }
}

/// One parser: the query-value counts are per parser process (documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_heuristics_stop_endless_links_in_the_distributed_mode() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(1).await;
    h.write_spider(&trap_spider(&h.crawl, &site));
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    let seeds = trap_seeds(&site);
    h.seed(&seeds.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    h.wait_idle(CRAWL).await;
    assert_traps_stopped(&site);
    let (_, metrics) = parser.http_get("/metrics").await;
    for reason in ["query_values", "path_repeat", "url_length"] {
        assert_eq!(refused(&metrics, reason), 1, "refusals for {reason}");
    }
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

// ------------------------------------------------------------------------------------
// sitemaps

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

// ------------------------------------------------------------------------------------
// recrawl

/// Every 2 s each page is fetched again with the validators of its last response: the
/// stable pages answer 304 (recorded, nothing parsed, their items left as they are),
/// the changing one a new version (its item updated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recrawl_fetches_conditionally_and_updates_only_what_changed() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(1).await;
    let base = site.base(0);
    let seeds: Vec<String> = ["/stable/a", "/stable/b", "/changing/c"]
        .iter()
        .map(|p| format!("{base}{p}"))
        .collect();
    let toml = spider(
        &h.crawl,
        &site,
        1,
        "max_depth = 1",
        "[recrawl]\ninterval = \"1h\"\nrules = [{ match = '/(stable|changing)/', interval = \"2s\" }]\n\n\
         [[items]]\ntype = \"doc\"\nmatch = '/(stable|changing)/'\n[items.fields]\ntitle = \"h1\"\n",
    );
    h.write_spider(&toml);
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&seeds.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    // Two recrawl rounds: three fetches of each page.
    h.wait_until(CRAWL, "every page fetched three times", || async {
        ["/stable/a", "/stable/b", "/changing/c"]
            .iter()
            .all(|p| site.requests_under(0, p).len() >= 3)
    })
    .await;
    h.wait_until(CRAWL, "the changing page's item updated", || async {
        h.db.items(&h.crawl).await.iter().any(|i| {
            i.url.ends_with("/changing/c")
                && i.data["title"]
                    .as_str()
                    .is_some_and(|t| t != "changing c v1" && t != "changing c v0")
        })
    })
    .await;

    // Conditional requests: after the first fetch, each stable request carried the tag.
    let log = site.log();
    for name in ["a", "b"] {
        let target = format!("/stable/{name}");
        let sent: Vec<Option<&[u8]>> = log
            .iter()
            .filter(|hit| hit.target == target)
            .map(|hit| hit.headers.get("if-none-match").map(|v| v.as_bytes()))
            .collect();
        let tag = format!("\"stable-{name}\"");
        assert_eq!(sent[0], None, "{target}: the first fetch is unconditional");
        assert!(
            sent[1..].iter().all(|s| *s == Some(tag.as_bytes())),
            "{target}: every recrawl sends If-None-Match {tag}: {sent:?}"
        );
    }
    // 304s recorded in PAGES.
    let js = common::jetstream::connect(&h.nats.url()).await;
    let records = common::jetstream::page_records(&js, &h.crawl).await;
    for p in ["/stable/a", "/stable/b"] {
        let url = format!("{base}{p}");
        let statuses: Vec<&str> = records
            .iter()
            .filter(|r| r.header("Jetcrawl-Url") == Some(url.as_str()))
            .filter_map(|r| r.header("Jetcrawl-Status"))
            .collect();
        assert_eq!(statuses.first(), Some(&"200"), "{p}: {statuses:?}");
        assert!(
            statuses.len() >= 3 && statuses[1..].iter().all(|s| *s == "304"),
            "{p}: a 200, then 304s: {statuses:?}"
        );
    }
    // Nothing re-parsed for a 304: one item message per stable page; one per version
    // of the changing one.
    let items = common::jetstream::stored_messages(
        &js,
        &common::jetstream::stream_name(&h.crawl, "ITEMS"),
        &format!("jetcrawl.{}.items", h.crawl),
    )
    .await;
    let titles: Vec<String> = items
        .iter()
        .filter_map(|m| serde_json::from_slice::<serde_json::Value>(&m.payload).ok())
        .filter_map(|v| v["data"]["title"].as_str().map(str::to_string))
        .collect();
    for stable in ["stable a", "stable b"] {
        assert_eq!(
            titles.iter().filter(|t| *t == stable).count(),
            1,
            "{stable}: one item, never re-extracted: {titles:?}"
        );
    }
    assert!(
        titles
            .iter()
            .filter(|t| t.starts_with("changing c"))
            .count()
            >= 2,
        "the changing page's item is extracted again: {titles:?}"
    );
    let stored = h.db.items(&h.crawl).await;
    for stable in ["stable a", "stable b"] {
        assert!(
            stored.iter().any(|i| i.data["title"] == stable),
            "{stable} stored as it was: {stored:?}"
        );
    }
    let (_, metrics) = parser.http_get("/metrics").await;
    let not_modified = metrics
        .lines()
        .find_map(|l| l.strip_prefix("jetcrawl_pages_not_modified_total "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(not_modified >= 4, "304s counted: {not_modified}");
    // What the schedules cost: RECRAWL holds each URL's pending schedule and the due
    // copies of the last minute (the TTL of a 2 s interval's copies).
    let mut recrawl = js
        .get_stream(common::jetstream::stream_name(&h.crawl, "RECRAWL"))
        .await
        .expect("the RECRAWL stream");
    let state = recrawl.info().await.expect("RECRAWL info").state.clone();
    eprintln!(
        "RECRAWL after {} fetches of 3 URLs: {} messages, {} bytes",
        site.pages_of(0).len(),
        state.messages,
        state.bytes
    );
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}

/// The schedules are stream messages: with every service stopped when pages come due,
/// the recrawls wait in JetStream and happen once services are back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recrawl_schedules_survive_a_restart_of_every_service() {
    let h = Harness::start(HarnessOptions::default()).await;
    let site = DiscoverySite::start(1).await;
    let url = format!("{}/stable/a", site.base(0));
    let toml = spider(
        &h.crawl,
        &site,
        1,
        "max_depth = 1",
        "[recrawl]\ninterval = \"3s\"\n",
    );
    h.write_spider(&toml);
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_topology(STARTUP).await;
    h.seed(&[&url]).await;
    h.wait_until(
        CRAWL,
        "the page fetched and its next fetch scheduled",
        || async {
            let (_, metrics) = parser.http_get("/metrics").await;
            metrics
                .lines()
                .any(|l| l == "jetcrawl_recrawls_scheduled_total 1")
        },
    )
    .await;
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
    assert_eq!(site.requests_under(0, "/stable/a").len(), 1);
    // Down past the due time: the request waits in FRONTIER, moved there by the server.
    let js = common::jetstream::connect(&h.nats.url()).await;
    let frontier = common::jetstream::stream_name(&h.crawl, "FRONTIER");
    h.wait_until(CRAWL, "the recrawl came due into FRONTIER", || async {
        common::jetstream::stream_messages(&js, &frontier)
            .await
            .is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(
        site.requests_under(0, "/stable/a").len(),
        1,
        "nothing fetches while every service is down"
    );
    let [mut fetcher, mut parser, mut sink] = h.spawn_pipeline();
    h.wait_until(
        CRAWL,
        "the page fetched again after the restart",
        || async { site.requests_under(0, "/stable/a").len() >= 2 },
    )
    .await;
    h.stop_all(&mut [&mut fetcher, &mut parser, &mut sink])
        .await;
}
