//! What the politeness tests share: the spider for a [`HostsSite`], fetchers told
//! apart by their source address, and the checks of what the site saw (request gaps,
//! requests in flight, fetches per page) with messages in the terms a site operator
//! would use.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::hosts::{HostsSite, Link};
use crate::common::{jetstream, Harness, HarnessOptions, Role, Service};
use crate::politeness::measure::{by_sender, max_in_flight, start_gaps};

/// Services up and their streams, consumers and table created.
pub const STARTUP: Duration = Duration::from_secs(60);
/// A whole crawl of a test site (a few seconds to ~20 s undisturbed).
pub const CRAWL: Duration = Duration::from_secs(120);
/// Lease TTL of partition ownership (issue 8): a dead owner's hosts are owned again
/// within ~15 s; the tests allow this long from the kill to the first request by
/// another fetcher.
pub const RESUME: Duration = Duration::from_secs(20);
/// A start may come this much closer to the previous one than the delay, for timer
/// and scheduling jitter on a loaded machine (the issue's 0.9 × delay).
pub const GAP_TOLERANCE: f64 = 0.9;

/// The spider settings a test varies.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    pub delay_ms: u64,
    pub concurrency_per_host: u32,
    pub max_depth: u32,
    pub partitions: u32,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            delay_ms: 100,
            concurrency_per_host: 1,
            max_depth: 20,
            partitions: 16,
        }
    }
}

/// A spider named `crawl` for `site`, seeded with `seeds`, every host in scope.
pub fn spider_toml(crawl: &str, site: &HostsSite, seeds: &[Link], k: &Knobs) -> String {
    let quote = |s: String| format!("\"{s}\"");
    let seeds: Vec<String> = seeds.iter().map(|l| quote(site.url(l))).collect();
    let hosts: Vec<String> = (0..site.hosts())
        .map(|h| quote(site.host_name(h)))
        .collect();
    format!(
        r#"name = "{crawl}"
start_urls = [{seeds}]
allowed_domains = [{hosts}]
max_depth = {max_depth}
user_agent = "jetcrawl-test"
obey_robots = true
allow_private_networks = true

[politeness]
delay_ms = {delay_ms}
concurrency_per_host = {concurrency}
autothrottle = false

[http]
retry_backoff_ms = 200

[streams]
partitions = {partitions}
# Work held by a killed process comes back after this; short, so tests recover fast.
ack_wait_secs = 4

[[items]]
type = "product"
match = '/p/[^/]+\.html$'
[items.fields]
title = "h1"
price = "p.price"
"#,
        seeds = seeds.join(", "),
        hosts = hosts.join(", "),
        max_depth = k.max_depth,
        delay_ms = k.delay_ms,
        concurrency = k.concurrency_per_host,
        partitions = k.partitions,
    )
}

/// A harness whose spider crawls `site` from `seeds`.
pub async fn harness_for(site: &HostsSite, seeds: &[Link], k: &Knobs) -> Harness {
    let h = Harness::start(HarnessOptions::default()).await;
    h.write_spider(&spider_toml(&h.crawl, site, seeds, k));
    h
}

/// The seeds as URLs, for `jetcrawl seed`.
pub fn seed_urls(site: &HostsSite, seeds: &[Link]) -> Vec<String> {
    seeds.iter().map(|l| site.url(l)).collect()
}

/// Seeds the crawl with `seeds`.
pub async fn seed(h: &Harness, site: &HostsSite, seeds: &[Link]) {
    let urls = seed_urls(site, seeds);
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    h.seed(&urls).await;
}

/// The source address fetcher `k` binds: `127.0.1.k`.
pub fn fetcher_address(k: usize) -> String {
    format!("127.0.1.{k}")
}

/// How a fetcher is told its source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    /// `--local-address 127.0.1.k`: a fetcher without the flag refuses to start.
    Flag,
    /// `JETCRAWL_LOCAL_ADDRESS=127.0.1.k`: a fetcher without the setting ignores it
    /// (its requests come from 127.0.0.1, and the site cannot tell fetchers apart).
    Env,
}

/// Starts fetcher `k` (1-based), its requests from [`fetcher_address`]`(k)`.
pub fn spawn_fetcher(h: &Harness, k: usize, bind: Bind) -> Service {
    let addr = fetcher_address(k);
    match bind {
        Bind::Flag => h.spawn_with(Role::Fetcher, &["--local-address".to_string(), addr], &[]),
        Bind::Env => h.spawn_with(
            Role::Fetcher,
            &[],
            &[("JETCRAWL_LOCAL_ADDRESS".to_string(), addr)],
        ),
    }
}

/// Panics, saying why, unless `jetcrawl fetcher` has `--local-address` (issue 8): the
/// tests that tell fetchers apart by the source address of their requests need it.
pub fn require_local_address_flag() {
    let bin = std::env::var("JETCRAWL_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_jetcrawl").to_string());
    let out = std::process::Command::new(&bin)
        .args(["fetcher", "--help"])
        .output()
        .unwrap_or_else(|e| panic!("run {bin} fetcher --help: {e}"));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("--local-address"),
        "`jetcrawl fetcher` has no --local-address flag (issue 8): this test tells \
         fetchers apart by the source address of their requests, so it cannot run. \
         `jetcrawl fetcher --help` says:\n{help}"
    );
}

/// Starts `n` fetchers (1..=n), a parser and a sink; waits for the topology.
pub async fn start_pipeline(h: &Harness, n: usize, bind: Bind) -> (Vec<Service>, Service, Service) {
    let fetchers: Vec<Service> = (1..=n).map(|k| spawn_fetcher(h, k, bind)).collect();
    let parser = h.spawn(Role::Parser);
    let sink = h.spawn(Role::Sink);
    h.wait_topology(STARTUP).await;
    (fetchers, parser, sink)
}

/// SIGTERM to every service still running (each must exit 0).
pub async fn stop(h: &Harness, fetchers: &mut [Service], parser: &mut Service, sink: &mut Service) {
    let mut all: Vec<&mut Service> = fetchers
        .iter_mut()
        .filter(|f| f.exited().is_none())
        .collect();
    all.push(parser);
    all.push(sink);
    h.stop_all(&mut all).await;
}

// ------------------------------------------------------------------------------------
// checks of what the site saw

/// The politeness a spider promises each host.
#[derive(Debug, Clone, Copy)]
pub struct Promise {
    pub delay: Duration,
    pub concurrency: usize,
}

impl Promise {
    pub fn of(k: &Knobs) -> Promise {
        Promise {
            delay: Duration::from_millis(k.delay_ms),
            concurrency: k.concurrency_per_host as usize,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// What the site saw of the crawl's politeness: a summary line per host, and the
/// broken promises. Every request to a host counts, robots.txt included (it goes
/// through the host's gate). With concurrency c, a start must be at least the delay
/// (or the host's Crawl-delay) after the c-th start before it: each slot waits.
pub fn politeness(site: &HostsSite, promise: Promise) -> (String, Vec<String>) {
    let mut summary = String::new();
    let mut problems = Vec::new();
    let (mut all_gaps, mut all_short) = (0, 0);
    for host in 0..site.hosts() {
        let name = site.host_name(host);
        let reqs = site.requests_to(host);
        let crawl_delay = site
            .spec(host)
            .robots
            .as_ref()
            .and_then(|r| r.crawl_delay_secs)
            .map(|s| Duration::from_secs(s.into()));
        let delay = promise.delay.max(crawl_delay.unwrap_or_default());
        let floor = delay.mul_f64(GAP_TOLERANCE);
        let gaps = start_gaps(&reqs, promise.concurrency);
        let short: Vec<_> = gaps.iter().filter(|(g, _, _)| *g < floor).collect();
        let shortest = gaps.iter().min_by_key(|(g, _, _)| *g);
        let in_flight = max_in_flight(&reqs);
        all_gaps += gaps.len();
        all_short += short.len();
        let senders: Vec<String> = by_sender(&reqs)
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        summary.push_str(&format!(
            "  {name}: {} requests ({}); {} of {} gaps under {}{}; at most {in_flight} in flight\n",
            reqs.len(),
            senders.join(", "),
            short.len(),
            gaps.len(),
            ms(floor),
            shortest.map_or(String::new(), |(g, _, _)| format!(", shortest {}", ms(*g))),
        ));
        if let Some((g, a, b)) = short.iter().min_by_key(|(g, _, _)| *g) {
            let what = if crawl_delay.is_some() {
                "the host's robots.txt Crawl-delay"
            } else {
                "the spider's delay"
            };
            problems.push(format!(
                "{name}: {} of {} request starts came within {} of {} ({what} is {}, \
                 concurrency {}); closest {}: {} ({}) then {} ({})",
                short.len(),
                gaps.len(),
                ms(floor),
                if promise.concurrency == 1 {
                    "the one before".to_string()
                } else {
                    format!("the start {} before", promise.concurrency)
                },
                ms(delay),
                promise.concurrency,
                ms(*g),
                a.path,
                a.sender(),
                b.path,
                b.sender(),
            ));
        }
        if in_flight > promise.concurrency {
            problems.push(format!(
                "{name}: {in_flight} requests in flight at once; the spider allows {}",
                promise.concurrency
            ));
        }
    }
    summary.push_str(&format!(
        "  all hosts: {all_short} of {all_gaps} gaps under the delay"
    ));
    (summary, problems)
}

/// Pages requested a wrong number of times: each page of `expected` between 1 and
/// `max_times` times, nothing else but robots.txt at all.
/// How many distinct depths each URL was scheduled at (see
/// [`jetstream::scheduled_depths`]).
pub async fn scheduled_depths(h: &Harness) -> BTreeMap<String, usize> {
    let js = jetstream::connect(&h.nats.url()).await;
    jetstream::scheduled_depths(&js, &h.crawl).await
}

/// Pages fetched other than once per depth they were scheduled at (`extra` more
/// allowed: what a killed or frozen fetcher had in flight), or not at all, or that
/// should never have been fetched.
pub fn fetch_counts(
    site: &HostsSite,
    expected: &BTreeMap<Link, u32>,
    depths: &BTreeMap<String, usize>,
    extra: usize,
) -> Vec<String> {
    let counts = site.counts_by_page();
    let mut problems = Vec::new();
    for link in expected.keys() {
        let n = counts
            .get(&(link.host, link.path.clone()))
            .copied()
            .unwrap_or(0);
        let url = site.url(link);
        let max_times = depths.get(&url).copied().unwrap_or(1).max(1) + extra;
        if n == 0 {
            problems.push(format!("{url}: never fetched"));
        } else if n > max_times {
            let t0 = site.log().first().map(|r| r.start);
            let by: Vec<String> = site
                .requests_to(link.host)
                .into_iter()
                .filter(|r| r.path == link.path)
                .map(|r| {
                    let at = t0.map_or(0.0, |t0| (r.start - t0).as_secs_f64());
                    format!("{} at {at:.2} s", r.sender())
                })
                .collect();
            problems.push(format!(
                "{url}: fetched {n} times, scheduled at {} depth(s): {}",
                max_times - extra,
                by.join(", ")
            ));
        }
    }
    for ((host, path), n) in &counts {
        let link = Link {
            host: *host,
            path: path.clone(),
        };
        if path != "/robots.txt" && !expected.contains_key(&link) {
            let why = if site.disallowed(&link) {
                "disallowed by robots.txt"
            } else {
                "beyond max_depth or not linked"
            };
            problems.push(format!(
                "{}: fetched {n} times though {why}",
                site.url(&link)
            ));
        }
    }
    problems
}

/// Panics listing `problems` (the first 25) under `what`, with `context` after them.
pub fn assert_none(what: &str, problems: &[String], context: &str) {
    if problems.is_empty() {
        return;
    }
    let shown: Vec<&str> = problems.iter().take(25).map(String::as_str).collect();
    panic!(
        "{what} ({} problems):\n  {}\n{context}",
        problems.len(),
        shown.join("\n  ")
    );
}
