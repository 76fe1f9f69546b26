//! Discovery: page budgets and link-trap heuristics (this file), sitemaps
//! (`discovery/sitemaps.rs`), each in the distributed mode (real NATS, Redis,
//! PostgreSQL, several stage processes) and the embedded mode (`jetcrawl crawl`), and
//! recrawls (`discovery/recrawl.rs`, distributed), against [`site::DiscoverySite`].

use crate::common;
mod recrawl;
mod site;
mod sitemaps;

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
